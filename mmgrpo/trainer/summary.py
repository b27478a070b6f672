"""The start-up summary `mmgrpo train` and `mmgrpo sft` print before the first step: what was
loaded, from where the weights start, what trains, on how many processes, where the run writes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class RunFacts:
    verb: str  # "train" | "sft"
    samples: int
    skipped: int
    held_out: int
    model: str  # model.name_or_path
    start: str  # where the weights come from, in words
    lora: str | None  # "r=16, alpha=32" or None for full fine-tuning
    processes: int
    device: str
    output_dir: str


def starting_point(resume: Path | None, init: Path | None) -> str:
    if resume is not None:
        return f"resuming {resume}" + (f" (the run started from {init})" if init is not None else "")
    return f"init_from={init}" if init is not None else "the base model's weights"


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def summary(facts: RunFacts, model: torch.nn.Module) -> str:
    trainable, total = parameter_counts(model)
    skipped = f" ({facts.skipped} bad rows skipped, each named above)" if facts.skipped else ""
    held = f", {facts.held_out} held-out" if facts.held_out else ""
    how = f"LoRA {facts.lora}" if facts.lora else "full fine-tuning"
    share = 100.0 * trainable / max(total, 1)
    return "\n".join([
        f"[mmgrpo {facts.verb}] {facts.samples} training samples{skipped}{held}",
        f"  model      {facts.model}, starting from {facts.start}",
        f"  training   {how}: {_count(trainable)} trainable of {_count(total)} parameters ({share:.2f}%)",
        f"  processes  {facts.processes} ({facts.device})",
        f"  output     {os.path.abspath(facts.output_dir)}",
    ])
