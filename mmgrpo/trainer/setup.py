"""Build everything a run needs, once: model (+LoRA, reference), processor and prompt encoder, data,
optimizer and LR schedule, rewards, augmentation scheduler, logger; and restore it on resume."""
from __future__ import annotations

import dataclasses
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import ProcessorMixin

from mmgrpo.config import LoraConfig, ModelConfig, OptimConfig, TrainConfig, to_dict
from mmgrpo.models.backends import BackendSpec, RolloutBackend, make_backend
from mmgrpo.models.families import family_of
from mmgrpo.models.loading import load_model, load_processor
from mmgrpo.models.logprobs import shared_layout
from mmgrpo.models.lora import prepare_policy, trainable_parameters
from mmgrpo.models.reference import Reference, frozen, make_reference
from mmgrpo.models.special import SpecialIds, special_ids
from mmgrpo.processors.sample import Sample
from mmgrpo.models.folders import is_adapter_folder
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer import distributed as dist
from mmgrpo.trainer import resume_checks, runlock
from mmgrpo.trainer.logger import MetricsLogger
from mmgrpo.trainer.summary import RunFacts, starting_point, summary
from mmgrpo.trainer.update import PolicyParts, UpdateSettings


@dataclass
class Run:
    """The live objects of a training run. Plain composition: each phase takes what it needs."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # the policy (possibly wrapped by accelerate)
    processor: ProcessorMixin
    encoder: Any  # mmgrpo.processors.encode.PromptEncoder
    reference: Reference | None  # None when beta == 0
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    rewards: Any  # mmgrpo.trainer.rewards.RewardRunner
    samples: list[Sample]
    eval_samples: list[Sample]
    state: ckpt.TrainerState
    logger: MetricsLogger
    augment: Any | None  # mmgrpo.augment.DifficultyScheduler when cfg.augment.enabled
    special: SpecialIds
    backend: RolloutBackend
    tool_env: Any | None  # mmgrpo.tools.env.ToolEnv when tools.enabled (multi-turn rollouts)
    prompt_cache: OrderedDict = field(default_factory=OrderedDict)  # sample id -> PromptInputs (LRU)
    flat_steps: int = 0  # steps of this process's run in which every group had equal rewards (warned about)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def policy(self) -> torch.nn.Module:
        """The unwrapped policy, for generation and saving."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def parts(self) -> PolicyParts:
        return PolicyParts(self.accelerator, self.model, self.reference, self.optimizer, self.lr_scheduler)

    @property
    def update_settings(self) -> UpdateSettings:
        return UpdateSettings.of(self.cfg, self.special.pad)


def lr_lambda(optim: OptimConfig, max_steps: int):
    """Linear warm-up, then constant or cosine decay to 0 (per optimizer step)."""

    def f(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def build_policy(model_cfg: ModelConfig, lora_cfg: LoraConfig, start_from: Path | None, device,
                 init_from: Path | None = None) -> torch.nn.Module:
    """Policy from the base, or from a checkpoint (`init_from` / resume): a full-weights checkpoint is
    a model folder; an adapter checkpoint is loaded, trainable, onto the weights the run started from
    (`init_from` when that is a full-weights folder, e.g. a full SFT; else the base)."""
    base, adapter = model_cfg.name_or_path, None
    if start_from is not None and is_adapter_folder(start_from):
        adapter = start_from  # keeps training: no new LoRA on top
        if init_from is not None and not is_adapter_folder(init_from):
            base = str(init_from)
        lora_cfg = dataclasses.replace(lora_cfg, enabled=False)
    elif start_from is not None:
        base = str(start_from)
    model = load_model(base, model_cfg.dtype, device, adapter=adapter, trainable=adapter is not None,
                       attn_implementation=model_cfg.attn_implementation, trust_remote_code=model_cfg.trust_remote_code,
                       family=model_cfg.family)
    return prepare_policy(model, model_cfg, lora_cfg)


def run_init(cfg: TrainConfig, resume: Path | None) -> Path | None:
    """The checkpoint the run started from: cfg.init_from, or on resume the one the run recorded
    (check_start has checked that a config's init_from is that one)."""
    init = ckpt.load_trainer_state(resume).config["init_from"] if resume is not None else cfg.init_from
    return Path(init) if init else None


def reference_policy(cfg: TrainConfig, model: torch.nn.Module, resume: Path | None, device) -> Reference | None:
    """pi_ref. LoRA: the policy with adapters disabled, i.e. the base model (an SFT *adapter* given as
    init_from keeps training, so pi_ref is then the pre-SFT base; to anchor the KL at the SFT model,
    merge the SFT adapter with `mmgrpo merge` and use the merged folder as model.name_or_path).
    Full fine-tuning: a frozen copy of the start weights (base or init_from); when resuming, those
    are loaded again (init_from as the run recorded it) rather than copied from the checkpoint."""
    if resume is None or cfg.lora.enabled or cfg.loss.beta == 0:
        return make_reference(model, cfg.loss.beta)
    init = run_init(cfg, resume)
    start = build_policy(cfg.model, cfg.lora, init, device, init_from=init)
    return Reference(model, frozen(start))


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, max_steps: int):
    params = trainable_parameters(model)
    if not params:
        raise ValueError("no trainable parameters: check lora.enabled / model.freeze_vision")
    opt = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    total = max_steps * optim.updates_per_rollout
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, total))


def load_data(cfg: TrainConfig) -> tuple[list[Sample], list[Sample], dict[str, int]]:
    from mmgrpo.processors.formats import load_samples_from_config

    train = load_samples_from_config(cfg.data, split="train")
    held = load_samples_from_config(cfg.data, split="eval") if cfg.data.eval else None
    if not train.samples:
        raise ValueError(f"data.train {cfg.data.train}: no usable samples")
    for split, samples in (("data.train", train.samples), ("data.eval", held.samples if held else [])):
        check_unique_ids(split, samples)
    counters = {"skipped_samples": len(train.skipped) + (len(held.skipped) if held else 0)}
    return train.samples, (held.samples if held else []), counters


def check_start(cfg: TrainConfig, resume: Path | None) -> None:
    """A fresh run must not share output_dir with another run's checkpoint data (pruning would delete
    its own newer-but-lower-numbered checkpoints, and resume=auto would later pick the other run's);
    RL resumes only RL checkpoints (an SFT checkpoint is a starting point: init_from), and only one
    whose state fits its folder and this config (resume_checks)."""
    if resume is None:
        check_fresh(cfg.output_dir, "continue it with resume_from=auto, or choose a new output_dir")
        return
    state = ckpt.load_trainer_state(resume)
    if state.kind != "grpo":
        raise ValueError(f"resume_from={resume} is an `mmgrpo sft` checkpoint: start RL from it with "
                         f"init_from={resume}")
    recorded = state.config.get("init_from")
    if cfg.init_from is not None and (recorded is None or Path(cfg.init_from).resolve() != Path(recorded).resolve()):
        raise ValueError(f"resume from {resume}: init_from={cfg.init_from} in the config, but the run started from "
                         f"{recorded or 'the base model'}; resume with that init_from (or none), or start a new run "
                         "in a new output_dir")
    resume_checks.config_changes(state.config, cfg, resume)
    resume_checks.check_checkpoint(state, resume, cfg)


def check_fresh(output_dir: str, advice: str) -> None:
    """A run that starts at step 0 refuses a folder holding checkpoint data (complete or not)."""
    data = ckpt.run_data(output_dir)
    if data:
        raise ValueError(f"output_dir {output_dir} already holds {ckpt.listing(data)}: {advice}")


def find_resume(cfg: TrainConfig, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from. With resume_from=auto the main process, holding the run lock,
    first finishes any save a kill interrupted (checkpoint.recover); the others wait, then look."""
    if cfg.resume_from == "auto" and accelerator.is_main_process:
        for note in ckpt.recover(cfg.output_dir):
            print(f"mmgrpo train: {note}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return ckpt.resolve_resume(cfg.resume_from, cfg.output_dir)


def restore(cfg: TrainConfig, resume: Path, accelerator: Accelerator, optimizer, lr_sched, augment,
            n_samples: int) -> ckpt.TrainerState:
    """The resumed run's state, each part checked against this run before it is used; settings
    changed on resume (resume_checks.CHANGEABLE) are applied and recorded in the next checkpoint."""
    state = ckpt.load_trainer_state(resume)
    where = resume / ckpt.STATE_FILE
    resume_checks.check_progress(state, n_samples, cfg, where)
    ckpt.load_optimizer_state(resume, optimizer)
    resume_checks.restore_schedule(state, lr_sched, optimizer, cfg, where)
    resume_checks.check_grad_scaler(state, accelerator.scaler is not None, where)
    if accelerator.scaler is not None:  # fp16: continue the loss scale
        accelerator.scaler.load_state_dict(state.grad_scaler)
    if augment is not None:
        try:
            augment.load_state_dict(state.augment)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where}: augment does not fit the difficulty scheduler ({e!r})") from e
    changes = resume_checks.config_changes(state.config, cfg, resume)
    state.config = resume_checks.recorded_config(cfg, state.config)
    for key, (old, new) in changes.items():
        if key != "resume_from" and accelerator.is_main_process:
            print(f"mmgrpo train: resuming {resume}: {key} {old} -> {new} (applied, recorded in its next "
                  "checkpoint)", file=sys.stderr)
    return state


def check_unique_ids(split: str, samples: list[Sample]) -> None:
    """Sample ids key the prompt cache and the augmentation memory: two questions sharing an id (e.g.
    the video id) would be trained on each other's prompt. Refuse, naming both rows."""
    seen: dict[str, Sample] = {}
    for s in samples:
        if s.id in seen:
            raise ValueError(f"{split}: sample id {s.id!r} is used by {seen[s.id].ref} and by {s.ref}; "
                             "give each question its own `id`")
        seen[s.id] = s


def setup(cfg: TrainConfig, accelerator: Accelerator | None = None) -> Run:
    from mmgrpo.processors.cache import MediaCache
    from mmgrpo.processors.encode import PromptEncoder
    from mmgrpo.trainer.reward_terms import reward_functions, reward_terms
    from mmgrpo.trainer.rewards import RewardRunner
    from mmgrpo.trainer.tool_rollout import build_tool_env

    accelerator = accelerator or dist.make_accelerator("fp16" if cfg.model.dtype == "fp16" else "no")
    dist.check_supported(accelerator, cfg)
    torch.manual_seed(cfg.seed)
    lock = runlock.take(accelerator, cfg.output_dir, "mmgrpo train")  # before anything is read or written
    resume = find_resume(cfg, accelerator)
    check_start(cfg, resume)
    init = run_init(cfg, resume)
    start = resume or init
    processor = load_processor(str(start or cfg.model.name_or_path), cfg.model.trust_remote_code)
    model = build_policy(cfg.model, cfg.lora, start, accelerator.device, init_from=init)
    reference = reference_policy(cfg, model, resume, accelerator.device)
    optimizer, lr_sched = build_optimizer(model, cfg.optim, cfg.max_steps)
    dist.configure_deepspeed(accelerator, cfg.optim.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    samples, eval_samples, counters = load_data(cfg)
    state = ckpt.TrainerState(counters=counters, config=to_dict(cfg), kind="grpo")
    augment = None
    if cfg.augment.enabled:
        from mmgrpo.augment import DifficultyScheduler
        from mmgrpo.augment.perturb import check_names

        check_names(cfg.augment.harder)
        augment = DifficultyScheduler(cfg.augment)
    if resume is not None:
        state = restore(cfg, resume, accelerator, optimizer, lr_sched, augment, len(samples))
    if not accelerator.is_main_process:
        # counters are per process and summed when logged / saved; what came before this run (data
        # loading, the resumed checkpoint's totals) is counted once, by the main process
        state.counters = {k: 0 for k in state.counters}
    encoder = PromptEncoder(processor, cfg.vision, MediaCache(cfg.vision.cache_size, cfg.vision.disk_cache))
    terms = reward_terms(cfg)
    rewards = RewardRunner(reward_functions(cfg, accelerator.device), terms.weights[: len(terms.specs)],
                           cfg.reward.on_error, timeout_s=cfg.reward.timeout_s, completions=cfg.reward.completions)
    # the logs are cut back to the step the run starts from; the logger releases the lock when it closes
    logger = MetricsLogger(cfg.output_dir, cfg.report_to, to_dict(cfg), enabled=accelerator.is_main_process,
                           start_step=state.step, lock=lock)
    special = special_ids(model, processor.tokenizer)
    if accelerator.is_main_process:
        announce(cfg, accelerator, model, (resume, init), (samples, eval_samples, counters["skipped_samples"]))
    backend = make_backend(BackendSpec(cfg.generation, processor.tokenizer, special, cfg.forward_mode,
                                       cfg.model.name_or_path, cfg.model.dtype,
                                       cfg.vision.max_prompt_length + cfg.generation.max_new_tokens, cfg.seed))
    tool_env = build_tool_env(cfg, processor) if cfg.tools.enabled else None
    return Run(cfg, accelerator, model, processor, encoder, reference, optimizer, lr_sched, rewards,
               samples, eval_samples, state, logger, augment, special, backend, tool_env)


def announce(cfg: TrainConfig, accelerator: Accelerator, model: torch.nn.Module, start: tuple, data: tuple) -> None:
    """The start-up summary (trainer/summary.py), and how one prompt serves its group."""
    (resume, init), (samples, eval_samples, skipped) = start, data
    lora = f"r={cfg.lora.r}, alpha={cfg.lora.alpha}" if cfg.lora.enabled else None
    if (resume or init) is not None and is_adapter_folder(resume or init):
        lora = "(the checkpoint's adapter, trained on)"
    facts = RunFacts("train", len(samples), skipped, len(eval_samples), cfg.model.name_or_path,
                     starting_point(resume, init), lora, accelerator.num_processes, str(accelerator.device),
                     cfg.output_dir)
    print(summary(facts, model))
    layout = shared_layout(model, training=True) if cfg.forward_mode == "shared" else "repeat rows"
    print(f"  forward    {family_of(model).title}: forward_mode={cfg.forward_mode}, log-prob forward by {layout}")


def save(run: Run) -> Path:
    """Every process takes part (global counters; weights gathered under ZeRO-3 / FSDP), the main
    process writes, and every process waits so no one reads a half-written checkpoint. Returns the
    checkpoint folder on every process (the loop's control flow must not differ between them)."""
    acc = run.accelerator
    run.state.lr_scheduler = run.lr_scheduler.state_dict()
    scaler = run.accelerator.scaler
    run.state.grad_scaler = scaler.state_dict() if scaler is not None else None
    run.state.augment = run.augment.state_dict() if run.augment is not None else None
    state = dataclasses.replace(run.state, counters=dist.sum_counters(acc, run.state.counters))
    # ZeRO / FSDP shard the optimizer state: no process could write all of it (resume is refused there)
    optimizer = None if dist.shards_optimizer(acc) else run.optimizer
    # sharded parameters (ZeRO-3 / FSDP): the full weights, gathered by every process for the main one
    full = acc.get_state_dict(run.model) if dist.shards_params(acc) else None
    path = ckpt.checkpoint_dir(run.cfg.output_dir, run.state.step)
    if acc.is_main_process:
        run.logger.flush()  # the logs cover every step the checkpoint covers, even if killed next
        path = ckpt.save_checkpoint(run.cfg.output_dir, state, run.policy, run.processor, optimizer,
                                    run.cfg.save_total_limit, state_dict=full)
    acc.wait_for_everyone()
    return path
