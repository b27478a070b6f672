"""LLM-as-judge rewards: strict parsing, caching, batching, retries, timeouts, counted failures; the
HTTP path against real local OpenAI-compatible servers (the tiny model, a rule judge, one that
errors, one that hangs), the local Hugging Face path, and a training step with a judge reward."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mmgrpo.config import ConfigError, JudgeConfig, TrainConfig, load_config
from mmgrpo.trainer.judge import HFBackend, JudgeError, JudgeReward, OpenAIBackend, ParseError, make_judge, parse_score

pytest.importorskip("openai")

COLUMNS = {"question": ["What colour?"] * 3, "answer": ["B", "B", None]}
COMPLETIONS = ["<think>red</think><answer>B</answer>", "<answer>A</answer>", "<answer>B</answer>"]


@pytest.mark.parametrize("reply, expected", [
    ("<score>7</score>", 0.7),  # (7 - 0) / (10 - 0)
    ("ok <score> 10 </score>", 1.0),
    ("<score>2.5</score>", 0.25),
])
def test_parse_score_hand_computed(reply, expected):
    assert parse_score(reply, JudgeConfig.score_pattern, 0.0, 10.0) == pytest.approx(expected)


@pytest.mark.parametrize("reply", ["7", "<score>7</score><score>8</score>", "<score>11</score>", "<score>-1</score>",
                                   "", "<score>seven</score>"])
def test_parse_score_is_strict(reply):
    with pytest.raises(ParseError):
        parse_score(reply, JudgeConfig.score_pattern, 0.0, 10.0)


class FakeBackend:
    """Replies from a dict (an Exception = the request fails); records every complete() call."""

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def complete(self, queries, attempt):
        self.calls.append(list(queries))

        def ask(q):
            reply = self.replies(q)
            if isinstance(reply, Exception):
                raise reply
            return reply

        return [attempt(lambda q=q: ask(q)) for q in queries]


def _grade(q):
    return "<score>10</score>" if "Answer to grade: B" in q else "<score>0</score>"


def test_rewards_cache_batching_and_counts():
    backend = FakeBackend(_grade)
    judge = JudgeReward(JudgeConfig(model="m"), backend)
    # the third completion has no reference: None, and nothing is asked for it
    assert judge(COMPLETIONS, **COLUMNS) == [1.0, 0.0, None]
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2  # one batch of the distinct queries
    assert "Question: What colour?" in backend.calls[0][0] and "Reference answer: B" in backend.calls[0][0]
    # the same completions again: answered from the cache, nothing sent
    assert judge(COMPLETIONS[:2] * 2, question=["What colour?"] * 4, answer=["B"] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert len(backend.calls) == 1
    assert judge.pop_counts() == {"judge_requests": 2, "judge_cache_hits": 4}
    assert judge.pop_counts() == {}


def test_failures_are_none_and_counted_or_raise():
    def flaky(q):
        return RuntimeError("boom") if "Answer to grade: A" in q else "no score here"

    judge = JudgeReward(JudgeConfig(model="m", retries=2), FakeBackend(flaky))
    assert judge(COMPLETIONS[:2], question=["q"] * 2, answer=["B"] * 2) == [None, None]  # never 0
    counts = judge.pop_counts()
    assert counts == {"judge_requests": 4, "judge_retries": 2, "judge_failures": 1, "judge_parse_failures": 1}
    assert judge.cache == {}  # failures are not cached
    strict = JudgeReward(JudgeConfig(model="m", on_failure="raise"), FakeBackend(flaky))
    with pytest.raises(JudgeError, match="unparsable reply"):
        strict(COMPLETIONS[:1], question=["q"], answer=["B"])
    with pytest.raises(JudgeError, match="needs the question"):
        strict(COMPLETIONS[:1], answer=["B"])


def test_question_from_trl_and_swift_rows():
    backend = FakeBackend(_grade)
    judge = JudgeReward(JudgeConfig(model="m"), backend)
    trl = [[{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "video"},
                                                                              {"type": "text", "text": "Which?"}]}]]
    judge(COMPLETIONS[:1], prompt=trl, answer=["B"])
    judge(COMPLETIONS[:1], messages=[[{"role": "user", "content": "<video>Swift?"}]], solution=["B"])
    assert "Question: Which?" in backend.calls[0][0] and "Question: <video>Swift?" in backend.calls[1][0]


def test_config_checks():
    base = ["reward.functions=[judge]", "reward.weights=[1.0]"]
    with pytest.raises(ConfigError, match="set reward.judge.model"):
        load_config(TrainConfig, None, base)
    with pytest.raises(ConfigError, match="more than reward.timeout_s"):
        load_config(TrainConfig, None, [*base, "reward.judge.model=m", "reward.judge.timeout_s=60",
                                        "reward.judge.retries=2", "reward.timeout_s=120"])
    load_config(TrainConfig, None, [*base, "reward.judge.model=m"])  # 30 s x 3 tries x 1 batch of 8 = 90 s


# ----------------------------------------------------------------------------------------------
# a real server


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """tests/judge_server.py in its own process; yields its base address http://127.0.0.1:PORT."""
    port_file = tmp_path_factory.mktemp("judge") / "port"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "judge_server.py"), str(tiny_dir), str(port_file)],
                            env=env)
    try:
        deadline = time.time() + 120
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None, "the judge server exited"
            assert time.time() < deadline, "the judge server did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        proc.kill()
        proc.wait()


def stats(server: str) -> dict:
    with urllib.request.urlopen(f"{server}/stats", timeout=10) as r:
        return json.loads(r.read())


def http_judge(server: str, mode: str, **kw) -> JudgeReward:
    return make_judge(JudgeConfig(backend="openai", model="tiny", base_url=f"{server}/{mode}/v1", api_key="k", **kw))


def test_http_rule_judge_grades_caches_and_batches(server):
    judge = http_judge(server, "rule")
    before = stats(server)["requests"].get("rule", 0)
    assert judge(COMPLETIONS, **COLUMNS) == [1.0, 0.0, None]
    assert judge(COMPLETIONS, **COLUMNS) == [1.0, 0.0, None]  # cached
    assert stats(server)["requests"]["rule"] - before == 2
    assert judge.pop_counts() == {"judge_requests": 2, "judge_cache_hits": 2}


def test_http_key_and_address_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server}/rule/v1")
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-123")
    judge = make_judge(JudgeConfig(backend="openai", model="tiny", api_key_env="MY_JUDGE_KEY"))
    assert judge(COMPLETIONS[:1], question=["q"], answer=["B"]) == [1.0]
    assert stats(server)["auth"][-1] == "Bearer secret-123"


def test_http_server_error_is_retried_then_counted(server):
    judge = http_judge(server, "error", retries=2)
    before = stats(server)["requests"].get("error", 0)
    assert judge(COMPLETIONS[:2], question=["q"] * 2, answer=["B"] * 2) == [None, None]
    assert stats(server)["requests"]["error"] - before == 6  # 2 queries x 3 tries
    assert judge.pop_counts() == {"judge_requests": 6, "judge_retries": 4, "judge_failures": 2}


def test_http_hanging_server_times_out(server):
    judge = http_judge(server, "hang", timeout_s=0.5, retries=1)
    t0 = time.perf_counter()
    assert judge(COMPLETIONS[:2], question=["q"] * 2, answer=["B"] * 2) == [None, None]
    assert time.perf_counter() - t0 < 10  # 2 tries of 0.5 s, the 2 queries concurrently
    assert judge.pop_counts() == {"judge_requests": 4, "judge_retries": 2, "judge_failures": 2}


def test_http_tiny_model_matches_the_local_backend_and_its_garbage_is_a_parse_failure(server, tiny_dir):
    """The server's tiny model and a local HF judge (the same weights, greedy) reply identically;
    neither reply holds a score: counted parse failures, rewards None."""
    cfg = JudgeConfig(backend="hf", model=str(tiny_dir), dtype="fp32", max_new_tokens=12)
    local = make_judge(cfg, device="cpu")
    query = local.query(COMPLETIONS[0], COLUMNS, 0)
    remote = OpenAIBackend(dataclasses.replace(cfg, backend="openai", base_url=f"{server}/model/v1", api_key="k"))
    assert isinstance(local.backend, HFBackend)
    assert remote.ask(query) == local.backend.complete([query], local.attempt)[0]
    for judge in (local, http_judge(server, "model", max_new_tokens=12)):
        assert judge(COMPLETIONS[:2], question=["What colour?"] * 2, answer=["B"] * 2) == [None, None]
        assert judge.pop_counts()["judge_parse_failures"] == 2


def test_training_step_with_an_http_judge(server, tiny_dir, tmp_path):
    from mmgrpo.trainer.loop import train
    from tests.trainer_utils import reward_file, small_task, tiny_train_config

    task = small_task(tmp_path / "task")
    out = tmp_path / "run"
    train(tiny_train_config(tiny_dir, task, out, reward_file(tmp_path), "reward.functions=[judge]",
                            "reward.weights=[1.0]", "reward.judge.model=tiny", f"reward.judge.base_url={server}/rule/v1",
                            "reward.judge.api_key=k", "max_steps=1"))
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["count/judge_requests"] >= 1 and "reward/judge/mean" in row
    assert row.get("count/judge_failures", 0) == 0 and row.get("count/judge_parse_failures", 0) == 0
