"""Two CPU processes (gloo) against one: same loss trajectory and weights; exact resume under two.

The two-process runs are real launches, `python -m torch.distributed.run --nproc_per_node 2 -m
mmgrpo.cli train CONFIG.yaml` with ACCELERATE_USE_CPU=1, which makes accelerate use MULTI_CPU with the
gloo backend (`accelerate launch --cpu` starts a single process: its multi-CPU path needs MPI). The
one-process reference runs in this process. `prompts_per_step` is the global batch: 4 prompts per
step means 4 groups on one process and 2 on each of two.

Tolerances (fp32, one thread per process, lr 1e-3). The sampled completions and rewards are
identical (a group's RNG is seeded by its global index). Per-step losses: |d| <= max(1e-5 |loss|, 1e-7)
(measured: max 8e-9 absolute over 4 steps of full fine-tuning; LoRA runs are bitwise equal). Final
weights: 1e-5 absolute (measured max 2e-6, with updates of 3e-3), except the attention key biases:
their gradient is zero in exact arithmetic (softmax ignores a shift shared by all keys), so they
move by rounding noise amplified by Adam's normalisation (measured 4e-6), and get 1e-4.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from mmgrpo.config import TrainConfig, to_dict
from mmgrpo.trainer.checkpoint import latest_checkpoint, load_trainer_state
from mmgrpo.trainer.loop import train
from tests.trainer_utils import REWARD_FILE, tiny_train_config, weights

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
KEY_BIAS_ATOL = 1e-4  # k_proj biases: zero gradient up to rounding (see above)
LAUNCH_TIMEOUT_S = 180  # a deadlocked collective fails the test instead of hanging CI

REWARDS = REWARD_FILE + '''

def even_flat_reward(completions, id, **columns):
    """Constant for even-numbered samples: their groups have zero advantage (nothing to train on)."""
    even = int(id[0].rsplit("-", 1)[1]) % 2 == 0
    return [1.0 if even else float(len(c[0]["content"])) / 10.0 for c in completions]
'''


@pytest.fixture(scope="module")
def rewards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "dist_rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    return path


@pytest.fixture
def one_thread():
    """The launched processes run with OMP_NUM_THREADS=1; the in-process reference does too, so both
    sides use the same kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun(nproc: int, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m mmgrpo.cli ARGS` under torchrun with `nproc` CPU processes. On timeout the whole
    process group is killed (workers blocked in a collective would otherwise outlive torchrun)."""
    # --standalone: a local rendezvous on a free port, chosen by torchrun itself
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mmgrpo.cli", *args]
    child_env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{nproc}-process run did not finish in {LAUNCH_TIMEOUT_S} s (deadlock?):\n{output[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output, "")


def launch(nproc: int, cfg: TrainConfig, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`mmgrpo train CONFIG.yaml OVERRIDES` on `nproc` processes."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    return torchrun(nproc, ["train", str(config), *overrides], env)


def failure_text(output: str) -> str:
    """The workers' first traceback (torchrun's own summary at the end says little)."""
    start = output.find("Traceback")
    return output[start : start + 6000] if start >= 0 else output[-6000:]


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"multi-process run failed:\n{failure_text(result.stdout)}"


def launch_ok(nproc: int, cfg: TrainConfig, *overrides: str) -> Path:
    check(launch(nproc, cfg, *overrides))
    return latest_checkpoint(cfg.output_dir)


def metrics(out: str | Path) -> dict[int, dict]:
    """Last record per step in metrics.jsonl (a resumed run cuts the log back to its checkpoint first)."""
    return {r["step"]: r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())}


def assert_same_run(one: Path, two: Path, steps: int) -> None:
    a, b = metrics(one.parent), metrics(two.parent)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for s in a:
        # the same completions were sampled (a group's RNG is seeded by its global index) ...
        assert b[s]["reward/mean"] == pytest.approx(a[s]["reward/mean"], abs=1e-6), s
        assert b[s]["completion/length_mean"] == a[s]["completion/length_mean"], s
        assert b[s]["zero_std_frac"] == a[s]["zero_std_frac"], s
        # ... and the loss over the global batch is the same
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=LOSS_RTOL, abs=1e-7), s
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    for k in wa:
        atol = KEY_BIAS_ATOL if k.endswith("k_proj.bias") else WEIGHT_ATOL
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)


def full_config(tiny_dir, task, rewards, out: Path) -> TrainConfig:
    """GRPO with the KL term (a frozen reference copy), DAPO's token_mean aggregation (divides by
    the global token count) and batch-level advantage scaling (the std of the global batch)."""
    return tiny_train_config(tiny_dir, task, out, rewards, "lora.enabled=false", "prompts_per_step=4", "max_steps=4",
                             "save_every=2", "optim.schedule=cosine", "optim.warmup_steps=1", "loss.objective=clipped_token",
                             "loss.aggregation=token_mean", "advantage.scale=batch", "loss.beta=0.04")


@pytest.fixture(scope="module")
def two_process_full(tiny_dir, task, rewards, tmp_path_factory) -> Path:
    """Full fine-tuning, 4 steps on 2 processes (checkpoints at 2 and 4): shared by two tests."""
    return launch_ok(2, full_config(tiny_dir, task, rewards, tmp_path_factory.mktemp("two") / "run"))


def test_two_processes_match_one_full_finetuning(tiny_dir, task, rewards, tmp_path, two_process_full, one_thread):
    one = train(full_config(tiny_dir, task, rewards, tmp_path / "one"))
    assert_same_run(one, two_process_full, steps=4)


def test_two_processes_match_one_lora_with_an_idle_process(tiny_dir, task, rewards, tmp_path, one_thread):
    """Reg-GRPO without KL. Unshuffled data: process 0 always gets the even samples, whose rewards
    are flat, so it has no group to train on (their forwards are skipped) and must still join
    every collective (filler forwards)."""
    common = ["lora.enabled=true", "prompts_per_step=4", "max_steps=3", "data.shuffle=false", "loss.objective=reg_grpo",
              "loss.beta=0.0", f"reward.functions=[{rewards}:even_flat_reward]"]
    one = train(tiny_train_config(tiny_dir, task, tmp_path / "one", rewards, *common))
    two = launch_ok(2, tiny_train_config(tiny_dir, task, tmp_path / "two", rewards, *common))
    assert all(m["zero_std_frac"] == 0.5 and m["active_groups"] == 2 for m in metrics(tmp_path / "two").values())
    assert_same_run(one, two, steps=3)


def test_killed_two_process_run_resumes_exactly(tiny_dir, task, rewards, tmp_path, two_process_full):
    cfg = full_config(tiny_dir, task, rewards, tmp_path / "killed")
    # 2 groups per process per step = 2 reward calls: call 5 is the first of step 3 (checkpoint-2 is on disk)
    killed = launch(2, cfg, env={"MMGRPO_TEST_KILL_AT_CALL": "5"})
    assert killed.returncode != 0, killed.stdout[-6000:]
    assert latest_checkpoint(cfg.output_dir).name == "checkpoint-2"

    resumed = launch_ok(2, cfg, "resume_from=auto")
    assert load_trainer_state(resumed).step == 4
    a, b = weights(two_process_full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    before, after = metrics(two_process_full.parent), metrics(cfg.output_dir)
    for s in (3, 4):
        assert after[s]["loss"] == before[s]["loss"] and after[s]["reward/mean"] == before[s]["reward/mean"], s


def test_eval_sharded_over_two_processes_merges_one_predictions_file(tiny_dir, task, tmp_path, one_thread):
    """`mmgrpo eval` on 2 processes: one predictions.jsonl (each id once), the same greedy predictions
    and metrics as one process; a resumed sharded run evaluates only what is missing."""
    from mmgrpo.eval.cli import main as eval_main

    common = ["--model", str(tiny_dir), "--data", str(task.train), "--batch-size", "3", "--max-new-tokens", "6",
              "--no-progress", "--max-pixels", "3136", "--max-frames", "4"]
    assert eval_main([*common, "--out", str(tmp_path / "one")]) == 0
    two = tmp_path / "two"
    check(torchrun(2, ["eval", *common, "--out", str(two), "--limit", "5"]))  # an "interrupted" run
    assert len((two / "predictions.jsonl").read_text().splitlines()) == 5
    check(torchrun(2, ["eval", *common, "--out", str(two)]))
    read = lambda d: [json.loads(line) for line in (d / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    one_records, two_records = {r["id"]: r for r in read(tmp_path / "one")}, read(two)
    assert sorted(r["id"] for r in two_records) == sorted(one_records) and len(two_records) == 8
    for r in two_records:
        ref = one_records[r["id"]]
        assert (r["raw_outputs"], r["parsed_answers"], r["correct"]) == (ref["raw_outputs"], ref["parsed_answers"],
                                                                         ref["correct"]), r["id"]
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "one", two))
    assert (m2["n"], m2["accuracy"], m2["per_task"]) == (m1["n"], m1["accuracy"], m1["per_task"])


def test_accelerate_configs_load_and_name_real_layer_classes(tiny):
    """Each shipped config parses with accelerate's own loader, and FSDP wraps classes that exist in
    Qwen2.5-VL (accelerate fails at start-up on an unknown class name)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    expected = {"single_gpu": (DistributedType.NO, 1), "ddp_8gpu": (DistributedType.MULTI_GPU, 8),
                "fsdp_8gpu": (DistributedType.FSDP, 8), "zero2_8gpu": (DistributedType.DEEPSPEED, 8),
                "zero3_8gpu": (DistributedType.DEEPSPEED, 8)}
    assert sorted(p.stem for p in root.glob("*.yaml")) == sorted(expected)
    classes = {type(m).__name__ for m in tiny[0].modules()}
    for name, (kind, n) in expected.items():
        cfg = load_config_from_file(str(root / f"{name}.yaml"))
        assert (cfg.distributed_type, cfg.num_processes) == (kind, n), name
        if kind == DistributedType.FSDP:
            assert cfg.fsdp_config["fsdp_version"] == 2
            assert set(cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= classes
        if kind == DistributedType.DEEPSPEED:
            stage = cfg.deepspeed_config["zero_stage"]
            assert stage in (2, 3) and cfg.deepspeed_config["zero3_init_flag"] == (stage == 3), name


def test_unsupported_combinations_are_refused_before_any_work():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from mmgrpo.config import load_config
    from mmgrpo.trainer.distributed import check_supported

    def acc(kind=DistributedType.MULTI_GPU, n=8, zero_stage=None, fsdp2=True):
        plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
        return SimpleNamespace(distributed_type=kind, num_processes=n, is_fsdp2=fsdp2,
                               state=SimpleNamespace(deepspeed_plugin=plugin))

    cfg = lambda *o: load_config(TrainConfig, None, ["prompts_per_step=8", *o])  # noqa: E731
    check_supported(acc(), cfg())  # plain DDP, 8 prompts on 8 processes
    check_supported(acc(DistributedType.DEEPSPEED, zero_stage=3), cfg("loss.beta=0.04", "lora.enabled=true"))
    refused = [
        (acc(n=16), cfg(), "at least the number of processes"),
        (acc(), cfg("augment.enabled=true"), "augment.enabled"),
        (acc(DistributedType.FSDP, fsdp2=False), cfg(), "FSDP v1"),
        (acc(DistributedType.DEEPSPEED, zero_stage=3), cfg("loss.beta=0.04", "lora.enabled=false"), "ZeRO-3"),
        (acc(DistributedType.DEEPSPEED, zero_stage=2), cfg("resume_from=auto"), "resume_from"),
        (acc(DistributedType.FSDP), cfg("resume_from=auto"), "resume_from"),
    ]
    for a, c, message in refused:
        with pytest.raises(ValueError, match=message):
            check_supported(a, c)
