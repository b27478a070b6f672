"""The tiny model's sizes (`TinySpec`), apart from the builder so that `mmgrpo tiny-model --help`
needs no torch."""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_FAMILY = "qwen2_5_vl"


@dataclass
class TinySpec:
    """Sizes of the tiny model. Defaults are small enough for fast CPU tests; mRoPE sections must
    sum to head_dim / 2 (head_dim = hidden / heads)."""

    hidden: int = 128
    layers: int = 2  # Qwen3.5: 4 (three linear-attention layers, then one full-attention layer)
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vocab_merges: int = 512
    max_position_embeddings: int = 8192
    min_pixels: int = 28 * 28
    max_pixels: int = 112 * 112
    seed: int = 0
    experts: int = 4  # MoE families
    active_experts: int = 2
    tool_tokens: bool = False  # the tool-call corpus in the vocabulary (off: the tiny models of earlier tests stay as they were)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def mrope_section(self, rotary_dims: int | None = None) -> list[int]:
        half = (rotary_dims or self.head_dim) // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]
