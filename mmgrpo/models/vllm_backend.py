"""The vLLM rollout backend (`generation.backend: vllm`): an in-process engine colocated with the
trainer, fed exactly what the trainer's processor produced, synced after optimizer steps.

- Inputs: each prompt goes in as its token ids (placeholders already expanded) plus the media the
  processor received (`PromptInputs.media`: frames at their final size, the video's frame indices
  and rates, frame sampling off), so vLLM's placeholder counts, pixels and frame times equal the
  trainer's. Its processor is told not to resize (and min/max pixels equal to the frames' own sizes,
  which its token counting uses), so nothing is resized twice.
- Sampling: n = G per prompt (the engine shares the prompt's prefill and vision work), vision
  placeholders excluded through `allowed_token_ids`, one seed per group spread so that no two groups
  share a child seed (vLLM gives child k of seed s the seed s + k), log-probs of the sampling
  distribution ("processed": after temperature, top-k / top-p and the ban, as TRL asks for) returned
  for the importance-sampling correction (trainer/importance.py).
- Sync: `sync(policy)` after every optimizer step; every `sync_every`-th pushes the weights (LoRA:
  merged, models.lora.merged_weights) through `collective_rpc("reload_weights")` (the engine model's
  own `load_weights` fails on the CPU backend, which repacks linear weights), then resets the
  encoder, prefix and multimodal caches (a stale encoder cache crashes the next multimodal request,
  a stale prefix cache silently returns the old weights' values). The first `generate` syncs too, so
  a run started from a checkpoint (init_from, resume) samples from its weights.
- Failures: a failed sync or a dead engine raises `RolloutEngineError`, and the backend refuses every
  later call: it never samples from weights it could not confirm.
- Memory: on a GPU whose vLLM build supports sleep mode, the engine sleeps (level 1: weights offloaded
  to host memory, KV cache dropped) between rollouts and wakes for the next sync / rollout. Elsewhere
  (the CPU build) it keeps its memory, bounded by `cpu_kv_cache_gib`.
"""
from __future__ import annotations

import os

import torch

from mmgrpo.config import VLLMConfig
from mmgrpo.models.generate import Rollout, Sampling, finalize
from mmgrpo.models.lora import merged_weights
from mmgrpo.models.special import SpecialIds
from mmgrpo.processors.sample import PromptInputs, ShownMedia

VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SEED_SPACE = 2**40  # group seeds reduced to this before spreading by n (distinct within a step: tested)


class RolloutEngineError(RuntimeError):
    """The rollout engine failed (dead engine, failed weight sync); its weights cannot be trusted."""


def engine_seeds(seeds: list[int], n: int) -> list[int]:
    """One vLLM seed per group whose n child seeds (s, s+1, ..., s+n-1) no other group uses: the
    trainer's group seeds reduced mod SEED_SPACE, times n."""
    return [(s % SEED_SPACE) * n for s in seeds]


def collapsed_ids(input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor) -> list[int]:
    """The prompt with each run of vision placeholders cut to its first token: vLLM's processor
    expands one placeholder per media item itself (given the expanded ids it would expand the first
    of each run again). `VLLMBackend.rollout` checks that its expansion equals ours."""
    ids, kinds = input_ids[0].tolist(), mm_token_type_ids[0].tolist()  # [P] each
    return [t for i, (t, k) in enumerate(zip(ids, kinds)) if k == 0 or i == 0 or kinds[i - 1] != k]


def media_request(media: tuple[ShownMedia, ...]) -> tuple[dict, dict]:
    """(multi_modal_data, mm_processor_kwargs) of one prompt: images as [H, W, 3] uint8 arrays,
    videos as ([T, H, W, 3] uint8, metadata with frame sampling off)."""
    data: dict[str, list] = {}
    for m in media:
        frames = m.frames.permute(0, 2, 3, 1).contiguous().numpy()  # [T, H, W, 3] uint8
        if m.kind == "image":
            data.setdefault("image", []).append(frames[0])
        else:
            meta = m.metadata
            data.setdefault("video", []).append((frames, {
                "fps": float(meta.fps), "total_num_frames": int(meta.total_num_frames),
                "frames_indices": list(meta.frames_indices), "duration": float(meta.total_num_frames / meta.fps),
                "video_backend": "mmgrpo", "do_sample_frames": False,
            }))
    if not media:
        return {}, {}
    pixels = [int(m.frames.shape[2] * m.frames.shape[3]) for m in media]
    # vLLM counts placeholders with Qwen's smart_resize(min_pixels, max_pixels): the frames' own sizes
    # (multiples of the patch grid) are its fixed points, and the HF processor does not resize at all
    return data, {"do_resize": False, "size": {"shortest_edge": min(pixels), "longest_edge": max(pixels)}}


def restore_threads(run):
    """Run `run()` and put torch's intra-op threads back as they were: vLLM's CPU worker sets torch to
    one thread and replaces `torch.set_num_threads` with a no-op while it lives in this process, which
    would leave the trainer's own forwards single-threaded (restoring the function is not a patch of
    vLLM, it undoes one of torch)."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        return run()
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)


def start_engine(source: str, dtype: str, max_model_len: int, settings: VLLMConfig, seed: int):
    """The in-process engine: no engine-core process, eager mode (no compilation or CUDA graphs: a
    trainer restarts it often and changes its weights), one engine per process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in this process: sync through collective_rpc
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{settings.cpu_kv_cache_gib:g}"  # CPU builds only
    from vllm import LLM
    from vllm.platforms import current_platform

    def build():
        return LLM(model=source, dtype=VLLM_DTYPES[dtype], seed=seed, max_model_len=max_model_len,
                   enforce_eager=True, distributed_executor_backend="uni", block_size=32,
                   gpu_memory_utilization=settings.gpu_memory_utilization, logprobs_mode="processed_logprobs",
                   max_logprobs=0, limit_mm_per_prompt={"image": settings.max_images, "video": settings.max_videos},
                   enable_sleep_mode=settings.sleep and current_platform.is_sleep_mode_available())

    return restore_threads(build)


class VLLMBackend:
    """`RolloutBackend` on an in-process vLLM engine (see the module docstring)."""

    def __init__(self, llm, tokenizer, special: SpecialIds, num_generations: int, sampling: Sampling,
                 settings: VLLMConfig):
        self.llm = llm  # a `start_engine` engine; its weights are replaced by the first sync
        self.tokenizer, self.special, self.num_generations = tokenizer, special, num_generations
        self.sampling, self.settings = sampling, settings
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        self.allowed = [i for i in range(vocab) if i not in set(special.banned)]
        self.sleeping = False
        self.synced = False  # the engine holds the policy's weights (after the first sync)
        self.steps_since_sync = 0
        self.broken: str | None = None  # why the engine can no longer be used

    def generate(self, policy: torch.nn.Module, prompts: list[PromptInputs], seeds: list[int],
                 n: int | None = None) -> list[Rollout]:
        if not self.synced:
            self.push(policy)
        if not prompts:
            return []
        G = n or self.num_generations
        requests = [self.request(p) for p in prompts]
        params = [self.params(s, G) for s in engine_seeds(seeds, G)]
        outputs = self.call("rollout", lambda: self.llm.generate(requests, params, use_tqdm=False))
        rollouts = [self.rollout(out, p, G) for out, p in zip(outputs, prompts)]
        self.rest()
        return rollouts

    def sync(self, policy: torch.nn.Module) -> None:
        self.steps_since_sync += 1
        if self.steps_since_sync >= self.settings.sync_every:
            self.push(policy)

    def close(self) -> None:
        """Shut the engine down now. vLLM keeps one engine's distributed state per process and tears it
        down when an engine is collected, so a later engine (the next run in this process) is only safe
        once the previous one is closed; closing twice is harmless."""
        failed, self.broken = self.broken, self.broken or "closed"
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:
            if not failed:  # a dead engine may fail to shut down too: the error that broke it is the one to see
                raise

    # -- engine calls --------------------------------------------------------------------------

    def call(self, what: str, fn):
        """`fn()` on the engine; any failure marks the engine broken (its state is unknown after it)."""
        if self.broken:
            raise RolloutEngineError(f"the vLLM rollout engine is unusable ({self.broken}); restart the run, "
                                     "which resumes from the last checkpoint")
        try:
            if self.sleeping:
                self.llm.wake_up()
                self.sleeping = False
            return restore_threads(fn)
        except Exception as e:
            self.broken = f"{what} failed: {type(e).__name__}: {e}"
            raise RolloutEngineError(f"vLLM {what} failed: the engine can no longer be trusted to hold the "
                                     f"policy's weights ({type(e).__name__}: {e})") from e

    def push(self, policy: torch.nn.Module) -> None:
        """The policy's current weights (LoRA merged) into the engine, then every cache that holds
        values computed with the old ones reset."""
        def reload():
            self.llm.collective_rpc("reload_weights", kwargs={
                "weights_iterator": merged_weights(policy), "is_checkpoint_format": True})
            self.llm.llm_engine.reset_encoder_cache()
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("the prefix cache could not be reset (requests still running)")
            self.llm.reset_mm_cache()

        self.call("weight sync", reload)
        self.synced, self.steps_since_sync = True, 0

    def rest(self) -> None:
        """Release the engine's GPU memory until the next call, where the build supports it."""
        if self.llm.llm_engine.vllm_config.model_config.enable_sleep_mode:
            self.call("sleep", lambda: self.llm.sleep(level=1))
            self.sleeping = True

    # -- requests and outputs ------------------------------------------------------------------

    def request(self, prompt: PromptInputs) -> dict:
        if prompt.vision.as_kwargs() and not prompt.media:  # built without the encoder: nothing vLLM could process
            raise ValueError(f"sample {prompt.sample.ref}: the prompt has vision inputs but no frames to give vLLM")
        data, kwargs = media_request(prompt.media)
        request = {"prompt_token_ids": collapsed_ids(prompt.input_ids, prompt.mm_token_type_ids)}
        if data:
            request.update(multi_modal_data=data, mm_processor_kwargs=kwargs)
        return request

    def params(self, seed: int, G: int):
        from vllm import SamplingParams

        s = self.sampling
        return SamplingParams(n=G, seed=seed, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_tokens=s.max_new_tokens, stop_token_ids=list(self.special.eos), ignore_eos=False,
                              allowed_token_ids=self.allowed, logprobs=0, repetition_penalty=1.0, min_p=0.0,
                              detokenize=False, skip_special_tokens=False)

    def rollout(self, out, prompt: PromptInputs, G: int) -> Rollout:
        """vLLM's G completions of one prompt as a `Rollout`, with the sampled tokens' log-probs."""
        if out.prompt_token_ids != prompt.input_ids[0].tolist():
            raise RolloutEngineError(f"sample {prompt.sample.ref}: vLLM expanded the prompt to "
                                     f"{len(out.prompt_token_ids)} tokens, the trainer's processor to {prompt.length} "
                                     "(or to other ids): the vision placeholders would not match the training forward")
        if len(out.outputs) != G:
            raise RolloutEngineError(f"vLLM returned {len(out.outputs)} completions for a group of {G}")
        C = max(len(c.token_ids) for c in out.outputs)
        device = prompt.input_ids.device  # where the trainer keeps the step's tensors (the HF backend's too)
        tokens = torch.full((G, C), self.special.pad, dtype=torch.long, device=device)  # [G, C]
        logp = torch.zeros((G, C), dtype=torch.float32, device=device)  # [G, C]
        for g, c in enumerate(out.outputs):
            tokens[g, : len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
            logp[g, : len(c.token_ids)] = torch.tensor(
                [step[t].logprob for step, t in zip(c.logprobs, c.token_ids)], dtype=torch.float32)
        rollout = finalize(tokens, self.special, self.tokenizer)
        width = rollout.completion_ids.shape[1]
        return Rollout(rollout.completion_ids, rollout.completion_mask, rollout.truncated, rollout.texts,
                       logp[:, :width] * rollout.completion_mask)  # [G, width], 0 after the mask
