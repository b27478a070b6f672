"""The rollout phase with tools (`tools.enabled`): G multi-turn trajectories per prompt
(models.multiturn), turned into the step's RolloutGroups. Everything after it reads the same
records as the single-turn path: the loss mask (completion_mask) is 1 on the policy's own tokens
only, so tool-answer tokens, their image placeholders included, stay in the sequence as context
(attention 1) but carry no loss and no token count (ARTIST §3.2, DeepEyes §3); each group's tool
images travel in `RolloutGroup.tools` to every log-prob forward (policy, reference, old policy).

Rewards see the whole trajectory in TRL's conversational form: each completion is the list of its
messages, `{"role": "assistant", "content": turn}` and `{"role": "tool", "content": answer}`
alternating; string rewards (accuracy, ...) read the assistant turns (rewards.completion_text).
"""
from __future__ import annotations

import torch

from mmgrpo.models.generate import Sampling
from mmgrpo.models.layout import pad_last
from mmgrpo.models.multiturn import Trajectory, TurnCaps, generate_trajectories, group_tensors
from mmgrpo.processors.budget import Grid
from mmgrpo.processors.sample import PromptInputs
from mmgrpo.processors.toolturn import ToolTurnEncoder
from mmgrpo.tools.base import CALL_CLOSE
from mmgrpo.tools.env import ToolEnv, sample_max_turns
from mmgrpo.tools.registry import load_toolbox
from mmgrpo.trainer.gigpo import anchor_groups, final_reward_steps, gigpo_advantages, token_advantages
from mmgrpo.trainer.records import ToolRollout


def build_tool_env(cfg, processor) -> ToolEnv:
    """The run's tools (MCP servers started here) and the tool-turn encoder of its processor."""
    stop = processor.tokenizer.convert_tokens_to_ids(CALL_CLOSE)
    if stop is None or stop == processor.tokenizer.unk_token_id:
        raise ValueError(f"tools.enabled needs {CALL_CLOSE!r} as one token of the tokenizer (Qwen2.5 / Qwen3 "
                         "tokenizers have it); this tokenizer does not")
    return ToolEnv(load_toolbox(cfg.tools), ToolTurnEncoder(processor, cfg.tools), cfg.tools, cfg.vision,
                   Grid.of(processor))


def conversation(t: Trajectory) -> list[dict]:
    """A trajectory as TRL conversational messages (what reward functions receive); a tool message
    also says whether the call failed (`error`: its content is then the error message)."""
    messages = []
    for i, turn in enumerate(t.turns):
        messages.append({"role": "assistant", "content": turn})
        if i < len(t.answers):
            messages.append({"role": "tool", "content": t.answers[i].answer, "error": t.answers[i].error})
    return messages


def trajectories_of(run, prompts: list[PromptInputs], seeds: list[int], n: int) -> list[list[Trajectory]]:
    """B x n trajectories from the policy in eval mode (no dropout while sampling)."""
    tools, tok = run.cfg.tools, run.processor.tokenizer
    samples = [p.sample for p in prompts]
    caps = TurnCaps(tuple(sample_max_turns(s, tools) for s in samples), tools.max_total_tokens,
                    tok.convert_tokens_to_ids(CALL_CLOSE))
    policy = run.policy
    was_training = policy.training
    policy.eval()
    try:
        return generate_trajectories(policy, tok, run.special, prompts, n, Sampling.of(run.cfg.generation), seeds,
                                     caps, run.tool_env.respond_for(samples))
    finally:
        policy.train(was_training)


def tool_groups(run, prompts: list[PromptInputs], seeds: list[int], n: int) -> list[dict]:
    """Per prompt, the RolloutGroup fields of its n trajectories."""
    out = []
    for trajs in trajectories_of(run, prompts, seeds, n):
        ids, mask, media = group_tensors(trajs, run.special.pad, run.cfg.tools.mask_over_turn)  # [n, C] each
        out.append(dict(completion_ids=ids, completion_mask=mask,
                        truncated=torch.tensor([t.ending != "eos" for t in trajs]),  # [n] bool
                        texts=tuple("".join(t.turns) for t in trajs), tools=ToolRollout(media, tuple(trajs))))
    return out


def tool_metrics(groups) -> dict[str, float]:
    """Tool use of the step's trajectories: calls per trajectory, share with at least one call,
    share of calls that failed, turns, and the share that hit a cap (turns / tokens)."""
    trajs = [t for g in groups if g.tools is not None for t in g.tools.trajectories]
    if not trajs:
        return {}
    calls = [len(t.answers) for t in trajs]
    errors = sum(a.error for t in trajs for a in t.answers)
    n = len(trajs)
    return {"tools/calls_mean": sum(calls) / n, "tools/call_rate": sum(c > 0 for c in calls) / n,
            "tools/error_rate": errors / max(sum(calls), 1), "tools/turns_mean": sum(len(t.turns) for t in trajs) / n,
            "tools/capped_rate": sum(t.capped for t in trajs) / n}


def turn_of_token(t: Trajectory) -> torch.Tensor:
    """[C] long: the model turn each token belongs to, -1 on tool-turn tokens."""
    model = t.model_mask  # [C] long
    starts = torch.cat([model[:1], model[1:] * (1 - model[:-1])])  # [C] 1 where a model turn begins
    return torch.where(model.bool(), starts.cumsum(0) - 1, -1)  # [C]


def turn_states(t: Trajectory) -> list[tuple[int, ...]]:
    """The observation before each model turn: the completion's ids so far (the prompt is the
    group's own, shared), so equal tuples are GiGPO's identical anchor states."""
    model = t.model_mask
    starts = torch.cat([model[:1], model[1:] * (1 - model[:-1])]).nonzero().squeeze(1).tolist()
    return [tuple(t.ids[:s].tolist()) for s in starts]


def gigpo_token_advantages(group, total: torch.Tensor, tools, advantage) -> torch.Tensor:
    """[G, C] GiGPO advantages of a group's tokens (trainer/gigpo.py): each turn's A_E + omega A_S,
    from the combined rewards `total` [G] at the last turn; 0 on tool tokens and masked trajectories."""
    trajs = group.tools.trajectories
    groups = anchor_groups([turn_states(t) for t in trajs])  # [G, T]
    steps, mask = final_reward_steps(total.double().cpu(), torch.tensor([len(t.turns) for t in trajs]), groups.shape[1])
    scale = "std" if advantage.scale == "group" else "none"
    adv = gigpo_advantages(total.double().cpu(), steps, mask, groups, tools.gigpo_gamma, tools.gigpo_omega, scale,
                           advantage.eps)  # [G, T]
    C = group.completion_ids.shape[1]
    turns = torch.stack([pad_last(turn_of_token(t).cpu(), C, -1) for t in trajs])  # [G, C]
    return token_advantages(adv, turns).float() * group.completion_mask.cpu()  # [G, C]
