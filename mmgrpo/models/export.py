"""`mmgrpo merge`: a training checkpoint -> a plain Hugging Face folder that loads without mmgrpo.

A checkpoint is either a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) or full
weights (`config.json` + safetensors); both come with processor files and trainer state. The
export holds weights (merged into the base, or a clean adapter with `adapter_only`), config,
generation config and every processor file, and nothing of the trainer state.

Failure modes this guards against (the usual "my GRPO LoRA will not load" reports):
- the base loaded through a text-only class: we always use `AutoModelForImageTextToText`;
- adapter keys from before transformers 4.52 (see `keymap`): renamed, then every adapter key must
  have found its parameter, else we stop (both in `loading.load_model`);
- missing `preprocessor_config.json` / video processor / chat template: always written;
- a merge that silently changed the model: `verify.verify_export` compares logits on an
  image + video probe in a fresh process that does not import mmgrpo.
"""
from __future__ import annotations

import gc
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from transformers import AutoConfig, GenerationConfig

from mmgrpo.models.folders import checkpoint_entries, has_processor_files, holds_weights
from mmgrpo.models.loading import LoadError, legacy_keys, load_model, load_processor, save_processor_files
from mmgrpo.models.verify import VerifyReport, make_probe, verify_export
from mmgrpo.parsers import DTYPE_CHOICES, merge_parser  # noqa: F401 (DTYPE_CHOICES re-exported)

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class ExportError(LoadError):
    """A checkpoint that cannot be exported as asked; the message says what to change."""


@dataclass
class CheckpointInfo:
    path: Path
    kind: Literal["adapter", "full"]
    base: str | None  # adapter: base_model_name_or_path from adapter_config.json
    has_processor: bool


@dataclass
class Loaded:
    model: torch.nn.Module | None  # PeftModel (adapter, unmerged) or the full model; None once freed
    processor: object
    info: CheckpointInfo | None  # None for a model loaded by hub id
    base: str | None
    dtype: str
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportOptions:
    checkpoint: str  # checkpoint folder, or a run folder (its latest checkpoint-STEP is used)
    out: str
    base: str | None = None  # default: the adapter config's base_model_name_or_path
    dtype: str = "auto"  # auto = the dtype the checkpoint (full) or base (adapter) was saved in
    adapter_only: bool = False
    verify: bool = True
    device: str = "cpu"
    tolerance: float | None = None  # default: verify.TOLERANCE for the dtype
    max_shard_size: str = "5GB"


@dataclass
class ExportResult:
    out: Path
    mode: Literal["merged", "adapter"]
    notes: list[str]
    report: VerifyReport | None


# ----------------------------------------------------------------------------------------------
# finding and loading the checkpoint


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it holds weights, else its highest `checkpoint-STEP` that does."""
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"{root}: no such folder")
    if holds_weights(root):
        return root
    steps = [(step, p) for step, kind, p in checkpoint_entries(root) if kind == "" and holds_weights(p)]
    if not steps:
        raise ExportError(
            f"{root}: neither adapter_config.json nor config.json + weights, and no checkpoint-STEP folder with them"
        )
    return max(steps)[1]


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    folder = find_checkpoint(path)
    if (folder / "adapter_config.json").is_file():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return CheckpointInfo(folder, "adapter", base, has_processor_files(folder))
    if not (any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))):
        raise ExportError(f"{folder}: config.json but no weight files (*.safetensors)")
    return CheckpointInfo(folder, "full", None, has_processor_files(folder))


def resolve_dtype(dtype: str, name_or_path: str) -> str:
    """`auto` -> the dtype in the model's config (fp32 when it names none)."""
    if dtype != "auto":
        return dtype
    saved = getattr(AutoConfig.from_pretrained(name_or_path), "dtype", None)
    return DTYPE_NAMES.get(saved, "fp32") if isinstance(saved, torch.dtype) else "fp32"


def resolve_base(info: CheckpointInfo, base: str | None, notes: list[str]) -> str | None:
    if info.kind == "full":
        return base  # only needed as a processor source
    if base is None and info.base is None:
        raise ExportError(f"{info.path}/adapter_config.json names no base_model_name_or_path; pass --base")
    if base is not None and info.base is not None and base != info.base:
        notes.append(f"base: using --base {base} instead of the adapter config's {info.base}")
    chosen = base or info.base
    if Path(chosen).is_absolute() and not Path(chosen).exists():
        origin = "--base" if base else "adapter_config.json"
        raise ExportError(f"base model {chosen} (from {origin}) does not exist here; pass --base")
    return chosen


def load_checkpoint(info: CheckpointInfo, base: str | None, dtype: str, device: str) -> Loaded:
    """The checkpoint as training left it: base + adapter (unmerged) or the full model."""
    notes: list[str] = []
    base = resolve_base(info, base, notes)
    dtype = resolve_dtype(dtype, str(info.path) if info.kind == "full" else base)
    processor = _load_processor(info, base, notes)
    if info.kind == "full":
        return Loaded(load_model(info.path, dtype, device).eval(), processor, info, base, dtype, notes)
    model = load_model(base, dtype, device, adapter=info.path).eval()
    renamed = legacy_keys(info.path)
    if renamed:
        notes.append(f"adapter keys: renamed {renamed} keys from the pre-4.52 layout (model.layers / visual)")
    if (info.path / "generation_config.json").is_file():  # the run's settings win over the base's
        model.get_base_model().generation_config = GenerationConfig.from_pretrained(str(info.path))
    return Loaded(model, processor, info, base, dtype, notes)


def _load_processor(info: CheckpointInfo, base: str | None, notes: list[str]):
    if info.has_processor:
        return load_processor(str(info.path))
    if base is None:
        raise ExportError(
            f"{info.path} has no processor files (preprocessor_config.json, tokenizer); "
            "pass --base to take them from the base model"
        )
    notes.append(f"processor files: none in {info.path}, taken from the base {base}")
    return load_processor(base)


# ----------------------------------------------------------------------------------------------
# writing


def prepare_out(out: Path, checkpoint: Path) -> None:
    """Checked before loading anything; `save_pretrained` creates the folder."""
    out = out.resolve()
    if out == checkpoint.resolve() or checkpoint.resolve() in out.parents:
        raise ExportError(f"--out {out} lies inside the checkpoint {checkpoint}; choose a separate folder")
    if out.exists() and any(out.iterdir()):
        # stale shards of an earlier export would be mixed with the new ones
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder")


def save_merged(loaded: Loaded, out: Path, max_shard_size: str) -> None:
    model = loaded.model.merge_and_unload(safe_merge=True) if loaded.info.kind == "adapter" else loaded.model
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if getattr(cfg, "use_cache", None) is False:  # training turns the KV cache off; inference wants it
            cfg.use_cache = True
    model.save_pretrained(out, max_shard_size=max_shard_size)
    model.generation_config.save_pretrained(out)
    save_processor_files(loaded.processor, out)


def save_adapter(loaded: Loaded, out: Path) -> None:
    """A clean PEFT folder in the current key layout, naming the base it was checked against.
    `loaded` must hold an adapter checkpoint (`export_checkpoint` checks before loading)."""
    loaded.model.peft_config["default"].base_model_name_or_path = loaded.base
    loaded.model.save_pretrained(out)
    save_processor_files(loaded.processor, out)


def _free(loaded: Loaded) -> None:
    loaded.model = None  # the fresh process loads its own copy; do not hold two
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# entry points


def export_checkpoint(opts: ExportOptions, log: Callable[[str], None] = print) -> ExportResult:
    """Load, (probe,) merge or re-save, write, (verify). Raises ExportError on unusable input;
    a failed verification is returned in the report (`report.ok` False), the folder left in place."""
    info = inspect_checkpoint(opts.checkpoint)
    out = Path(opts.out)
    prepare_out(out, info.path)
    mode: Literal["merged", "adapter"] = "adapter" if opts.adapter_only else "merged"
    if opts.adapter_only and info.kind != "adapter":
        raise ExportError(f"{info.path} holds full weights: there is no adapter to export (drop --adapter-only)")
    log(f"checkpoint {info.path} ({'LoRA adapter' if info.kind == 'adapter' else 'full weights'})")
    loaded = load_checkpoint(info, opts.base, opts.dtype, opts.device)
    for note in loaded.notes:
        log(f"note: {note}")
    probe = make_probe(loaded.model, loaded.processor, opts.device, _source(info)) if opts.verify else None
    if mode == "adapter":
        save_adapter(loaded, out)
    else:
        save_merged(loaded, out, opts.max_shard_size)
    log(f"wrote {'adapter' if mode == 'adapter' else 'merged model'} ({loaded.dtype}) to {out}")
    _free(loaded)
    report = None
    if probe is not None:
        report = verify_export(out, probe, mode, loaded.dtype, loaded.base, opts.device, opts.tolerance)
    return ExportResult(out, mode, loaded.notes, report)


def verify_existing(opts: ExportOptions, log: Callable[[str], None] = print) -> ExportResult:
    """Re-run the verification of an earlier export of `opts.checkpoint` in `opts.out`."""
    info = inspect_checkpoint(opts.checkpoint)
    out = Path(opts.out)
    if not out.is_dir():
        raise ExportError(f"--out {out}: no such folder to verify")
    mode: Literal["merged", "adapter"] = "adapter" if (out / "adapter_config.json").is_file() else "merged"
    # the reference is computed at the precision the export was made in
    dtype = resolve_dtype("auto", str(out)) if opts.dtype == "auto" and mode == "merged" else opts.dtype
    log(f"verifying {out} against checkpoint {info.path}")
    loaded = load_checkpoint(info, opts.base, dtype, opts.device)
    for note in loaded.notes:
        log(f"note: {note}")
    probe = make_probe(loaded.model, loaded.processor, opts.device, _source(info))
    _free(loaded)
    report = verify_export(out, probe, mode, loaded.dtype, loaded.base, opts.device, opts.tolerance)
    return ExportResult(out, mode, loaded.notes, report)


def _source(info: CheckpointInfo) -> str:
    return "base + adapter" if info.kind == "adapter" else "the checkpoint as loaded"


# ----------------------------------------------------------------------------------------------
# `mmgrpo merge`. Exit codes: 0 ok, 1 failed (unusable input or a failed verification; the message
# says what differs), 2 bad arguments.

def merge_main(argv: list[str]) -> int:
    args = merge_parser().parse_args(argv)
    opts = ExportOptions(
        checkpoint=args.adapter, out=args.out, base=args.base, dtype=args.dtype, adapter_only=args.adapter_only,
        verify=args.verify, device=args.device, tolerance=args.tolerance, max_shard_size=args.max_shard_size,
    )
    try:
        result = verify_existing(opts) if args.verify_only else export_checkpoint(opts)
    except (LoadError, OSError) as e:  # OSError: transformers cannot find or read a model / file
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
