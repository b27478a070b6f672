"""Command lines of `mmgrpo merge` and `mmgrpo infer`. Exit codes: 0 ok, 1 failed (unusable
input or a failed verification; the message says what differs), 2 bad arguments."""
from __future__ import annotations

import argparse
import sys

from mmgrpo.config import VisionConfig
from mmgrpo.models.export import ExportError, ExportOptions, ExportResult, export_checkpoint, verify_existing

DTYPE_CHOICES = ["auto", "bf16", "fp16", "fp32"]


def merge_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mmgrpo merge",
        description="Export a training checkpoint (LoRA adapter or full weights) as a plain Hugging Face folder, "
        "then verify it in a fresh process that does not import mmgrpo.",
    )
    ap.add_argument("--adapter", required=True, metavar="CKPT",
                    help="checkpoint folder (LoRA or full weights), or a run folder (its latest checkpoint)")
    ap.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output folder")
    ap.add_argument("--base", metavar="MODEL", help="base model folder or hub id (default: from adapter_config.json)")
    ap.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="export dtype (default: as saved)")
    ap.add_argument("--adapter-only", action="store_true", help="write a clean PEFT adapter folder instead of merging")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the verification")
    ap.add_argument("--verify-only", action="store_true", help="only verify an existing export in --out")
    ap.add_argument("--device", default="cpu", help="device for loading, merging and verifying (default: cpu)")
    ap.add_argument("--tolerance", type=float, help="max abs logits difference allowed (default: by dtype)")
    ap.add_argument("--max-shard-size", default="5GB")
    return ap


def merge_main(argv: list[str]) -> int:
    args = merge_parser().parse_args(argv)
    opts = ExportOptions(
        checkpoint=args.adapter, out=args.out, base=args.base, dtype=args.dtype, adapter_only=args.adapter_only,
        verify=args.verify, device=args.device, tolerance=args.tolerance, max_shard_size=args.max_shard_size,
    )
    try:
        result = verify_existing(opts) if args.verify_only else export_checkpoint(opts)
    except (ExportError, OSError) as e:  # OSError: transformers cannot find or read a model / file
        print(f"mmgrpo merge: {e}", file=sys.stderr)
        return 1
    return _report(result)


def _report(result: ExportResult) -> int:
    if result.report is None:
        print(f"{result.out}: written, not verified (--no-verify)")
        return 0
    print(f"verification of {result.out}:\n{result.report.summary()}")
    if result.report.ok:
        libraries = "transformers + peft" if result.mode == "adapter" else "transformers"
        print(f"OK: {result.out} loads and generates with plain {libraries}")
        return 0
    failures = "\n  ".join(result.report.messages)
    print(f"mmgrpo merge: verification FAILED for {result.out}:\n  {failures}", file=sys.stderr)
    return 1


class _MediaAction(argparse.Action):
    """--video / --image share one list, so their order on the command line is the prompt order."""

    def __call__(self, parser, namespace, value, option_string=None):
        media = getattr(namespace, self.dest) or []
        media.append((option_string.lstrip("-"), value))
        setattr(namespace, self.dest, media)


def infer_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmgrpo infer", description="Answer one question about videos / images (greedy).")
    ap.add_argument("--model", metavar="DIR_OR_ID",
                    help="model folder, hub id or checkpoint (default: the adapter's base)")
    ap.add_argument("--adapter", metavar="CKPT", help="LoRA checkpoint applied on --model")
    ap.add_argument("--video", "--image", dest="media", action=_MediaAction, metavar="PATH", default=[],
                    help="a video / image file; repeat for several, in prompt order")
    ap.add_argument("--question", required=True)
    ap.add_argument("--system", help="system prompt")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto")
    ap.add_argument("--device", default="cpu")
    defaults = VisionConfig()
    ap.add_argument("--fps", type=float, default=defaults.fps, help="frames sampled per second of video")
    ap.add_argument("--nframes", type=int, default=defaults.nframes, help="frames per video (wins over --fps)")
    ap.add_argument("--max-frames", type=int, default=defaults.max_frames)
    ap.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="pixels per frame / image")
    return ap


def infer_main(argv: list[str]) -> int:
    from mmgrpo.models.infer import InferRequest, answer  # the processors stack loads only for this verb

    args = infer_parser().parse_args(argv)
    defaults = VisionConfig()
    vision = VisionConfig(fps=args.fps, nframes=args.nframes, max_frames=args.max_frames, max_pixels=args.max_pixels,
                          min_frames=min(defaults.min_frames, args.max_frames),
                          min_pixels=min(defaults.min_pixels, args.max_pixels))
    req = InferRequest(
        model=args.model, media=args.media, question=args.question, adapter=args.adapter, system_prompt=args.system,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, device=args.device, vision=vision,
    )
    try:
        print(answer(req, log=lambda note: print(note, file=sys.stderr)))
    except (ExportError, ValueError, OSError) as e:  # ValueError: BadSampleError / MediaError from the encoder
        print(f"mmgrpo infer: {e}", file=sys.stderr)
        return 1
    return 0
