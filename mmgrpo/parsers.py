"""The argument parsers of the verbs that load models, in a module that imports no torch: `mmgrpo
VERB --help` answers at once (cli.py prints these), and each verb's `main` parses with the same
parser before it imports what it runs on."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from mmgrpo.config import Family, VisionConfig
from mmgrpo.models.tiny_spec import DEFAULT_FAMILY, TinySpec

DTYPE_CHOICES = ["auto", "bf16", "fp16", "fp32"]
FAMILY_NAMES = sorted(typing.get_args(Family))  # the rows of models.families.FAMILIES (a test checks)


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
                    help="a video / image file (a video may be a folder of frames); repeat for several, in prompt order")
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


def tiny_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmgrpo tiny-model",
                                 description="Write a tiny random model folder of a supported family.")
    ap.add_argument("out_dir")
    ap.add_argument("--family", choices=FAMILY_NAMES, default=DEFAULT_FAMILY,
                    help=f"model family (config.json model_type; default {DEFAULT_FAMILY})")
    for f in dataclasses.fields(TinySpec):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    return ap


def demo_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmgrpo demo", description=description, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the RL config (configs/demo.yaml)")
    return ap


def check_data_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgrpo check-data", description=description)
    p.add_argument("data", nargs="+", help="JSONL / JSON / parquet files or datasets folders")
    p.add_argument("--model", help="model folder or hub id whose processor to use")
    p.add_argument("--family", choices=FAMILY_NAMES, default="qwen2_5_vl",
                   help="without --model: the family whose patch grid sizes the media (default qwen2_5_vl)")
    p.add_argument("--config", help="training YAML whose vision / data settings to use")
    p.add_argument("--report", help="write one JSON line per sample here")
    p.add_argument("--allow-bad", action="store_true", help="exit 0 even when samples are bad")
    return p


DEMO_DESCRIPTION = "The whole pipeline offline on the CPU, in minutes: a tiny model, a synthetic video QA task, " \
    "SFT on the answer format, Reg-GRPO, held-out evaluation (also with noise frames)."
CHECK_DATA_DESCRIPTION = "Load every sample through the processors before a run does; report bad samples and token counts."

# verb -> its parser, for `mmgrpo VERB --help` without importing the verb's module
HELP = {
    "merge": merge_parser, "infer": infer_parser, "tiny-model": tiny_parser,
    "demo": lambda: demo_parser(DEMO_DESCRIPTION), "check-data": lambda: check_data_parser(CHECK_DATA_DESCRIPTION),
}
