"""What a multi-process step needs besides the gradient all-reduce, on accelerate / torch.distributed
primitives only (`gather_object`, `gather`, DDP kwargs, FSDP2 `unshard`, DeepSpeed `GatheredParameters`).

- Whole-batch statistics: each process holds only its own groups, but batch-level advantage scaling,
  GDPO's batch normalisation and every logged metric are statistics of the *global* batch. Groups
  are gathered as small records and put back in global order (their seed stream is their index in
  the step), so every process computes exactly what one process with the whole batch would.
- Lockstep: every forward is a collective under FSDP and ZeRO-3 (parameters are gathered layer by
  layer) and DDP's synced backward needs one prepared forward on every process. A process with fewer
  groups to train on pads with zero-weight filler forwards (`lockstep`).
- Generation with sharded parameters: the sampling loop runs a data-dependent number of forwards,
  so parameters are gathered once for the whole rollout phase instead (`full_params`).

With one process every function here is the identity (no communication).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object

from mmgrpo.config import TrainConfig

T = TypeVar("T")


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """The trainer's Accelerator. DDP settings, both needed for correctness, not speed:
    find_unused_parameters: a process whose groups are all skipped trains on a text-only filler
      forward that leaves the vision tower unused (and LoRA / partial freezing can leave others);
    broadcast_buffers=False: the model's buffers are constants (rotary inv_freq), and a buffer
      broadcast in every forward would make each forward a collective.
    mixed_precision "fp16": fp16 autocast with a loss scaler over fp32 trainable weights (pure fp16
      AdamW underflows); bf16 and fp32 load the weights in that dtype and need neither."""
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    return Accelerator(kwargs_handlers=[ddp], mixed_precision=mixed_precision)


def is_zero3(acc: Accelerator) -> bool:
    plugin = acc.state.deepspeed_plugin
    return acc.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def shards_params(acc: Accelerator) -> bool:
    """ZeRO-3 and FSDP partition the parameters themselves: forwards gather them layer by layer."""
    return is_zero3(acc) or acc.distributed_type == DistributedType.FSDP


def shards_optimizer(acc: Accelerator) -> bool:
    """ZeRO (any stage) and FSDP partition the optimizer state: no single process holds all of it."""
    return acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def check_supported(acc: Accelerator, cfg: TrainConfig) -> None:
    """Refuse, before any work, the combinations that would silently diverge or deadlock."""
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        # FSDP1 cannot run forwards on gathered parameters (summon_full_params forbids it), so the
        # rollout's data-dependent number of forwards would deadlock; FSDP2 can (`full_params`).
        raise ValueError("FSDP v1 is not supported: set fsdp_version: 2 (configs/accelerate/fsdp_8gpu.yaml)")
    if cfg.model.dtype == "fp16" and acc.device.type != "cuda":
        raise ValueError("model.dtype=fp16 trains with CUDA fp16 autocast and a loss scaler; on "
                         f"{acc.device.type} use bf16 or fp32")
    if cfg.prompts_per_step < acc.num_processes:
        raise ValueError(f"prompts_per_step={cfg.prompts_per_step} is the global batch and must be at least the number "
                         f"of processes ({acc.num_processes}): each process trains on whole groups")
    if acc.num_processes > 1 and cfg.generation.backend == "vllm":
        raise ValueError("generation.backend=vllm with several processes is not supported yet (each process would "
                         "need its own engine placement); use one process, or generation.backend=hf")
    if acc.num_processes > 1 and cfg.augment.enabled:
        raise ValueError("augment.enabled with several processes is not supported yet: the difficulty "
                         "scheduler's replay window is per process; train DA on one process")
    if is_zero3(acc) and cfg.loss.beta > 0 and not cfg.lora.enabled:
        raise ValueError("loss.beta > 0 with full fine-tuning under ZeRO-3: the frozen reference copy would be "
                         "partitioned; use LoRA (the reference is the policy without adapters) or beta = 0")
    if shards_optimizer(acc) and cfg.resume_from is not None:
        raise ValueError("resume_from under ZeRO / FSDP is not supported yet (the optimizer state is sharded); "
                         "start from the saved weights with init_from=CHECKPOINT")


def configure_deepspeed(acc: Accelerator, max_grad_norm: float) -> None:
    """DeepSpeed needs a micro-batch size without a dataloader (ours is a list of groups; the value
    only feeds DeepSpeed's throughput log) and does the clipping itself inside `backward`."""
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = acc.state.deepspeed_plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = 1
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = max_grad_norm


def gather_list(acc: Accelerator, items: list[T]) -> list[T]:
    """Every process's `items` (small picklable records), concatenated in process order."""
    if acc.num_processes == 1:
        return list(items)
    return gather_object(list(items))


def global_max(acc: Accelerator, value: int) -> int:
    if acc.num_processes == 1:
        return value
    return int(acc.gather(torch.tensor([value], device=acc.device)).max())


def global_rewards(acc: Accelerator, streams: list[int], rewards: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[int]]:
    """The step's rewards as one [B_all, G, R] tensor in global group order (what a single process
    would stack), and the row of each local group in it. `streams` are the groups' global indices.
    One process: the groups' own order (augmented groups follow their originals)."""
    if acc.num_processes == 1:
        return (torch.stack(rewards) if rewards else None), list(range(len(rewards)))  # [B, G, R]
    rows = sorted(gather_list(acc, [(s, r.cpu()) for s, r in zip(streams, rewards)]), key=lambda row: row[0])
    if not rows:
        return None, []
    index = {s: i for i, (s, _) in enumerate(rows)}
    device = rewards[0].device if rewards else acc.device
    return torch.stack([r for _, r in rows]).to(device), [index[s] for s in streams]  # [B_all, G, R]


def sum_counters(acc: Accelerator, counters: dict[str, int]) -> dict[str, int]:
    """Global counters: every process counts its own events (the main process also holds what was
    counted before this run: data loading, the resumed checkpoint), so the total is the sum."""
    total: dict[str, int] = {}
    for part in gather_list(acc, [counters]):
        for k, v in part.items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items()))


@contextlib.contextmanager
def full_params(acc: Accelerator, model: torch.nn.Module) -> Iterator[None]:
    """Full (unsharded) parameters on every process for the duration, so that forwards inside need
    no collective and each process may run any number of them (generation). Entering and leaving
    are collectives: every process must enter. No-op unless parameters are sharded.

    ZeRO-3: TRL's `unwrap_model_for_generation` (GatheredParameters + removing DeepSpeed's per-module
    fetch/release hooks, which would otherwise re-partition after each module's forward).
    FSDP2: unshard every FSDP module and keep it unsharded after forward (the use the FSDP2 docs give
    for `set_reshard_after_forward(False)`: evals), then reshard. Checked on CPU / gloo with
    `fully_shard` on the tiny model: 3 generations on one process, 1 on the other, no deadlock, same
    tokens. (State dicts stay sharded while unsharded: saving uses `Accelerator.get_state_dict`.)"""
    if is_zero3(acc):
        try:
            from trl.models.utils import unwrap_model_for_generation
        except ImportError as e:
            raise ImportError("generation under DeepSpeed ZeRO-3 uses TRL's parameter gathering: pip install trl") from e
        with unwrap_model_for_generation(model, acc):
            yield
        return
    if acc.distributed_type != DistributedType.FSDP:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]  # same order on every process
    for m in sharded:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        # back to the configured value; FSDP2 keeps the root unsharded after forward (its parameters
        # are needed again at once). accelerate also keeps its [final norm, lm_head] unit unsharded;
        # after the first rollout that unit reshards like the others: one more all-gather of it per
        # step, same results (FSDP2 has no public getter to restore each unit's own value).
        for m in sharded:
            m.reshard()
            m.set_reshard_after_forward(acc.state.fsdp_plugin.reshard_after_forward is not False, recurse=False)
        if sharded:
            sharded[0].set_reshard_after_forward(False, recurse=False)
