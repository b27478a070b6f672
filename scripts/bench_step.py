"""Time a full GRPO training step in `repeat` mode (each prompt repeated G times, as other trainers
do) and in `shared` mode (each prompt encoded once per group, the batched shared-prefix path).

A step is what the trainer does, through the trainer's own functions: rollout (the HF rollout
backend), then `trainer.update.policy_update` (reference log-probs, policy forward + backward with the
GRPO loss and its KL term, gradient clipping, an AdamW step). Same model, prompts and seeds in both modes. Each (shape, mode) runs in a fresh
subprocess so its peak memory is its own. Prompts are encoded before timing (the trainer caches
encoded prompts; encoding is the same in both modes).

    python scripts/bench_step.py                      # CPU, tiny model, ~4 minutes on 2 cores
    python scripts/bench_step.py --device cuda --preset qwen2_5_vl_3b
    python scripts/bench_step.py --families all --shapes a --out-json docs/bench_step_families.json \
        --out-md docs/bench_step_families.md         # the video shape on the tiny model of every family
    python scripts/bench_step.py --backend vllm      # rollout time, HF vs vLLM backend (scripts/bench_vllm.py)

Writes docs/bench_step.json and docs/bench_step.md (with --out-json / --out-md elsewhere). With
several families (`--families`), the tiny preset runs each family's tiny model (models.tiny) at the
same sizes and the report adds one row per family; frame sides are given on a 28-pixel grid and
scaled to the family's (32 pixels for Qwen3-VL / Qwen3.5), so every family sees the same tokens.
Memory on CPU: peak RSS of the child process during the steps (the kernel's high-water mark is
reset through /proc/self/clear_refs just before the first step, then read with getrusage), minus
the RSS at that point (model, optimizer, prompts loaded). On CUDA: torch's peak allocated memory
during the steps minus the memory allocated before them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmgrpo.config import GenerationConfig, LoraConfig, LossConfig, ModelConfig, OptimConfig, VisionConfig
from mmgrpo.models.backends import HFBackend
from mmgrpo.models.families import FAMILIES
from mmgrpo.models.logprobs import shared_layout
from mmgrpo.models.generate import Rollout, Sampling
from mmgrpo.models.lora import prepare_policy, trainable_parameters
from mmgrpo.models.reference import make_reference
from mmgrpo.models.special import special_ids
from mmgrpo.processors.budget import Grid
from mmgrpo.processors.encode import LoadedMedia, PromptEncoder, count_tokens
from mmgrpo.processors.sample import Media, PromptInputs, Sample
from mmgrpo.trainer.records import RolloutGroup, ScoredStep
from mmgrpo.trainer.update import PolicyParts, UpdateSettings, policy_update

MODES = ("repeat", "shared")
FAMILIES_MODEL = ("the tiny model of each family (models.tiny, at the tiny preset's sizes: text hidden 256, 4 layers, "
                  "4 heads / 2 KV heads, MLP 1024; vision hidden 128, depth 2; Qwen3.5: 3 linear-attention layers "
                  "+ 1 full-attention layer; MoE: 4 experts, 2 active), fp32, full fine-tuning with the vision tower "
                  "frozen, reference = frozen copy")
QUESTION = (
    "Which colour is the square that moves across the {kind}? Options: A. red B. green C. blue D. yellow. "
    "Think step by step, then give the letter in <answer></answer> tags."
)


@dataclass
class Shape:
    key: str
    kind: str  # "video" | "image"
    frames: int  # 1 for an image
    size: int  # square frames, pixels on a 28-pixel grid (a multiple of 28; scaled to the model's grid)
    max_new_tokens: int


@dataclass
class Preset:
    name: str
    dtype: str  # ModelConfig.dtype
    lora: bool  # LoRA (reference = adapters disabled) or full fine-tuning (reference = frozen copy)
    gradient_checkpointing: bool
    shapes: dict[str, Shape]
    description: str


PRESETS = {
    # hidden 256, 4 layers: small enough for 2 CPU cores, with the prompt dominating as in video QA
    "tiny": Preset("tiny", "fp32", lora=False, gradient_checkpointing=False, shapes={
        "a": Shape("a", "video", 16, 168, 16),  # 8 x 6 x 6 = 288 video tokens
        "b": Shape("b", "image", 1, 224, 128),  # 8 x 8 = 64 image tokens
    }, description="tiny Qwen2.5-VL (text hidden 256, 4 layers, 4 heads / 2 KV heads, MLP 1024; vision hidden 128, "
                   "depth 2), fp32, full fine-tuning with the vision tower frozen, reference = frozen copy"),
    "qwen2_5_vl_3b": Preset("qwen2_5_vl_3b", "bf16", lora=True, gradient_checkpointing=True, shapes={
        "a": Shape("a", "video", 16, 448, 16),  # 8 x 16 x 16 = 2048 video tokens
        "b": Shape("b", "image", 1, 448, 128),  # 16 x 16 = 256 image tokens
    }, description="random Qwen2.5-VL-3B architecture (3.75 B parameters), bf16, LoRA r=16 on the language model "
                   "with the vision tower frozen and gradient checkpointing, reference = adapters disabled"),
}


def build_model(preset: str, family: str = "qwen2_5_vl"):
    """(model, processor), random weights, seeded. The processor is the tiny one: its tokenizer's
    special-token ids are written into the model config; only the vocabulary differs from Qwen's."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mmgrpo.models.tiny import TinySpec, build_processor, build_tiny

    if preset == "tiny":
        return build_tiny(TinySpec(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=1024, vision_hidden=128,
                                   vision_depth=2, vision_heads=4, max_pixels=448 * 448), family)
    if family != "qwen2_5_vl":
        raise SystemExit(f"--preset {preset} is a Qwen2.5-VL architecture; other families run with --preset tiny")
    processor = build_processor(TinySpec(max_pixels=448 * 448))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_3b_config(processor.tokenizer)).eval()
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return model, processor


def qwen2_5_vl_3b_config(tok):
    """Qwen2.5-VL-3B-Instruct's architecture (its public config.json), special ids from `tok`."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                                                    "<|vision_start|>", "<|vision_end|>")}
    text = dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2, hidden_act="silu",
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def make_prompts(processor, shape: Shape, n: int, seed: int) -> list[PromptInputs]:
    """`n` synthetic prompts: random frames at the shape's size, encoded by the trainer's encoder."""
    side = shape.size // 28 * Grid.of(processor).factor  # the shape's tokens on this model's grid
    encoder = PromptEncoder(processor, VisionConfig(max_pixels=side**2, max_prompt_length=16384), cache=None)
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        content = [{"type": shape.kind}, {"type": "text", "text": QUESTION.format(kind=shape.kind)}]
        sample = Sample(id=f"{shape.key}{i}", prompt=[{"role": "user", "content": content}],
                        media=[Media(shape.kind, f"synthetic-{i}")], answer="A", problem_type="multiple_choice")
        frames = torch.from_numpy(rng.integers(0, 256, (shape.frames, 3, side, side), dtype=np.uint8))
        media = LoadedMedia(shape.kind, frames, fps=2.0 if shape.kind == "video" else 0.0)
        prompts.append(encoder.build(sample, [media]))
    return prompts


def setup(preset: Preset, device: torch.device, family: str = "qwen2_5_vl"):
    """(the trainer's policy parts for the benchmark model: LoRA or full, reference, AdamW; processor)."""
    from accelerate import Accelerator

    model, processor = build_model(preset.name, family)
    model_cfg = ModelConfig(dtype=preset.dtype, gradient_checkpointing=preset.gradient_checkpointing)
    model = model.to(device=device, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[preset.dtype])
    policy = prepare_policy(model, model_cfg, LoraConfig(enabled=preset.lora))
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    parts = PolicyParts(Accelerator(cpu=device.type == "cpu"), policy, make_reference(policy, beta=0.04), optimizer,
                        schedule)
    return parts, processor


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def train_step(parts: PolicyParts, processor, prompts: list[PromptInputs], gen: GenerationConfig, mode: str, step: int):
    """One training step as the trainer runs it: the HF rollout backend, then `policy_update` (reference
    log-probs, policy forward + backward with the GRPO loss, clipping, AdamW). Rewards are random
    stand-ins (the reward functions are not what is measured). Returns (seconds per phase, rollouts)."""
    B, G, dev = len(prompts), gen.num_generations, parts.accelerator.device
    special = special_ids(parts.model, processor.tokenizer)
    backend = HFBackend(processor.tokenizer, special, G, Sampling.of(gen), mode)
    t0 = sync(dev)
    rollouts = backend.generate(parts.model, prompts, [1_000_003 * step + b for b in range(B)])
    rollout_s = sync(dev) - t0
    groups = tuple(RolloutGroup(p, r.completion_ids, r.completion_mask, r.truncated, r.texts, b, "none", 0.0)
                   for b, (p, r) in enumerate(zip(prompts, rollouts)))
    rewards = torch.randn(B, G, generator=torch.Generator().manual_seed(step)).double()  # [B, G] stand-in rewards
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)  # [B, G]
    scored = ScoredStep(groups, rewards[..., None], rewards, advantages.to(dev), torch.zeros(B, dtype=torch.bool),
                        advantages[..., None])
    loss = LossConfig(objective="clipped_token", beta=0.04)
    settings = UpdateSettings(loss, OptimConfig(lr=1e-6), mode, gen.temperature, gen.max_new_tokens, special.pad,
                              router_aux_loss_coef=0.0, is_mode="none", is_cap=1.0)
    timings: dict[str, float] = {}
    policy_update(parts, scored, settings, timings)
    sync(dev)
    return {"rollout": rollout_s, "reference": timings["reference"], "policy_fwd_bwd": timings["update_fwd_bwd"],
            "optimizer": timings["update_optimizer"]}, rollouts


def token_counts(prompts: list[PromptInputs], rollouts: list[Rollout], G: int, mode: str) -> dict[str, int]:
    """Tokens of one step, and what each mode feeds the language model and the vision tower.
    Log-prob passes (reference + policy): `repeat` runs B*G rows [prompt | completion] padded to
    the longest prompt and completion; `shared` B rows [prompt | c_1 | ... | c_G] padded to the
    longest row. Rollout prefill: B*G prompts (`repeat`) or B (`shared`); decoding is B*G rows
    in both, `repeat` keeping finished rows until the whole batch ends (HF generate)."""
    B = len(prompts)
    P = [p.length for p in prompts]
    kept = [int(r.completion_mask.sum()) for r in rollouts]  # completion tokens per group
    width = max(r.completion_ids.shape[1] for r in rollouts)
    vision = sum(count_tokens(p)["image"] + count_tokens(p)["video"] for p in prompts)
    if mode == "repeat":
        logprob_pass = B * G * (max(P) + width)
        rollout = B * G * max(P) + B * G * width
        patches = G * sum(_patches(p) for p in prompts)
    else:
        logprob_pass = B * max(p + k for p, k in zip(P, kept))
        rollout = sum(P) + sum(kept)
        patches = sum(_patches(p) for p in prompts)
    return {
        "prompt_tokens": sum(P), "vision_tokens": vision, "completion_tokens": sum(kept),
        "lm_tokens_rollout": rollout, "lm_tokens_per_logprob_pass": logprob_pass,
        "lm_tokens_step": rollout + 2 * logprob_pass, "vision_patches_per_pass": patches,
    }


def _patches(p: PromptInputs) -> int:
    v = p.vision
    return sum(int(x.shape[0]) for x in (v.pixel_values, v.pixel_values_videos) if x is not None)


def memory_mark(device: torch.device) -> float:
    """Current memory (MiB), and reset the peak so that `memory_peak` covers what follows."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS high-water mark (Linux >= 4.0)
    except OSError as e:  # the peak then includes building the model: an overestimate for both modes
        print(f"warning: cannot reset the peak RSS ({e}); peaks include setup", file=sys.stderr)
    return rss


def memory_peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(args) -> dict:
    """One (shape, mode): warm-up steps, then `steps` timed steps; prints a JSON record."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    shape = preset.shapes[args.shape]
    parts, processor = setup(preset, device, args.family)
    n_steps = args.warmup + args.steps
    prompts = [p.to(device) for p in make_prompts(processor, shape, args.prompts * n_steps, seed=1)]
    gen = GenerationConfig(num_generations=args.G, max_new_tokens=shape.max_new_tokens, temperature=1.0)
    base = memory_mark(device)
    times, counts = [], []
    for step in range(n_steps):
        batch = prompts[step * args.prompts : (step + 1) * args.prompts]
        phases, rollouts = train_step(parts, processor, batch, gen, args.mode, step)
        if step >= args.warmup:
            times.append(phases)
            counts.append(token_counts(batch, rollouts, args.G, args.mode))
    peak = memory_peak(device)
    step_s = [sum(p.values()) for p in times]
    med = statistics.median(step_s)
    tokens = {k: round(statistics.mean(c[k] for c in counts)) for k in counts[0]}
    return {
        "shape": asdict(shape), "mode": args.mode, "family": args.family, "shared_layout": shared_layout(parts.model),
        "steps": step_s,
        "median_step_s": med, "phases_median_s": {k: statistics.median(p[k] for p in times) for k in times[0]},
        "completion_tokens_per_s": tokens["completion_tokens"] / med, "tokens": tokens,
        "memory_base_mib": base, "memory_peak_mib": peak, "memory_peak_increase_mib": peak - base,
    }


def spawn(args, shape: str, mode: str, family: str) -> dict:
    """Run one (family, shape, mode) in a fresh interpreter; its last stdout line is the JSON record."""
    cmd = [sys.executable, __file__, "--child", "--shape", shape, "--mode", mode, "--family", family, "--device", args.device,
           "--preset", args.preset, "--prompts", str(args.prompts), "--G", str(args.G), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    load_before = os.getloadavg()[0]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {shape}/{mode} failed:\n{out.stderr[-4000:]}")
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["load_avg_1min"] = [load_before, os.getloadavg()[0]]
    print(f"{family} {shape}/{mode}: median {record['median_step_s']:.2f} s/step, "
          f"peak +{record['memory_peak_increase_mib']:.0f} MiB", file=sys.stderr)
    return record


def compare(records: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Per shape: repeat / shared for time and memory (how many times faster / smaller shared is)."""
    out = {}
    for shape, by_mode in records.items():
        r, s = by_mode["repeat"], by_mode["shared"]
        out[shape] = {
            "speedup": r["median_step_s"] / s["median_step_s"],
            "memory_ratio": s["memory_peak_increase_mib"] / r["memory_peak_increase_mib"],
            "lm_token_ratio": r["tokens"]["lm_tokens_step"] / s["tokens"]["lm_tokens_step"],
        }
    return out


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        "# Training-step benchmark: `repeat` vs `shared`",
        "",
        f"`{cfg['command']}` — preset `{cfg['preset']}`, device `{cfg['device']}`, {cfg['prompts']} prompts x "
        f"G={cfg['G']} per step, median of {cfg['steps']} steps after {cfg['warmup']} warm-up step(s), "
        f"{cfg['threads']} intra-op thread(s), torch {cfg['torch']}.",
        "",
        f"Model: {report['model']}. Step: rollout (`generate_groups`, T=1), reference log-probs, policy forward + "
        "backward (`batch_logprobs`, GRPO loss with beta=0.04), gradient clipping, AdamW. Prompts are encoded before "
        "timing. Memory: " + report["memory_method"] + ".",
        "",
        "| shape | mode | median step (s) | rollout | reference | policy fwd+bwd | optimizer "
        "| completion tok/s | peak mem increase (MiB) | load avg (1 min) before / after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, by_mode in report["results"].items():
        for mode, r in by_mode.items():
            ph = r["phases_median_s"]
            lines.append(
                f"| {shape} | {mode} | {r['median_step_s']:.2f} | {ph['rollout']:.2f} | {ph['reference']:.2f} "
                f"| {ph['policy_fwd_bwd']:.2f} | {ph['optimizer']:.3f} | {r['completion_tokens_per_s']:.0f} "
                f"| {r['memory_peak_increase_mib']:.0f} | {r['load_avg_1min'][0]:.1f} / {r['load_avg_1min'][1]:.1f} |"
            )
    lines += ["", "| shape | family | shared forward | shared speed-up (repeat s / shared s) | shared / repeat peak memory "
              "| repeat / shared LM tokens |", "| --- | --- | --- | --- | --- | --- |"]
    for shape, c in report["ratios"].items():
        s = report["results"][shape]["shared"]
        lines.append(f"| {shape} | {s['family']} | {s['shared_layout']} | {c['speedup']:.2f}x | {c['memory_ratio']:.2f} "
                     f"| {c['lm_token_ratio']:.2f} |")
    lines += ["", "completion tok/s: completion tokens sampled (and trained on) per step / median step time. "
              "Memory ratio: peak-increase of `shared` / that of `repeat`.",
              "", "Tokens per step (mean over the timed steps; LM tokens are what the language model processes:",
              "rollout prefill + decode, plus two log-prob passes, reference and policy, padding included):", "",
              "| shape | mode | prompt tokens (B prompts) | of which vision | completion tokens | LM tokens rollout "
              "| LM tokens per log-prob pass | LM tokens per step | vision patches per pass |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for shape, by_mode in report["results"].items():
        for mode, r in by_mode.items():
            t = r["tokens"]
            lines.append(f"| {shape} | {mode} | {t['prompt_tokens']} | {t['vision_tokens']} | {t['completion_tokens']} "
                         f"| {t['lm_tokens_rollout']} | {t['lm_tokens_per_logprob_pass']} | {t['lm_tokens_step']} "
                         f"| {t['vision_patches_per_pass']} |")
    shapes = "; ".join(f"({k}) {s['shape']['kind']} {s['shape']['frames']} frame(s) at {s['shape']['size']}x"
                       f"{s['shape']['size']}, max {s['shape']['max_new_tokens']} new tokens"
                       for k, s in ((k, v["repeat"]) for k, v in report["results"].items()))
    lines += ["", f"Shapes: {shapes}.", "", "Steps (s): " + "; ".join(
        f"{k}/{m} " + ", ".join(f"{x:.2f}" for x in r["steps"]) for k, v in report["results"].items() for m, r in v.items()
    ) + ".", "", report["notes"]]
    return "\n".join(lines) + "\n"


def command_line(argv: list[str]) -> str:
    """The command that produced a report, without the free-text --notes."""
    kept = [a for i, a in enumerate(argv) if a != "--notes" and (i == 0 or argv[i - 1] != "--notes")]
    return " ".join(["python scripts/bench_step.py", *kept])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--shapes", default="a,b", help="comma-separated shape keys (a: video, short answers; b: image, long)")
    p.add_argument("--prompts", type=int, default=4, help="prompts (groups) per step")
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="vllm: rollout time of the HF and the vLLM backends side by side (scripts/bench_vllm.py)")
    p.add_argument("--out-json", help="default docs/bench_step.json (--backend vllm: docs/bench_step_vllm.json)")
    p.add_argument("--out-md", help="default docs/bench_step.md (--backend vllm: docs/bench_step_vllm.md)")
    p.add_argument("--notes", default="", help="a paragraph appended to the markdown (machine load, ...)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--families", default="qwen2_5_vl",
                   help=f"comma-separated model families, or all ({', '.join(FAMILIES)}); other than qwen2_5_vl: tiny preset")
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--family", default="qwen2_5_vl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    stem = "docs/bench_step" if args.backend == "hf" else "docs/bench_step_vllm"
    args.out_json, args.out_md = args.out_json or f"{stem}.json", args.out_md or f"{stem}.md"
    if args.child:
        print(json.dumps(run_child(args)))
        return
    if args.backend == "vllm":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_vllm

        bench_vllm.main(sys.modules[__name__], args, sys.argv[1:] if argv is None else argv)
        return
    families = list(FAMILIES) if args.families == "all" else args.families.split(",")
    label = (lambda f, k: k) if families == ["qwen2_5_vl"] else (lambda f, k: f"{k} {f}")
    records = {label(f, k): {m: spawn(args, k, m, f) for m in MODES} for f in families for k in args.shapes.split(",")}
    cpu = args.device == "cpu"
    report = {
        "config": {**{k: v for k, v in vars(args).items() if k not in ("child", "shape", "mode", "notes")},
                   "command": command_line(sys.argv[1:] if argv is None else argv), "torch": torch.__version__,
                   "cpus": os.cpu_count()},
        "memory_method": ("peak RSS of a fresh child process per (shape, mode) during the steps (getrusage ru_maxrss "
                          "after resetting the high-water mark via /proc/self/clear_refs), minus its RSS before the "
                          "first step" if cpu else "torch.cuda.max_memory_allocated during the steps minus "
                          "memory_allocated before them (fresh process per (shape, mode))"),
        "model": PRESETS[args.preset].description if families == ["qwen2_5_vl"] else FAMILIES_MODEL,
        "results": records,
        "ratios": compare(records),
        "notes": args.notes,
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.out_md).write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
