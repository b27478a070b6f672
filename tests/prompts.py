"""Processed prompts for log-prob / rollout tests, built straight from the tiny model's processor."""
from __future__ import annotations

import numpy as np

from mmgrpo.processors.sample import PromptInputs, Sample, VisionInputs

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def make_prompt(processor, kinds: list[str], seed: int = 0, question: str = "What colour is the square?") -> PromptInputs:
    """A processed prompt with one media item per entry of `kinds` ("image" / "video"); images of
    different sizes so that a multi-image prompt has differing grids."""
    rng = np.random.default_rng(seed)
    content = [{"type": k} for k in kinds] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    sizes = iter([(56, 84), (84, 56), (56, 56)])
    images = [rng.integers(0, 255, (*next(sizes), 3), dtype=np.uint8) for k in kinds if k == "image"]
    videos = [rng.integers(0, 255, (8, 56, 56, 3), dtype=np.uint8) for k in kinds if k == "video"]
    enc = processor(text=[text], images=images or None, videos=videos or None, return_tensors="pt")
    vision = VisionInputs(**{k: enc[k] for k in VISION_KEYS if k in enc})
    sample = Sample(id="t", prompt=[], media=[], answer=None, problem_type="free_text")
    return PromptInputs(sample, enc["input_ids"], enc["mm_token_type_ids"], vision)
