"""A tool's answer as tokens: the end of the assistant turn that made the call, the tool turn (text
and images, through the processor) and the header of the next assistant turn, exactly as the
model's chat template writes them. The rollout appends these ids to the trajectory as they are
(token-in/token-out): the trajectory is never re-rendered from text, which would drop or duplicate
boundary tokens (verl's finding for the Qwen, GLM and Gemma VL families).

The text around the answer is read from the template itself: a conversation ending with an
assistant turn is rendered with and without a tool turn after it, and the tool turn is what the
second adds. Templates that wrap tool answers in `<tool_response>` (Qwen2.5, Qwen3) do so
themselves; for those that do not (Qwen2-VL / Qwen2.5-VL's), the answer is wrapped here, the Qwen
convention. Tool images are resized to `tools.min_pixels..max_pixels` on the processor's grid.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmgrpo.config import ToolsConfig
from mmgrpo.processors.budget import Budget, Grid
from mmgrpo.processors.image import image_frames

_MARK = "\u2063MMGRPO-TOOL-CALL\u2063"  # a marker no template writes, to find where the tool turn starts
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>\n", "\n</tool_response>"


@dataclass(frozen=True)
class ToolTurn:
    """The tokens a tool answer adds to a trajectory (all with loss mask 0)."""

    input_ids: Tensor  # [n] long
    mm_token_type_ids: Tensor  # [n] int, 1 on image placeholders
    pixel_values: Tensor | None  # [patches, D] of the answer's images, None without images
    image_grid_thw: Tensor | None  # [k, 3] long
    answer: str  # the tool's answer text (what rewards and logs see)
    error: bool  # the call failed: the answer is the error message

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


class ToolTurnEncoder:
    def __init__(self, processor, cfg: ToolsConfig):
        self.processor = processor
        self.budget = Budget(fps=1.0, nframes=None, min_frames=2, max_frames=2, min_pixels=cfg.min_pixels,
                             max_pixels=cfg.max_pixels, total_pixels=None, start=None, end=None, grid=Grid.of(processor))
        self.wraps = RESPONSE_OPEN.strip() in self._render([{"type": "text", "text": "x"}])

    def _render(self, content: list[dict]) -> str:
        """The text after the assistant turn's own content: its end, the tool turn, the next header."""
        messages = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": _MARK}]},
                    {"role": "tool", "content": content}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text[text.index(_MARK) + len(_MARK):]

    def text(self, answer_text: str, n_images: int) -> str:
        """The tool turn's text, vision placeholders not yet expanded."""
        if not self.wraps:
            answer_text = RESPONSE_OPEN + answer_text + RESPONSE_CLOSE
        images = [{"type": "image"} for _ in range(n_images)]
        return self._render([*images, {"type": "text", "text": answer_text}])

    def encode(self, answer_text: str, images: tuple, error: bool) -> ToolTurn:
        """`images`: PIL images, resized here to the tool budget."""
        frames = [image_frames(im.convert("RGB"), self.budget)[0] for im in images]  # each [3, H, W] uint8
        kwargs = {"images": frames} if frames else {}
        out = self.processor(text=[self.text(answer_text, len(frames))], do_resize=False, return_tensors="pt", **kwargs)
        return ToolTurn(
            input_ids=out["input_ids"][0],  # [n]
            mm_token_type_ids=out["mm_token_type_ids"][0],  # [n]
            pixel_values=out.get("pixel_values"),  # [patches, D]
            image_grid_thw=out.get("image_grid_thw"),  # [k, 3]
            answer=answer_text,
            error=error,
        )

