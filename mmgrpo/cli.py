"""`mmgrpo VERB ...`: each verb lives in its own module and is imported only when used."""
from __future__ import annotations

import importlib
import sys

# verb -> (module, function, one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "train": ("mmgrpo.trainer.cli", "train_main", "GRPO-family RL training: mmgrpo train CONFIG.yaml key=value ..."),
    "sft": ("mmgrpo.trainer.cli", "sft_main", "supervised warm-up on reference answers: mmgrpo sft CONFIG.yaml ..."),
    "demo": ("mmgrpo.demo.run", "main", "offline end-to-end demo on a tiny model: mmgrpo demo [--out DIR]"),
    "merge": ("mmgrpo.models.export", "merge_main", "merge a LoRA checkpoint into a plain HF model folder"),
    "infer": ("mmgrpo.models.infer", "infer_main", "one-shot inference on a video/image question"),
    "eval": ("mmgrpo.eval.cli", "main", "evaluate a model on multimodal QA benchmarks"),
    "tiny-model": ("mmgrpo.models.cli", "tiny_main", "write a tiny random model folder: mmgrpo tiny-model OUT --family NAME"),
    "check-data": ("mmgrpo.check_data", "main", "load every sample through the processors and report"),
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
    if any(a in ("-h", "--help") for a in rest) and verb in help_parsers():
        help_parsers()[verb]().print_help()  # without importing the verb's module (torch: seconds)
        return 0
    module, func, _ = COMMANDS[verb]
    code = int(getattr(importlib.import_module(module), func)(rest) or 0)
    finish_distributed()
    return code


def help_parsers() -> dict:
    from mmgrpo.parsers import HELP

    return HELP


def finish_distributed() -> None:
    """Under `accelerate launch` / torchrun: wait for every process, then tear the process group
    down explicitly. Left to interpreter exit, a process that finishes first (non-main processes
    skip the writing) can tear its connections down under a peer still using them, and gloo then
    aborts the peer (SIGABRT) although all the work was done."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
