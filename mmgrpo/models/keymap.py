"""Qwen2-VL / Qwen2.5-VL weight names before and after transformers 4.52.

transformers 4.52 moved the language model under `model.language_model` and the vision tower under
`model.visual`:

    before 4.52                      4.52 and later
    model.layers.N...            ->  model.language_model.layers.N...
    model.embed_tokens / norm    ->  model.language_model.embed_tokens / norm
    visual.blocks.N...           ->  model.visual.blocks.N...
    lm_head                      ->  lm_head                          (unchanged)

Adapters trained on older versions carry the old names behind PEFT's `base_model.model.` prefix.
PEFT 0.21 renames the language-model keys on load but not the vision-tower ones, and silently skips
keys it cannot place, so an old adapter with LoRA on the vision tower merges only partly. Mapping
every key here, and checking afterwards that each adapter key found a parameter, closes that gap.
"""
from __future__ import annotations

import re
from typing import Any

PEFT_PREFIX = "base_model.model."

# Old-layout module path -> current one, for paths without the PEFT prefix. The first pattern that
# matches wins (PEFT's `key_mapping` contract), and neither matches a current-layout path, so the
# mapping is idempotent.
LEGACY_KEY_MAPPING: dict[str, str] = {
    r"^visual\.": "model.visual.",
    r"^model\.(?!language_model\.|visual\.)": "model.language_model.",
}


def to_current_key(key: str) -> str:
    """A weight or module name in the current layout; `key` may carry PEFT's `base_model.model.`."""
    prefix = PEFT_PREFIX if key.startswith(PEFT_PREFIX) else ""
    path = key[len(prefix):]
    for pattern, replacement in LEGACY_KEY_MAPPING.items():
        new, n = re.subn(pattern, replacement, path, count=1)
        if n:
            return prefix + new
    return key


def is_legacy_key(key: str) -> bool:
    return to_current_key(key) != key


def remap_keys(keys: list[str]) -> dict[str, str]:
    """old -> current for every key. Raises ValueError when two keys land on the same name (a file
    holding both layouts at once: merging it would silently drop one of them)."""
    mapping = {k: to_current_key(k) for k in keys}
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        if new in seen:
            raise ValueError(f"adapter keys {seen[new]!r} and {old!r} both map to {new!r} (mixed key layouts)")
        seen[new] = old
    return mapping


def current_target_modules(target: Any) -> Any:
    """PEFT `target_modules` in the current layout. A list may hold full module paths
    (`model.layers.0.self_attn.q_proj`), which PEFT matches by suffix and would miss after the
    rename; short names and regex strings need no change (a regex anchored on an old path is
    caught later as adapter keys that found no parameter)."""
    if isinstance(target, (list, tuple, set)):
        return type(target)(to_current_key(t) for t in target)
    return target


def current_pattern_dict(patterns: dict[str, Any] | None) -> dict[str, Any] | None:
    """PEFT `rank_pattern` / `alpha_pattern` with module-path keys in the current layout."""
    if not patterns:
        return patterns
    return {to_current_key(k): v for k, v in patterns.items()}
