"""`mmgrpo eval`: evaluate a model (optionally with a LoRA adapter) on QA files, or compare earlier runs.

    mmgrpo eval --model DIR_OR_ID [--adapter CKPT] --data FILE... --out DIR [--batch-size N]
                [--max-new-tokens N] [--num-samples K] [--limit N] [--strict] ...
    mmgrpo eval --compare DIR1 DIR2 ... [--out DIR]

Running again with the same --out resumes: predictions already in DIR are kept, the rest are
evaluated, and metrics / report cover the whole data.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from mmgrpo.config import ConfigError, EvalConfig, RewardConfig, SFTConfig, TrainConfig, VisionConfig, load_config


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmgrpo eval", description="Evaluate on multimodal QA benchmarks, or compare runs.")
    ap.add_argument("--model", metavar="DIR_OR_ID", help="model folder, hub id or checkpoint (default: the adapter's base)")
    ap.add_argument("--adapter", metavar="CKPT", help="LoRA checkpoint applied on --model")
    ap.add_argument("--data", nargs="+", metavar="FILE", help="JSONL / JSON / parquet files or dataset folders")
    ap.add_argument("--out", metavar="DIR", help="output folder (eval: resumed if it exists; compare: where to write)")
    ap.add_argument("--compare", nargs="+", metavar="DIR", help="earlier eval folders to compare side by side")
    ap.add_argument("--name", help="label of this run in comparisons (default: the --out folder name)")
    defaults = EvalConfig()
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    ap.add_argument("--num-samples", type=int, default=defaults.num_samples, help="K: 1 = greedy; K > 1 samples K (pass@K, majority vote)")
    ap.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature (K > 1)")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--limit", type=int, help="evaluate only the first N samples")
    ap.add_argument("--numeric-tolerance", type=float,
                    help="relative tolerance of numeric answers (default: the --config's reward.numeric_tolerance, "
                         f"else {RewardConfig().numeric_tolerance})")
    ap.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of recording an error")
    ap.add_argument("--format", default=None, choices=["auto", "trl", "swift", "plain", "videor1", "easyr1"], help="row format (default auto)")
    ap.add_argument("--media-root", help="data.media_root: folder that relative media paths resolve against and no media "
                    "path may leave (default: the config's, else each data file's folder, unconfined)")
    ap.add_argument("--system-prompt", help="system prompt added to rows without one")
    ap.add_argument("--prompt-suffix", help="appended to each question, e.g. the answer-format instruction used in training")
    ap.add_argument("--config", help="a train / sft YAML whose vision and data (prompt, format) settings to use")
    ap.add_argument("--fps", type=float, help="video frames sampled per second")
    ap.add_argument("--nframes", type=int, help="frames per video (wins over --fps)")
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--max-pixels", type=int, help="pixels per frame / image")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _training_config(path: str | None) -> TrainConfig | SFTConfig | None:
    if path is None:
        return None
    try:
        return load_config(TrainConfig, path)
    except ConfigError:
        return load_config(SFTConfig, path)  # its error is the one shown when neither fits


def vision_settings(args: argparse.Namespace, base: VisionConfig) -> VisionConfig:
    """The config's vision settings (or the defaults) with the command-line flags on top."""
    given = {k: getattr(args, k) for k in ("fps", "nframes", "max_frames", "max_pixels") if getattr(args, k) is not None}
    vision = replace(base, **given)
    return replace(vision, min_frames=min(vision.min_frames, vision.max_frames),
                   min_pixels=min(vision.min_pixels, vision.max_pixels))


def compare_main(args: argparse.Namespace) -> int:
    from mmgrpo.eval.report import compare

    try:
        result = compare(args.compare, args.out)
    except FileNotFoundError as e:
        print(f"mmgrpo eval --compare: {e}", file=sys.stderr)
        return 1
    print(result.table)
    if result.markdown_path is not None:
        print(f"\nwrote {result.markdown_path} and {result.chart_path}")
    return 0


def eval_main(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from mmgrpo.eval.bench import load_eval_data
    from mmgrpo.eval.report import write_report
    from mmgrpo.eval.runner import evaluate
    from mmgrpo.eval.store import PredictionStore, RunInfo, read_run_info, write_run_info
    from mmgrpo.models.infer import load_for_inference

    train = _training_config(args.config)
    vision = vision_settings(args, train.vision if train else VisionConfig())
    data = train.data if train else None
    items = load_eval_data(
        args.data,
        fmt=args.format or (data.format if data else "auto"),
        media_root=args.media_root if args.media_root is not None else (data.media_root if data else None),
        system_prompt=args.system_prompt if args.system_prompt is not None else (data.system_prompt if data else None),
        prompt_suffix=args.prompt_suffix if args.prompt_suffix is not None else (data.prompt_suffix if data else ""),
        strict=args.strict,
    )
    cfg = EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                     num_samples=args.num_samples, temperature=args.temperature, seed=args.seed)
    out = Path(args.out)
    # several processes under `accelerate launch`: samples are sharded, the main process writes
    # (`--cpu` reaches PartialState only through this variable; Accelerator() reads it itself)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    info = RunInfo(model=args.model or "", adapter=args.adapter, data=[str(d) for d in args.data],
                   num_samples=cfg.num_samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   name=args.name or out.resolve().name)
    earlier = read_run_info(out)
    if earlier is not None and PredictionStore(out).path.exists():
        info.check_resume(earlier)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_run_info(out, info)
    device = str(state.device) if state.num_processes > 1 else args.device  # one device per process
    loaded = load_for_inference(args.model, args.adapter, args.dtype, device)
    tolerance = args.numeric_tolerance
    if tolerance is None:
        tolerance = train.reward.numeric_tolerance if isinstance(train, TrainConfig) else RewardConfig().numeric_tolerance
    result = evaluate(loaded.model, loaded.processor, items, cfg, vision, out_dir=out, numeric_tolerance=tolerance,
                      progress=not args.no_progress, strict=args.strict, state=state)
    if not state.is_main_process:
        return 0
    report = write_report(out, result.metrics, result.records, info)
    m = result.metrics
    print(f"accuracy {100 * m.accuracy:.1f}% on {m.n} samples ({m.n_errors} errors, "
          f"{result.generated} evaluated now, {m.n - result.generated} resumed); report: {report}")
    if m.n == m.n_errors:  # an accuracy over nothing is not a result: scripts must see the failure
        print(f"mmgrpo eval: no sample could be scored ({m.n} samples, {m.n_errors} errors): see {report}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.compare:
        return compare_main(args)
    missing = [flag for flag, value in (("--data", args.data), ("--out", args.out)) if not value]
    if not (args.model or args.adapter):
        missing.insert(0, "--model (or --adapter)")
    if missing:
        parser().print_usage(sys.stderr)
        print(f"mmgrpo eval: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        return eval_main(args)
    except (ValueError, FileNotFoundError) as e:  # LoadError is a ValueError  # BadSampleError (--strict), resume mismatch, config
        print(f"mmgrpo eval: {e}", file=sys.stderr)
        return 1
