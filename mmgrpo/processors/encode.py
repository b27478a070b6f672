"""Sample -> model inputs: load media at the budget, apply the chat template, call the processor.

Two steps, because augmentation perturbs the decoded frames in between:
    media = encoder.load_media(sample)      # decoded, resized, cached; prompt fitted to the limit
    inputs = encoder.build(sample, media)   # chat template + processor
`encode(sample)` does both. The processor is called with `do_resize=False`: the pixel budget is
ours (Qwen's smart-resize rules on the processor's own patch grid, `VisionConfig` + per-sample
options), and the prompt length is known from the grid sizes before the processor runs. A prompt is
never truncated through its vision tokens: with `fit="shrink"` the pixel budget is lowered until it
fits, else BadSampleError. Videos reach the processor with their source frame indices and frame
rate, so a family that writes frame times into the prompt (Qwen3-VL, Qwen3.5) writes the real ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from transformers.video_utils import VideoMetadata

from mmgrpo.config import VisionConfig
from mmgrpo.processors.budget import Grid, resize_to, resolve_budget, shrink_to_fit, vision_tokens
from mmgrpo.processors.cache import MediaCache, media_key
from mmgrpo.processors.image import image_frames, load_image
from mmgrpo.processors.sample import BadSampleError, Media, MediaError, PromptInputs, Sample, ShownMedia, VisionInputs
from mmgrpo.processors.video import Frames, decode_video, resize_frames


@dataclass
class LoadedMedia:
    kind: Literal["image", "video"]
    frames: torch.Tensor  # [T, 3, H, W] uint8 (T=1 for an image)
    fps: float  # sampled frames per second (0.0 for an image)
    # video: the source frame index of each frame, the source's frame rate and the frames of the clip
    # window; None = T consecutive frames at `fps` (frames made in memory, e.g. benchmarks)
    indices: tuple[int, ...] | None = None
    source_fps: float | None = None
    clip_frames: int | None = None

    def metadata(self) -> VideoMetadata:
        """What the processor derives frame times from: Qwen2.5-VL's second_per_grid_ts =
        temporal patch / sampled fps (sampled fps = len(indices) / clip_frames * source_fps, as
        qwen-vl-utils computes it), Qwen3-VL's timestamps = indices / source_fps (averaged per pair)."""
        T = int(self.frames.shape[0])
        if self.indices is None:
            return VideoMetadata(total_num_frames=T, fps=self.fps, frames_indices=list(range(T)))
        return VideoMetadata(total_num_frames=self.clip_frames, fps=self.source_fps, frames_indices=list(self.indices))


def decode_media(media: Media, vision: VisionConfig, cache: MediaCache | None = None,
                 grid: Grid = Grid()) -> LoadedMedia:
    """One media item at its budget (`media.options` override `vision`), sides multiples of the
    model's `grid`. Raises MediaError."""
    budget = resolve_budget(media.options, vision, grid)

    def load() -> Frames:
        if media.kind == "video":
            return decode_video(media, vision, grid)
        if not isinstance(media.source, str):
            raise MediaError(str(media.source)[:200], "an image source must be one file path", "bad_column")
        image = load_image(media.source, media.data)
        try:
            frames = image_frames(image, budget)  # [1, 3, H, W] uint8
        except ValueError as e:  # aspect ratio beyond Qwen's 200:1
            raise MediaError(media.source, str(e), "unsupported_media") from e
        return Frames(frames=frames, fps=0.0, source_fps=0.0, duration=0.0)

    if cache is None:
        frames = load()
    else:
        try:
            key = media_key(media, budget)
        except OSError as e:
            raise MediaError(str(media.source), f"file not found ({e.strerror})", "missing_media") from e
        frames = cache.get_or_load(key, load)
    if media.kind == "image":
        return LoadedMedia(kind="image", frames=frames.frames, fps=frames.fps)
    return LoadedMedia(kind="video", frames=frames.frames, fps=frames.fps, indices=frames.indices,
                       source_fps=frames.source_fps, clip_frames=frames.clip_frames)


def count_tokens(inputs: PromptInputs) -> dict[str, int]:
    """Prompt tokens by kind: text (incl. vision start/end markers), image and video placeholders."""
    kinds = inputs.mm_token_type_ids[0]  # [P]
    return {"text": int((kinds == 0).sum()), "image": int((kinds == 1).sum()), "video": int((kinds == 2).sum())}


class PromptEncoder:
    """Turns `Sample`s into `PromptInputs` for one processor and one `VisionConfig`.

    `cache=None` builds a `MediaCache` from `vision.cache_size` / `vision.disk_cache`."""

    def __init__(self, processor, vision: VisionConfig, cache: MediaCache | None = None):
        self.processor = processor
        self.grid = Grid.of(processor)  # patch / merge of this model: 28- or 32-pixel multiples
        self.vision = vision
        self.cache = cache if cache is not None else MediaCache(vision.cache_size, vision.disk_cache)

    # -- step 1: media ---------------------------------------------------------------------------

    def load_media(self, sample: Sample) -> list[LoadedMedia]:
        """Decoded, resized frames for each `sample.media` item, fitted to `max_prompt_length`
        (media of a too-long prompt are decoded again from the source at the smaller budget, rather
        than resized twice; both decodes are cached)."""
        media = [self._decode(sample, m) for m in sample.media]
        sizes = self._fit(sample, media)
        for i, (item, (h, w)) in enumerate(zip(sample.media, sizes)):
            if tuple(media[i].frames.shape[-2:]) != (h, w):
                pixels = h * w  # smart_resize from the source size stays within h * w: it still fits
                options = dataclasses.replace(item.options, max_pixels=pixels, total_pixels=None)
                options.min_pixels = min(resolve_budget(item.options, self.vision, self.grid).min_pixels, pixels)
                media[i] = self._decode(sample, dataclasses.replace(item, options=options))
        return media

    def _decode(self, sample: Sample, media: Media) -> LoadedMedia:
        try:
            return decode_media(media, self.vision, self.cache, self.grid)
        except MediaError as e:
            raise e.for_sample(sample.ref, sample.id) from e

    # -- step 2: text + processor ----------------------------------------------------------------

    def build(self, sample: Sample, media: list[LoadedMedia]) -> PromptInputs:
        """Chat template (generation prompt added) and processor call on already-resized frames."""
        self._check_media(sample, media)
        sizes = self._fit(sample, media)
        sized = [dataclasses.replace(m, frames=resize_frames(m.frames, h, w)) for m, (h, w) in zip(media, sizes)]
        return self._process(sample, sized)

    def _process(self, sample: Sample, media: list[LoadedMedia]) -> PromptInputs:
        """Chat template and processor call on frames at their final size."""
        frames = [m.frames for m in media]  # each [T, 3, H, W] uint8
        images = [f[0] for m, f in zip(media, frames) if m.kind == "image"]  # each [3, H, W] uint8
        videos = [f for m, f in zip(media, frames) if m.kind == "video"]  # each [T, 3, H, W] uint8
        kwargs: dict = {}
        if images:
            kwargs["images"] = images
        if videos:
            metadata = [m.metadata() for m in media if m.kind == "video"]
            # frames are already at the budget, so the per-frame cap has nothing to cap: False
            kwargs.update(videos=videos, video_metadata=metadata, do_sample_frames=False, cap_pixels_per_frame=False)
        out = self.processor(text=[self.template(sample)], do_resize=False, return_tensors="pt", **kwargs)
        vision = VisionInputs(
            pixel_values=out.get("pixel_values"),  # [n_image_patches, 1176] or absent
            image_grid_thw=out.get("image_grid_thw"),  # [n_images, 3]
            pixel_values_videos=out.get("pixel_values_videos"),  # [n_video_patches, 1176]
            video_grid_thw=out.get("video_grid_thw"),  # [n_videos, 3]
            second_per_grid_ts=out.get("second_per_grid_ts"),  # [n_videos]
        )
        return PromptInputs(
            sample=sample,
            input_ids=out["input_ids"],  # [1, P]
            mm_token_type_ids=out["mm_token_type_ids"],  # [1, P]
            vision=vision,
            num_frames=[int(f.shape[0]) for f in videos],
            resolutions=[(int(f.shape[2]), int(f.shape[3])) for f in frames],
            media=tuple(ShownMedia(m.kind, m.frames, m.metadata() if m.kind == "video" else None) for m in media),
        )

    def encode(self, sample: Sample) -> PromptInputs:
        return self.build(sample, self.load_media(sample))

    def template(self, sample: Sample) -> str:
        return self.processor.apply_chat_template(sample.prompt, add_generation_prompt=True, tokenize=False)

    def text_tokens(self, sample: Sample, media: list[LoadedMedia] | None = None) -> int:
        """Prompt tokens other than vision placeholders. From the chat template alone (each placeholder
        is one token before the processor expands it), unless `media` holds a video: a processor may
        write text per frame group (Qwen3-VL's timestamps, whose length depends on the frames' times),
        so the prompt is then built once with every item cut to one merged patch per frame group (the
        text does not depend on the resolution) and its text tokens counted."""
        if media is None or all(m.kind == "image" for m in media):
            ids = self.processor.tokenizer(self.template(sample), add_special_tokens=False)["input_ids"]
            return len(ids) - len(sample.media)
        f = self.grid.factor
        small = [dataclasses.replace(m, frames=m.frames[:, :, :f, :f]) for m in media]  # [T, 3, f, f] each
        return count_tokens(self._process(sample, small))["text"]

    # -- fitting ---------------------------------------------------------------------------------

    def _fit(self, sample: Sample, media: list[LoadedMedia]) -> list[tuple[int, int]]:
        """(H, W) per media item such that the whole prompt fits `max_prompt_length`."""
        shapes = [(int(m.frames.shape[0]), int(m.frames.shape[2]), int(m.frames.shape[3])) for m in media]
        text = self.text_tokens(sample, media)
        limit = self.vision.max_prompt_length
        need = text + sum(vision_tokens(*s, self.grid) for s in shapes)
        if need <= limit:
            return [(h, w) for _, h, w in shapes]
        pixels = ", ".join(f"{kind} {t}x{h}x{w}" for kind, (t, h, w) in zip([m.kind for m in media], shapes))
        numbers = f"needs {need} tokens ({text} text + {need - text} vision: {pixels}), max_prompt_length is {limit}"
        if text > limit:  # no pixel budget can help, and text is never cut
            vision = f" (+ {need - text} vision tokens)" if need > text else " (no media)"
            raise BadSampleError(sample.ref, f"prompt too long: its text alone is {text} tokens{vision}, "
                                 f"max_prompt_length is {limit}", "too_long", sample.id)
        if self.vision.fit == "reject":
            raise BadSampleError(sample.ref, f"prompt too long: {numbers} (fit=reject)", "too_long", sample.id)
        floors = [resolve_budget(m.options, self.vision, self.grid).min_pixels for m in sample.media]
        sizes = shrink_to_fit(shapes, floors, limit - text, self.grid)
        if sizes is None:
            floor_need = text + sum(vision_tokens(t, *resize_to(h, w, lo, lo, self.grid), self.grid)
                                    for (t, h, w), lo in zip(shapes, floors))
            raise BadSampleError(
                sample.ref,
                f"prompt too long: {numbers}; even at min_pixels {floors} it needs {floor_need} tokens",
                "too_long",
                sample.id,
            )
        return sizes

    def _check_media(self, sample: Sample, media: list[LoadedMedia]) -> None:
        kinds = [m.kind for m in sample.media]
        if [m.kind for m in media] != kinds:
            got = [m.kind for m in media]
            raise BadSampleError(sample.ref, f"media {got} do not match the prompt's {kinds}", "bad_column", sample.id)
        for m in media:
            if m.frames.dtype != torch.uint8 or m.frames.ndim != 4 or m.frames.shape[1] != 3:
                shape = f"{tuple(m.frames.shape)} {m.frames.dtype}"
                raise BadSampleError(sample.ref, f"frames must be [T, 3, H, W] uint8, got {shape}", "bad_column", sample.id)
