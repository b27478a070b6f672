"""The settings: nested frozen dataclasses, one default and one allowed range per field (`bounded`).
Every setting lives here exactly once; `load.py` reads YAML and overrides into them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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
    # attention and MLP, Qwen3.5's linear-attention projections too). The vision tower's are excluded by
    # path; with model.freeze_vision=false every vision linear (blocks and merger) gets an adapter too
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
    # auto: per row by its columns (processors/formats.py); videor1 / easyr1: those projects' training data
    format: Literal["auto", "trl", "swift", "plain", "videor1", "easyr1"] = "auto"
    on_bad_sample: Literal["raise", "skip"] = "raise"
    system_prompt: str | None = None
    prompt_suffix: str = ""  # appended to each question (e.g. the answer-format instruction)
    shuffle: bool = True
    # None: relative media paths resolve against each data file's folder and any path is followed
    # (as TRL / ms-swift do). A folder: relative paths resolve against it, and a path that leaves it
    # (`../`, absolute, `~`, a symlink pointing out) is a bad sample.
    media_root: str | None = None
    # EasyR1-format columns, named as in EasyR1's `data:` section (its example config's values); ""
    # for image_key / video_key = no such column
    prompt_key: str = "problem"
    answer_key: str = "answer"
    image_key: str = "images"
    video_key: str = "videos"


@dataclass(frozen=True)
class VLLMConfig:
    """generation.backend=vllm: the in-process vLLM engine (models/vllm_backend.py, docs/vllm.md)."""

    # optimizer steps between weight syncs; > 1 samples from weights up to sync_every - 1 steps old
    # (off-policy, corrected by importance sampling); checkpoints must then land on sync steps
    sync_every: int = bounded(1, ge=1)
    # truncated importance sampling of trainer / engine log-probs (TRL's vllm_importance_sampling_*):
    # "none", or token / sequence ratios truncated at is_cap or masked to 0 above it. Reg-GRPO is a
    # sequence-level objective and takes the sequence modes
    is_mode: Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "sequence_truncate"
    is_cap: float = bounded(3.0, ge=1)  # TRL's vllm_importance_sampling_clip_max
    gpu_memory_utilization: float = bounded(0.3, gt=0, le=1)  # GPU share of the engine (weights + KV cache)
    cpu_kv_cache_gib: float = bounded(1.0, gt=0)  # CPU builds: VLLM_CPU_KVCACHE_SPACE (else 92% of RAM)
    sleep: bool = True  # release the engine's GPU memory during the update (vLLM sleep level 1) where supported
    max_images: int = bounded(4, ge=0)  # per prompt: vLLM sizes its encoder budget for this many
    max_videos: int = bounded(1, ge=0)


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["hf", "vllm"] = "hf"  # rollout backend (mmgrpo.models.backends.BACKENDS)
    num_generations: int = bounded(8, ge=2)  # G: a group needs two completions to compare
    max_new_tokens: int = bounded(256, ge=1)
    temperature: float = bounded(1.0, gt=0)  # GRPO needs sampled, not greedy, completions
    top_p: float = bounded(1.0, gt=0, le=1)
    top_k: int = bounded(0, ge=0)  # 0 = off
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


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
    # names of built-ins (mmgrpo.trainer.rewards.REWARDS), "judge" (the `judge` section),
    # "path/to/file.py:function" or "module.path:function" (e.g. trl.rewards:think_format_reward)
    functions: tuple[str, ...] = ("accuracy", "format")
    weights: tuple[float, ...] = (1.0, 0.5)
    on_error: Literal["raise", "zero"] = "raise"
    # what a user's function gets as `completions`: TRL's shape for conversational data (a list
    # [{"role": "assistant", "content": text}] per completion), or plain strings. Built-ins and
    # ms-swift ORM classes (`module:Class`) always get strings (trainer/rewards.py)
    completions: Literal["messages", "text"] = "messages"
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
class ToolsConfig:
    """Multi-turn tool-integrated rollouts (README "Tools (multi-turn)"): the policy calls tools
    mid-completion and reads their answers (text or images) as tool turns."""

    enabled: bool = False
    names: tuple[str, ...] = ("crop", "zoom", "frames", "calculator")  # built-ins, 'file.py:fn', 'module:fn'
    mcp_servers: tuple[str, ...] = ()  # shell commands that start MCP stdio servers; all their tools are added
    max_turns: int = bounded(4, ge=1)  # model turns per trajectory (a sample's `max_turns` can lower it)
    max_total_tokens: int = bounded(1024, ge=1)  # completion tokens, model and tool turns together
    timeout_s: float = bounded(10.0, gt=0)  # per tool call; a call past it answers with an error
    min_pixels: int = bounded(28 * 28, ge=1)  # per tool image
    max_pixels: int = bounded(448 * 448, ge=1)
    frames_fps: float = bounded(4.0, gt=0)  # the `frames` tool's rate
    frames_max: int = bounded(8, ge=2)  # frames one `frames` call returns at most
    mask_over_turn: bool = False  # Mini-o3 §3.3: trajectories that hit a cap get loss mask 0
    credit: Literal["trajectory", "gigpo"] = "trajectory"  # gigpo: + step advantages (arXiv 2505.10978)
    gigpo_gamma: float = bounded(0.95, ge=0, le=1)  # discount of the step returns (GiGPO §4)
    gigpo_omega: float = bounded(1.0, ge=0)  # weight of the step advantage (GiGPO eq. 8)


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
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    output_dir: str = "runs/mmgrpo"
    seed: int = bounded(0, ge=0)
    max_steps: int = bounded(100, ge=1)
    prompts_per_step: int = bounded(8, ge=1)  # groups per optimizer step (before grad accumulation)
    forward_mode: Literal["shared", "repeat"] = "shared"  # shared-prefix forward (one prompt per group)
    save_every: int = bounded(50, ge=0)  # 0 = only at the end
    save_total_limit: int | None = bounded(None, ge=1)  # None = keep every checkpoint
    resume_from: str | None = None  # "auto" | checkpoint path
    # start weights (e.g. an `mmgrpo sft` checkpoint). With resume_from too (the same command +
    # resume_from=auto): used when there is nothing to resume, else it must be the run's own
    init_from: str | None = None
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
    report_to: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl", "tensorboard")
    progress_bar: bool = True
