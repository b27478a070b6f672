"""A tiny Qwen2.5-VL built offline: random weights, a locally trained byte-level BPE tokenizer with
Qwen's special tokens, and a real `Qwen2_5_VLProcessor` with a Qwen2.5-VL-style chat template.

The folder it writes is a plain Hugging Face model folder: `AutoProcessor.from_pretrained` and
`Qwen2_5_VLForConditionalGeneration.from_pretrained` load it without mmgrpo. Tests and the demo use
it; real models go through `mmgrpo.models.loading` unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from mmgrpo.models.loading import save_processor_files
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# Qwen2 special tokens, in Qwen's order. `<|endoftext|>` is pad, `<|im_end|>` ends an assistant turn.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Reasoning/answer tags are single (non-special) tokens so that decoded completions keep them.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's public chat template (vision placeholders per content item).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A small corpus for the BPE merges: chat words, QA words, digits, letters, colours, shapes.
_CORPUS = """
You are a helpful assistant. system user assistant
What colour is the square in the video? What color is the object? Which direction does it move?
Answer with the option's letter from the given choices directly. Options: A. B. C. D. E. F.
How many objects are there? Count the shapes. left right up down top bottom centre center
red green blue yellow white black orange purple cyan magenta gray grey brown pink
square circle triangle star cross ball box person car dog cat the a an is are of in on at to
first then after before during start end second seconds frame frames video image picture
Think about the question step by step, then give the final answer in the answer tag.
yes no true false 0 1 2 3 4 5 6 7 8 9 10 100 1000 0.5 3.14 answer question reasoning because
"""


@dataclass
class TinySpec:
    """Sizes of the tiny model. Defaults are small enough for fast CPU tests; mRoPE sections must
    sum to head_dim / 2 (head_dim = hidden / heads)."""

    hidden: int = 128
    layers: int = 2
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

    def mrope_section(self) -> list[int]:
        half = self.hidden // self.heads // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]


def build_tokenizer(spec: TinySpec) -> Qwen2Tokenizer:
    """Byte-level BPE trained on `_CORPUS`, wrapped as Qwen2Tokenizer with Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + spec.vocab_merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    vocab, merges = _vocab_and_merges(bpe)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
    )
    tok.add_tokens(TAG_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _vocab_and_merges(bpe: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def build_processor(spec: TinySpec) -> Qwen2_5_VLProcessor:
    tok = build_tokenizer(spec)
    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=CHAT_TEMPLATE
    )


def build_config(spec: TinySpec, tok: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": spec.mrope_section()},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[spec.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny(spec: TinySpec | None = None) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Model (random weights, fp32, seeded) and processor, in memory."""
    spec = spec or TinySpec()
    processor = build_processor(spec)
    config = build_config(spec, processor.tokenizer)
    torch.manual_seed(spec.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    return model, processor


def save_tiny(out_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """Write the tiny model as a plain HF folder (safetensors, config, generation config, processor files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny(spec)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_processor_files(processor, out)
    return out
