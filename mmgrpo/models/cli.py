"""`mmgrpo tiny-model OUT_DIR [--family NAME] [--hidden H --layers L ...]`."""
from __future__ import annotations

import argparse
import dataclasses

from mmgrpo.models.families import FAMILIES
from mmgrpo.models.tiny import DEFAULT_FAMILY, TinySpec, save_tiny


def tiny_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="mmgrpo tiny-model",
                                 description="Write a tiny random model folder of a supported family.")
    ap.add_argument("out_dir")
    ap.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY,
                    help=f"model family (config.json model_type; default {DEFAULT_FAMILY})")
    for f in dataclasses.fields(TinySpec):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    args = ap.parse_args(argv)
    spec = TinySpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinySpec)})
    if (spec.hidden // spec.heads) % 4:
        ap.error("--hidden / --heads must be a multiple of 4 (rotary head dimension, halved for Qwen3.5)")
    out = save_tiny(args.out_dir, spec, args.family)
    print(f"tiny {FAMILIES[args.family].title} written to {out}")
    return 0
