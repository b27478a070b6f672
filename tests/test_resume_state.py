"""A resume trusts nothing it cannot check: trainer_state.json is validated against its checkpoint
and the config, and a setting changed on resume is applied and recorded, or refused."""
from __future__ import annotations

import json
import shutil

import pytest

from mmgrpo.trainer.checkpoint import latest_checkpoint, load_trainer_state
from mmgrpo.trainer.loop import train
from mmgrpo.trainer.setup import setup
from tests.trainer_utils import reward_file, small_task, tiny_train_config

RUN = ["lora.enabled=true", "max_steps=2", "save_every=1"]


@pytest.fixture(scope="module")
def base(tiny_dir, tmp_path_factory):
    """A finished 2-step LoRA run started from a full-weights checkpoint (init_from), and what
    resuming it needs (the same task and reward file)."""
    from mmgrpo.models.tiny import TinySpec, save_tiny

    root = tmp_path_factory.mktemp("base")
    task, rewards = small_task(root / "task"), reward_file(root)
    other = save_tiny(root / "other-init", TinySpec(seed=7))  # stands in for a full SFT checkpoint
    train(tiny_train_config(tiny_dir, task, root / "run", rewards, *RUN, f"init_from={other}"))
    return {"run": root / "run", "task": task, "rewards": rewards, "other": other}


def copy_run(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base["run"], out)
    return out


def resume_cfg(tiny_dir, base, out, *overrides):
    return tiny_train_config(tiny_dir, base["task"], out, base["rewards"], *RUN, "resume_from=auto", *overrides)


def tamper(out, change) -> None:
    path = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


TAMPERED = {
    "base_lrs": (lambda s, t: s["lr_scheduler"].update(base_lrs=[1e6]), r"lr_scheduler\.base_lrs"),
    "last_epoch": (lambda s, t: s["lr_scheduler"].update(last_epoch=1000), r"lr_scheduler\.last_epoch"),
    "negative step": (lambda s, t: s.update(step=-100), r"\bstep\b.*-100"),
    "step of another folder": (lambda s, t: s.update(step=7), r"\bstep\b.*7.*checkpoint-2"),
    "step as text": (lambda s, t: s.update(step="2"), r"\bstep\b"),
    "position": (lambda s, t: s.update(position=999), r"\bposition\b"),
    "epoch": (lambda s, t: s.update(epoch=5), r"\bepoch\b"),
    "counter": (lambda s, t: s["counters"].update(skipped_samples=-1), r"counters\.skipped_samples"),
    "kind": (lambda s, t: s.update(kind="ppo"), r"\bkind\b"),
    "init_from": (lambda s, t: s["config"].update(init_from=str(t)), r"init_from.*adapter_config\.json"),
    "init_from dropped": (lambda s, t: s["config"].update(init_from=None), r"init_from.*adapter_config\.json"),
    "lora rank": (lambda s, t: s["config"]["lora"].update(r=8), r"lora\.r"),
    "recorded seed": (lambda s, t: s["config"].update(seed=5), r"\bseed\b"),
    "augment without augment.enabled": (lambda s, t: s.update(augment={"version": 1}), r"\baugment\b"),
    "grad_scaler without fp16": (lambda s, t: s.update(grad_scaler={"scale": 65536.0}), r"\bgrad_scaler\b"),
    "unknown field": (lambda s, t: s.update(extra=1), r"\bextra\b"),
    "missing field": (lambda s, t: s.pop("epoch"), r"\bepoch\b"),
}


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampered_trainer_state_is_refused_naming_the_field(tiny_dir, base, tmp_path, name):
    change, message = TAMPERED[name]
    out = copy_run(base, tmp_path)
    tamper(out, lambda s: change(s, tiny_dir))
    with pytest.raises(ValueError, match=message):
        setup(resume_cfg(tiny_dir, base, out))


def test_unreadable_trainer_state_is_refused_naming_the_file(tiny_dir, base, tmp_path):
    out = copy_run(base, tmp_path)
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"step": 2,')
    with pytest.raises(ValueError, match=r"checkpoint-2/trainer_state.json.*not valid JSON"):
        setup(resume_cfg(tiny_dir, base, out))


@pytest.mark.parametrize("override, key, new, old", [("optim.lr=0.002", "optim.lr", "0.002", "0.001"),
                                                     ("seed=3", "seed", "3", "0")])
def test_a_setting_changed_on_resume_is_refused_with_both_values(tiny_dir, base, tmp_path, override, key, new, old):
    out = copy_run(base, tmp_path)
    with pytest.raises(ValueError, match=rf"{key}: {new} in the config, {old} in the run.*init_from=.*checkpoint-2"):
        setup(resume_cfg(tiny_dir, base, out, override))


def test_changeable_settings_are_applied_and_recorded(tiny_dir, base, tmp_path):
    out = copy_run(base, tmp_path)
    final = train(resume_cfg(tiny_dir, base, out, "max_steps=3", "save_total_limit=1", "sample_every=1"))
    state = load_trainer_state(final)
    assert state.step == 3 and state.config["max_steps"] == 3 and state.config["save_total_limit"] == 1
    assert state.config["output_dir"] == str(out) and state.config["resume_from"] == "auto"
    assert state.config["init_from"] == str(base["other"])  # what the run started from stays recorded
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # save_total_limit applied
    assert latest_checkpoint(out) == final
    assert [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()] == [3] * 8
