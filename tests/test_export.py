"""`mmgrpo merge` on the tiny model: adapter (current and pre-4.52 key layouts), adapter-only,
full-weights checkpoints, and verifications that must fail."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmgrpo.config import LoraConfig
from mmgrpo.models.export import ExportError, find_checkpoint
from mmgrpo.models.export import merge_main
from mmgrpo.models.keymap import current_target_modules, remap_keys, to_current_key
from mmgrpo.models.loading import save_processor_files
from mmgrpo.models.lora import apply_lora

TRAINER_FILES = ["trainer_state.json", "optimizer.pt"]


# ----------------------------------------------------------------------------------------------
# key mapping (pure)


def test_keymap_old_to_current():
    p = "base_model.model."  # PEFT's prefix
    cases = {
        p + "model.layers.3.self_attn.q_proj.lora_A.weight": p + "model.language_model.layers.3.self_attn.q_proj.lora_A.weight",
        p + "visual.blocks.0.attn.qkv.lora_B.weight": p + "model.visual.blocks.0.attn.qkv.lora_B.weight",
        p + "model.embed_tokens.weight": p + "model.language_model.embed_tokens.weight",
        "model.norm.weight": "model.language_model.norm.weight",  # plain model keys too
        "visual.merger.mlp.0.weight": "model.visual.merger.mlp.0.weight",
        "base_model.model.lm_head.weight": "base_model.model.lm_head.weight",
    }
    for old, new in cases.items():
        assert to_current_key(old) == new
        assert to_current_key(new) == new  # idempotent on the current layout


def test_keymap_collision_and_target_modules():
    with pytest.raises(ValueError, match="mixed key layouts"):
        remap_keys(["base_model.model.visual.blocks.0.attn.qkv.lora_A.weight",
                    "base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight"])
    assert current_target_modules(["q_proj", "model.layers.0.mlp.up_proj", "visual.blocks.1.attn.qkv"]) == [
        "q_proj", "model.language_model.layers.0.mlp.up_proj", "model.visual.blocks.1.attn.qkv"]
    regex = r"^(?!.*visual).*\.(q_proj)$"
    assert current_target_modules(regex) == regex


def to_old_layout(key: str) -> str:
    """Written independently of keymap.py: the pre-4.52 name of a current PEFT key."""
    key = key.replace("base_model.model.model.language_model.", "base_model.model.model.")
    return key.replace("base_model.model.model.visual.", "base_model.model.visual.")


# ----------------------------------------------------------------------------------------------
# fixtures: adapters and checkpoints made with PEFT / transformers directly


def make_adapter(tiny_dir: Path, out: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """LoRA on language model and vision tower, B perturbed so the merge changes the logits."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    peft_model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), train_vision=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out)
    return load_file(out / "adapter_model.safetensors")


def add_trainer_files(folder: Path) -> None:
    (folder / "trainer_state.json").write_text(json.dumps({"step": 7}))
    torch.save({"state": {}}, folder / "optimizer.pt")


def run_merge(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = merge_main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory):
    """Current key layout, no processor files (they must come from the base)."""
    out = tmp_path_factory.mktemp("adapter") / "checkpoint-3"
    make_adapter(tiny_dir, out)
    return out


@pytest.fixture(scope="module")
def old_adapter_dir(adapter_dir, tiny_dir, tmp_path_factory):
    """The same adapter with pre-4.52 key names, processor files and trainer state, as a run
    folder (`run/checkpoint-3`)."""
    from transformers import AutoProcessor

    run = tmp_path_factory.mktemp("old_run")
    out = run / "checkpoint-3"
    out.mkdir()
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    old = {to_old_layout(k): v for k, v in weights.items()}
    assert any(k.startswith("base_model.model.visual.") for k in old) and any(".model.layers." in k for k in old)
    save_file(old, out / "adapter_model.safetensors", metadata={"format": "pt"})
    shutil.copy(adapter_dir / "adapter_config.json", out)
    save_processor_files(AutoProcessor.from_pretrained(tiny_dir), out)
    add_trainer_files(out)
    return run


@pytest.fixture(scope="module")
def merged(adapter_dir, tmp_path_factory):
    """(folder, log lines, report) of a default merge: base from the adapter config, dtype as saved."""
    from mmgrpo.models.export import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("merged") / "model"
    lines: list[str] = []
    result = export_checkpoint(ExportOptions(checkpoint=str(adapter_dir), out=str(out)), log=lines.append)
    assert result.report is not None and result.report.ok, result.report.summary()
    return out, lines, result.report


def probe_logits(model, processor) -> torch.Tensor:
    """Logits on an image + 8-frame video prompt, built here without mmgrpo's probe helpers."""
    rng = np.random.default_rng(5)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    video = rng.integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)
    image = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
    batch = processor(text=[text], videos=[video], images=[image], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits.float()


# ----------------------------------------------------------------------------------------------
# merging


def test_merged_equals_base_plus_adapter(merged, adapter_dir, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out, lines, report = merged
    assert report.missing == [] and report.unexpected == [] and report.fresh_process_ok
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert any("processor files: none in" in line and str(tiny_dir) in line for line in lines)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
            "tokenizer_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", *TRAINER_FILES}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]

    processor = AutoProcessor.from_pretrained(out)
    merged_model, info = AutoModelForImageTextToText.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    base_logits = probe_logits(base, processor)
    reference = probe_logits(PeftModel.from_pretrained(base, adapter_dir), processor)
    got = probe_logits(merged_model, processor)
    assert (got - reference).abs().max() < 1e-4
    assert (got - base_logits).abs().max() > 1e-2  # the adapter changed the model


def test_old_layout_adapter_merges_to_same_weights(merged, old_adapter_dir, tmp_path, capsys):
    out = tmp_path / "from_old"
    rc, stdout, err = run_merge(["--adapter", str(old_adapter_dir), "--out", str(out), "--dtype", "fp32"], capsys)
    assert rc == 0, err
    # 52 = every LoRA A/B pair of the adapter: language model, vision blocks and the merger's two linears
    assert "checkpoint-3" in stdout and "renamed 52 keys from the pre-4.52 layout" in stdout and "OK:" in stdout
    assert not {p.name for p in out.iterdir()} & set(TRAINER_FILES)
    expected, got = load_file(merged[0] / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6)


def test_adapter_only_writes_clean_current_layout(old_adapter_dir, adapter_dir, tiny_dir, tmp_path, capsys):
    out = tmp_path / "adapter_only"
    rc, stdout, err = run_merge(["--adapter", str(old_adapter_dir), "--out", str(out), "--adapter-only"], capsys)
    assert rc == 0, err
    assert "OK:" in stdout and "peft" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json",
            "video_preprocessor_config.json", "tokenizer.json"} <= names
    assert not names & {"model.safetensors", "config.json", *TRAINER_FILES}
    original, written = load_file(adapter_dir / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert written.keys() == original.keys()  # current layout again
    assert all(torch.equal(written[k], original[k]) for k in original)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)


def save_full_checkpoint(tiny_dir: Path, out: Path, processor_files: bool = True) -> None:
    """What full fine-tuning saves: perturbed weights, config, processor files, trainer state."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    model.config.use_cache = False  # as training leaves it
    model.save_pretrained(out)
    if processor_files:
        save_processor_files(AutoProcessor.from_pretrained(tiny_dir), out)
    add_trainer_files(out)


def test_full_weights_checkpoint_exports_and_verifies(tiny_dir, tmp_path, capsys):
    ckpt, out = tmp_path / "checkpoint-5", tmp_path / "export"
    save_full_checkpoint(tiny_dir, ckpt)
    rc, stdout, err = run_merge(["--adapter", str(ckpt), "--out", str(out)], capsys)
    assert rc == 0, err
    assert "full weights" in stdout and "max abs diff 0," in stdout
    assert not {p.name for p in out.iterdir()} & set(TRAINER_FILES)
    expected, got = load_file(ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_bf16_export(adapter_dir, tmp_path, capsys):
    out = tmp_path / "bf16"
    rc, stdout, err = run_merge(["--adapter", str(adapter_dir), "--out", str(out), "--dtype", "bf16"], capsys)
    assert rc == 0, err
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# failures say what differs


def test_wrong_base_fails_naming_the_keys(adapter_dir, tmp_path, capsys):
    from mmgrpo.models.tiny import TinySpec, save_tiny

    other = save_tiny(tmp_path / "one_layer", TinySpec(layers=1))
    rc, _, err = run_merge(["--adapter", str(adapter_dir), "--base", str(other), "--out", str(tmp_path / "o")], capsys)
    assert rc == 1
    assert "found no parameter in the base" in err and "language_model.layers.1." in err


def test_tampered_weights_fail_verification(merged, adapter_dir, tmp_path, capsys):
    out = tmp_path / "tampered"
    shutil.copytree(merged[0], out)
    weights = load_file(out / "model.safetensors")
    # transformers 5 writes Qwen2.5-VL weights under the hub's (pre-4.52) names: `model.layers.N`
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = weights[name] + 0.5
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    rc, _, err = run_merge(["--adapter", str(adapter_dir), "--out", str(out), "--verify-only"], capsys)
    assert rc == 1
    assert "verification FAILED" in err and "logits differ from base + adapter: max abs diff" in err


def test_missing_key_and_processor_changes_fail_verification(merged, adapter_dir, tmp_path, capsys):
    out = tmp_path / "incomplete"
    shutil.copytree(merged[0], out)
    weights = load_file(out / "model.safetensors")
    del weights["visual.blocks.0.attn.qkv.weight"]
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "video_preprocessor_config.json").unlink()
    template = (out / "chat_template.jinja").read_text()
    (out / "chat_template.jinja").write_text(template.replace("You are a helpful assistant.", "You are terse."))
    rc, _, err = run_merge(["--adapter", str(adapter_dir), "--out", str(out), "--verify-only"], capsys)
    assert rc == 1
    assert "the exported processor gives different input_ids" in err
    assert "1 missing keys when loading the export: model.visual.blocks.0.attn.qkv.weight" in err
    assert "1 unexpected keys when loading the export: extra.weight" in err
    assert "files missing from the export: video_preprocessor_config.json" in err


def test_usage_errors(merged, adapter_dir, tiny_dir, tmp_path, capsys):
    rc, _, err = run_merge(["--adapter", str(adapter_dir), "--out", str(merged[0])], capsys)
    assert rc == 1 and "is not empty" in err
    ckpt = tmp_path / "full"
    save_full_checkpoint(tiny_dir, ckpt, processor_files=False)
    rc, _, err = run_merge(["--adapter", str(ckpt), "--out", str(tmp_path / "a"), "--adapter-only"], capsys)
    assert rc == 1 and "holds full weights" in err
    rc, _, err = run_merge(["--adapter", str(ckpt), "--out", str(tmp_path / "b")], capsys)
    assert rc == 1 and "has no processor files" in err and "--base" in err


def test_find_checkpoint_picks_latest_step(tmp_path):
    for step in (2, 10, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_config.json").write_text("{}")
    (tmp_path / "checkpoint-11").mkdir()  # incomplete: no weights
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    with pytest.raises(ExportError, match="no checkpoint-STEP"):
        find_checkpoint(tmp_path / "checkpoint-11")


# ----------------------------------------------------------------------------------------------
# checkpoints written by the trainer


def heldout_answers(model, processor, data: Path, vision) -> tuple[float, list[list[str]]]:
    """Greedy held-out accuracy and raw outputs through the evaluator (`mmgrpo eval`'s code path)."""
    from mmgrpo.config import EvalConfig
    from mmgrpo.demo.task import SUFFIX
    from mmgrpo.eval.bench import load_eval_data
    from mmgrpo.eval.runner import evaluate

    samples = load_eval_data([str(data)], prompt_suffix=SUFFIX, strict=True)
    result = evaluate(model, processor, samples, EvalConfig(batch_size=8, max_new_tokens=8), vision, progress=False,
                      numeric_tolerance=1e-2)
    return result.metrics.accuracy, [r.raw_outputs for r in result.records]


def test_lora_checkpoint_from_mmgrpo_train(tiny_dir, tmp_path, capsys):
    """`mmgrpo train` with LoRA (a length reward, so that the advantages and the adapter are not
    zero), then `mmgrpo merge` on the run folder: verified, and the merged folder answers the
    held-out questions exactly as base + adapter."""
    from mmgrpo.config import TrainConfig, load_config
    from mmgrpo.demo.run import DEMO_CONFIG
    from mmgrpo.demo.task import TaskSpec, make_task
    from mmgrpo.models.export import inspect_checkpoint, load_checkpoint
    from mmgrpo.models.loading import load_model
    from mmgrpo.models.loading import load_processor
    from mmgrpo.trainer.cli import train_main

    files = make_task(tmp_path / "data", TaskSpec(n_train=4, n_heldout=8))
    reward = tmp_path / "length_reward.py"
    reward.write_text("def length(completions, **kwargs):\n    return [float(len(c[0]['content'])) for c in completions]\n")
    run = tmp_path / "run"
    overrides = [f"model.name_or_path={tiny_dir}", f"data.train=[{files.train}]", f"output_dir={run}",
                 "lora.enabled=true", "lora.r=4", "optim.lr=0.05", "max_steps=1", "prompts_per_step=2",
                 "generation.num_generations=4", "save_every=1", "report_to=[jsonl]", "progress_bar=false",
                 f"reward.functions=[{reward}:length]", "reward.weights=[1.0]"]
    assert train_main([str(DEMO_CONFIG), *overrides]) == 0
    ckpt = run / "checkpoint-1"
    assert {"adapter_model.safetensors", "trainer_state.json", "optimizer.pt"} <= {p.name for p in ckpt.iterdir()}
    assert max(float(v.abs().max()) for k, v in load_file(ckpt / "adapter_model.safetensors").items() if "lora_B" in k) > 0

    out = tmp_path / "merged"
    rc, stdout, err = run_merge(["--adapter", str(run), "--out", str(out)], capsys)
    assert rc == 0, err
    assert "checkpoint-1" in stdout and "OK:" in stdout
    assert not {p.name for p in out.iterdir()} & {*TRAINER_FILES, "adapter_config.json"}

    vision = load_config(TrainConfig, DEMO_CONFIG).vision
    loaded = load_checkpoint(inspect_checkpoint(ckpt), None, "fp32", "cpu")
    acc_adapter, answers_adapter = heldout_answers(loaded.model, loaded.processor, files.heldout, vision)
    acc_merged, answers_merged = heldout_answers(load_model(out, "fp32", "cpu").eval(), load_processor(str(out)),
                                                 files.heldout, vision)
    assert acc_merged == acc_adapter and answers_merged == answers_adapter


@pytest.mark.slow
def test_demo_checkpoint_merges_and_answers_like_the_checkpoint(tmp_path, capsys):
    """Acceptance: the checkpoint `mmgrpo demo` writes (full fine-tuning) merges, passes the
    verification, and its merged folder answers the held-out questions exactly as the checkpoint
    (a short run: the point is the export, not the learning)."""
    from mmgrpo.config import TrainConfig, load_config
    from mmgrpo.demo.run import DEMO_CONFIG
    from mmgrpo.demo.run import main as demo_main
    from mmgrpo.models.loading import load_model
    from mmgrpo.models.loading import load_processor

    demo = tmp_path / "demo"
    assert demo_main(["--out", str(demo), "--sft-steps", "8", "max_steps=6", "progress_bar=false"]) == 0
    final = Path(json.loads((demo / "summary.json").read_text())["final_checkpoint"])
    out = tmp_path / "merged"
    rc, stdout, err = run_merge(["--adapter", str(demo), "--out", str(out)], capsys)
    assert rc == 0, err
    assert str(final) in stdout and "full weights" in stdout and "OK:" in stdout

    vision = load_config(TrainConfig, DEMO_CONFIG).vision
    heldout = demo / "data" / "heldout.jsonl"
    def answers(folder: Path):
        return heldout_answers(load_model(folder, "fp32", "cpu").eval(), load_processor(str(folder)), heldout, vision)

    (acc_ckpt, answers_ckpt), (acc_merged, answers_merged) = answers(final), answers(out)
    assert acc_merged == acc_ckpt and answers_merged == answers_ckpt
    assert acc_ckpt == pytest.approx(json.loads((demo / "summary.json").read_text())["accuracy_rl"])
