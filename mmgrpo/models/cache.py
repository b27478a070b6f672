"""The cache a prompt is encoded into, for every family: rows can be repeated (G completions per
prompt) and dropped (finished completions), and autograd runs through it (the prefix-cache log-prob
forward continues G completions from one prompt forward with gradients).

Attention layers keep transformers' `DynamicLayer` (its updates concatenate, which autograd follows).
transformers' `LinearAttentionLayer`, the conv and recurrent state of a linear-attention layer
(Qwen3.5's gated delta-net), neither repeats nor selects rows (5.24 has no `batch_repeat_interleave`
for it) and updates its states in place, which breaks a backward through a state that a later
forward overwrote. `RecurrentState` implements the same layer interface with replacing updates; it
is a `transformers.cache_utils` layer type, used through the `Cache(layers=...)` constructor, and
changes nothing in the library.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, LinearAttentionCacheLayerMixin, LinearAttentionLayer

from mmgrpo.models.unwrap import base_model


class RecurrentState(LinearAttentionCacheLayerMixin):
    """A linear-attention layer's conv and recurrent states with transformers' `LinearAttentionLayer`
    semantics, except that every update replaces the stored tensor instead of copying into it."""

    def lazy_initialization(self, conv_states: Tensor | None = None, recurrent_states: Tensor | None = None,
                            state_idx: int = 0, conv_kernel_size: int | None = None) -> None:
        if conv_states is not None:
            self.dtype, self.device = conv_states.dtype, conv_states.device
            self.conv_kernel_size[state_idx] = conv_kernel_size or conv_states.shape[-1]
            self.is_conv_states_initialized[state_idx] = True
        if recurrent_states is not None:
            self.is_recurrent_states_initialized[state_idx] = True

    def update_conv_state(self, conv_states: Tensor, state_idx: int = 0, conv_kernel_size: int | None = None,
                          **kwargs) -> Tensor:
        """The conv inputs the layer convolves now: the kept window followed by the new inputs (a first
        call: the new inputs, left-padded with zeros to the kernel size); the window is the last
        kernel-size inputs."""
        if not self.is_conv_states_initialized[state_idx]:
            self.lazy_initialization(conv_states=conv_states, state_idx=state_idx, conv_kernel_size=conv_kernel_size)
        k = self.conv_kernel_size[state_idx]
        if self.has_previous_state[state_idx]:
            full = torch.cat([self.conv_states[state_idx], conv_states], dim=-1)  # [n, D, k + L]
        else:
            full = F.pad(conv_states, (max(k - conv_states.shape[-1], 0), 0))  # [n, D, max(k, L)]
            self.has_previous_state[state_idx] = True
        self.conv_states[state_idx] = full[..., -k:]  # [n, D, k]
        return full

    def update_recurrent_state(self, recurrent_states: Tensor, state_idx: int = 0, **kwargs) -> Tensor:
        self.is_recurrent_states_initialized[state_idx] = True
        self.recurrent_states[state_idx] = recurrent_states  # [n, heads, d_k, d_v]
        return recurrent_states

    def _map(self, fn) -> None:
        for states in (self.conv_states, self.recurrent_states):
            for i, state in states.items():
                if state is not None:
                    states[i] = fn(state)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda s: s.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda s: s[indices])


def new_cache(model: torch.nn.Module) -> Cache:
    """An empty cache laid out for the model's layers (the layer types transformers would pick),
    linear-attention layers as `RecurrentState`."""
    layers = DynamicCache(config=base_model(model).config).layers
    if not layers:  # no layer_types in the config: all attention, one `DynamicLayer` per layer as used
        return DynamicCache()
    kinds = {type(layer) for layer in layers if isinstance(layer, LinearAttentionCacheLayerMixin)}
    if kinds - {LinearAttentionLayer}:  # hybrid layers (states and KV in one layer): no Qwen family has them
        raise ValueError(f"cache layers {sorted(k.__name__ for k in kinds)} are not supported")
    return Cache(layers=[RecurrentState() if isinstance(layer, LinearAttentionLayer) else layer for layer in layers])
