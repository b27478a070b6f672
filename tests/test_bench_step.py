"""scripts/bench_step.py runs the trainer's own step (rollout backend + policy_update) in both modes;
no timing is asserted (timings belong in the benchmark's document, not in tests)."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mmgrpo.config import GenerationConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_step_runs_both_modes(monkeypatch):
    """Both modes train, and the token bookkeeping shows what `repeat` repeats (G copies of every
    prompt's media)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_step.py"
    spec = importlib.util.spec_from_file_location("bench_step", path)
    bs = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_step", bs)  # dataclasses look their module up
    spec.loader.exec_module(bs)
    shape = bs.Shape("s", "video", 4, 56, 3)
    parts, processor = bs.setup(dataclasses.replace(bs.PRESETS["tiny"], shapes={"s": shape}), torch.device("cpu"))
    prompts = bs.make_prompts(processor, shape, 2, seed=0)
    gen = GenerationConfig(num_generations=3, max_new_tokens=shape.max_new_tokens)
    before = [p.detach().clone() for p in parts.model.parameters() if p.requires_grad]
    counts = {}
    for mode in ("repeat", "shared"):
        phases, rollouts = bs.train_step(parts, processor, prompts, gen, mode, step=0)
        assert set(phases) == {"rollout", "reference", "policy_fwd_bwd", "optimizer"}
        counts[mode] = bs.token_counts(prompts, rollouts, 3, mode)
    after = [p for p in parts.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert counts["repeat"]["vision_patches_per_pass"] == 3 * counts["shared"]["vision_patches_per_pass"]
    assert counts["repeat"]["lm_tokens_step"] > counts["shared"]["lm_tokens_step"]
    assert counts["repeat"]["prompt_tokens"] == counts["shared"]["prompt_tokens"] == sum(p.length for p in prompts)
