"""`mmgrpo merge`: a training checkpoint -> a plain Hugging Face folder that loads without mmgrpo.

A checkpoint is either a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) or full
weights (`config.json` + safetensors); both come with processor files and trainer state. The
export holds weights (merged into the base, or a clean adapter with `adapter_only`), config,
generation config and every processor file, and nothing of the trainer state.

Failure modes this guards against (the usual "my GRPO LoRA will not load" reports):
- the base loaded through a text-only class: we always use `AutoModelForImageTextToText`;
- adapter keys from before transformers 4.52 (see `keymap`): renamed, then every adapter key must
  have found its parameter, else we stop;
- missing `preprocessor_config.json` / video processor / chat template: always written;
- a merge that silently changed the model: `verify.verify_export` compares logits on an
  image + video probe in a fresh process that does not import mmgrpo.
"""
from __future__ import annotations

import gc
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig, PreTrainedModel

from mmgrpo.models.keymap import (
    LEGACY_KEY_MAPPING, current_pattern_dict, current_target_modules, is_legacy_key, remap_keys,
)
from mmgrpo.models.loading import DTYPES, load_processor, save_processor_files
from mmgrpo.models.verify import VerifyReport, make_probe, verify_export

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class ExportError(Exception):
    """A checkpoint that cannot be exported as asked; the message says what to change."""


@dataclass
class CheckpointInfo:
    path: Path
    kind: Literal["adapter", "full"]
    base: str | None  # adapter: base_model_name_or_path from adapter_config.json
    has_processor: bool


@dataclass
class AdapterLoadReport:
    renamed: int  # keys mapped from the pre-4.52 layout
    missing: list[str]  # adapter parameters of the model the file has no value for
    unexpected: list[str]  # file keys that found no parameter (PEFT would skip them silently)
    differ: list[str]  # keys whose loaded value is not the file's


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
    if _holds_weights(root):
        return root
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name)) and _holds_weights(p)]
    if not steps:
        raise ExportError(
            f"{root}: neither adapter_config.json nor config.json + weights, and no checkpoint-STEP folder with them"
        )
    return max(steps)[1]


def _holds_weights(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()


def has_processor_files(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() and any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")
    )


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


def load_vl_model(name_or_path: str | Path, dtype: str, device: str) -> PreTrainedModel:
    """Always the vision-language class. Missing or unexpected keys stop here: a model loaded
    with randomly initialised weights would export garbage that still 'verifies'."""
    model, info = AutoModelForImageTextToText.from_pretrained(
        str(name_or_path), dtype=DTYPES[dtype], attn_implementation="sdpa", output_loading_info=True
    )
    bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')}: {', '.join(map(str, v[:5]))}" for k, v in bad.items())
        raise ExportError(f"{name_or_path} does not load cleanly as {type(model).__name__}: {detail}")
    return model.to(device).eval()


def load_adapter(base_model: PreTrainedModel, adapter_dir: Path) -> tuple[torch.nn.Module, AdapterLoadReport]:
    """PeftModel.from_pretrained with old-layout keys renamed, then a key-by-key check that the
    file and the adapted model agree (PEFT itself ignores keys it cannot place)."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.target_modules = current_target_modules(config.target_modules)
    for name in ("rank_pattern", "alpha_pattern"):
        if hasattr(config, name):
            setattr(config, name, current_pattern_dict(getattr(config, name)))
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    try:
        mapping = remap_keys(list(weights))
    except ValueError as e:
        raise ExportError(f"adapter {adapter_dir}: {e}") from e
    try:
        model = PeftModel.from_pretrained(base_model, str(adapter_dir), config=config, key_mapping=LEGACY_KEY_MAPPING)
    except (RuntimeError, ValueError) as e:  # size mismatch = adapter trained on another base
        raise ExportError(f"adapter {adapter_dir} does not fit the base model: {str(e)[:1500]}") from e
    in_file = {mapping[k]: v for k, v in weights.items()}
    loaded = get_peft_model_state_dict(model)
    both = set(loaded) & set(in_file)
    report = AdapterLoadReport(
        renamed=sum(is_legacy_key(k) for k in weights),
        missing=sorted(set(loaded) - set(in_file)),
        unexpected=sorted(set(in_file) - set(loaded)),
        differ=sorted(k for k in both if not torch.equal(loaded[k].cpu().float(), in_file[k].float())),
    )
    return model.eval(), report


def check_adapter_load(report: AdapterLoadReport, adapter_dir: Path, base: str) -> None:
    checks = {
        "have no value in the file": report.missing,
        "found no parameter in the base": report.unexpected,
        "loaded with a different value": report.differ,
    }
    problems = [f"{len(keys)} adapter keys {what}: {', '.join(keys[:5])}" for what, keys in checks.items() if keys]
    if problems:
        why = "wrong --base, or a key layout this tool does not know"
        raise ExportError(f"adapter {adapter_dir} does not match base {base} ({why}):\n  " + "\n  ".join(problems))


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
        return Loaded(load_vl_model(info.path, dtype, device), processor, info, base, dtype, notes)
    model, report = load_adapter(load_vl_model(base, dtype, device), info.path)
    check_adapter_load(report, info.path, base)
    if report.renamed:
        notes.append(f"adapter keys: renamed {report.renamed} keys from the pre-4.52 layout (model.layers / visual)")
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
