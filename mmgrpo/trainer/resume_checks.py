"""What a resume may trust: trainer_state.json checked against its checkpoint, the training data and
the config before a number of it is used (`checkpoint.load_trainer_state` checks types and ranges).

A resume continues the run as it was trained. The settings in CHANGEABLE steer how long it goes on
and what it writes, not what it computes: a new value is applied (the trainer reads them from the
config at every step) and recorded in the next checkpoint's trainer_state.json. Any other difference
between the config and the run's recorded one is refused, naming the key and both values; a run with
other settings starts from the checkpoint instead (`init_from=CHECKPOINT`, new output_dir).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mmgrpo.config import TrainConfig, to_dict
from mmgrpo.models.folders import checkpoint_step, is_adapter_folder
from mmgrpo.trainer import checkpoint as ckpt

# A section name covers its keys (eval.every, eval.limit, ...). max_steps stretches a cosine LR
# schedule to the new length from the resumed step on. The vision caches only hold results.
CHANGEABLE = ("max_steps", "save_every", "save_total_limit", "log_every", "sample_every", "eval", "report_to",
              "progress_bar", "resume_from", "output_dir", "vision.cache_size", "vision.prompt_cache_size",
              "vision.disk_cache",
              # how the LLM judge is reached, not what it grades with (reward.judge.model, template, ... are fixed)
              "reward.judge.base_url", "reward.judge.api_key", "reward.judge.api_key_env", "reward.judge.timeout_s",
              "reward.judge.retries", "reward.judge.batch_size", "reward.judge.cache_size")
# Not compared here: a resume uses the run's recorded init_from (setup.run_init; a config's own must
# name the same checkpoint, setup.check_start), checked against the adapter below.
RUN_ONLY = ("init_from",)
_UNSET = "<unset>"


def changeable(key: str) -> bool:
    return any(key == c or key.startswith(c + ".") for c in CHANGEABLE)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(recorded: dict, cfg: TrainConfig, resume: Path) -> dict[str, tuple[Any, Any]]:
    """Settings whose value differs from the run's: key -> (run's, config's). Refuses every one
    outside CHANGEABLE, all named in one message."""
    now = flatten(json.loads(json.dumps(to_dict(cfg))))  # tuples as the JSON lists they were saved as
    then = flatten(recorded)
    changed = {}
    for key in sorted(now.keys() | then.keys()):
        old, new = then.get(key, _UNSET), now.get(key, _UNSET)  # a key only one side has: a difference
        if key not in RUN_ONLY and old != new:
            changed[key] = (old, new)
    refused = [f"{k}: {_show(new)} in the config, {_show(old)} in the run" for k, (old, new) in changed.items()
               if not changeable(k)]
    if refused:
        raise ValueError(f"resume from {resume}: {'; '.join(refused)}. A resume continues the run as it was "
                         f"trained: only {', '.join(CHANGEABLE)} may change. Resume with the run's values, or "
                         f"start a new run from this checkpoint: init_from={resume} output_dir=NEW_DIR")
    return changed


def _show(value: Any) -> str:
    return value if value is _UNSET else json.dumps(value)


def recorded_config(cfg: TrainConfig, recorded: dict) -> dict:
    """The config the resumed run trains with, as its checkpoints record it (init_from: the run's)."""
    return {**to_dict(cfg), **{k: recorded[k] for k in RUN_ONLY}}


def check_checkpoint(state: ckpt.TrainerState, resume: Path, cfg: TrainConfig) -> None:
    """The state's step against the folder's name, and its parts against the config."""
    where = resume / ckpt.STATE_FILE
    step = checkpoint_step(resume)
    if step is not None and state.step != step:
        raise ValueError(f"{where}: step is {state.step} but the folder is {resume.name}")
    if (state.augment is not None) != cfg.augment.enabled:
        raise ValueError(f"{where}: augment is {'set' if state.augment is not None else 'null'} but the run has "
                         f"augment.enabled={cfg.augment.enabled}")
    if "init_from" not in state.config:
        raise ValueError(f"{where}: config.init_from is missing (the weights the run started from)")
    init = state.config["init_from"]
    if not isinstance(init, (str, type(None))):
        raise ValueError(f"{where}: config.init_from is {init!r}, expected a path or null")
    check_weights(resume, cfg, init, where)


def check_weights(resume: Path, cfg: TrainConfig, init: str | None, where: Path) -> None:
    """The kind of weights on disk and, for an adapter, the base it was trained on: PEFT records it in
    adapter_config.json; the resume loads it onto init_from (a full-weights folder) or the base model."""
    init_adapter = init is not None and is_adapter_folder(init)
    adapter = is_adapter_folder(resume)
    if adapter != (cfg.lora.enabled or init_adapter):
        held = "a LoRA adapter" if adapter else "full weights"
        raise ValueError(f"{resume} holds {held} but the run has lora.enabled={cfg.lora.enabled}, init_from={init}")
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    if not (resume / weights).is_file() and not (resume / f"{weights}.index.json").is_file():
        raise FileNotFoundError(f"{resume}: {weights} missing; not a complete checkpoint")
    if not adapter:
        return
    adapter_cfg = json.loads((resume / "adapter_config.json").read_text())
    # absent keys read as None: refused below like any other mismatch
    trained_on, r, alpha = (adapter_cfg.get(k) for k in ("base_model_name_or_path", "r", "lora_alpha"))
    base = init if init is not None and not init_adapter else cfg.model.name_or_path
    if not isinstance(trained_on, str) or not same_location(trained_on, base):
        raise ValueError(f"{where}: init_from={init} puts the adapter on {base}, but {resume}/adapter_config.json "
                         f"says it was trained on {trained_on}")
    if not init_adapter and (r, alpha) != (cfg.lora.r, cfg.lora.alpha):
        raise ValueError(f"{resume}/adapter_config.json: r={r}, lora_alpha={alpha} but the run has "
                         f"lora.r={cfg.lora.r}, lora.alpha={cfg.lora.alpha}")


def same_location(a: str, b: str) -> bool:
    """Two spellings of one model: the same folder, or the same hub id."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def check_progress(state: ckpt.TrainerState, n_samples: int, cfg: TrainConfig, where: Path) -> None:
    """Every step takes prompts_per_step prompts in order, so the data position is a function of the
    step: a mismatch means the data changed since the checkpoint (or the file was edited). With DAPO's
    dynamic sampling a step takes 1 to max_rounds rounds of prompts_per_step prompts."""
    P, rounds = cfg.prompts_per_step, cfg.dynamic_sampling.max_rounds if cfg.dynamic_sampling.enabled else 1
    drawn = state.epoch * n_samples + state.position  # prompts taken so far
    if drawn % P == 0 and state.step * P <= drawn <= state.step * P * rounds and state.position < n_samples:
        return
    epoch, position = divmod(state.step * P, n_samples)
    expected = f"epoch {epoch}, position {position}" if rounds == 1 else \
        f"{state.step * P} to {state.step * P * rounds} prompts taken, in whole rounds of {P}"
    raise ValueError(f"{where}: epoch {state.epoch}, position {state.position} do not follow from step "
                     f"{state.step} x prompts_per_step {P} over {n_samples} training samples "
                     f"({expected}): did data.train change since this checkpoint?")


def restore_schedule(state: ckpt.TrainerState, sched: torch.optim.lr_scheduler.LambdaLR,
                     optimizer: torch.optim.Optimizer, cfg: TrainConfig, where: Path) -> None:
    """The LR schedule's position: only `base_lrs` (checked against optim.lr) and `last_epoch` (the
    number of optimizer steps, checked) are read from the file; the rest of the scheduler's state and
    the learning rate of the next update are computed from this config's schedule (max_steps may have
    changed), not taken from lr_scheduler or optimizer.pt."""
    saved = state.lr_scheduler
    for key in ("base_lrs", "last_epoch"):
        if key not in saved:
            raise ValueError(f"{where}: lr_scheduler.{key} is missing")
    groups = optimizer.param_groups
    if saved["base_lrs"] != [cfg.optim.lr] * len(groups):
        raise ValueError(f"{where}: lr_scheduler.base_lrs is {saved['base_lrs']} but the run has optim.lr="
                         f"{cfg.optim.lr} ({len(groups)} parameter group(s))")
    most = state.step * cfg.optim.updates_per_rollout
    steps = saved["last_epoch"]
    if not ckpt.has_type(steps, int) or not 0 <= steps <= most:
        raise ValueError(f"{where}: lr_scheduler.last_epoch is {steps!r}, must be an integer in [0, {most}] (one per "
                         f"optimizer step: at most step {state.step} x optim.updates_per_rollout)")
    for g in groups:
        if (tuple(g["betas"]), g["weight_decay"]) != (tuple(cfg.optim.betas), cfg.optim.weight_decay):
            raise ValueError(f"{where.parent}/optimizer.pt: betas {g['betas']}, weight_decay {g['weight_decay']} but "
                             f"the run has optim.betas={cfg.optim.betas}, optim.weight_decay={cfg.optim.weight_decay}")
    lrs = [base_lr * f(steps) for base_lr, f in zip(saved["base_lrs"], sched.lr_lambdas)]  # as LambdaLR.get_lr
    # a scheduler that has taken `steps` steps; _last_lr is what get_last_lr() reports (the logged lr)
    sched.load_state_dict({**sched.state_dict(), "base_lrs": saved["base_lrs"], "last_epoch": steps,
                           "_step_count": steps + 1, "_last_lr": lrs})
    for g, lr in zip(groups, lrs):
        g["lr"] = lr


def check_grad_scaler(state: ckpt.TrainerState, has_scaler: bool, where: Path) -> None:
    """fp16 runs save the loss scale; others must not carry one (it would be ignored)."""
    if (state.grad_scaler is not None) != has_scaler:
        raise ValueError(f"{where}: grad_scaler is {'set' if state.grad_scaler is not None else 'null'} but this run "
                         f"{'uses' if has_scaler else 'has no'} an fp16 loss scaler (model.dtype)")
    if not has_scaler:
        return
    scale = state.grad_scaler.get("scale")  # absent: None, refused below
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{where}: grad_scaler.scale is {scale!r}, must be a finite number > 0")
