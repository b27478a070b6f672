"""The one model loader: a hub id or local folder through the vision-language class, optionally with
a PEFT adapter, checked key by key. Training (policy, reference, init_from / resume_from), export,
inference and evaluation all load through `load_model`, so a checkpoint can never be half-loaded
silently anywhere.

What is checked, and why:
- the checkpoint is of a supported family (config.json's model_type, models.families), and of the
  one the run names when it names one (`model.family`): an unsupported model would fail later, deep
  in a forward, or run with positions it was not trained with;
- the base loads with zero missing, unexpected or mismatched keys: transformers would otherwise
  initialise missing weights randomly and say little, and a model with random layers still
  trains, exports and "verifies";
- an adapter's keys from before transformers 4.52 are renamed (`keymap`), then every adapter key
  of the file must have found its parameter with its value: PEFT silently skips keys it cannot
  place (an old adapter with LoRA on the vision tower merged only partly).
`trust_remote_code` stays off unless the config turns it on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from mmgrpo.models.families import Family, UnsupportedFamily, family_of_config
from mmgrpo.models.lora import quiet_peft_wrap
from mmgrpo.models.keymap import LEGACY_KEY_MAPPING, current_pattern_dict, current_target_modules, is_legacy_key, remap_keys

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class LoadError(ValueError):
    """A model or adapter that does not load cleanly; the message says what differs."""


def model_location(name_or_path: str | Path) -> str:
    """A local folder as its absolute path (checkpoints then name their base by a path that works
    from any folder: `mmgrpo merge` elsewhere), a hub id as is. A name that cannot be a hub id
    (absolute, ./, ../, ~, a trailing or second /) or any name while the hub is offline, that is not
    a folder here: LoadError "no such folder" (not the hub client's repo-id error)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise LoadError(f"model {text}: {path} is a file, not a model folder")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if _looks_local(text) or offline:
        why = " (and the hub is offline: HF_HUB_OFFLINE)" if offline and not _looks_local(text) else ""
        raise LoadError(f"model {text}: no such folder{why} (working directory {os.getcwd()})")
    return text


def _looks_local(text: str) -> bool:
    return (text.startswith(("/", "./", "../", "~", ".")) or text.endswith("/") or text.count("/") > 1
            or "\\" in text)


def hub_or_folder(name: str, load):
    """`load(name)`; when the hub cannot give a name that is no folder here, say so in one line."""
    try:
        return load(name)
    except OSError as e:
        if Path(name).exists():
            raise
        raise LoadError(f"model {name}: no such folder here, and the hub could not provide it "
                        f"({str(e).splitlines()[0][:300]})") from None


def load_processor(name_or_path: str, trust_remote_code: bool = False) -> ProcessorMixin:
    name = model_location(name_or_path)
    processor = hub_or_folder(name, lambda n: AutoProcessor.from_pretrained(n, trust_remote_code=trust_remote_code))
    processor.tokenizer.padding_side = "left"  # generation pads on the left
    return processor


def checkpoint_family(name_or_path: str | Path, expected: str = "auto", trust_remote_code: bool = False) -> Family:
    """The family of a checkpoint (hub id or folder) from its config.json; LoadError when it is not
    supported or is not `expected` (a family name; "auto" takes whatever it is)."""
    name = model_location(name_or_path)
    config = hub_or_folder(name, lambda n: AutoConfig.from_pretrained(n, trust_remote_code=trust_remote_code))
    try:
        family = family_of_config(config, where=str(name_or_path))
    except UnsupportedFamily as e:
        raise LoadError(str(e)) from None
    if expected != "auto" and family.name != expected:
        raise LoadError(f"model.family={expected}, but {name_or_path} is a {family.title} checkpoint "
                        f"(model_type {family.name}); set model.family={family.name} or auto")
    return family


def load_model(name_or_path: str | Path, dtype: str, device: str | torch.device, adapter: str | Path | None = None,
               trainable: bool = False, attn_implementation: str = "sdpa",
               trust_remote_code: bool = False, family: str = "auto") -> torch.nn.Module:
    """The base model (always the vision-language class) in `dtype` on `device`, with the PEFT
    adapter in `adapter` on top (trainable or frozen). Raises LoadError for an unsupported family
    (or not `family`, unless "auto") and on any key that does not fit."""
    checkpoint_family(name_or_path, family, trust_remote_code)
    model, info = AutoModelForImageTextToText.from_pretrained(
        model_location(name_or_path), dtype=DTYPES[dtype], attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, output_loading_info=True,
    )
    bad = {k: sorted(map(str, v)) for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')}: {', '.join(v[:5])}" for k, v in bad.items())
        raise LoadError(f"{name_or_path} does not load cleanly as {type(model).__name__}: {detail}")
    model = model.to(device)
    if adapter is None:
        return model
    peft_model, report = _load_adapter(model, Path(adapter), trainable)
    report.check(Path(adapter), str(name_or_path))
    return peft_model


@dataclass(frozen=True)
class AdapterLoadReport:
    renamed: int  # keys mapped from the pre-4.52 layout
    missing: list[str]  # adapter parameters of the model the file has no value for
    unexpected: list[str]  # file keys that found no parameter (PEFT would skip them silently)
    differ: list[str]  # keys whose loaded value is not the file's

    def check(self, adapter_dir: Path, base: str) -> None:
        checks = {"have no value in the file": self.missing, "found no parameter in the base": self.unexpected,
                  "loaded with a different value": self.differ}
        problems = [f"{len(keys)} adapter keys {what}: {', '.join(keys[:5])}" for what, keys in checks.items() if keys]
        if problems:
            raise LoadError(f"adapter {adapter_dir} does not match base {base} (another base model, or a key "
                            "layout this tool does not know):\n  " + "\n  ".join(problems))


def _load_adapter(base_model: PreTrainedModel, adapter_dir: Path,
                  trainable: bool) -> tuple[torch.nn.Module, AdapterLoadReport]:
    """PeftModel.from_pretrained with old-layout keys renamed, then a key-by-key comparison of the file
    and the adapted model."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (adapter_dir / "adapter_config.json").is_file():
        raise LoadError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter folder)")
    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.target_modules = current_target_modules(config.target_modules)
    for name in ("rank_pattern", "alpha_pattern"):
        if hasattr(config, name):
            setattr(config, name, current_pattern_dict(getattr(config, name)))
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    try:
        mapping = remap_keys(list(weights))
        with quiet_peft_wrap():
            model = PeftModel.from_pretrained(base_model, str(adapter_dir), config=config, is_trainable=trainable,
                                              key_mapping=LEGACY_KEY_MAPPING)
    except (RuntimeError, ValueError) as e:  # size mismatch = adapter trained on another base
        raise LoadError(f"adapter {adapter_dir} does not fit the base model: {str(e)[:1500]}") from e
    in_file = {mapping[k]: v for k, v in weights.items()}
    loaded = get_peft_model_state_dict(model)
    both = set(loaded) & set(in_file)
    report = AdapterLoadReport(
        renamed=sum(is_legacy_key(k) for k in weights),
        missing=sorted(set(loaded) - set(in_file)),
        unexpected=sorted(set(in_file) - set(loaded)),
        differ=sorted(k for k in both if not torch.equal(loaded[k].cpu().float(), in_file[k].float())),
    )
    return model, report


def legacy_keys(adapter_dir: str | Path) -> int:
    """How many keys of an adapter file use the pre-4.52 layout (renamed on load)."""
    from peft.utils import load_peft_weights

    return sum(is_legacy_key(k) for k in load_peft_weights(str(adapter_dir), device="cpu"))


def save_processor_files(processor: ProcessorMixin, out_dir) -> None:
    """Every file a loader may look for: transformers 5 writes one `processor_config.json`; older
    loaders and serving engines read `preprocessor_config.json` and `video_preprocessor_config.json`,
    whose absence is a common cause of 'LoRA will not load' reports, so write them too."""
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    if getattr(processor, "video_processor", None) is not None:
        processor.video_processor.save_pretrained(out_dir)
