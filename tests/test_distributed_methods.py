"""Dynamic sampling (DAPO §3.2) and T-GRPO's temporal contrast on two CPU processes: the same
rounds, kept groups, rewards, losses and weights as one process with the same global batch."""
from __future__ import annotations

from mmgrpo.trainer.loop import train
from tests.test_distributed import assert_same_run, launch_ok, metrics, rewards  # noqa: F401 (its reward fixture)
from tests.trainer_utils import tiny_train_config


def test_two_processes_match_one_with_dynamic_sampling_and_t_grpo(tiny_dir, task, rewards, tmp_path,  # noqa: F811
                                                                  one_thread):
    """Unshuffled data with flat even samples: every step needs a second round to find 4
    informative groups; each process rolls out and shuffles its own share."""
    common = ["lora.enabled=true", "prompts_per_step=4", "max_steps=2", "data.shuffle=false", "loss.preset=t_grpo",
              "loss.beta=0.0", "dynamic_sampling.enabled=true", f"reward.functions=[{rewards}:even_flat_reward]"]
    one = train(tiny_train_config(tiny_dir, task, tmp_path / "one", rewards, *common))
    two = launch_ok(2, tiny_train_config(tiny_dir, task, tmp_path / "two", rewards, *common))
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for s in a:
        assert a[s]["dynamic/rounds"] == b[s]["dynamic/rounds"] == 2.0
        assert a[s]["temporal/groups"] == b[s]["temporal/groups"] == 4.0
        assert b[s]["zero_std_frac"] == 0.0
    assert_same_run(one, two, steps=2)
