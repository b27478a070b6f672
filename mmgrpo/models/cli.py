"""`mmgrpo tiny-model OUT_DIR [--hidden H --layers L ...]`."""
from __future__ import annotations

import argparse
import dataclasses

from mmgrpo.models.tiny import TinySpec, save_tiny


def tiny_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="mmgrpo tiny-model", description="Write a tiny random Qwen2.5-VL model folder.")
    ap.add_argument("out_dir")
    for f in dataclasses.fields(TinySpec):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    args = ap.parse_args(argv)
    spec = TinySpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinySpec)})
    if (spec.hidden // spec.heads) % 2:
        ap.error("--hidden / --heads must be even (rotary head dimension)")
    out = save_tiny(args.out_dir, spec)
    print(f"tiny Qwen2.5-VL written to {out}")
    return 0
