"""Datasets -> typed samples -> model inputs, for Qwen-VL image and video QA (any family's processor).

    result = load_samples("train.jsonl")                 # formats.py: trl / swift / plain
    encoder = PromptEncoder(processor, vision_cfg)       # encode.py
    inputs = encoder.encode(result.samples[0])           # PromptInputs (input_ids, vision, ...)
"""
from mmgrpo.processors.budget import Budget, Grid, resolve_budget, vision_tokens
from mmgrpo.processors.cache import MediaCache
from mmgrpo.processors.encode import LoadedMedia, PromptEncoder, count_tokens, decode_media
from mmgrpo.processors.formats import LoadResult, load_samples, load_samples_from_config
from mmgrpo.processors.image import load_image
from mmgrpo.processors.sample import (
    BadSampleError,
    Media,
    MediaError,
    MediaOptions,
    PromptInputs,
    Sample,
    VisionInputs,
)
from mmgrpo.processors.video import Frames, decode_video

__all__ = [
    "BadSampleError", "Budget", "Frames", "Grid", "LoadResult", "LoadedMedia", "Media", "MediaCache",
    "MediaError", "MediaOptions", "PromptEncoder", "PromptInputs", "Sample", "VisionInputs", "count_tokens",
    "decode_media", "decode_video", "load_image", "load_samples", "load_samples_from_config", "resolve_budget",
    "vision_tokens",
]
