"""Configuration: nested dataclasses, one default per field, YAML files and `key=value` overrides.

Every setting lives here exactly once. Loading validates: unknown keys, wrong types and impossible
combinations fail with a message naming the key; nothing is read with a hidden default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    name_or_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # hub id or local folder
    trust_remote_code: bool = False
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    freeze_vision: bool = True  # vision tower frozen by default (DeepVideo-R1 §4 setting)


@dataclass
class LoraConfig:
    enabled: bool = True  # False = full fine-tuning
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Language-model projections only; the vision tower's are excluded by the regex in models.lora
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class VisionConfig:
    """Frame sampling and pixel budgets; every field can be overridden per sample (ALGORITHMS.md §7)."""

    fps: float = 2.0
    nframes: int | None = None  # when set, wins over fps
    min_frames: int = 4
    max_frames: int = 16
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448  # per frame / image
    total_pixels: int | None = None  # whole video budget (all frames)
    max_prompt_length: int = 4096  # tokens, vision included; never truncated through vision tokens
    fit: Literal["shrink", "reject"] = "shrink"  # what to do when the vision tokens do not fit
    cache_size: int = 64  # decoded clips kept in memory (LRU; 16 frames at 448x448 ~ 10 MB each)
    prompt_cache_size: int = 64  # encoded prompts (pixel values included) kept by the trainer (LRU)
    disk_cache: str | None = None  # folder for the on-disk frame cache


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # JSONL / JSON / parquet files or HF dataset folders
    eval: list[str] = field(default_factory=list)
    format: Literal["auto", "trl", "swift", "plain"] = "auto"
    on_bad_sample: Literal["raise", "skip"] = "raise"
    system_prompt: str | None = None
    prompt_suffix: str = ""  # appended to each question (e.g. the answer-format instruction)
    shuffle: bool = True


@dataclass
class GenerationConfig:
    num_generations: int = 8  # G
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off


@dataclass
class RewardConfig:
    # names of built-ins (mmgrpo.trainer.rewards.REWARDS) or "path/to/file.py:function"
    functions: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    weights: list[float] = field(default_factory=lambda: [1.0, 0.5])
    combine: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    on_error: Literal["raise", "zero"] = "raise"
    numeric_tolerance: float = 1e-2  # relative
    overlong_buffer: int = 64  # soft overlong penalty window C (DAPO §3.4)


@dataclass
class LossConfig:
    name: Literal["grpo", "dr_grpo", "dapo", "gspo", "reg_grpo"] = "reg_grpo"
    # true: the paper settings of `name` (mmgrpo.trainer.losses.PRESETS) fill every loss field that the
    # YAML / overrides leave unset, e.g. loss.name=dapo loss.preset=true -> clip-higher + token_mean
    preset: bool = False
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_sum_const"] = "seq_mean_token_mean"
    advantage_scale: Literal["group", "batch", "none"] = "group"
    beta: float = 0.0  # KL coefficient; 0 skips the reference forward entirely
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    reg_eps: float = 1e-6  # Reg-GRPO: eps inside the square root (ALGORITHMS.md §3 pitfall 1)
    reg_ratio: Literal["sum", "mean"] = "sum"  # Reg-GRPO sequence log-ratio: token sum (paper) or mean
    adv_eps: float = 1e-4
    # k3 KL times the (differentiable) importance ratio: unbiased reverse-KL gradient (DeepSeek-V3.2,
    # TRL's use_bias_correction_kl); False = DeepSeekMath's plain k3 (ALGORITHMS.md §1)
    kl_importance_weight: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    updates_per_rollout: int = 1  # mu: >1 makes training off-policy (clipping / GSPO matter then)


@dataclass
class AugmentConfig:
    """Difficulty-aware augmentation (DeepVideo-R1 §3.3, ALGORITHMS.md §4)."""

    enabled: bool = False
    window: int = 100  # W: replay window of group mean rewards
    dead_zone: float = 0.1  # delta: |dR| < delta leaves the sample alone
    only_zero_variance: bool = True  # augment only groups whose rewards are all equal
    max_extra_rollouts: int = 4  # cap of augmented groups per step
    harder: list[str] = field(default_factory=lambda: ["gaussian_noise"])
    adaptive: bool = True  # strength grows with |dR|; False = fixed strength (ablation)
    fixed_strength: float = 0.5
    max_strength: float = 1.0
    strength_scale: float = 1.0  # strength = min(max_strength, scale * |dR|)
    easier: bool = True  # reasoning hints for hard samples
    hint_allow_answer: bool = False
    # a completion serves as a hint trace only with a combined reward >= this (1.0 = a correct
    # answer under the default reward weights); a well-formatted wrong answer must not become a hint
    trace_min_reward: float = 1.0


@dataclass
class EvalConfig:
    every: int = 0  # run the held-out evaluation every N steps (0 = never during training)
    batch_size: int = 8
    max_new_tokens: int = 64
    limit: int | None = None
    num_samples: int = 1  # K completions per prompt: 1 = greedy; K > 1 sampled (pass@K, majority vote)
    temperature: float = 1.0  # sampling temperature, used only when num_samples > 1
    seed: int = 0  # sampling seed (num_samples > 1); the caller's RNG state is left untouched


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/mmgrpo"
    seed: int = 0
    max_steps: int = 100
    prompts_per_step: int = 8  # groups per optimizer step (before grad accumulation)
    forward_mode: Literal["shared", "repeat"] = "shared"  # shared-prefix forward (one prompt per group)
    save_every: int = 50
    save_total_limit: int | None = None
    resume_from: str | None = None  # "auto" | checkpoint path
    init_from: str | None = None  # start weights (e.g. an `mmgrpo sft` checkpoint)
    log_every: int = 1
    sample_every: int = 10  # log sample completions every N steps
    report_to: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])  # + "wandb"
    progress_bar: bool = True


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    output_dir: str = "runs/mmgrpo-sft"
    seed: int = 0
    max_steps: int = 100
    batch_size: int = 8
    # "answer": reference answers wrapped by `target_template`; a format warm-up uses random labels
    target_template: str = "<answer>{answer}</answer>"
    save_every: int = 0
    log_every: int = 10
    progress_bar: bool = True


# ----------------------------------------------------------------------------------------------
# loading, overrides, validation


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where YAML/CLI spelling differs."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
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
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
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
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


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
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        values = loaded
    values = _merge(values, parse_overrides(overrides or []))
    if cls is TrainConfig:
        values = _with_loss_preset(values)
    cfg = _build(cls, values)
    validate(cfg)
    return cfg


def _with_loss_preset(values: dict) -> dict:
    """loss.preset: the variant's paper settings under the user's own loss settings."""
    from mmgrpo.trainer.losses import PRESETS  # the table lives with the losses it documents

    loss = values["loss"] if isinstance(values.get("loss"), dict) else {}
    if "preset" not in loss or not _coerce(loss["preset"], bool, "loss.preset"):
        return values
    name = loss["name"] if "name" in loss else LossConfig.name
    if name not in PRESETS:
        return values  # _build reports the unknown name
    return {**values, "loss": {**PRESETS[name], **loss}}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def validate(cfg: Any) -> None:
    """Impossible combinations, with messages that say what to change."""
    if isinstance(cfg, TrainConfig):
        g = cfg.generation.num_generations
        if g < 2:
            raise ConfigError("generation.num_generations must be >= 2: a group needs two completions to compare")
        if len(cfg.reward.functions) != len(cfg.reward.weights):
            raise ConfigError(
                f"reward.weights has {len(cfg.reward.weights)} entries for {len(cfg.reward.functions)} reward.functions"
            )
        if cfg.loss.name == "reg_grpo" and cfg.loss.reg_eps <= 0:
            raise ConfigError("loss.reg_eps must be > 0 (it sits inside the square root; 0 gives NaN gradients)")
        if cfg.optim.grad_accum < 1 or cfg.prompts_per_step % cfg.optim.grad_accum:
            raise ConfigError("prompts_per_step must be a multiple of optim.grad_accum")
        if cfg.generation.temperature <= 0:
            raise ConfigError("generation.temperature must be > 0: GRPO needs sampled, not greedy, completions")
        if cfg.resume_from and cfg.init_from:
            raise ConfigError("resume_from and init_from exclude each other: resume continues a run, init starts one")
    if hasattr(cfg, "vision"):
        v = cfg.vision
        if v.min_pixels > v.max_pixels:
            raise ConfigError(f"vision.min_pixels ({v.min_pixels}) > vision.max_pixels ({v.max_pixels})")
        if v.min_frames > v.max_frames:
            raise ConfigError(f"vision.min_frames ({v.min_frames}) > vision.max_frames ({v.max_frames})")
