"""Configuration: nested frozen dataclasses, one default per field, YAML files and `key=value` overrides.

Every setting lives here exactly once, with its allowed range. Loading validates: unknown or
duplicated keys, wrong types, values out of range (NaN included) and impossible combinations fail
with a message naming the key; nothing is read with a hidden default. A loaded config is frozen:
code that needs a variant builds one with `dataclasses.replace`.

Paper names (GRPO, Dr. GRPO, DAPO, GSPO, Reg-GRPO, TIC-GRPO, T-GRPO) are `PRESETS` (config/presets.py): data
that fills the settings a user left unset (`loss.preset=dapo`). The objective (`loss.objective`), the token aggregation
(`loss.aggregation`) and the advantage scaling (`advantage.scale`) are separate settings.
This package imports no other mmgrpo module: `schema.py` (the sections), `presets.py` (paper
settings, plain data) and `load.py` (reading and validation).
"""
from mmgrpo.config.load import (  # noqa: F401
    MAX_STREAMS, SFT_SHARED, check_reward_terms, is_train_config, load_config, parse_overrides, read_yaml, sft_values,
    to_dict, validate, with_preset)
from mmgrpo.config.presets import PRESETS, RENAMED  # noqa: F401
from mmgrpo.config.schema import (  # noqa: F401
    JUDGE_TEMPLATE, AdvantageConfig, AugmentConfig, ConfigError, DataConfig, DynamicSamplingConfig, EvalConfig, Family,
    GenerationConfig, JudgeConfig, LoraConfig, LossConfig, ModelConfig, OptimConfig, RewardConfig, SFTConfig,
    TemporalConfig, ToolsConfig, TrainConfig, VisionConfig, VLLMConfig, bounded)
