"""The phases of a GRPO step before the update: prompts, rollout, rewards, advantages. Each returns
a new value (records.RolloutGroup, a rewards tensor, records.ScoredStep) and changes nothing it is
given; the run's live state (data position, counters) is the only thing they advance."""
from __future__ import annotations

import contextlib
import time
from collections import OrderedDict

import torch
from torch import Tensor
from transformers import TrainerState

from mmgrpo.processors.sample import BadSampleError, PromptInputs, Sample
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.advantages import combine_rewards, compute_advantages
from mmgrpo.trainer.records import RolloutGroup, ScoredStep
from mmgrpo.trainer.reward_terms import reward_terms
from mmgrpo.trainer.setup import Run
from mmgrpo.trainer.tool_rollout import conversation, gigpo_token_advantages, tool_groups


@contextlib.contextmanager
def timed(timings: dict[str, float], phase: str):
    """Adds the wall time of the block to `timings[phase]` (seconds; phases may repeat in a step)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0


def next_prompts(run: Run) -> list[tuple[int, Sample]]:
    """This step's prompts as (global index in the step, sample). The order is a permutation per
    epoch seeded by (seed, epoch), so it is reproducible from `state.epoch`/`state.position` alone.
    Each process takes every world_size-th prompt: groups stay whole on one process."""
    st, n = run.state, len(run.samples)
    picked: list[int] = []
    while len(picked) < run.cfg.prompts_per_step:
        order = epoch_order(n, run.cfg.seed, st.epoch, run.cfg.data.shuffle)
        take = order[st.position : st.position + run.cfg.prompts_per_step - len(picked)]
        picked += take
        st.position += len(take)
        if st.position >= n:
            st.epoch, st.position = st.epoch + 1, 0
    acc = run.accelerator
    return [(i, run.samples[j]) for i, j in enumerate(picked) if i % acc.num_processes == acc.process_index]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_777 + epoch)).tolist()


def guarded(run: Run, fn, *args, counter: str = "skipped_samples"):
    """`fn(*args)`; a BadSampleError (it names the sample) propagates unless the user asked for
    skips (`data.on_bad_sample=skip`): then it is counted under `counter` and None returned."""
    try:
        return fn(*args)
    except BadSampleError:
        if run.cfg.data.on_bad_sample == "raise":
            raise
        run.state.counters[counter] = run.state.counters.get(counter, 0) + 1
        return None


def encode(run: Run, sample: Sample) -> PromptInputs | None:
    """Encoded prompt of an original sample, from the LRU when seen before (encoding is a pure
    function of the sample and the budget; the video processor is a real per-step cost). Kept on
    the CPU: pixel values of 64 long clips would crowd the GPU."""
    cache: OrderedDict = run.prompt_cache
    if sample.id in cache:
        cache.move_to_end(sample.id)
        return cache[sample.id].to(run.device)
    prompt = guarded(run, run.encoder.encode, sample)
    if prompt is None:
        return None
    cache[sample.id] = prompt
    while len(cache) > run.cfg.vision.prompt_cache_size:
        cache.popitem(last=False)
    return prompt.to(run.device)


def rollout_prompts(run: Run, prompts: list[PromptInputs], streams: list[int], augmentation: str,
                    strengths: list[float], n: int | None = None) -> tuple[RolloutGroup, ...]:
    """G (or `n`) completions for each prompt from the rollout backend, group b seeded by (seed,
    step, streams[b]): its completions depend neither on the other groups nor on the process."""
    if not prompts:
        return ()
    seeds = [ckpt.step_seed(run.cfg.seed, run.state.step, s) for s in streams]
    if run.tool_env is not None:  # multi-turn trajectories with tool calls (trainer/tool_rollout.py)
        fields = tool_groups(run, prompts, seeds, n or run.cfg.generation.num_generations)
        return tuple(RolloutGroup(prompt=p, stream=s, augmentation=augmentation, aug_strength=a, **f)
                     for p, f, s, a in zip(prompts, fields, streams, strengths))
    rollouts = run.backend.generate(run.policy, prompts, seeds, n)
    return tuple(RolloutGroup(p, r.completion_ids, r.completion_mask, r.truncated, r.texts, s, augmentation, a,
                              r.logprobs) for p, r, s, a in zip(prompts, rollouts, streams, strengths))


def rollout(run: Run, prompts: list[tuple[int, Sample]]) -> tuple[RolloutGroup, ...]:
    encoded = [(index, encode(run, sample)) for index, sample in prompts]
    encoded = [(index, p) for index, p in encoded if p is not None]
    return rollout_prompts(run, [p for _, p in encoded], [i for i, _ in encoded], "none", [0.0] * len(encoded))


def reward_columns(sample: Sample) -> dict:
    """The sample's dataset columns, with `answer`, `options` and `problem_type` replaced by their
    parsed values (the ones evaluation scores with): a ms-swift/TRL row whose reference is the
    assistant turn has no `answer` column, and raw `options` may be a string."""
    return {**sample.columns, "answer": sample.answer, "options": sample.options, "problem_type": sample.problem_type}


def score(run: Run, groups: tuple[RolloutGroup, ...]) -> Tensor:
    """Reward functions over each group's completions, with the original sample's columns:
    [B, G, R] (NaN = not applicable), one column per reward term (reward_terms.py); T-GRPO's
    temporal column is NaN here (the temporal phase fills it). Failures scored 0 (on_error=zero)
    are counted, and so are a judge's failures (its counts move into the run's counters)."""
    terms = reward_terms(run.cfg)
    out = []
    for g in groups:
        sample = g.prompt.sample
        columns = {k: [v] * g.size for k, v in reward_columns(sample).items()}
        lengths = g.completion_mask.sum(dim=1).tolist()  # [G]
        # with tools, TRL's conversational completions: the whole trajectory, tool answers included
        completions = [conversation(t) for t in g.tools.trajectories] if g.tools is not None else list(g.texts)
        result = run.rewards(completions, columns, [sample.id] * g.size, completion_lengths=lengths,
                             **trl_extras(run, g),
                             max_completion_length=run.cfg.generation.max_new_tokens,
                             overlong_buffer=run.cfg.reward.overlong_buffer,
                             numeric_tolerance=run.cfg.reward.numeric_tolerance)
        count(run, "reward_errors", result.errors)
        values = result.values  # [G, R_fn]
        if terms.temporal is not None:
            values = torch.cat([values, torch.full((g.size, 1), float("nan"), dtype=values.dtype)], dim=1)  # [G, R]
        out.append(values)
    for fn in run.rewards.functions:  # e.g. the judge's requests, cache hits, failures
        for key, n in (fn.pop_counts() if hasattr(fn, "pop_counts") else {}).items():
            count(run, key, n)
    G = run.cfg.generation.num_generations
    return torch.stack(out) if out else torch.zeros(0, G, terms.count, dtype=torch.float64)  # [B, G, R]


def trl_extras(run: Run, g: RolloutGroup) -> dict:
    """What TRL's GRPOTrainer passes every reward function besides completions and columns:
    `prompts` (the chat messages each completion answers), `completion_ids` (its tokens, up to EOS)
    and `trainer_state` (`global_step` = steps done, `max_steps`)."""
    ids = [row[mask.bool()].tolist() for row, mask in zip(g.completion_ids, g.completion_mask)]  # G x [C_i]
    state = TrainerState(global_step=run.state.step, max_steps=run.cfg.max_steps)
    return {"prompts": [g.prompt.sample.prompt] * g.size, "completion_ids": ids, "trainer_state": state}


def count(run: Run, key: str, n: int) -> None:
    run.state.counters[key] = run.state.counters.get(key, 0) + int(n)


def totals(run: Run, rewards: Tensor) -> Tensor:
    """One reward per completion, [B, G]: the weighted sum, a None entry counted at its function's
    group mean (what the difficulty scheduler and the reward curves read)."""
    total, _ = combine_rewards(rewards, reward_terms(run.cfg).weights, "sum_then_normalize")  # [B, G]
    return total


def advantages(run: Run, groups: tuple[RolloutGroup, ...], rewards: Tensor) -> ScoredStep:
    """Advantages from the rewards of the whole step, once: with several processes every process
    gathers all groups' rewards (batch-level scaling and GDPO need whole-batch statistics) in
    global order and keeps the rows of its own groups."""
    everything, rows = dist.global_rewards(run.accelerator, [g.stream for g in groups], list(rewards))  # [B_all, G, R]
    if everything is None:  # no group on any process
        empty = torch.zeros(0, run.cfg.generation.num_generations)
        return ScoredStep((), rewards, empty, empty, torch.zeros(0, dtype=torch.bool), rewards.clone())
    a = compute_advantages(everything, reward_terms(run.cfg).weights, run.cfg.advantage.combine,
                           run.cfg.advantage.scale, run.cfg.advantage.eps)
    idx = torch.tensor(rows, dtype=torch.long, device=a.advantages.device)  # [B] this process's rows
    total = totals(run, rewards)  # [B, G]
    tokens = None
    if run.cfg.tools.credit == "gigpo":  # step-level credit from anchor states (trainer/tool_rollout.py)
        tokens = tuple(gigpo_token_advantages(g, total[b], run.cfg.tools, run.cfg.advantage) for b, g in enumerate(groups))
    return ScoredStep(groups=groups, rewards=rewards, total=total, advantages=a.advantages[idx],
                      zero_std=a.zero_std[idx], parts=a.parts[idx], token_advantages=tokens)
