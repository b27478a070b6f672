"""Every command block of README.md runs, as written, on the tiny model.

Convention (for everyone editing README.md): every ```bash block is executed by this test, one
command per line (`\\` continues a line, `&&` chains, `#` starts a comment), in order, in one
scratch folder holding a copy of `configs/`. What a reader would replace is replaced here:
hub model names (on the command line and in the copied configs) by the tiny model, `train.jsonl` / `val.jsonl` / `mvbench.jsonl` by a small
generated video QA task, and every `mmgrpo train` / `sft` / `eval` gets the overrides that make it
tiny (few steps, few frames, short completions), appended after the README's own so they win. A
block that cannot run here (installs packages, needs GPUs) is marked by the line right before its
fence: `<!-- readme-test: skip (reason) -->`. A command this test does not know how to run fails
the test: mark its block, or teach `run_command` below.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from mmgrpo.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->")

TINY_VISION = ["vision.max_pixels=3136", "vision.min_pixels=784", "vision.max_frames=4", "vision.min_frames=2",
               "model.dtype=fp32", "model.gradient_checkpointing=false", "progress_bar=false"]
TINY = {
    "train": [*TINY_VISION, "generation.num_generations=2", "generation.max_new_tokens=4", "prompts_per_step=2",
              "optim.grad_accum=1", "max_steps=2", "save_every=1", "eval.every=2", "eval.max_new_tokens=4",
              "eval.batch_size=4"],
    "sft": [*TINY_VISION, "max_steps=2", "batch_size=2"],
    "eval": ["--max-new-tokens", "4", "--no-progress", "--max-pixels", "3136", "--max-frames", "4"],
}
STEPS = 2  # the tiny runs' max_steps: the README's checkpoint-1000 is checkpoint-2 here


def bash_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, block text, skip reason or None) of every ```bash block."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = lines[start - 2].strip() if start >= 2 else ""
            match = SKIP.fullmatch(before)
            out.append((start, "\n".join(body), match.group(1) if match else None))
        i += 1
    return out


def commands(block: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                out.append(words)
    return out


def substitute(words: list[str], places: dict[str, str]) -> list[str]:
    out = []
    for w in words:
        for old, new in places.items():
            w = re.sub(rf"(?<![\w./-]){re.escape(old)}(?![\w-])", new, w)
        out.append(w.replace("checkpoint-1000", f"checkpoint-{STEPS}"))
    return out


def run_command(words: list[str], places: dict[str, str]) -> int:
    if words[0] != "mmgrpo":
        raise AssertionError(f"README command {' '.join(words)!r}: this test runs only `mmgrpo ...`; mark its block "
                             "`<!-- readme-test: skip (reason) -->` or teach tests/test_readme.py")
    argv = substitute(words[1:], places)
    return cli_main([*argv, *TINY.get(argv[0], [])])


def test_readme_blocks_follow_the_convention():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```bash block"
    assert all(reason is None or reason.strip() for _, _, reason in blocks)
    assert any(reason is None for _, _, reason in blocks), "every block is skipped: nothing is tested"


def test_readme_command_blocks_run(tiny_dir, tmp_path, monkeypatch):
    from tests.trainer_utils import small_task

    task = small_task(tmp_path / "task")
    work = tmp_path / "readme"
    shutil.copytree(ROOT / "configs", work / "configs")
    monkeypatch.chdir(work)
    places = {"Qwen/Qwen2.5-VL-3B-Instruct": str(tiny_dir), "Qwen/Qwen2.5-VL-7B-Instruct": str(tiny_dir),
              "train.jsonl": str(task.train), "val.jsonl": str(task.heldout), "mvbench.jsonl": str(task.heldout)}
    for config in (work / "configs").glob("*.yaml"):  # the hub models the configs name
        text = config.read_text()
        for hub in ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"):
            text = text.replace(hub, str(tiny_dir))
        config.write_text(text)
    ran = 0
    for line, block, reason in bash_blocks((ROOT / "README.md").read_text()):
        if reason is not None:
            continue
        for words in commands(block):
            assert run_command(words, places) == 0, f"README.md line {line}: {' '.join(words)} failed"
            ran += 1
    assert ran >= 5
    assert (work / "merged" / "config.json").is_file() and (work / "eval_rl" / "metrics.json").is_file()
