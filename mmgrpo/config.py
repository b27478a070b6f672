"""Configuration: nested frozen dataclasses, one default per field, YAML files and `key=value` overrides.

Every setting lives here exactly once, with its allowed range. Loading validates: unknown or
duplicated keys, wrong types, values out of range (NaN included) and impossible combinations fail
with a message naming the key; nothing is read with a hidden default. A loaded config is frozen:
code that needs a variant builds one with `dataclasses.replace`.

Paper names (GRPO, Dr. GRPO, DAPO, GSPO, Reg-GRPO) are `PRESETS`: data that fills the settings a
user left unset (`loss.preset=dapo`). The objective (`loss.objective`), the token aggregation
(`loss.aggregation`) and the advantage scaling (`advantage.scale`) are separate settings.
This module imports no other mmgrpo module.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A field whose numbers (each element of a list / tuple; None is always allowed where the type
    allows it) must satisfy the bounds. Checked at load, the error names the key."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"bounds": bounds})
    return field(default=default, metadata={"bounds": bounds})


# config.json model_types of the supported families (the rows of mmgrpo.models.families.FAMILIES)
Family = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # hub id or local folder
    # "auto": the family config.json's model_type names; a family name must match it (a check), and
    # picks the tiny model `mmgrpo demo` builds
    family: Literal["auto"] | Family = "auto"
    # MoE families: weight of the router's load-balancing loss (Switch Transformer) added to the loss;
    # 0 = none (the RL objective alone). Refused for dense families
    router_aux_loss_coef: float = bounded(0.0, ge=0)
    trust_remote_code: bool = False
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    freeze_vision: bool = True  # vision tower frozen by default (DeepVideo-R1 §4 setting)


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = True  # False = full fine-tuning
    r: int = bounded(16, ge=1)
    alpha: int = bounded(32, ge=1)
    dropout: float = bounded(0.05, ge=0, lt=1)
    # Language-model projections (module names); empty = the family's own list (models.families:
    # attention and MLP, Qwen3.5's linear-attention projections too). The vision tower's are excluded by path
    target_modules: tuple[str, ...] = ()
    # MoE families: LoRA on the fused expert weights too (PEFT target_parameters; needs dropout 0)
    experts: bool = False


@dataclass(frozen=True)
class VisionConfig:
    """Frame sampling and pixel budgets; every field but the sample_* ceilings can be overridden per
    sample (TRL / ms-swift per-row `fps`, `nframes`, `min_pixels`, `max_pixels`)."""

    fps: float = bounded(2.0, gt=0)
    nframes: int | None = bounded(None, ge=1)  # when set, wins over fps
    min_frames: int = bounded(4, ge=1)
    max_frames: int = bounded(16, ge=1)
    min_pixels: int = bounded(56 * 56, ge=1)
    max_pixels: int = bounded(448 * 448, ge=1)  # per frame / image
    total_pixels: int | None = bounded(None, ge=1)  # whole video budget (all frames)
    # ceilings of a sample's own overrides: a row asking for 40 frames of 4K is decoded at these
    sample_max_frames: int = bounded(64, ge=1)
    sample_max_pixels: int = bounded(1024 * 28 * 28, ge=1)  # per frame / image, ~896 x 896
    max_prompt_length: int = bounded(4096, ge=1)  # tokens, vision included; never cut through vision tokens
    fit: Literal["shrink", "reject"] = "shrink"  # what to do when the vision tokens do not fit
    cache_size: int = bounded(64, ge=0)  # decoded clips kept in memory (LRU; 16 frames at 448x448 ~ 10 MB each)
    prompt_cache_size: int = bounded(64, ge=0)  # encoded prompts (pixel values included) kept by the trainer
    disk_cache: str | None = None  # folder for the on-disk frame cache


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()  # JSONL / JSON / parquet files or HF dataset folders
    eval: tuple[str, ...] = ()
    format: Literal["auto", "trl", "swift", "plain"] = "auto"
    on_bad_sample: Literal["raise", "skip"] = "raise"
    system_prompt: str | None = None
    prompt_suffix: str = ""  # appended to each question (e.g. the answer-format instruction)
    shuffle: bool = True
    # None: relative media paths resolve against each data file's folder and any path is followed
    # (as TRL / ms-swift do). A folder: relative paths resolve against it, and a path that leaves it
    # (`../`, absolute, `~`, a symlink pointing out) is a bad sample.
    media_root: str | None = None


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["hf"] = "hf"  # rollout backend (mmgrpo.models.backends)
    num_generations: int = bounded(8, ge=2)  # G: a group needs two completions to compare
    max_new_tokens: int = bounded(256, ge=1)
    temperature: float = bounded(1.0, gt=0)  # GRPO needs sampled, not greedy, completions
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = bounded(0, ge=0)  # 0 = off


@dataclass(frozen=True)
class RewardConfig:
    # names of built-ins (mmgrpo.trainer.rewards.REWARDS) or "path/to/file.py:function"
    functions: tuple[str, ...] = ("accuracy", "format")
    weights: tuple[float, ...] = (1.0, 0.5)
    on_error: Literal["raise", "zero"] = "raise"
    timeout_s: float = bounded(120.0, gt=0)  # per call of one function on a group; a timeout counts as an error
    numeric_tolerance: float = bounded(1e-2, ge=0)  # relative; evaluation scores with the same value
    overlong_buffer: int = bounded(64, ge=1)  # soft overlong penalty window C (DAPO §3.4)


@dataclass(frozen=True)
class AdvantageConfig:
    """How per-function rewards become one advantage per completion (trainer/advantages.py)."""

    combine: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    scale: Literal["group", "batch", "none"] = "group"  # std of the group (GRPO), of the batch, or none (Dr. GRPO)
    eps: float = bounded(1e-4, gt=0)


@dataclass(frozen=True)
class LossConfig:
    objective: Literal["clipped_token", "gspo", "reg_grpo"] = "reg_grpo"  # trainer.losses.OBJECTIVES
    # a paper's settings (PRESETS) under the user's own: every field the YAML / overrides leave
    # unset in loss / advantage takes the preset's value, e.g. loss.preset=dapo
    preset: Literal["none", "grpo", "dr_grpo", "dapo", "gspo", "reg_grpo"] = "none"
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_sum_const"] = "seq_mean_token_mean"
    beta: float = bounded(0.0, ge=0)  # KL coefficient; 0 skips the reference forward entirely
    epsilon_low: float = bounded(0.2, ge=0, lt=1)
    epsilon_high: float = bounded(0.2, ge=0)
    reg_eps: float = bounded(1e-6, gt=0)  # Reg-GRPO: eps inside the square root (DeepVideo-R1 App. A; NaN at 0)
    reg_ratio: Literal["sum", "mean"] = "sum"  # Reg-GRPO sequence log-ratio: token sum (paper) or mean
    # k3 KL times the (differentiable) importance ratio: unbiased reverse-KL gradient (DeepSeek-V3.2,
    # TRL's use_bias_correction_kl); False = DeepSeekMath's plain k3 (eq. 4)
    kl_importance_weight: bool = False


@dataclass(frozen=True)
class OptimConfig:
    lr: float = bounded(1e-5, ge=0)  # 0 trains nothing (a dry run); negative would ascend
    weight_decay: float = bounded(0.0, ge=0)
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1)
    warmup_steps: int = bounded(0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = bounded(1.0, gt=0)  # a negative norm would reverse every update
    grad_accum: int = bounded(1, ge=1)
    updates_per_rollout: int = bounded(1, ge=1)  # mu: >1 makes training off-policy (clipping / GSPO matter then)


@dataclass(frozen=True)
class AugmentConfig:
    """Difficulty-aware augmentation (DeepVideo-R1 §3.3)."""

    enabled: bool = False
    window: int = bounded(100, ge=1)  # W: replay window of group mean rewards
    dead_zone: float = bounded(0.1, ge=0)  # delta: |dR| < delta leaves the sample alone
    only_zero_variance: bool = True  # augment only groups whose rewards are all equal
    max_extra_rollouts: int = bounded(4, ge=0)  # cap of augmented groups per step
    harder: tuple[str, ...] = ("gaussian_noise",)
    adaptive: bool = True  # strength grows with |dR|; False = fixed strength (ablation)
    fixed_strength: float = bounded(0.5, ge=0, le=1)
    max_strength: float = bounded(1.0, ge=0, le=1)
    strength_scale: float = bounded(1.0, ge=0)  # strength = min(max_strength, scale * |dR|)
    easier: bool = True  # reasoning hints for hard samples
    hint_allow_answer: bool = False
    # a completion serves as a hint trace only with a combined reward >= this (1.0 = a correct
    # answer under the default reward weights); a well-formatted wrong answer must not become a hint
    trace_min_reward: float = 1.0


@dataclass(frozen=True)
class EvalConfig:
    every: int = bounded(0, ge=0)  # held-out evaluation every N steps (0 = never during training)
    batch_size: int = bounded(8, ge=1)
    max_new_tokens: int = bounded(64, ge=1)
    limit: int | None = bounded(None, ge=1)
    num_samples: int = bounded(1, ge=1)  # K completions per prompt: 1 = greedy; K > 1 sampled (pass@K, vote)
    temperature: float = bounded(1.0, gt=0)  # sampling temperature, used only when num_samples > 1
    seed: int = bounded(0, ge=0)  # sampling seed (num_samples > 1); the caller's RNG state is left untouched


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/mmgrpo"
    seed: int = bounded(0, ge=0)
    max_steps: int = bounded(100, ge=1)
    prompts_per_step: int = bounded(8, ge=1)  # groups per optimizer step (before grad accumulation)
    forward_mode: Literal["shared", "repeat"] = "shared"  # shared-prefix forward (one prompt per group)
    save_every: int = bounded(50, ge=0)  # 0 = only at the end
    save_total_limit: int | None = bounded(None, ge=1)  # None = keep every checkpoint
    resume_from: str | None = None  # "auto" | checkpoint path
    init_from: str | None = None  # start weights (e.g. an `mmgrpo sft` checkpoint)
    log_every: int = bounded(1, ge=1)
    sample_every: int = bounded(10, ge=0)  # log sample completions every N steps (0 = never)
    report_to: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl", "tensorboard")
    progress_bar: bool = True


@dataclass(frozen=True)
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    output_dir: str = "runs/mmgrpo-sft"
    seed: int = bounded(0, ge=0)
    max_steps: int = bounded(100, ge=1)
    batch_size: int = bounded(8, ge=1)
    # "answer": reference answers wrapped by `target_template`; a format warm-up uses random labels
    target_template: str = "<answer>{answer}</answer>"
    save_every: int = bounded(0, ge=0)
    log_every: int = bounded(10, ge=1)
    progress_bar: bool = True


# Paper settings. `loss.preset=NAME` puts these under the user's own values: every key listed here
# that the YAML / overrides do not set takes the preset's value. The trainer reads only the
# resulting settings, never the preset's name.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # DeepSeekMath §4.1 / §5.2: clip 0.2, beta 0.04, group std normalisation, length-normalised mean
    "grpo": {"loss": {"objective": "clipped_token", "aggregation": "seq_mean_token_mean", "epsilon_low": 0.2,
                      "epsilon_high": 0.2, "beta": 0.04}, "advantage": {"scale": "group"}},
    # Dr. GRPO (arXiv 2503.20783) §3.2: no std, constant (generation budget) normaliser, no KL
    "dr_grpo": {"loss": {"objective": "clipped_token", "aggregation": "seq_sum_const", "epsilon_low": 0.2,
                         "epsilon_high": 0.2, "beta": 0.0}, "advantage": {"scale": "none"}},
    # DAPO (arXiv 2503.14476) §3.1 clip-higher 0.2 / 0.28, §3.3 token-level loss, no KL (§2.3)
    "dapo": {"loss": {"objective": "clipped_token", "aggregation": "token_mean", "epsilon_low": 0.2,
                      "epsilon_high": 0.28, "beta": 0.0}, "advantage": {"scale": "group"}},
    # GSPO (arXiv 2507.18071) §5.1: sequence ratio clipped at 3e-4 (left) / 4e-4 (right), no KL
    "gspo": {"loss": {"objective": "gspo", "aggregation": "seq_mean_token_mean", "epsilon_low": 3e-4,
                      "epsilon_high": 4e-4, "beta": 0.0}, "advantage": {"scale": "group"}},
    # DeepVideo-R1 (arXiv 2506.07464) §4, SEED-Bench-R1 runs: beta 0.1, group z-score target, sum log-ratio
    "reg_grpo": {"loss": {"objective": "reg_grpo", "aggregation": "seq_mean_token_mean", "beta": 0.1,
                          "reg_ratio": "sum"}, "advantage": {"scale": "group"}},
}

# Keys of earlier releases, with what replaced them (an old config fails with this hint).
RENAMED = {
    "loss.name": "loss.objective (clipped_token | gspo | reg_grpo) and loss.preset (a paper's settings: grpo, "
                 "dr_grpo, dapo, gspo, reg_grpo)",
    "loss.advantage_scale": "advantage.scale",
    "loss.adv_eps": "advantage.eps",
    "reward.combine": "advantage.combine",
}


# ----------------------------------------------------------------------------------------------
# loading, overrides, validation


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
        kwargs[name] = _coerce(value, hints[name], key)
        _check_bounds(kwargs[name], fields[name].metadata.get("bounds", {}), key)
    return cls(**kwargs)


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


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from a YAML file (optional) and `key=value` overrides, then validate it."""
    values: dict = {}
    if path is not None:
        loaded = _yaml(Path(path).read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        values = loaded
    values = _merge(values, parse_overrides(overrides or []))
    if cls is TrainConfig:
        values = with_preset(values)
    cfg = _build(cls, values)
    validate(cfg)
    return cfg


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
        if cfg.prompts_per_step % cfg.optim.grad_accum:
            raise ConfigError("prompts_per_step must be a multiple of optim.grad_accum")
        if cfg.resume_from and cfg.init_from:
            raise ConfigError("resume_from and init_from exclude each other: resume continues a run, init starts one")
        if cfg.eval.every and not cfg.data.eval:
            raise ConfigError(f"eval.every={cfg.eval.every} needs held-out data: set data.eval (or eval.every=0)")
    if hasattr(cfg, "lora") and cfg.lora.enabled and cfg.lora.experts and cfg.lora.dropout:
        raise ConfigError(f"lora.experts=true needs lora.dropout=0 (got {cfg.lora.dropout}): PEFT cannot apply "
                          "dropout to fused expert weights")
    if hasattr(cfg, "vision"):
        v = cfg.vision
        if v.min_pixels > v.max_pixels:
            raise ConfigError(f"vision.min_pixels ({v.min_pixels}) > vision.max_pixels ({v.max_pixels})")
        if v.min_frames > v.max_frames:
            raise ConfigError(f"vision.min_frames ({v.min_frames}) > vision.max_frames ({v.max_frames})")
