"""Helpers for trainer tests: a small task on disk, configs on the tiny model, weight comparison."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmgrpo.config import TrainConfig, load_config
from mmgrpo.demo.task import SUFFIX, TaskSpec, make_task

# A reward that varies within a group on a random model (completion length), so every loss
# variant gets a non-zero advantage; loaded through the user-file path (`file.py:function`).
REWARD_FILE = '''
import os, signal

CALLS = {"n": 0}

def length_reward(completions, **columns):
    kill_at = int(os.environ.get("MMGRPO_TEST_KILL_AT_CALL", "0"))
    CALLS["n"] += 1
    if kill_at and CALLS["n"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # a real crash in the middle of a step
    return [float(len(c[0]["content"])) / 10.0 for c in completions]
'''


def small_task(root: Path):
    return make_task(root, TaskSpec(n_train=8, n_heldout=4, seed=0))


def reward_file(root: Path) -> Path:
    path = root / "rewards_for_tests.py"
    path.write_text(textwrap.dedent(REWARD_FILE))
    return path


def tiny_train_config(model_dir: Path, task, out: Path, rewards: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, [
        f"model.name_or_path={model_dir}", "model.dtype=fp32", f"data.train=[{task.train}]",
        f"data.prompt_suffix={SUFFIX!r}".replace("\n", " "),
        "vision.nframes=4", "vision.min_frames=2", "vision.max_frames=4", "vision.max_pixels=3136",
        "vision.min_pixels=784", "vision.max_prompt_length=512",
        "generation.num_generations=4", "generation.max_new_tokens=6",
        f"reward.functions=[{rewards}:length_reward]", "reward.weights=[1.0]",
        "prompts_per_step=2", "max_steps=2", "save_every=0", f"output_dir={out}", "progress_bar=false",
        "report_to=[jsonl]", "optim.lr=1e-3", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0",
        *overrides,
    ])


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    files = sorted(ckpt.glob("*.safetensors"))
    files = [f for f in files if f.name != "rng_state.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def random_lora(model, std: float, train_vision: bool = False):
    """A LoRA copy of `model` (r 4, no dropout; `train_vision`: on the vision blocks and merger too)
    whose B matrices are random, so the adapter changes the outputs (PEFT initialises B to zero)."""
    import copy

    import torch

    from mmgrpo.config import LoraConfig
    from mmgrpo.models.lora import apply_lora

    peft = apply_lora(copy.deepcopy(model), LoraConfig(r=4, alpha=8, dropout=0.0), train_vision=train_vision)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return peft
