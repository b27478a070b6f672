"""Two training steps with each loss variant, LoRA and full fine-tuning, on the tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from mmgrpo.trainer.checkpoint import latest_checkpoint
from mmgrpo.trainer.loop import train
from tests.trainer_utils import tiny_train_config, weights


VARIANTS = {  # paper presets; the beta of GRPO's preset gives a KL against the adapter-disabled base
    "grpo": [],  # (LoRA) or a frozen copy (full)
    "dr_grpo": [],
    "dapo": ["reward.overlong_buffer=2"],  # with dynamic sampling and the overlong term (6-token budget)
    "gspo": ["optim.updates_per_rollout=2"],  # off-policy: the sequence ratio differs from 1
    "reg_grpo": ["loss.beta=0.0"],
    "tic_grpo": ["optim.updates_per_rollout=2"],
}
CASES = [(name, lora, extra) for name, extra in VARIANTS.items() for lora in (True, False)] + [
    ("reg_grpo", False, ["forward_mode=repeat", "loss.beta=0.0"]),  # the prompt repeated G times, as peers do
    ("grpo", True, ["model.gradient_checkpointing=true", "optim.grad_accum=2"]),
]


@pytest.mark.parametrize("loss,lora,extra", CASES)
def test_two_steps(tiny_dir, task, rewards, tmp_path, loss, lora, extra):
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", rewards, f"loss.preset={loss}", f"lora.enabled={lora}",
                            *extra)
    final = train(cfg)
    assert final == latest_checkpoint(tmp_path / "run")
    assert (final / ("adapter_model.safetensors" if lora else "model.safetensors")).is_file()
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "tokenizer.json",
                 "chat_template.jinja", "generation_config.json", "optimizer.pt", "trainer_state.json"):
        assert (final / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss"] is not None and r["grad_norm"] is not None, r
        assert r["zero_std_frac"] < 1.0  # the length reward varies within groups
    trained = weights(final)
    if lora:  # LoRA B starts at zero: any non-zero B means the update reached the adapter
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in trained.items())
    else:
        base = weights(tiny_dir)
        changed = [k for k in base if not torch.equal(base[k], trained[k])]
        assert changed, "full fine-tuning changed no weight"
