"""Reward functions from TRL and ms-swift, unchanged: TRL's built-ins imported from `trl` by
`module:function`, ms-swift ORM classes by `file.py:Class`, TRL's call shape inside a training run."""
from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

from mmgrpo.trainer.rewards import RewardError, RewardRunner, load_reward

pytest.importorskip("trl")

GOOD = "<think>\nreasoning\n</think>\n<answer>B</answer>"
BAD = "<answer>B</answer>"


def test_trl_think_format_reward_by_module_path():
    """trl/rewards/format_rewards.py reads `completion[0]["content"]`: TRL's conversational shape."""
    runner = RewardRunner(["trl.rewards:think_format_reward"], [1.0])
    res = runner([GOOD, BAD], {"answer": ["B", "B"]}, ["s0", "s1"])
    assert res.values[:, 0].tolist() == [1.0, 0.0]
    assert res.names == ["trl.rewards:think_format_reward"]


def test_text_completions_when_asked():
    """reward.completions=text: the old plain-string call; TRL's function then fails, naming itself."""
    with pytest.raises(RewardError, match="think_format_reward.*TypeError"):
        RewardRunner(["trl.rewards:think_format_reward"], [1.0], completions="text")([GOOD], {}, ["s0"])


def test_trl_accuracy_reward_names_its_missing_package():
    """trl/rewards/accuracy_rewards.py needs math_verify (an extra TRL does not install)."""
    runner = RewardRunner(["trl.rewards:accuracy_reward"], [1.0], on_error="zero")
    if importlib.util.find_spec("math_verify") is None:
        with pytest.raises(RewardError, match="math_verify"):  # on_error=zero does not hide a missing package
            runner([r"\boxed{3}"], {"solution": ["3"]}, ["s0"])
    else:
        assert runner([r"The answer is \boxed{3}"], {"solution": ["$3$"]}, ["s0"]).values.tolist() == [[1.0]]


def test_unknown_module_and_missing_import_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no file trl.nowhere and no importable module"):
        load_reward("trl.nowhere:f")
    f = tmp_path / "needs_pkg.py"
    f.write_text("import not_a_real_package_xyz\n\ndef r(completions, **kw):\n    return [1.0] * len(completions)\n")
    with pytest.raises(ImportError, match="needs the package 'not_a_real_package_xyz'.*pip install"):
        load_reward(f"{f}:r")


# examples/train/grpo/plugin/gsm8k/gsm8k_plugin.py of modelscope/ms-swift, unchanged but for the
# import: `from swift.rewards import ORM, orms` (ms-swift is not installed here; ORM is a plain base)
SWIFT_PLUGIN = r'''
import re
from typing import List


class ORM:
    pass


orms = {}


class GSM8KAccuracy(ORM):

    @staticmethod
    def extract_answer(text: str) -> str:
        """Extract the last #### number from text."""
        text = text[-500:] if len(text) > 500 else text
        # Prefer \boxed{} format
        boxed = re.findall(r'\\boxed\{([^}]+)\}', text)
        if boxed:
            return boxed[-1].replace(',', '').replace(' ', '').strip()
        # Fallback to #### format
        matches = re.findall(r'####\s*([\-\d,\.\s]+)', text)
        if matches:
            return matches[-1].replace(',', '').replace(' ', '').strip()
        return ''

    def __call__(self, completions, solution, **kwargs) -> List[float]:
        rewards = []
        for completion, gt_answer in zip(completions, solution):
            gt_num = self.extract_answer(gt_answer)
            pred_num = self.extract_answer(completion)
            correct = False
            if pred_num and gt_num:
                try:
                    correct = abs(float(pred_num) - float(gt_num)) < 1e-5
                except (ValueError, OverflowError):
                    correct = pred_num == gt_num
            rewards.append(1.0 if correct else 0.0)
        return rewards


orms['gsm8k_accuracy'] = GSM8KAccuracy
'''


def test_ms_swift_orm_class_gets_strings(tmp_path):
    plugin = tmp_path / "gsm8k_plugin.py"
    plugin.write_text(SWIFT_PLUGIN + "\n\nclass NeedsArgs(ORM):\n    def __init__(self, scale):\n        pass\n")
    with pytest.raises(ValueError, match="class NeedsArgs cannot be built without arguments"):
        load_reward(f"{plugin}:NeedsArgs")
    runner = RewardRunner([f"{plugin}:GSM8KAccuracy"], [1.0])
    res = runner(["so #### 42", "#### 41"], {"solution": ["#### 42", "#### 42"]}, ["s0", "s1"])
    assert res.values[:, 0].tolist() == [1.0, 0.0]


# records what the trainer passes, in TRL's GRPOTrainer._calculate_rewards names
SPY = '''
import json, os

def spy(completions, prompts, completion_ids, trainer_state, **kwargs):
    with open(os.environ["MMGRPO_TEST_SPY"], "a") as f:
        f.write(json.dumps({"completion": completions[0], "prompt_roles": [m["role"] for m in prompts[0]],
                            "ids": completion_ids[0], "step": trainer_state.global_step,
                            "max_steps": trainer_state.max_steps}) + "\\n")
    return [float(len(c[0]["content"])) for c in completions]
'''


def test_training_passes_trl_shapes(tiny_dir, tmp_path, monkeypatch):
    from mmgrpo.trainer.loop import train
    from tests.trainer_utils import reward_file, small_task, tiny_train_config

    spy = tmp_path / "spy.py"
    spy.write_text(textwrap.dedent(SPY))
    monkeypatch.setenv("MMGRPO_TEST_SPY", str(tmp_path / "calls.jsonl"))
    cfg = tiny_train_config(tiny_dir, small_task(tmp_path / "task"), tmp_path / "run", reward_file(tmp_path),
                            f"reward.functions=[trl.rewards:think_format_reward, {spy}:spy]",
                            "reward.weights=[1.0, 1.0]", "max_steps=2", "lora.enabled=false")
    train(cfg)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 4  # 2 steps x 2 groups
    first = calls[0]
    assert first["completion"][0]["role"] == "assistant" and isinstance(first["completion"][0]["content"], str)
    assert first["prompt_roles"][-1] == "user"
    assert all(isinstance(i, int) for i in first["ids"]) and 0 < len(first["ids"]) <= cfg.generation.max_new_tokens
    assert [c["step"] for c in calls] == [0, 0, 1, 1] and {c["max_steps"] for c in calls} == {2}
