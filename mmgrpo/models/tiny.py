"""Tiny models of every supported family, built offline: random weights, a locally trained byte-level
BPE tokenizer with Qwen's special tokens, and the family's real processor classes
(`Qwen2VLProcessor`, `Qwen2_5_VLProcessor`, `Qwen3VLProcessor` with `Qwen3VLVideoProcessor`) with
its own patch grid and a chat template in the family's style.

`TINY_CONFIGS` holds one config builder per family (`models.families.FAMILIES`): the same small
sizes, each family's own layout (Qwen3-VL's deepstack layer and interleaved mRoPE, Qwen3.5's three
linear-attention layers and one full-attention layer, 4 experts of which 2 are active in the MoE
families). The folder `save_tiny` writes is a plain Hugging Face model folder: `AutoProcessor` and
the family's class load it without mmgrpo. Tests and the demo use these; real models go through
`mmgrpo.models.loading` unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PretrainedConfig

from mmgrpo.models.families import FAMILIES, family_named
from mmgrpo.models.loading import save_processor_files
from mmgrpo.models.tiny_spec import DEFAULT_FAMILY, TinySpec  # noqa: F401 (re-exported)

# Qwen2 special tokens, in Qwen's order. `<|endoftext|>` is pad, `<|im_end|>` ends an assistant turn.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Reasoning/answer tags are single (non-special) tokens so that decoded completions keep them.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
# Qwen's tool-call tags, single tokens as in the released tokenizers (TinySpec.tool_tokens): the
# rollout stops a model turn at `</tool_call>`.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

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


# Qwen3-VL style: no default system turn, and a video item is the bare `<|video_pad|>`: the Qwen3-VL
# processor (transformers 5.24) writes each temporal patch as `<t seconds><|vision_start|>pads
# <|vision_end|>` itself, so a template that also wrapped the video in vision markers would nest them.
QWEN3_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|video_pad|>"
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


# With TinySpec.tool_tokens, tool-call JSON joins the corpus, so calls are a few BPE tokens as in
# Qwen's tokenizer (character by character they would be ~70 tokens the policy must all get right).
_TOOL_CORPUS = """
{"name": "crop", "arguments": {"box": [0, 0, 1, 1], "relative": true}} {"name": "zoom", "arguments": {"x": 0.5, "y": 0.5, "factor": 2}}
{"name": "frames", "arguments": {"start": 1, "end": 2}} {"name": "calculator", "arguments": {"expression": "2 + 2"}}
"box": [216, 216, 224, 224] "box": [100, 200, 300, 400] "media": 0 "time": 1.5 Error: did not answer within
"""
def build_tokenizer(spec: TinySpec, family: str = DEFAULT_FAMILY):
    """Byte-level BPE trained on `_CORPUS`, wrapped in the family's tokenizer class (Qwen2Tokenizer;
    Qwen3_5Tokenizer for Qwen3.5) with Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + spec.vocab_merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS + (_TOOL_CORPUS if spec.tool_tokens else "")] * 4, trainer=trainer)
    vocab, merges = _vocab_and_merges(bpe)
    cls = getattr(transformers, TOKENIZERS[family])
    tok = cls(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
              additional_special_tokens=SPECIAL_TOKENS)
    tok.add_tokens(TAG_TOKENS + (TOOL_TOKENS if spec.tool_tokens else []))
    tok.chat_template = CHAT_TEMPLATES[family]
    return tok


def _vocab_and_merges(bpe: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


CHAT_TEMPLATES = {name: QWEN3_CHAT_TEMPLATE if f.video_time == "timestamps" else CHAT_TEMPLATE
                  for name, f in FAMILIES.items()}
# the tokenizer class each family's checkpoints name (Qwen3.5 has its own pre-tokenizer)
TOKENIZERS = {"qwen2_vl": "Qwen2Tokenizer", "qwen2_5_vl": "Qwen2Tokenizer", "qwen3_vl": "Qwen2Tokenizer",
              "qwen3_vl_moe": "Qwen2Tokenizer", "qwen3_5": "Qwen3_5Tokenizer", "qwen3_5_moe": "Qwen3_5Tokenizer"}
VIDEO_PROCESSORS = {"Qwen2VLProcessor": "Qwen2VLVideoProcessor", "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
                    "Qwen3VLProcessor": "Qwen3VLVideoProcessor"}


def build_processor(spec: TinySpec, family: str = DEFAULT_FAMILY):
    """The family's processor classes on its patch grid, with the tiny tokenizer."""
    f = family_named(family)
    tok = build_tokenizer(spec, family)
    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    grid = dict(patch_size=f.grid.patch, temporal_patch_size=f.grid.temporal, merge_size=f.grid.merge)
    image_processor = transformers.Qwen2VLImageProcessor(size=size, **grid)
    video_processor = getattr(transformers, VIDEO_PROCESSORS[f.processor_class])(size=size, **grid)
    return getattr(transformers, f.processor_class)(image_processor=image_processor, tokenizer=tok,
                                                    video_processor=video_processor, chat_template=tok.chat_template)


def _ids(tok) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _text(spec: TinySpec, tok, **extra) -> dict:
    ids = _ids(tok)
    return dict(vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                max_position_embeddings=spec.max_position_embeddings, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], **extra)


def _tokens(tok) -> dict:
    ids = _ids(tok)
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)


def _rope(spec: TinySpec, theta: float, **extra) -> dict:
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": spec.mrope_section(), **extra}


def _qwen3_vision(spec: TinySpec, **extra) -> dict:
    return dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 2,
                num_heads=spec.vision_heads, out_hidden_size=spec.hidden, patch_size=16, spatial_merge_size=2,
                temporal_patch_size=2, num_position_embeddings=64, **extra)


def _moe(spec: TinySpec, **extra) -> dict:
    return dict(moe_intermediate_size=spec.intermediate // 4, num_experts=spec.experts,
                num_experts_per_tok=spec.active_experts, **extra)


def qwen2_vl_config(spec: TinySpec, tok) -> PretrainedConfig:
    vision = dict(depth=spec.vision_depth, embed_dim=spec.vision_hidden, hidden_size=spec.hidden, mlp_ratio=2,
                  num_heads=spec.vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    text = _text(spec, tok, rope_parameters=_rope(spec, 1e6))
    return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **_tokens(tok))


def qwen2_5_vl_config(spec: TinySpec, tok) -> PretrainedConfig:
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 2,
                  num_heads=spec.vision_heads, out_hidden_size=spec.hidden, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112, fullatt_block_indexes=[spec.vision_depth - 1],
                  tokens_per_second=2)  # the released checkpoints' rate
    text = _text(spec, tok, rope_parameters=_rope(spec, 1e6))
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_tokens(tok))


def qwen3_vl_config(spec: TinySpec, tok) -> PretrainedConfig:
    text = _text(spec, tok, head_dim=spec.head_dim, rope_parameters=_rope(spec, 5e5, mrope_interleaved=True))
    vision = _qwen3_vision(spec, deepstack_visual_indexes=[0])  # features of vision block 0 enter decoder layer 0
    return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **_tokens(tok))


def qwen3_vl_moe_config(spec: TinySpec, tok) -> PretrainedConfig:
    text = _text(spec, tok, head_dim=spec.head_dim, decoder_sparse_step=1,
                 rope_parameters=_rope(spec, 5e5, mrope_interleaved=True), **_moe(spec))
    vision = _qwen3_vision(spec, deepstack_visual_indexes=[0])
    return transformers.Qwen3VLMoeConfig(text_config=text, vision_config=vision, **_tokens(tok))


def _qwen3_5_text(spec: TinySpec, tok, **extra) -> dict:
    # half of each head rotates (Qwen3.5 ships 0.25; half keeps position errors visible in tests)
    rope = {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.5, "mrope_interleaved": True,
            "mrope_section": spec.mrope_section(spec.head_dim // 2)}
    layers = max(spec.layers, 4)
    return _text(spec, tok, head_dim=spec.head_dim, rope_parameters=rope, linear_key_head_dim=spec.head_dim // 2,
                 linear_value_head_dim=spec.head_dim // 2, linear_num_key_heads=spec.kv_heads,
                 linear_num_value_heads=spec.heads, linear_conv_kernel_dim=4, **extra) | dict(
        num_hidden_layers=layers, layer_types=["linear_attention"] * (layers - 1) + ["full_attention"])


def qwen3_5_config(spec: TinySpec, tok) -> PretrainedConfig:
    return transformers.Qwen3_5Config(text_config=_qwen3_5_text(spec, tok), vision_config=_qwen3_vision(spec),
                                      **_tokens(tok))


def qwen3_5_moe_config(spec: TinySpec, tok) -> PretrainedConfig:
    text = _qwen3_5_text(spec, tok, **_moe(spec, shared_expert_intermediate_size=spec.intermediate // 4))
    return transformers.Qwen3_5MoeConfig(text_config=text, vision_config=_qwen3_vision(spec), **_tokens(tok))


TINY_CONFIGS: dict[str, Callable[[TinySpec, object], PretrainedConfig]] = {
    "qwen2_vl": qwen2_vl_config, "qwen2_5_vl": qwen2_5_vl_config, "qwen3_vl": qwen3_vl_config,
    "qwen3_vl_moe": qwen3_vl_moe_config, "qwen3_5": qwen3_5_config, "qwen3_5_moe": qwen3_5_moe_config,
}
assert set(TINY_CONFIGS) == set(TOKENIZERS) == set(FAMILIES), "every family has a tiny model"


def build_config(spec: TinySpec, tok, family: str = DEFAULT_FAMILY) -> PretrainedConfig:
    return TINY_CONFIGS[family_named(family).name](spec, tok)


def build_tiny(spec: TinySpec | None = None, family: str = DEFAULT_FAMILY):
    """Model (random weights, fp32, seeded) and processor of the family, in memory."""
    spec = spec or TinySpec()
    processor = build_processor(spec, family)
    config = build_config(spec, processor.tokenizer, family)
    torch.manual_seed(spec.seed)
    model = getattr(transformers, family_named(family).model_class)(config).eval()
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


def save_tiny(out_dir: str | Path, spec: TinySpec | None = None, family: str = DEFAULT_FAMILY) -> Path:
    """Write the tiny model as a plain HF folder (safetensors, config, generation config, processor files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny(spec, family)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_processor_files(processor, out)
    return out
