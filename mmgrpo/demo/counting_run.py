"""Model-side pieces of the counting task (mmgrpo/demo/counting.py): its vision budget, the SFT
warm-up on reference traces, the RL config, and held-out accuracy per stratum."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from mmgrpo.config import (
    DataConfig, EvalConfig, LoraConfig, ModelConfig, OptimConfig, RewardConfig, SFTConfig, TrainConfig, VisionConfig,
    load_config,
)
from mmgrpo.demo.counting import FRAMES_PER_SCENE, OPTIONS, SUFFIX, CountingSpec
COUNTING_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "counting.yaml"
# the reference trace is 17 tokens (+ <|im_end|>); a little room for a longer wrong one (as the YAML)
MAX_NEW_TOKENS = 24


def counting_vision(spec: CountingSpec) -> VisionConfig:
    # every frame is kept (scenes x 2 frames of 56x56): scenes temporal patches x 2x2 merged tokens
    frames = spec.scenes * FRAMES_PER_SCENE
    return VisionConfig(nframes=frames, min_frames=2, max_frames=frames, min_pixels=28 * 28, max_pixels=64 * 64,
                        max_prompt_length=512)


def trace_sft_config(base: Path, data: Path, out: Path, steps: int, spec: CountingSpec, lr: float = 1e-3,
                     seed: int = 0) -> SFTConfig:
    """SFT on the rows' reference traces (`{trace}` column), full fine-tuning as the demo."""
    return SFTConfig(
        model=ModelConfig(name_or_path=str(base), family="qwen2_5_vl", dtype="fp32", freeze_vision=False),
        lora=LoraConfig(enabled=False),
        vision=counting_vision(spec),
        data=DataConfig(train=(str(data),), prompt_suffix=SUFFIX),
        optim=OptimConfig(lr=lr, max_grad_norm=1.0),
        output_dir=str(out), max_steps=steps, batch_size=8, progress_bar=False, seed=seed,
        target_template="{trace}", save_every=0,
    )


def counting_rl_config(start: Path, data: Path, heldout: Path, out: Path, spec: CountingSpec,
                       overrides: list[str]) -> TrainConfig:
    """configs/counting.yaml plus paths, this spec's frame count and the overrides (a method's preset)."""
    v = counting_vision(spec)
    cfg = load_config(TrainConfig, COUNTING_CONFIG, [
        f"model.name_or_path={start}", f"init_from={start}", f"data.train=[{data}]", f"data.eval=[{heldout}]",
        f"output_dir={out}", f"vision.nframes={v.nframes}", f"vision.max_frames={v.max_frames}", *overrides,
    ])
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompt_suffix=SUFFIX))


_COUNT = re.compile(r"<think>\s*" + r"\s+".join(rf"{c}\s+(\d+)" for c in OPTIONS) + r"\s*</think>")


def trace_counts(text: str) -> list[int] | None:
    """The four counts a completion's trace states, None when it does not follow the trace's form."""
    m = _COUNT.search(text)
    return [int(g) for g in m.groups()] if m else None


def heldout_scores(model_dir: Path, data: Path, spec: CountingSpec) -> dict[str, float]:
    """Greedy held-out accuracy per stratum (through `mmgrpo eval`'s code path), and the share of
    completions whose trace states every count right (did the model count, or guess?)."""
    from mmgrpo.eval.bench import load_eval_data
    from mmgrpo.eval.runner import evaluate
    from mmgrpo.models.loading import load_model, load_processor

    model = load_model(model_dir, "fp32", "cpu").eval()
    samples = load_eval_data([str(data)], prompt_suffix=SUFFIX, strict=True)
    result = evaluate(model, load_processor(str(model_dir)), samples,
                      EvalConfig(batch_size=16, max_new_tokens=MAX_NEW_TOKENS), counting_vision(spec),
                      progress=False, numeric_tolerance=RewardConfig().numeric_tolerance)
    counts = {r["id"]: r["counts"] for r in map(json.loads, data.read_text().splitlines())}
    exact = [trace_counts(r.raw_outputs[0]) == counts[r.id] for r in result.records]
    out = {"accuracy": result.metrics.accuracy, "trace_exact": sum(exact) / len(exact)}
    out.update({k: g.accuracy for k, g in result.metrics.per_task.items()})
    return out
