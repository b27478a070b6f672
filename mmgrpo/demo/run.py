"""`mmgrpo demo [--out DIR] [model.family=NAME] [key=value ...]`: the whole pipeline offline on the
CPU, in minutes.

tiny model of the family (default Qwen2.5-VL) -> synthetic video QA (colour of a moving square) ->
SFT warm-up on the answer *format* (random labels, so it cannot teach the task) -> evaluate ->
Reg-GRPO -> evaluate again, and on the same questions with every frame replaced by noise (must fall
to chance: the model uses the video).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from mmgrpo.config import (
    DataConfig, EvalConfig, LoraConfig, ModelConfig, OptimConfig, RewardConfig, SFTConfig, TrainConfig, VisionConfig,
    load_config,
)
from mmgrpo.demo.task import SUFFIX, TaskSpec, make_task
from mmgrpo.models.tiny import DEFAULT_FAMILY, TinySpec, save_tiny
from mmgrpo.parsers import demo_parser

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def demo_vision() -> VisionConfig:
    # 8 frames of 56x56: 4 temporal x 2x2 merged patches = 16 video tokens per clip (a 32-pixel grid
    # resizes the frames to 64x64, 2x2 merged patches again: the budget admits both)
    return VisionConfig(nframes=8, min_frames=2, max_frames=8, min_pixels=28 * 28, max_pixels=64 * 64,
                        max_prompt_length=512)


def sft_config(base: Path, data: Path, out: Path, steps: int, family: str) -> SFTConfig:
    return SFTConfig(
        model=ModelConfig(name_or_path=str(base), family=family, dtype="fp32", freeze_vision=False),
        lora=LoraConfig(enabled=False),  # format SFT: full fine-tuning, as the demo's RL run
        vision=demo_vision(),
        data=DataConfig(train=(str(data),), prompt_suffix=SUFFIX),
        optim=OptimConfig(lr=1e-3, max_grad_norm=1.0),
        output_dir=str(out), max_steps=steps, batch_size=8, progress_bar=False,
    )


def demo_family(overrides: list[str]) -> str:
    """The family the demo builds: the overrides' model.family, Qwen2.5-VL when it is auto."""
    family = load_config(TrainConfig, DEMO_CONFIG, overrides).model.family
    return DEFAULT_FAMILY if family == "auto" else family


def rl_config(start: Path, data: Path, heldout: Path, out: Path, overrides: list[str]) -> TrainConfig:
    """The demo's RL run: `configs/demo.yaml` (shipped with the package) plus paths, plus overrides."""
    cfg = load_config(TrainConfig, DEMO_CONFIG, [
        f"model.name_or_path={start}", f"init_from={start}", f"data.train=[{data}]", f"data.eval=[{heldout}]",
        f"output_dir={out}", *overrides,
    ])
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompt_suffix=SUFFIX))


def accuracy(model_dir: Path, data: Path, vision: VisionConfig) -> float:
    """Greedy held-out accuracy through the evaluator (`mmgrpo eval`'s code path); `model_dir` is a
    model folder or a checkpoint (full weights or a LoRA adapter on its recorded base)."""
    from mmgrpo.eval.bench import load_eval_data
    from mmgrpo.eval.runner import evaluate
    from mmgrpo.models.infer import load_for_inference

    loaded = load_for_inference(str(model_dir), None, "fp32", "cpu")
    samples = load_eval_data([str(data)], prompt_suffix=SUFFIX, strict=True)
    result = evaluate(loaded.model.eval(), loaded.processor, samples, EvalConfig(batch_size=16, max_new_tokens=8),
                      vision, progress=False, numeric_tolerance=RewardConfig().numeric_tolerance)
    return result.metrics.accuracy


def clear_previous(out: Path) -> None:
    """The demo owns its folder: a second `mmgrpo demo` starts afresh instead of mixing runs."""
    import shutil

    stale = [p for p in out.glob("checkpoint-*")] + [out / n for n in ("base-model", "sft", "tensorboard", "merged")]
    stale += [out / n for n in ("metrics.jsonl", "samples.jsonl", "summary.json", "report.md", "reward_curve.png")]
    stale = [p for p in stale if p.exists()]
    if stale:
        print(f"[demo] removing the previous demo run in {out}")
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def main(argv: list[str] | None = None) -> int:
    args = demo_parser(__doc__).parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    clear_previous(out)
    family = demo_family(args.overrides)
    base = save_tiny(out / "base-model", TinySpec(seed=args.seed), family)
    files = make_task(out / "data", TaskSpec(seed=args.seed))
    print(f"[demo] tiny {family} model -> {base}; task -> {out / 'data'}")
    from mmgrpo.trainer.sft import sft

    sft_ckpt = sft(sft_config(base, files.sft_format, out / "sft", args.sft_steps, family))
    acc_sft = accuracy(sft_ckpt, files.heldout, demo_vision())
    print(f"[demo] after SFT (format only): held-out accuracy {acc_sft:.3f}")
    from mmgrpo.trainer.loop import train

    cfg = rl_config(sft_ckpt, files.train, files.heldout, out, [f"seed={args.seed}", *args.overrides])
    final = train(cfg)
    acc_rl = accuracy(final, files.heldout, cfg.vision)
    acc_noise = accuracy(final, files.heldout_noise, cfg.vision)
    seconds = time.perf_counter() - t0
    summary = {
        "accuracy_sft": acc_sft, "accuracy_rl": acc_rl, "accuracy_rl_noise_video": acc_noise, "chance": 0.25,
        "steps": cfg.max_steps, "seconds": round(seconds, 1), "loss": cfg.loss.objective, "preset": cfg.loss.preset,
        "augment": cfg.augment.enabled, "family": family, "final_checkpoint": str(final),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from mmgrpo.demo.report import write_report

    write_report(out, summary)
    print(json.dumps(summary, indent=2))
    return 0
