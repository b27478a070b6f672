"""`mmgrpo train CONFIG.yaml key=value ...` and `mmgrpo sft CONFIG.yaml key=value ...`."""
from __future__ import annotations

import sys
from pathlib import Path

from mmgrpo.config import SFT_SHARED, ConfigError, SFTConfig, TrainConfig, is_train_config, load_config, read_yaml

USAGE = """usage: mmgrpo {verb} [CONFIG.yaml] [key=value ...]

Nested keys use dots, e.g. loss.preset=grpo optim.lr=1e-5 generation.num_generations=8.
Lists are comma-separated or YAML: reward.functions=accuracy,format  reward.weights=[1.0,0.5]"""


def help_text(verb: str) -> str:
    from mmgrpo.config.doc import sections

    cls = TrainConfig if verb == "train" else SFTConfig
    return (f"{USAGE.format(verb=verb)}\n\nConfig sections: {', '.join(sections(cls))} (and top-level keys such as "
            "output_dir, max_steps).\nEvery key with its type, default, range and meaning: docs/config.md "
            "(python scripts/config_doc.py regenerates it).")


def parse_args(verb: str, argv: list[str]) -> tuple[str | None, list[str]] | None:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(verb))
        return None
    if argv and "=" not in argv[0]:
        return argv[0], argv[1:]
    return None, argv


def _load(cls, verb: str, argv: list[str]):
    parsed = parse_args(verb, argv)
    if parsed is None:
        return None
    path, overrides = parsed
    try:
        return load_config(cls, path, overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"mmgrpo {verb}: config error: {e}", file=sys.stderr)
        raise SystemExit(2)


def _run(verb: str, fn, cfg) -> Path | None:
    """`fn(cfg)`; a refusal or a failure that names its cause (a busy or used output_dir, a full
    disk, a tampered checkpoint, a bad sample or reward) is printed as one line, exit status 1."""
    from mmgrpo.trainer.checkpoint import DiskFullError
    from mmgrpo.trainer.rewards import RewardError
    from mmgrpo.trainer.runlock import RunLockedError
    from mmgrpo.trainer.update import NonFiniteGradientError

    try:
        return fn(cfg)
    except (RunLockedError, DiskFullError, RewardError, NonFiniteGradientError, ValueError, FileNotFoundError) as e:
        print(f"mmgrpo {verb}: {e}", file=sys.stderr)
        return None


def train_main(argv: list[str]) -> int:
    cfg = _load(TrainConfig, "train", argv)
    if cfg is None:
        return 0
    from mmgrpo.trainer.loop import train

    path = _run("train", train, cfg)
    if path is None:
        return 1
    print(f"final checkpoint: {path}")
    return 0


def sft_main(argv: list[str]) -> int:
    cfg = _load(SFTConfig, "sft", argv)
    if cfg is None:
        return 0
    path = argv[0] if argv and "=" not in argv[0] else None
    if path is not None and is_train_config(read_yaml(path)):
        print(f"mmgrpo sft: {path} is a training config: SFT takes its {', '.join(SFT_SHARED)} "
              f"(not its RL settings) and writes to {cfg.output_dir}", file=sys.stderr)
    from mmgrpo.trainer.sft import sft

    path = _run("sft", sft, cfg)
    if path is None:
        return 1
    print(f"SFT checkpoint: {path}  (start RL from it with: mmgrpo train CONFIG init_from={path})")
    return 0
