"""Processed prompts for log-prob / rollout tests, built straight from a tiny model's processor."""
from __future__ import annotations

import numpy as np
from transformers.video_utils import VideoMetadata

from mmgrpo.processors.sample import PromptInputs, Sample, VisionInputs

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def make_prompt(processor, kinds: list[str], seed: int = 0, question: str = "What colour is the square?",
                frames: int = 8, fps: float = 2.0, side: int = 56) -> PromptInputs:
    """A processed prompt with one media item per entry of `kinds` ("image" / "video"); images of
    different sizes so that a multi-image prompt has differing grids; videos of `frames` frames of
    `side` x `side` sampled at `fps` (their frame times reach the processor, as the encoder's do)."""
    rng = np.random.default_rng(seed)
    content = [{"type": k} for k in kinds] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    sizes = iter([(56, 84), (84, 56), (56, 56)])
    images = [rng.integers(0, 255, (*next(sizes), 3), dtype=np.uint8) for k in kinds if k == "image"]
    videos = [rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8) for k in kinds if k == "video"]
    kwargs = {}
    if videos:
        metadata = [VideoMetadata(total_num_frames=frames, fps=fps, frames_indices=list(range(frames)))] * len(videos)
        kwargs = dict(videos=videos, video_metadata=metadata, do_sample_frames=False)
    enc = processor(text=[text], images=images or None, return_tensors="pt", **kwargs)
    vision = VisionInputs(**{k: enc[k] for k in VISION_KEYS if k in enc})
    sample = Sample(id="t", prompt=[], media=[], answer=None, problem_type="free_text")
    return PromptInputs(sample, enc["input_ids"], enc["mm_token_type_ids"], vision)
