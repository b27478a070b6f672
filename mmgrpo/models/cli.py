"""`mmgrpo tiny-model OUT_DIR [--family NAME] [--hidden H --layers L ...]`."""
from __future__ import annotations

import dataclasses

from mmgrpo.models.tiny_spec import TinySpec
from mmgrpo.parsers import tiny_parser


def tiny_main(argv: list[str]) -> int:
    ap = tiny_parser()
    args = ap.parse_args(argv)
    from mmgrpo.models.families import FAMILIES
    from mmgrpo.models.tiny import save_tiny

    spec = TinySpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinySpec)})
    if (spec.hidden // spec.heads) % 4:
        ap.error("--hidden / --heads must be a multiple of 4 (rotary head dimension, halved for Qwen3.5)")
    out = save_tiny(args.out_dir, spec, args.family)
    print(f"tiny {FAMILIES[args.family].title} written to {out}")
    return 0
