"""GRPO steps with multi-turn tool rollouts on the tiny model: a model that learned to call `crop`
(SFT on traces) is trained two steps; its rollouts call the tool, the tool images reach the
update, the metrics count the calls, and over-turn masking takes capped trajectories out of the
loss. Also: rewards receive the whole trajectory (TRL's conversational form)."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from mmgrpo.demo.tools_bench import run_config, samples_of, sft, traces
from mmgrpo.demo.tools_task import ToolTaskSpec, make_tool_task
from mmgrpo.models.loading import load_model, load_processor
from mmgrpo.models.tiny import TinySpec, save_tiny
from mmgrpo.trainer.loop import train
from mmgrpo.trainer.rewards import tool_bonus, tool_cost, tool_format
from tests.trainer_utils import weights

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = ToolTaskSpec(n_train=4, n_heldout=2, size=448, dot=4, noise=30.0, seed=0)


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    """(folder of a tiny model that calls crop, the training file)."""
    root = tmp_path_factory.mktemp("tools")
    base = save_tiny(root / "base", TinySpec(tool_tokens=True))
    train_file, _ = make_tool_task(root / "task", SPEC)
    cfg = run_config(base, train_file, root / "unused", True, 1, 0)
    processor = load_processor(str(base))
    model = load_model(base, "fp32", "cpu", trainable=True)
    loss = sft(model, traces(cfg, processor, samples_of(train_file, cfg), SPEC, True, random.Random(0)), 150, 1e-3, 4,
               processor.tokenizer.pad_token_id, 0)
    assert loss < 0.5, loss
    model.save_pretrained(root / "caller")
    processor.save_pretrained(root / "caller")
    return root / "caller", train_file


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_steps_with_tool_calls(caller, tmp_path):
    model_dir, train_file = caller
    cfg = run_config(model_dir, train_file, tmp_path / "run", True, 2, 0)
    cfg = dataclasses.replace(cfg, prompts_per_step=2, generation=dataclasses.replace(cfg.generation, num_generations=4))
    final = train(cfg)
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    # sampled at temperature 1, some calls come out malformed: they are answered with errors, not crashes
    assert all(r["tools/call_rate"] >= 0.5 and r["tools/error_rate"] < 1 and r["tools/turns_mean"] > 1.4 for r in rows), rows
    assert all(r["loss"] is not None and r["grad_norm"] > 0 for r in rows), rows
    before, after = load_model(model_dir, "fp32", "cpu"), load_model(final, "fp32", "cpu")
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))


@pytest.mark.parametrize("lora", [False, True])
def test_tool_run_resumes_exactly(caller, tmp_path, lora):
    """Two steps, a checkpoint, then two more after a resume == four steps in one go: weights bitwise,
    metrics (tool calls included) equal. The rollouts' tool answers depend only on the calls."""
    model_dir, train_file = caller

    def config(out, steps, resume=None):
        cfg = run_config(model_dir, train_file, out, True, steps, 0)
        return dataclasses.replace(cfg, prompts_per_step=2, save_every=2, resume_from=resume,
                                   lora=dataclasses.replace(cfg.lora, enabled=lora),
                                   generation=dataclasses.replace(cfg.generation, num_generations=4))

    full = train(config(tmp_path / "full", 4))
    train(config(tmp_path / "cut", 2))
    resumed = train(config(tmp_path / "cut", 4, "auto"))
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("loss", "reward/mean", "tools/calls_mean", "tools/error_rate")
    assert [[r[k] for k in keys] for r in metrics(tmp_path / "cut")] == [[r[k] for k in keys] for r in metrics(tmp_path / "full")]


@pytest.mark.parametrize("objective,lora", [("reg_grpo", True), ("gspo", False), ("tic_grpo", True)])
def test_one_step_with_tools_under_each_objective(caller, tmp_path, objective, lora):
    model_dir, train_file = caller
    cfg = run_config(model_dir, train_file, tmp_path / "run", True, 1, 0)
    cfg = dataclasses.replace(cfg, prompts_per_step=2, generation=dataclasses.replace(cfg.generation, num_generations=4),
                              loss=dataclasses.replace(cfg.loss, objective=objective),
                              lora=dataclasses.replace(cfg.lora, enabled=lora, r=4, alpha=8, dropout=0.0))
    train(cfg)
    (row,) = metrics(tmp_path / "run")
    assert row["tools/call_rate"] >= 0.5 and row["grad_norm"] > 0 and row["loss"] == row["loss"], row


def test_over_turn_masking_takes_capped_trajectories_out_of_the_loss(caller, tmp_path):
    from mmgrpo.trainer.phases import next_prompts, rollout
    from mmgrpo.trainer.setup import setup

    model_dir, train_file = caller
    cfg = run_config(model_dir, train_file, tmp_path / "run", True, 1, 0)
    # one turn allowed: a trajectory that calls crop is capped (ending "turns") and, masked, leaves the loss
    cfg = dataclasses.replace(cfg, prompts_per_step=2, generation=dataclasses.replace(cfg.generation, num_generations=4),
                              tools=dataclasses.replace(cfg.tools, max_turns=1, mask_over_turn=True))
    run = setup(cfg)
    try:
        groups = rollout(run, next_prompts(run))
    finally:
        run.logger.close()
        run.tool_env.toolbox.close()
    trajs = [(g, i, t) for g in groups for i, t in enumerate(g.tools.trajectories)]
    assert sum(t.capped for _, _, t in trajs) >= len(trajs) // 2  # the caller calls crop most of the time
    for g, i, t in trajs:
        assert not t.answers and len(t.turns) == 1  # no tool ran: the call came in the last allowed turn
        assert t.capped == (t.ending == "turns") and t.capped == t.turns[0].endswith("</tool_call>")
        assert g.completion_mask[i, : t.length].tolist() == (t.model_mask * int(not t.capped)).tolist()
        assert int(g.completion_mask[i, t.length :].sum()) == 0


def test_tool_rewards_read_the_whole_trajectory():
    good = [{"role": "assistant", "content": '<tool_call>{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}}</tool_call>'},
            {"role": "tool", "content": ""},
            {"role": "assistant", "content": "<answer>A</answer>"}]
    bad_call = [dict(good[0], content="<tool_call>{crop}</tool_call>"), good[1], good[2]]
    no_answer = [good[0], good[1], {"role": "assistant", "content": "A"}]
    assert tool_format([good, bad_call, no_answer, "<answer>B</answer>", "B"]) == [1.0, 0.5, 0.5, 1.0, 0.0]
    assert tool_cost([good, good[2:], [good[0], good[1]] * 2 + good[2:]]) == [-1.0, -0.0, -2.0]


def test_tool_bonus_needs_a_right_answer_and_a_call_that_worked():
    call = {"role": "assistant", "content": '<tool_call>{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}}</tool_call>'}
    worked, failed = {"role": "tool", "content": "", "error": False}, {"role": "tool", "content": "Error: no box", "error": True}
    right, wrong = {"role": "assistant", "content": "<answer>A</answer>"}, {"role": "assistant", "content": "<answer>B</answer>"}
    untagged = {"role": "tool", "content": "Error: timed out"}  # no flag (a user's rollout): read from the prefix
    rows = [[call, worked, right], [call, worked, wrong], [call, failed, right], [right], [call, untagged, right],
            [call, failed, call, worked, right], "<answer>A</answer>"]
    assert tool_bonus(rows, answer=["A"] * 7, options=[["a", "b", "c", "d"]] * 7) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert tool_bonus([[call, worked, right]], answer=[None]) == [None]  # no reference: not applicable


def test_gigpo_advantages_of_a_groups_trajectories():
    """The hand example of tests/test_gigpo.py, from real trajectory records: trajectories 0 and 1
    made the same call and got the same answer (one anchor state at turn 1), 2 answered at once."""
    import math
    from types import SimpleNamespace

    from mmgrpo.config import AdvantageConfig, ToolsConfig
    from mmgrpo.models.multiturn import append_turn, group_tensors, start_trajectory
    from mmgrpo.processors.toolturn import ToolTurn
    from mmgrpo.trainer.tool_rollout import gigpo_token_advantages

    ids = lambda *v: torch.tensor(v)  # noqa: E731
    answer = ToolTurn(ids(9, 9), torch.zeros(2, dtype=torch.int), None, None, "ok", False)

    def two_turns(last):
        t = append_turn(start_trajectory("cpu"), ids(1, 2, 3), True, None, "call")
        return append_turn(append_turn(t, answer.input_ids, False, answer, None), last, True, None, "end")

    trajs = [two_turns(ids(4, 5)), two_turns(ids(6)), append_turn(start_trajectory("cpu"), ids(7), True, None, "a")]
    completion_ids, mask, _ = group_tensors(trajs, 0, mask_capped=False)
    group = SimpleNamespace(tools=SimpleNamespace(trajectories=tuple(trajs)), completion_ids=completion_ids,
                            completion_mask=mask)
    adv = gigpo_token_advantages(group, torch.tensor([1.0, 0.0, 1.0]), ToolsConfig(gigpo_gamma=0.5, gigpo_omega=1.0),
                                 AdvantageConfig(scale="group", eps=1e-12))
    s, h = math.sqrt(1 / 3), 0.5 / math.sqrt(0.5)
    e = [(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s]  # episode advantages; turn 0 step ones [0, -1, 1]
    expected = [[e[0]] * 3 + [0, 0] + [e[0] + h] * 2, [e[1] - 1] * 3 + [0, 0] + [e[1] - h, 0], [e[2] + 1] + [0] * 6]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=0)


def test_one_step_with_gigpo_credit(caller, tmp_path):
    model_dir, train_file = caller
    cfg = run_config(model_dir, train_file, tmp_path / "run", True, 1, 0)
    cfg = dataclasses.replace(cfg, prompts_per_step=2, generation=dataclasses.replace(cfg.generation, num_generations=4),
                              loss=dataclasses.replace(cfg.loss, objective="clipped_token"),
                              tools=dataclasses.replace(cfg.tools, credit="gigpo"))
    train(cfg)
    (row,) = metrics(tmp_path / "run")
    assert row["tools/call_rate"] >= 0.5 and row["grad_norm"] > 0 and row["loss"] == row["loss"], row
