"""Configuration: nested frozen dataclasses, one default per field, YAML files and `key=value` overrides.

Every setting lives here exactly once, with its allowed range. Loading validates: unknown or
duplicated keys, wrong types, values out of range (NaN included) and impossible combinations fail
with a message naming the key; nothing is read with a hidden default. A loaded config is frozen:
code that needs a variant builds one with `dataclasses.replace`.

Paper names (GRPO, Dr. GRPO, DAPO, GSPO, Reg-GRPO, TIC-GRPO, T-GRPO) are `PRESETS` (presets.py): data
that fills the settings a user left unset (`loss.preset=dapo`). The objective (`loss.objective`), the token aggregation
(`loss.aggregation`) and the advantage scaling (`advantage.scale`) are separate settings.
This module imports no other mmgrpo module but `presets` (the paper settings, plain data).
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

from mmgrpo.presets import PRESETS, RENAMED  # noqa: F401 (re-exported: paper settings as data)


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


JUDGE_TEMPLATE = (
    "You are grading an answer to a question against the reference answer.\n"
    "Question: {question}\nReference answer: {reference}\nAnswer to grade: {answer}\n"
    "Reply with a score from 0 (wrong) to 10 (fully correct and equivalent to the reference) "
    "in the form <score>N</score> and nothing else."
)


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM-as-judge reward (`judge` in reward.functions; mmgrpo/trainer/judge.py)."""

    backend: Literal["openai", "hf"] = "openai"  # an OpenAI-compatible server (vLLM, SGLang, an API) or a local model
    model: str = ""  # the served model's name (openai) or a local folder / hub id of a causal LM or VLM (hf)
    base_url: str | None = None  # openai: None = $OPENAI_BASE_URL
    api_key: str | None = None  # openai: None = the variable named by api_key_env (a local server takes any)
    api_key_env: str = "OPENAI_API_KEY"
    # placeholders {question}, {reference}, {answer} (the <answer> tag's text, else the completion), {completion}
    template: str = JUDGE_TEMPLATE
    # one capture group; the reply must match it exactly once, else a parse failure (counted, never 0)
    score_pattern: str = r"<score>\s*(-?\d+(?:\.\d+)?)\s*</score>"
    min_score: float = 0.0  # the judge's scale; a score s becomes (s - min) / (max - min) in [0, 1]
    max_score: float = 10.0  # a score outside [min, max] is a parse failure
    max_new_tokens: int = bounded(64, ge=1)
    temperature: float = bounded(0.0, ge=0)  # 0 = greedy: identical queries get identical grades (cached)
    batch_size: int = bounded(8, ge=1)  # concurrent requests (openai) / rows per generate call (hf)
    timeout_s: float = bounded(30.0, gt=0)  # per request
    retries: int = bounded(2, ge=0)  # further tries of a request that errored or timed out (not of a parse failure)
    cache_size: int = bounded(4096, ge=0)  # identical queries answered from memory (LRU)
    on_failure: Literal["skip", "raise"] = "skip"  # skip: that completion's judge reward is None (counted)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"  # hf: the judge's weights


@dataclass(frozen=True)
class RewardConfig:
    # names of built-ins (mmgrpo.trainer.rewards.REWARDS), "judge" (the `judge` section) or "path/to/file.py:function"
    functions: tuple[str, ...] = ("accuracy", "format")
    weights: tuple[float, ...] = (1.0, 0.5)
    on_error: Literal["raise", "zero"] = "raise"
    timeout_s: float = bounded(120.0, gt=0)  # per call of one function on a group; a timeout counts as an error
    numeric_tolerance: float = bounded(1e-2, ge=0)  # relative; evaluation scores with the same value
    overlong_buffer: int = bounded(64, ge=1)  # soft overlong penalty window C (DAPO §3.4)
    # weight of DAPO's soft overlong punishment (§3.4) as one more reward term; 0 = off (or list
    # `overlong` in functions yourself); the dapo preset sets 1
    overlong_penalty: float = bounded(0.0, ge=0)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass(frozen=True)
class DynamicSamplingConfig:
    """DAPO §3.2 dynamic sampling: groups whose rewards are all equal are dropped and more prompts
    are rolled out until the step has prompts_per_step informative groups (trainer/dynamic.py)."""

    enabled: bool = False
    max_rounds: int = bounded(4, ge=1)  # rollout rounds per step, the first included; then train on what there is


@dataclass(frozen=True)
class TemporalConfig:
    """T-GRPO (Video-R1, arXiv 2503.21776, eq. 1): video prompts are also rolled out on their clip
    with the frames shuffled; when ordered accuracy p >= margin * shuffled accuracy p~ (> with
    `strict`), every correct ordered completion gets `bonus` (trainer/temporal.py). Only the ordered
    group trains. Defaults: Video-R1's released code (p >= 0.8 p~); its eq. 1 is margin 1, strict."""

    enabled: bool = False
    shuffled_generations: int = bounded(0, ge=0)  # completions on the shuffled clip; 0 = G // 2 (the paper)
    margin: float = bounded(0.8, ge=0)  # mu
    strict: bool = False  # p > margin * p~ instead of >=
    bonus: float = bounded(0.3, ge=0)  # alpha
    correct_above: float = bounded(0.1, ge=0)  # an accuracy above this counts as correct (Video-R1's code)


@dataclass(frozen=True)
class AdvantageConfig:
    """How per-function rewards become one advantage per completion (trainer/advantages.py)."""

    combine: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    scale: Literal["group", "batch", "none"] = "group"  # std of the group (GRPO), of the batch, or none (Dr. GRPO)
    eps: float = bounded(1e-4, gt=0)


@dataclass(frozen=True)
class LossConfig:
    objective: Literal["clipped_token", "gspo", "reg_grpo", "tic_grpo"] = "reg_grpo"  # trainer.losses.OBJECTIVES
    # a paper's settings (PRESETS) under the user's own: every field the YAML / overrides leave
    # unset in the sections the preset names takes the preset's value, e.g. loss.preset=dapo
    preset: Literal["none", "grpo", "dr_grpo", "dapo", "gspo", "reg_grpo", "tic_grpo", "t_grpo"] = "none"
    # seq_sum: (1/G) sum_i sum_t, the sequence-level KL that Reg-GRPO's summed log-ratio pairs with
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_sum_const", "seq_sum"] = "seq_mean_token_mean"
    beta: float = bounded(0.0, ge=0)  # KL coefficient; 0 skips the reference forward entirely
    epsilon_low: float = bounded(0.2, ge=0, lt=1)
    epsilon_high: float = bounded(0.2, ge=0)
    reg_eps: float = bounded(1e-6, gt=0)  # Reg-GRPO: eps inside the square root (DeepVideo-R1 App. A; NaN at 0)
    reg_ratio: Literal["sum", "mean"] = "sum"  # Reg-GRPO sequence log-ratio: token sum (paper) or mean
    # Reg-GRPO regression weight per group: "std" = its detached sqrt(var + reg_eps), so the gradient
    # does not grow as 1/sqrt(reg_eps) on-policy and beta / lr / max_grad_norm keep their meaning;
    # "none" = the paper's loss as written (trainer.losses.reg_grpo_loss, docs/methods.md)
    reg_scale: Literal["std", "none"] = "std"
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
    harder: tuple[str, ...] = ("gaussian_noise",)  # perturbations of easy samples, in order; empty = none
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
    # RL: no LoRA dropout. With several updates per rollout the old log-probs are taken without
    # dropout and the first pass's ratios would be dropout noise (Reg-GRPO z-scores it to unit
    # variance); `validate` refuses dropout > 0 with optim.updates_per_rollout > 1.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(dropout=0.0))
    vision: VisionConfig = field(default_factory=VisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
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
    # "answer": reference answers wrapped by `target_template`; a format warm-up uses random labels.
    # Other columns of the row can be named too: "{trace}" trains on a reference reasoning trace
    target_template: str = "<answer>{answer}</answer>"
    save_every: int = bounded(0, ge=0)
    log_every: int = bounded(10, ge=1)
    progress_bar: bool = True


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
        check_reward_terms(cfg)
        if cfg.prompts_per_step % cfg.optim.grad_accum:
            raise ConfigError("prompts_per_step must be a multiple of optim.grad_accum")
        if cfg.resume_from and cfg.init_from:
            raise ConfigError("resume_from and init_from exclude each other: resume continues a run, init starts one")
        if cfg.optim.updates_per_rollout > 1 and cfg.lora.enabled and cfg.lora.dropout > 0:
            raise ConfigError(f"lora.dropout={cfg.lora.dropout:g} with optim.updates_per_rollout="
                              f"{cfg.optim.updates_per_rollout}: the old log-probs are computed without dropout, so "
                              "every ratio of the first pass would be dropout noise; set lora.dropout=0")
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


# Seed streams of a step: the groups of dynamic sampling's rounds take 0 .. prompts_per_step x
# max_rounds - 1; difficulty augmentation and T-GRPO offset them by multiples of this.
MAX_STREAMS = 100_000


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
