"""Per-step metrics to `metrics.jsonl`, TensorBoard and (when asked) Weights & Biases; sample
completions to `samples.jsonl`."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

KNOWN_SINKS = ("jsonl", "tensorboard", "wandb")


class MetricsLogger:
    def __init__(self, output_dir: str | Path, report_to: list[str], config: dict[str, Any], enabled: bool = True):
        unknown = sorted(set(report_to) - set(KNOWN_SINKS))
        if unknown:
            raise ValueError(f"report_to: unknown sink {unknown[0]!r}; known: {list(KNOWN_SINKS)}")
        self.enabled = enabled  # False on non-main processes
        self.dir = Path(output_dir)
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.dir / "metrics.jsonl", "a") if "jsonl" in report_to else None
        self.samples = open(self.dir / "samples.jsonl", "a")
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        if "wandb" in report_to:
            import wandb  # optional extra: pip install mmgrpo[wandb]

            self.wandb = wandb.init(config=config, dir=str(self.dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()}
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for r in records:
            self.samples.write(json.dumps({"step": step, **r}) + "\n")
        self.samples.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.jsonl is not None:
            self.jsonl.close()
        self.samples.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
