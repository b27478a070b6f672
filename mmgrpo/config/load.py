"""Loading: YAML files and `key=value` overrides into the frozen dataclasses of `schema.py`, with
every value checked (type, range, unknown / duplicated / renamed keys, impossible combinations)
and presets (`presets.py`) filling the settings a user left unset."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mmgrpo.config.presets import PRESETS, RENAMED
from mmgrpo.config.schema import ConfigError, TrainConfig, SFTConfig

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where YAML/CLI spelling differs."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args[-1:] == (Ellipsis,):
            return tuple(_coerce(v, args[0], key) for v in value)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return [_coerce(v, args[0], key) for v in value]
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool / int / float / str, accepting the spellings YAML and the command line produce."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_bounds(value: Any, bounds: dict[str, float], key: str) -> None:
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is None:
            continue
        for name, b in bounds.items():
            if not _BOUND_OK[name](v, b):
                rule = " and ".join(f"{_BOUND_TEXT[n]} {x:g}" for n, x in bounds.items())
                raise ConfigError(f"{key}: {value!r} is out of range (must be {rule})")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        dotted = f"{prefix}.{name}" if prefix else name
        if dotted in RENAMED:
            raise ConfigError(f"{dotted} is no longer a setting: use {RENAMED[dotted]}")
        if name not in fields:
            raise ConfigError(f"unknown key {dotted} in {prefix or cls.__name__}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if _is_dataclass_type(hints[name]) and isinstance(value, dict):
            # a section starts from *this* field's default (TrainConfig's LoRA has no dropout,
            # SFTConfig's optimizer its own lr), not from the section class's defaults
            kwargs[name] = _build_over(_default(fields[name]), hints[name], value, key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
        _check_bounds(kwargs[name], fields[name].metadata.get("bounds", {}), key)
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _build_over(base: Any, cls: type, values: dict, key: str) -> Any:
    """`cls` built from `values` (checked as `_build` does), every field not in `values` taken from `base`."""
    built = _build(cls, values, key)
    return dataclasses.replace(base, **{name: getattr(built, name) for name in values})


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None


def _set_path(tree: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = _yaml(raw, f"override {dotted}") if raw != "" else ""


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), raw)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    loaded = _yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return loaded


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from a YAML file (optional) and `key=value` overrides, then validate it."""
    values = read_yaml(path) if path is not None else {}
    if cls is SFTConfig and is_train_config(values):
        values = sft_values(values)
    values = _merge(values, parse_overrides(overrides or []))
    if cls is TrainConfig:
        values = with_preset(values)
    cfg = _build(cls, values)
    validate(cfg)
    return cfg


# `mmgrpo sft TRAIN.yaml`: what SFT takes from a training config, the settings saying which model
# and which data. Not the RL sections (rollouts, rewards, loss, DA, eval) nor the RL optimizer and
# step count; the SFT run writes to the training run's output_dir + "-sft", keeping that folder
# free for the RL run that starts from it.
SFT_SHARED = ("model", "lora", "vision", "data", "seed", "report_to")


def is_train_config(values: dict) -> bool:
    """A file with a key that only training configs have."""
    sft = {f.name for f in dataclasses.fields(SFTConfig)}
    return any(k not in sft and k in {f.name for f in dataclasses.fields(TrainConfig)} for k in values)


def sft_values(values: dict) -> dict:
    """The SFT config values of a training config's (SFT_SHARED; output_dir + "-sft")."""
    out = {k: values[k] for k in SFT_SHARED if k in values}
    out["output_dir"] = f"{values.get('output_dir', TrainConfig.output_dir)}-sft"
    return out


def with_preset(values: dict) -> dict:
    """The user's settings over the preset's (PRESETS), for every section the preset names."""
    loss = values.get("loss")
    name = loss.get("preset", "none") if isinstance(loss, dict) else "none"
    if name == "none" or name not in PRESETS:
        return values  # an unknown name is reported by _build, naming loss.preset
    return _merge(PRESETS[name], values)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def validate(cfg: Any) -> None:
    """Combinations of settings that cannot work, with messages that say what to change."""
    if isinstance(cfg, TrainConfig):
        if len(cfg.reward.functions) != len(cfg.reward.weights):
            raise ConfigError(f"reward.weights has {len(cfg.reward.weights)} entries for "
                              f"{len(cfg.reward.functions)} reward.functions")
        check_reward_terms(cfg)
        if cfg.prompts_per_step % cfg.optim.grad_accum:
            raise ConfigError("prompts_per_step must be a multiple of optim.grad_accum")
        if cfg.optim.updates_per_rollout > 1 and cfg.lora.enabled and cfg.lora.dropout > 0:
            raise ConfigError(f"lora.dropout={cfg.lora.dropout:g} with optim.updates_per_rollout="
                              f"{cfg.optim.updates_per_rollout}: the old log-probs are computed without dropout, so "
                              "every ratio of the first pass would be dropout noise; set lora.dropout=0")
        check_vllm(cfg)
        check_tools(cfg)
        if cfg.eval.every and not cfg.data.eval:
            raise ConfigError(f"eval.every={cfg.eval.every} needs held-out data: set data.eval (or eval.every=0)")
    if hasattr(cfg, "lora") and cfg.lora.enabled and cfg.lora.experts and cfg.lora.dropout:
        raise ConfigError(f"lora.experts=true needs lora.dropout=0 (got {cfg.lora.dropout}): PEFT cannot apply "
                          "dropout to fused expert weights")
    if hasattr(cfg, "data") and not (cfg.data.prompt_key and cfg.data.answer_key):
        raise ConfigError("data.prompt_key and data.answer_key must name columns (EasyR1 format); image_key / "
                          "video_key may be empty")
    if hasattr(cfg, "vision"):
        v = cfg.vision
        if v.min_pixels > v.max_pixels:
            raise ConfigError(f"vision.min_pixels ({v.min_pixels}) > vision.max_pixels ({v.max_pixels})")
        if v.min_frames > v.max_frames:
            raise ConfigError(f"vision.min_frames ({v.min_frames}) > vision.max_frames ({v.max_frames})")


# Seed streams of a step: the groups of dynamic sampling's rounds take 0 .. prompts_per_step x
# max_rounds - 1; difficulty augmentation and T-GRPO offset them by multiples of this.
MAX_STREAMS = 100_000


def check_vllm(cfg: TrainConfig) -> None:
    """The vLLM backend's settings against the run's."""
    v = cfg.generation.vllm
    if cfg.generation.backend != "vllm":
        return
    if cfg.loss.objective == "reg_grpo" and v.is_mode.startswith("token"):
        raise ConfigError(f"generation.vllm.is_mode={v.is_mode} with loss.objective=reg_grpo: Reg-GRPO regresses whole "
                          "sequences, so its importance weight is a sequence's; use sequence_truncate or sequence_mask")
    if v.sync_every > 1 and (cfg.save_every % v.sync_every or cfg.max_steps % v.sync_every):
        raise ConfigError(f"generation.vllm.sync_every={v.sync_every} needs save_every ({cfg.save_every}) and "
                          f"max_steps ({cfg.max_steps}) to be multiples of it: a checkpoint between syncs could not "
                          "restore the engine's older weights, and resume would not be exact")


def check_tools(cfg: TrainConfig) -> None:
    """The multi-turn tool settings against the run's."""
    t = cfg.tools
    if t.enabled and t.min_pixels > t.max_pixels:
        raise ConfigError(f"tools.min_pixels={t.min_pixels} is above tools.max_pixels={t.max_pixels}")
    if t.credit == "gigpo" and (cfg.loss.objective != "clipped_token" or cfg.advantage.scale == "batch"
                                or cfg.advantage.combine != "sum_then_normalize" or not t.enabled):
        raise ConfigError("tools.credit=gigpo gives each turn its own advantage: it needs tools.enabled, the "
                          "token-level objective (loss.objective=clipped_token) and group advantages "
                          "(advantage.scale group or none, advantage.combine=sum_then_normalize)")
    if t.enabled and cfg.generation.backend != "hf":  # else an engine would be built and never used
        raise ConfigError(f"tools.enabled rolls out with the trainer's multi-turn generator (models/multiturn.py); "
                          f"generation.backend={cfg.generation.backend} does not run tool calls yet: use backend=hf")
    if t.enabled and not (t.names or t.mcp_servers):
        raise ConfigError("tools.enabled needs tools: set tools.names or tools.mcp_servers")


def check_reward_terms(cfg: TrainConfig) -> None:
    """The reward terms and the methods that add to them, combined as they can work."""
    r = cfg.reward
    if r.overlong_penalty > 0 and "overlong" in r.functions:
        raise ConfigError("reward.overlong_penalty > 0 adds DAPO's overlong term and reward.functions lists "
                          "`overlong` too: it would count twice; keep one")
    if (r.overlong_penalty > 0 or "overlong" in r.functions) and r.overlong_buffer > cfg.generation.max_new_tokens:
        raise ConfigError(f"reward.overlong_buffer ({r.overlong_buffer}) exceeds generation.max_new_tokens "
                          f"({cfg.generation.max_new_tokens}): DAPO's overlong window must lie inside the budget")
    if cfg.prompts_per_step * cfg.dynamic_sampling.max_rounds >= MAX_STREAMS:
        raise ConfigError(f"prompts_per_step x dynamic_sampling.max_rounds must stay below {MAX_STREAMS} "
                          "(each group's seed stream is its index in the step)")
    if cfg.temporal.shuffled_generations > cfg.generation.num_generations:
        raise ConfigError(f"temporal.shuffled_generations ({cfg.temporal.shuffled_generations}) exceeds "
                          f"generation.num_generations ({cfg.generation.num_generations})")
    if "judge" in r.functions:
        j = r.judge
        if not j.model:
            raise ConfigError("reward.functions lists `judge`: set reward.judge.model (the served model's name, "
                              "or a local folder with reward.judge.backend=hf)")
        if not j.min_score < j.max_score:
            raise ConfigError(f"reward.judge.min_score ({j.min_score:g}) must be below max_score ({j.max_score:g})")
        rounds = -(-cfg.generation.num_generations // j.batch_size)
        worst = j.timeout_s * (j.retries + 1) * rounds
        if j.backend == "openai" and worst > r.timeout_s:
            raise ConfigError(f"a judge call on a group may take up to reward.judge.timeout_s x (retries + 1) x "
                              f"ceil(G / batch_size) = {worst:g} s, more than reward.timeout_s ({r.timeout_s:g} s), "
                              "which would abandon the call: lower the judge's timeout or retries, or raise "
                              "reward.timeout_s")
