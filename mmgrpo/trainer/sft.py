"""SFT warm-up: cross-entropy on the assistant's reference answer only (prompt tokens, vision
included, are context, not targets). Writes a checkpoint `mmgrpo train init_from=...` starts from:
SFT then GRPO, as in the DeepSeek pipeline (DeepSeekMath §4, DeepSeek-R1 cold start)."""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from mmgrpo.config import SFTConfig, to_dict
from mmgrpo.models.loading import load_processor
from mmgrpo.processors.sample import PromptInputs, Sample
from mmgrpo.trainer import checkpoint as ckpt
from mmgrpo.trainer import runlock
from mmgrpo.trainer.logger import MetricsLogger
from mmgrpo.models.logprobs import batch_logprobs
from mmgrpo.models.special import special_ids
from mmgrpo.trainer.phases import epoch_order
from mmgrpo.trainer.setup import build_optimizer, build_policy, check_fresh
from mmgrpo.trainer.summary import RunFacts, summary
from mmgrpo.trainer.update import NonFiniteGradientError, clipped_step


def target_ids(processor, sample: Sample, template: str) -> torch.Tensor:
    """The assistant turn's tokens: template filled with the reference answer (and any other column
    of the row it names, e.g. a reference reasoning trace `{trace}`), then <|im_end|>."""
    if sample.answer is None:
        raise ValueError(f"sample {sample.ref}: SFT needs a reference answer")
    try:
        text = template.format(**{**sample.columns, "answer": sample.answer}) + "<|im_end|>"
    except KeyError as e:
        raise ValueError(f"sample {sample.ref}: target_template names {e}, which the row does not have") from None
    return torch.tensor([processor.tokenizer(text, add_special_tokens=False)["input_ids"]])  # [1, C]


def sft_loss(model: torch.nn.Module, batch: list[tuple[PromptInputs, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, int]:
    """Mean token negative log-likelihood over the batch's target tokens, the whole batch in one
    forward of the log-prob function the RL trainer uses (each example a group of one), so both see
    identical inputs."""
    prompts, ids = [p for p, _ in batch], [t for _, t in batch]  # B x [1, C_b]
    masks = [torch.ones_like(t) for t in ids]  # B x [1, C_b]
    logp = batch_logprobs(model, prompts, ids, masks, "repeat", 1.0, pad_id)  # B x [1, C_b]
    count = sum(int(m.sum()) for m in masks)
    return -sum(lp.sum() for lp in logp) / max(count, 1), count


def sft(cfg: SFTConfig) -> Path:
    from mmgrpo.processors.cache import MediaCache
    from mmgrpo.processors.encode import PromptEncoder
    from mmgrpo.processors.formats import load_samples_from_config

    acc = Accelerator()
    lock = runlock.take(acc, cfg.output_dir, "mmgrpo sft")  # before anything is read or written
    # SFT does not resume: a second run into the folder would mix two runs' checkpoints and metrics
    check_fresh(cfg.output_dir, "`mmgrpo sft` starts a new run (it does not resume); choose a new output_dir")
    torch.manual_seed(cfg.seed)
    processor = load_processor(cfg.model.name_or_path, cfg.model.trust_remote_code)
    model = build_policy(cfg.model, cfg.lora, None, acc.device)
    optimizer, sched = build_optimizer(model, cfg.optim, cfg.max_steps)
    model, optimizer = acc.prepare(model, optimizer)
    loaded = load_samples_from_config(cfg.data, split="train")
    samples = loaded.samples
    if not samples:
        raise ValueError(f"data.train {cfg.data.train}: no usable samples")
    if acc.is_main_process:
        print(summary(_facts(cfg, acc, len(samples), len(loaded.skipped)), model))
    encoder = PromptEncoder(processor, cfg.vision, MediaCache(cfg.vision.cache_size, cfg.vision.disk_cache))
    logger = MetricsLogger(cfg.output_dir, cfg.report_to, to_dict(cfg), enabled=acc.is_main_process, lock=lock)
    state = ckpt.TrainerState(config=to_dict(cfg), kind="sft")
    pad_id = special_ids(model, processor.tokenizer).pad
    model.train()
    bar = tqdm(range(cfg.max_steps), disable=not (cfg.progress_bar and acc.is_main_process), desc="sft")
    for step in bar:
        batch = []
        for s in next_batch(state, samples, cfg.batch_size, cfg.seed, cfg.data.shuffle):
            batch.append((encoder.encode(s).to(acc.device), target_ids(processor, s, cfg.target_template).to(acc.device)))
        loss, tokens = sft_loss(model, batch, pad_id)
        acc.backward(loss)
        try:
            grad_norm = clipped_step(acc, model, optimizer, sched, cfg.optim.max_grad_norm)
        except NonFiniteGradientError as e:
            raise NonFiniteGradientError(f"sft step {step + 1}: {e}") from None
        state.step = step + 1
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if state.step % cfg.log_every == 0:
            logger.log(state.step, {"sft/loss": float(loss.detach()), "grad_norm": float(grad_norm), "tokens": tokens})
        if cfg.save_every and state.step % cfg.save_every == 0 and state.step < cfg.max_steps:
            _save(cfg, state, acc, model, processor, optimizer, sched)
    path = _save(cfg, state, acc, model, processor, optimizer, sched)
    logger.close()  # releases the run lock: after the last write
    return path


def _facts(cfg: SFTConfig, acc: Accelerator, samples: int, skipped: int) -> RunFacts:
    lora = f"r={cfg.lora.r}, alpha={cfg.lora.alpha}" if cfg.lora.enabled else None
    return RunFacts("sft", samples, skipped, 0, cfg.model.name_or_path, "the base model's weights", lora,
                    acc.num_processes, str(acc.device), cfg.output_dir)


def next_batch(state: ckpt.TrainerState, samples: list[Sample], size: int, seed: int, shuffle: bool) -> list[Sample]:
    out = []
    while len(out) < size:
        order = epoch_order(len(samples), seed, state.epoch, shuffle)
        take = order[state.position : state.position + size - len(out)]
        out += [samples[i] for i in take]
        state.position += len(take)
        if state.position >= len(samples):
            state.epoch, state.position = state.epoch + 1, 0
    return out


def _save(cfg, state, acc, model, processor, optimizer, sched) -> Path:
    state.lr_scheduler = sched.state_dict()
    path = ckpt.checkpoint_dir(cfg.output_dir, state.step)
    if acc.is_main_process:
        path = ckpt.save_checkpoint(cfg.output_dir, state, acc.unwrap_model(model), processor, optimizer)
    acc.wait_for_everyone()
    return path
