"""`mmgrpo VERB ...`: each verb lives in its own module and is imported only when used."""
from __future__ import annotations

import importlib
import sys

# verb -> (module, function, one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "train": ("mmgrpo.trainer.cli", "train_main", "GRPO-family RL training: mmgrpo train CONFIG.yaml key=value ..."),
    "sft": ("mmgrpo.trainer.cli", "sft_main", "supervised warm-up on reference answers: mmgrpo sft CONFIG.yaml ..."),
    "demo": ("mmgrpo.demo.run", "main", "offline end-to-end demo on a tiny model: mmgrpo demo [--out DIR]"),
    "merge": ("mmgrpo.models.export_cli", "merge_main", "merge a LoRA checkpoint into a plain HF model folder"),
    "infer": ("mmgrpo.models.export_cli", "infer_main", "one-shot inference on a video/image question"),
    "eval": ("mmgrpo.eval.cli", "main", "evaluate a model on multimodal QA benchmarks"),
    "tiny-model": ("mmgrpo.models.cli", "tiny_main", "write a tiny random Qwen2.5-VL model folder"),
    "check-data": ("mmgrpo.processors.check", "main", "load every sample through the processors and report"),
}


def usage() -> str:
    lines = ["usage: mmgrpo VERB [args]", "", "verbs:"]
    lines += [f"  {verb:<11} {help_}" for verb, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f"mmgrpo: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[verb]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
