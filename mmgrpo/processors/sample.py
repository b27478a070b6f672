"""The typed sample every dataset format maps to, and the processed prompt the model consumes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

class BadSampleError(ValueError):
    """A sample that cannot be used. The message names the sample (id / index, path) and the reason."""

    def __init__(self, sample_ref: str, reason: str, kind: str = "invalid", sample_id: str | None = None):
        super().__init__(f"sample {sample_ref}: {reason}")
        self.sample_ref = sample_ref
        self.reason = reason
        self.kind = kind  # short category for summaries: missing_media, corrupt_media, bad_column, ...
        self.sample_id = sample_id  # the sample's id when known (reports), else None


@dataclass
class MediaOptions:
    """Per-sample overrides of `VisionConfig`; None = use the dataset setting."""

    fps: float | None = None
    nframes: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None
    start: float | None = None  # seconds, clip start (video only)
    end: float | None = None


@dataclass
class Media:
    kind: Literal["image", "video"]
    # a file path, a folder of frames, or a list of frame paths (video only); resolved to absolute
    source: str | list[str]
    options: MediaOptions = field(default_factory=MediaOptions)
    # encoded image bytes when the dataset embeds the image (datasets' Image feature) instead of
    # pointing at a file; `source` then only names it in messages
    data: bytes | None = field(default=None, repr=False)


@dataclass
class Sample:
    """One question. `prompt` holds chat messages in the TRL conversational form; each
    `{"type": "image"}` / `{"type": "video"}` content item is a placeholder for the next entry of
    `media` (same order)."""

    id: str
    prompt: list[dict[str, Any]]
    media: list[Media]
    answer: str | None
    problem_type: str  # one of mmgrpo.answers.PROBLEM_TYPES
    options: list[str] | None = None
    columns: dict[str, Any] = field(default_factory=dict)  # every dataset column, for reward functions
    index: int = -1  # row in its source file
    source: str = ""  # dataset file it came from
    notes: tuple[str, ...] = ()  # what loading added to the row, e.g. media placeholders (check-data reports them)

    @property
    def ref(self) -> str:
        """How error messages name this sample."""
        where = f" in {self.source}" if self.source else ""
        return f"{self.id!r} (row {self.index}{where})"

    def question_text(self) -> str:
        return "".join(
            c.get("text", "") for m in self.prompt if m["role"] == "user" for c in _content(m) if c["type"] == "text"
        )


def _content(message: dict) -> list[dict]:
    c = message["content"]
    return [{"type": "text", "text": c}] if isinstance(c, str) else c


@dataclass
class VisionInputs:
    """Exactly what the vision tower needs; every log-prob forward receives these unchanged."""

    pixel_values: torch.Tensor | None = None  # [n_image_patches, 3*tp*14*14] float
    image_grid_thw: torch.Tensor | None = None  # [n_images, 3] long
    pixel_values_videos: torch.Tensor | None = None  # [n_video_patches, 3*tp*14*14] float
    video_grid_thw: torch.Tensor | None = None  # [n_videos, 3] long
    second_per_grid_ts: torch.Tensor | None = None  # [n_videos] float

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "VisionInputs":
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if dtype is not None and t.is_floating_point() and t is not self.second_per_grid_ts:
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return VisionInputs(*(mv(t) for t in self.__dict__.values()))


@dataclass(frozen=True)
class ShownMedia:
    """A media item exactly as the processor received it (final size, frame sampling done): what
    another engine that runs its own processor (the vLLM rollout backend) must be given so that its
    placeholder counts and pixels equal the trainer's."""

    kind: Literal["image", "video"]
    frames: torch.Tensor  # [T, 3, H, W] uint8 (T = 1 for an image), on the CPU
    metadata: Any = None  # video: the transformers VideoMetadata the processor derived frame times from


@dataclass
class PromptInputs:
    """One processed prompt (chat template applied, vision placeholders expanded)."""

    sample: Sample
    input_ids: torch.Tensor  # [1, P] long
    mm_token_type_ids: torch.Tensor  # [1, P] int (0 text, 1 image, 2 video); needed for mRoPE
    vision: VisionInputs
    num_frames: list[int] = field(default_factory=list)  # decoded frames per video
    resolutions: list[tuple[int, int]] = field(default_factory=list)  # (H, W) per media item after resize
    media: tuple[ShownMedia, ...] = ()  # the processor's input media, in prompt order (rollout engines)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device | str) -> "PromptInputs":
        """Same prompt on `device` (the vision tower casts pixel values to its own dtype)."""
        if self.input_ids.device == torch.device(device):
            return self
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            mm_token_type_ids=self.mm_token_type_ids.to(device),
            vision=self.vision.to(device),
        )


class MediaError(ValueError):
    """A media file that cannot be used, before we know which sample asked for it. `PromptEncoder`
    and the loaders turn it into a `BadSampleError` naming the sample."""

    def __init__(self, path: str, reason: str, kind: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind  # same categories as BadSampleError.kind

    def for_sample(self, sample_ref: str, sample_id: str | None = None) -> BadSampleError:
        return BadSampleError(sample_ref, str(self), self.kind, sample_id)
