"""Rollout backends: who samples the G completions of each prompt. The trainer holds one backend
and calls `generate` once per step (and per augmentation round) and `sync` after every optimizer
step; it never knows which backend it has. A backend is an entry of `BACKENDS`, chosen by
`generation.backend`.

Seeds: each group comes with its own integer seed, (seed, step, group) mixed by the trainer, so a
group's completions depend neither on the rest of the batch nor on which process samples it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from mmgrpo.config import GenerationConfig
from mmgrpo.models.generate import Rollout, Sampling, generate_groups
from mmgrpo.models.special import SpecialIds
from mmgrpo.processors.sample import PromptInputs


class RolloutBackend(Protocol):
    def generate(self, policy: torch.nn.Module, prompts: list[PromptInputs], seeds: list[int],
                 n: int | None = None) -> list[Rollout]:
        """G completions per prompt (`n` instead when given, e.g. T-GRPO's G/2 on shuffled frames),
        group b sampled from `seeds[b]`, under the current weights."""

    def sync(self, policy: torch.nn.Module) -> None:
        """The policy's weights changed (an optimizer step): make the next `generate` use them."""

    def close(self) -> None:
        """The run is over: release what the backend holds (an engine and its memory)."""


@dataclass(frozen=True)
class HFBackend:
    """Our own batched sampler on the training model itself (models.generate.generate_groups): the
    weights are the policy's, so `sync` has nothing to do."""

    tokenizer: object
    special: SpecialIds
    num_generations: int
    sampling: Sampling
    mode: str  # "shared" | "repeat"

    def generate(self, policy: torch.nn.Module, prompts: list[PromptInputs], seeds: list[int],
                 n: int | None = None) -> list[Rollout]:
        device = prompts[0].input_ids.device if prompts else torch.device("cpu")
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        was_training = policy.training
        policy.eval()  # no dropout while sampling
        try:
            return generate_groups(policy, self.tokenizer, self.special, prompts, n or self.num_generations,
                                   self.sampling, generators, self.mode)
        finally:
            policy.train(was_training)

    def sync(self, policy: torch.nn.Module) -> None:
        return None

    def close(self) -> None:
        return None


def hf_backend(spec: "BackendSpec") -> HFBackend:
    return HFBackend(spec.tokenizer, spec.special, spec.gen.num_generations, Sampling.of(spec.gen), spec.mode)


def vllm_backend(spec: "BackendSpec") -> RolloutBackend:
    from mmgrpo.models.vllm_backend import VLLMBackend, start_engine  # vllm is optional (the `vllm` extra)

    llm = start_engine(spec.source, spec.dtype, spec.max_model_len, spec.gen.vllm, spec.seed)
    return VLLMBackend(llm, spec.tokenizer, spec.special, spec.gen.num_generations, Sampling.of(spec.gen),
                       spec.gen.vllm)


@dataclass(frozen=True)
class BackendSpec:
    """What any backend may need to start."""

    gen: GenerationConfig
    tokenizer: object
    special: SpecialIds
    mode: str  # "shared" | "repeat": the HF sampler's layout
    source: str  # the model folder / hub id an engine of its own loads (its weights are synced before use)
    dtype: str  # "bf16" | "fp16" | "fp32"
    max_model_len: int  # prompt + completion tokens
    seed: int


BACKENDS: dict[str, Callable[[BackendSpec], RolloutBackend]] = {"hf": hf_backend, "vllm": vllm_backend}


def make_backend(spec: BackendSpec) -> RolloutBackend:
    if spec.gen.backend not in BACKENDS:
        raise ValueError(f"unknown generation.backend {spec.gen.backend!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[spec.gen.backend](spec)
