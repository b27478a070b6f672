"""Built-in rewards, hacking cases, None handling, user files, the runner's error reporting."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgrpo.trainer.rewards import (MAX_HUNG_CALLS, REWARDS, RewardError, RewardRunner, accuracy, completion_text,
                                    format_reward,
                                    load_reward, overlong)


def test_accuracy_by_problem_type():
    completions = [
        "<think>it is red</think><answer>B</answer>",
        "<answer>3.14</answer>",
        "<answer>The Eiffel Tower</answer>",
        "<answer>[10, 20]</answer>",
        "<answer>a cat sat down</answer>",
    ]
    out = accuracy(
        completions,
        answer=["B", "3.1416", "eiffel tower", "[15, 25]", "the cat sat"],
        problem_type=["multiple_choice", "numeric", "exact", "temporal_iou", "free_text"],
        options=[["A. blue", "B. red"], None, None, None, None],
    )
    # temporal: overlap 15-20 over union 10-25 = 1/3; ROUGE-L: LCS "cat sat" 2, P 2/4, R 2/3 -> F 4/7
    assert out == pytest.approx([1.0, 1.0, 1.0, 1 / 3, 4 / 7])


@pytest.mark.parametrize(
    "completion",
    [
        "<answer></answer>",  # empty: a substring of every answer
        "<answer>A or B or C</answer>",  # contains the right letter
        "<answer>A, B, C, D</answer>",
        "<answer>B or C</answer>",
        "",
        "<answer>A</answer> no wait <answer>A or B</answer>",  # the last tag counts
    ],
)
def test_accuracy_hacks_score_zero(completion):
    assert accuracy([completion], answer=["B"], problem_type=["multiple_choice"]) == [0.0]


def test_accuracy_substring_tricks_in_exact_and_numeric():
    out = accuracy(
        ["<answer>tower</answer>", "<answer>eiffel tower paris france</answer>", "<answer>12</answer>",
         "<answer>12 or 120</answer>"],
        answer=["eiffel tower", "eiffel tower", "120", "120"],
        problem_type=["exact", "exact", "numeric", "numeric"],
    )
    assert out == [0.0, 0.0, 0.0, 0.0]


def test_accuracy_none_when_no_reference_and_type_inference():
    out = accuracy(["<answer>B</answer>", "<answer>7</answer>", "<answer>Paris</answer>", "<answer>x</answer>"],
                   answer=["B", "7.0", "paris", None], options=[["A. x", "B. y"], None, None, None])
    assert out == [1.0, 1.0, 1.0, None]
    # ms-swift's `solution` column, itself tagged
    assert accuracy(["<answer>C</answer>"], solution=["<answer>C</answer>"], problem_type=["multiple_choice"]) == [1.0]


def test_accuracy_conversational_completions():
    comp = [[{"role": "assistant", "content": "<answer>B</answer>"}],
            [{"role": "assistant", "content": [{"type": "text", "text": "<answer>A</answer>"}]}]]
    assert accuracy(comp, answer=["B", "B"], problem_type=["multiple_choice"] * 2) == [1.0, 0.0]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>look at frame 3</think><answer>B</answer>", 1.0),
        ("<think>x</think>\n<answer>B</answer>\n", 1.0),
        ("<answer>B</answer>", 1.0),  # thinking is optional
        ("<answer>B</answer><think>late</think>", 0.0),  # think after the answer
        ("<think>x</think><answer></answer>", 0.0),  # empty answer
        ("<think>x</think><answer>B</answer><answer>C</answer>", 0.0),  # two answers
        ("Sure! <answer>B</answer>", 0.0),  # text outside the tags
        ("<think>x<answer>B</answer></think>", 0.0),  # nested
        ("<think>x</think>B", 0.0),
        ("<answer>B", 0.0),
    ],
)
def test_format(completion, expected):
    assert format_reward([completion]) == [expected]


def test_overlong_hand_computed():
    # Lmax = 100, C = 20: <= 80 -> 0; 90 -> (80 - 90) / 20 = -0.5; 100 -> -1.0; 101 -> -1
    out = overlong(["x"] * 5, completion_lengths=[10, 80, 90, 100, 101], max_completion_length=100, overlong_buffer=20)
    assert out == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(TypeError, match="completion_lengths"):
        overlong(["x"], max_completion_length=100)


def test_load_reward_builtin_and_file(tmp_path):
    assert load_reward("format") is REWARDS["format"]
    f = tmp_path / "my_reward.py"
    f.write_text("def length_reward(completions, **kwargs):\n    return [float(len(c)) for c in completions]\n")
    fn = load_reward(f"{f}:length_reward")
    assert fn(["ab", "abc"]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_reward(f"{f}:missing")
    with pytest.raises(FileNotFoundError):
        load_reward(f"{tmp_path / 'nope.py'}:f")
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("acuracy")


def test_runner_values_with_none_and_extras():
    def only_long(completions, **kw):
        return [None if len(completion_text(c)) < 5 else 1.0 for c in completions]

    runner = RewardRunner(["format", only_long, "overlong"], [1.0, 0.5, 1.0])
    res = runner(["<answer>B</answer>", "B"], {"answer": ["B", "B"]}, ["s0", "s1"],
                 completion_lengths=[3, 10], max_completion_length=10, overlong_buffer=4)
    # length 10 = Lmax -> (6 - 10) / 4 = -1
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, math.nan, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(res.values, expected, equal_nan=True)
    assert res.errors == 0 and res.names == ["format", "only_long", "overlong"]
    torch.testing.assert_close(runner.weights, torch.tensor([1.0, 0.5, 1.0]))


def _fails_on_bad(completions, **kw):
    if any("bad" in completion_text(c) for c in completions):
        raise KeyError("boom")
    return [1.0] * len(completions)


def test_runner_names_function_and_sample_on_raise():
    runner = RewardRunner([_fails_on_bad], [1.0])
    with pytest.raises(RewardError, match=r"'_fails_on_bad' on sample 'id-2'.*KeyError"):
        runner(["ok", "ok", "bad", "ok"], {}, ["id-0", "id-1", "id-2", "id-3"])


def test_runner_on_error_zero_counts():
    runner = RewardRunner([_fails_on_bad, "format"], [1.0, 1.0], on_error="zero")
    res = runner(["ok", "bad", "bad"], {}, ["a", "b", "c"])
    torch.testing.assert_close(res.values[:, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert res.errors == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", [1.0]])
def test_runner_rejects_non_numbers(bad):
    def returns_bad(completions, **kw):
        return [1.0, bad]

    with pytest.raises(RewardError, match=r"'returns_bad' on sample 'y'.*not a finite number"):
        RewardRunner([returns_bad], [1.0])(["a", "b"], {}, ["x", "y"])
    res = RewardRunner([returns_bad], [1.0], on_error="zero")(["a", "b"], {}, ["x", "y"])
    assert res.values[:, 0].tolist() == [1.0, 0.0] and res.errors == 1


def test_runner_wrong_length_always_raises():
    def short(completions, **kw):
        return [1.0]

    for mode in ("raise", "zero"):
        with pytest.raises(RewardError, match=r"'short'.*returned 1 values for 2 completions.*'p', 'q'"):
            RewardRunner([short], [1.0], on_error=mode)(["a", "b"], {}, ["p", "q"])


def test_runner_checks_lengths():
    runner = RewardRunner(["format"], [1.0])
    with pytest.raises(ValueError, match="column 'answer'"):
        runner(["a", "b"], {"answer": ["x"]}, ["1", "2"])
    with pytest.raises(ValueError, match="weights"):
        RewardRunner(["format"], [1.0, 2.0])


def test_runner_values_are_float64_and_unrepresentable_ones_are_refused():
    # float32 would turn 1e39 into inf; past 1e100 the advantage variance could overflow float64
    def huge(completions, **kw):
        return [1e39, 1e101]

    with pytest.raises(RewardError, match=r"'huge' on sample 'y'.*1e\+101.*1e\+100"):
        RewardRunner([huge], [1.0])(["a", "b"], {}, ["x", "y"])
    res = RewardRunner([huge], [1.0], on_error="zero")(["a", "b"], {}, ["x", "y"])
    assert res.values.dtype == torch.float64 and res.values[:, 0].tolist() == [1e39, 0.0] and res.errors == 1


class Hang:
    """A reward function that blocks until released (the test releases it: no thread is leaked)."""

    def __init__(self, on=lambda completions: True):
        self.on, self.calls, self.release = on, [], threading.Event()
        self.__name__ = "hang"

    def __call__(self, completions, **kw):
        self.calls.append(list(completions))
        if self.on(completions):
            self.release.wait(30)
        return [1.0] * len(completions)


@pytest.fixture
def hang():
    fns = []
    yield lambda **kw: fns.append(Hang(**kw)) or fns[-1]
    for fn in fns:
        fn.release.set()


def test_timeout_raises_naming_function_and_samples_without_per_sample_retries(hang):
    fn = hang()
    with pytest.raises(RewardError, match=r"'hang'.*did not return within 0.2 s.*'s0', 's1'"):
        RewardRunner([fn], [1.0], timeout_s=0.2)(["a", "b"], {}, ["s0", "s1"])
    assert len(fn.calls) == 1  # a timeout fails the whole call at once: G retries would cost G x timeout
    # a group: G completions of one question share its id, the error names it once
    with pytest.raises(RewardError, match=r"'hang' on sample 'q7': did not return within 0.2 s"):
        RewardRunner([fn], [1.0], timeout_s=0.2)(["a", "b"], {}, ["q7", "q7"])


def test_timeout_with_on_error_zero_scores_and_counts(hang):
    fn = hang()
    res = RewardRunner([fn, "format"], [1.0, 1.0], on_error="zero", timeout_s=0.2)(
        ["<answer>x</answer>", "y", "z"], {}, ["a", "b", "c"])
    assert res.values.tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]] and res.errors == 3
    assert len(fn.calls) == 1


def test_per_sample_retries_have_the_timeout_too(hang):
    # raises on the batch (so it is retried per sample), hangs on 'b' alone
    def raises_then_hangs(completions):
        if len(completions) > 1:
            raise KeyError("batch")
        return completions == ["b"]

    fn = hang(on=raises_then_hangs)
    with pytest.raises(RewardError, match=r"'hang' on sample 'id-b': did not return within 0.2 s"):
        RewardRunner([fn], [1.0], timeout_s=0.2)(["a", "b", "c"], {}, ["id-a", "id-b", "id-c"])
    fn.calls.clear()
    res = RewardRunner([fn], [1.0], on_error="zero", timeout_s=0.2)(["a", "b", "c"], {}, ["id-a", "id-b", "id-c"])
    # 'c' is not retried after 'b' hung: the hung call may hold what every later call needs
    assert res.values[:, 0].tolist() == [1.0, 0.0, 0.0] and res.errors == 2
    assert fn.calls == [["a", "b", "c"], ["a"], ["b"]]
    with pytest.raises(ValueError, match="timeout_s"):
        RewardRunner(["format"], [1.0], timeout_s=0)


def test_a_function_with_many_hung_calls_is_not_called_again(hang):
    # each timed-out call leaks a thread and costs a timeout: past MAX_HUNG_CALLS still running,
    # the function's samples fail at once, counted, until one of its calls returns
    fn = hang()
    runner = RewardRunner([fn], [1.0], on_error="zero", timeout_s=0.05)
    errors = [runner(["a"], {}, [f"s{i}"]).errors for i in range(MAX_HUNG_CALLS + 2)]
    assert errors == [1] * (MAX_HUNG_CALLS + 2) and len(fn.calls) == MAX_HUNG_CALLS
    runner.on_error = "raise"
    with pytest.raises(RewardError, match=r"'hang' on sample 'x': not called: 8 earlier calls did not return"):
        runner(["a"], {}, ["x"])
    fn.on = lambda completions: False
    fn.release.set()  # once they return, it is called again
    for t in runner.hung[0]:
        t.join(5)
    assert runner(["a"], {}, ["y"]).values.tolist() == [[1.0]] and len(fn.calls) == MAX_HUNG_CALLS + 1


HUNG_AT_EXIT = """
import threading, time
from mmgrpo.trainer.rewards import RewardRunner

def stuck(completions, **kw):
    threading.Event().wait()  # forever
    return [1.0] * len(completions)

res = RewardRunner([stuck], [1.0], on_error="zero", timeout_s=0.2)(["a"], {}, ["s0"])
print("errors", res.errors, flush=True)
"""


def test_a_hung_reward_does_not_block_interpreter_exit():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", HUNG_AT_EXIT], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["errors", "1"]


def test_calls_keep_the_global_rng_order_and_the_callers_grad_mode():
    # the trainer seeds `random` and NumPy per step for user functions: the runner must call them
    # one after the other, in order, like plain calls in the loop would
    def draw_py(completions, **kw):
        return [random.random() for _ in completions]

    def draw_np(completions, **kw):
        return [float(np.random.rand()) for _ in completions]

    def grad_mode(completions, **kw):
        return [float(torch.is_grad_enabled()) for _ in completions]

    runner = RewardRunner([draw_py, draw_np, draw_py, grad_mode], [1.0] * 4)
    random.seed(3), np.random.seed(3)
    with torch.no_grad():
        got = runner(["a", "b"], {}, ["x", "y"]).values  # [2, 4]
    random.seed(3), np.random.seed(3)
    want = [draw_py(["a", "b"]), draw_np(["a", "b"]), draw_py(["a", "b"]), [0.0, 0.0]]
    assert got.T.tolist() == want


HANGS_IN_TRAINER = """
import threading

RELEASE = threading.Event()

def hangs(completions, **columns):
    RELEASE.wait(20)
    return [1.0] * len(completions)
"""


def test_trainer_counts_timed_out_rewards(tiny_dir, tmp_path):
    """reward.timeout_s reaches the trainer's runner; on_error=zero counts every timed-out value."""
    from mmgrpo.trainer.loop import train
    from mmgrpo.trainer.setup import setup
    from tests.trainer_utils import reward_file, small_task, tiny_train_config

    lengths, hangs = reward_file(tmp_path), tmp_path / "hangs.py"
    hangs.write_text(HANGS_IN_TRAINER)
    cfg = tiny_train_config(tiny_dir, small_task(tmp_path / "task"), tmp_path / "run", lengths,
                            f"reward.functions=[{lengths}:length_reward, {hangs}:hangs]", "reward.weights=[1.0, 1.0]",
                            "reward.on_error=zero", "reward.timeout_s=0.3", "max_steps=1", "lora.enabled=false")
    run = setup(cfg)
    try:
        train(cfg, run)
    finally:
        run.rewards.functions[1].__globals__["RELEASE"].set()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["count/reward_errors"] == 2 * 4  # prompts_per_step x num_generations, the hung function's values
