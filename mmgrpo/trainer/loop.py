"""The GRPO-family training loop. It reads like the algorithm: one call per phase.

    for step:
        prompts   = next_prompts(run)             # data order, whole groups per process
        groups    = rollout(run, prompts)         # G completions per prompt (prompt encoded once)
        score(run, groups)                        # reward functions -> [G, R]
        advantages(run, groups)                   # group-normalised advantages
        groups   += difficulty_update(run, groups)# DA: harder/easier copies of flat groups (§3.3)
        stats     = policy_update(run, groups)    # loss + backward + optimizer step
        evaluate / log / save
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmgrpo.config import TrainConfig
from mmgrpo.processors.sample import BadSampleError, PromptInputs, Sample
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer.advantages import compute_advantages
from mmgrpo.trainer.batch import Group
from mmgrpo.trainer.metrics import step_metrics
from mmgrpo.trainer.rollout import generate_groups
from mmgrpo.trainer.setup import Run, save, setup
from mmgrpo.trainer.update import policy_update


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


def encode(run: Run, sample: Sample) -> PromptInputs | None:
    """Encoded prompt of an original sample, from the LRU when seen before (encoding is a pure
    function of the sample and the budget; the video processor is a real per-step cost). A bad
    sample raises (naming it) unless the user asked for skips: then it is counted."""
    cache = run.prompt_cache  # on the CPU: pixel values of 64 long clips would crowd the GPU
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


def rollout_prompts(run: Run, prompts: list[PromptInputs], streams: list[int], augmentation: str = "none") -> list[Group]:
    """G completions for each prompt, all prompts in one batched prefill and decode loop. Each group
    samples from its own generator seeded by (seed, step, stream), so its completions depend neither
    on the other groups of the batch nor on which process generates it."""
    if not prompts:
        return []
    gens = [torch.Generator(run.device).manual_seed(ckpt.step_seed(run.cfg.seed, run.state.step, s)) for s in streams]
    policy = run.policy
    policy.eval()  # no dropout while sampling
    with torch.no_grad():
        rollouts = generate_groups(policy, run.processor, prompts, run.cfg.generation.num_generations,
                                   run.cfg.generation, gens, mode=run.cfg.forward_mode)
    return [Group(p, r.completion_ids, r.completion_mask, r.truncated, r.texts, augmentation=augmentation, stream=s)
            for p, r, s in zip(prompts, rollouts, streams)]


def rollout(run: Run, prompts: list[tuple[int, Sample]]) -> list[Group]:
    encoded = [(index, encode(run, sample)) for index, sample in prompts]
    encoded = [(index, p) for index, p in encoded if p is not None]
    return rollout_prompts(run, [p for _, p in encoded], [index for index, _ in encoded])


def reward_columns(sample: Sample) -> dict:
    """The sample's dataset columns, with `answer`, `options` and `problem_type` replaced by their
    parsed values (the ones evaluation scores with): a ms-swift/TRL row whose reference is the
    assistant turn has no `answer` column, and raw `options` may be a string."""
    return {**sample.columns, "answer": sample.answer, "options": sample.options, "problem_type": sample.problem_type}


def score(run: Run, groups: list[Group]) -> None:
    """Reward functions over each group's completions, with the original sample's columns."""
    for g in groups:
        sample = g.prompt.sample
        columns = {k: [v] * g.size for k, v in reward_columns(sample).items()}
        lengths = g.completion_mask.sum(dim=1).tolist()  # [G]
        result = run.rewards(g.texts, columns, [sample.id] * g.size, completion_lengths=lengths,
                             max_completion_length=run.cfg.generation.max_new_tokens,
                             overlong_buffer=run.cfg.reward.overlong_buffer,
                             numeric_tolerance=run.cfg.reward.numeric_tolerance)
        g.rewards = result.values  # [G, R]
        run.state.counters["reward_errors"] = run.state.counters.get("reward_errors", 0) + result.errors


def advantages(run: Run, groups: list[Group]) -> None:
    """Advantages from the rewards of the whole step: with several processes every process gathers
    all groups' rewards (batch-level scaling and GDPO need whole-batch statistics) in global order."""
    streams, local = [g.stream for g in groups], [g.rewards for g in groups]
    rewards, rows = dist.global_rewards(run.accelerator, streams, local)  # [B_all, G, R], row of each local group
    if rewards is None:  # no group on any process
        return
    a = compute_advantages(rewards, run.cfg.reward.weights, run.cfg.advantage.combine,
                           run.cfg.advantage.scale, run.cfg.advantage.eps)
    for i, g in zip(rows, groups):
        g.total_reward, g.advantages, g.zero_std = a.total[i], a.advantages[i], bool(a.zero_std[i])  # [G], [G]


def difficulty_update(run: Run, groups: list[Group]) -> list[Group]:
    """DeepVideo-R1 §3.3 difficulty-aware augmentation; no-op unless augment.enabled."""
    if run.augment is None:
        return []
    from mmgrpo.trainer.augment_phase import augment_groups

    extra = augment_groups(run, groups)
    score(run, extra)
    advantages(run, groups + extra)  # batch-level scaling must see the final batch
    return extra


def seed_everything(seed: int) -> None:
    """torch (dropout) and, for user reward functions, Python's `random` and NumPy: every step's
    randomness is a function of (seed, step, process), so a resumed run draws the same numbers."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def train(cfg: TrainConfig, run: Run | None = None) -> Path:
    """Run GRPO-family training; returns the final checkpoint folder."""
    run = run or setup(cfg)
    acc = run.accelerator
    bar = tqdm(total=cfg.max_steps, initial=run.state.step, disable=not (cfg.progress_bar and acc.is_main_process))
    last = None
    while run.state.step < cfg.max_steps:
        t0 = time.perf_counter()
        seed_everything(ckpt.step_seed(cfg.seed, run.state.step, 10_000 + acc.process_index))
        with dist.full_params(acc, run.model):  # sharded parameters (FSDP / ZeRO-3) gathered for sampling
            groups = rollout(run, next_prompts(run))
        score(run, groups)
        advantages(run, groups)
        extra = difficulty_update(run, groups)
        stats = policy_update(run, groups + extra)
        run.state.step += 1
        metrics = step_metrics(run, groups, extra, stats, time.perf_counter() - t0)
        if run.eval_samples and cfg.eval.every and run.state.step % cfg.eval.every == 0:
            metrics.update(evaluate_heldout(run))
        if run.state.step % cfg.log_every == 0:
            run.logger.log(run.state.step, metrics)
        if cfg.sample_every and run.state.step % cfg.sample_every == 0:
            run.logger.log_samples(run.state.step, sample_records(groups[:2]))
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", loss=f"{metrics['loss']:.4f}")
        if cfg.save_every and run.state.step % cfg.save_every == 0:
            last = save(run)
    if last is None or run.state.step % max(cfg.save_every, 1):
        last = save(run)
    bar.close()
    run.logger.close()
    return last or ckpt.checkpoint_dir(cfg.output_dir, run.state.step)


def evaluate_heldout(run: Run) -> dict[str, float]:
    """Held-out evaluation, sharded over the processes (each generates its share, all get the metrics)."""
    from mmgrpo.eval.runner import evaluate

    with dist.full_params(run.accelerator, run.model):
        result = evaluate(run.policy, run.processor, run.eval_samples, run.cfg.eval, run.cfg.vision, progress=False,
                          encoder=run.encoder, state=run.accelerator)
    return {f"eval/{k}": v for k, v in result.flat_metrics().items()}


def sample_records(groups: list[Group]) -> list[dict]:
    return [
        {"id": g.sample_id, "completion": t, "reward": float(r)}
        for g in groups
        for t, r in zip(g.texts, g.total_reward.tolist())
    ]
