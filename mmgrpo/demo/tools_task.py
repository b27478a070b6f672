"""A synthetic image QA task that needs a tool: four small dots of the four colours sit at the
centre of a large noisy image, in a random order, and the question asks for the colour of the
top-left one (options: the four colours, chance = 25%).

At the prompt's pixel budget (448 x 448 shown at 56 x 56: 8 x 8 source pixels per pixel) the
whole 8 x 8 cluster falls into one pixel, where the four colours average to the same mix whatever
their order: the answer is not in the prompt. Cropping the top-left dot (`crop` with its box) shows
it at the tool budget (56 x 56): the whole tool image is the answer's colour.
Images are real PNG files, read back through the same processors and tools as user data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmgrpo.demo.task import COLOURS, LETTERS, OPTIONS

QUESTION = "Four small dots sit at the centre of the image. What colour is the top-left dot?"
SUFFIX = "\nAnswer with the option's letter in the form <answer>X</answer>."
SYSTEM = ('You can look closer with a tool: <tool_call>{"name": "crop", "arguments": {"box": [x1, y1, x2, y2]}}'
          '</tool_call> shows that region of the image (pixels).')


@dataclass(frozen=True)
class ToolTaskSpec:
    n_train: int  # training questions
    n_heldout: int  # held-out questions
    size: int  # image side, pixels
    dot: int  # dot side, pixels (the cluster is 2 x 2 dots)
    noise: float  # std of the grey background noise
    seed: int

    @property
    def box(self) -> list[int]:
        """The cluster's box [x1, y1, x2, y2]: where `crop` must look."""
        c = self.size // 2
        return [c - self.dot, c - self.dot, c + self.dot, c + self.dot]


def image(rng: np.random.Generator, spec: ToolTaskSpec, order: list[int]) -> np.ndarray:
    """[H, W, 3] uint8: grey noise, and the four colours `order` (top-left, top-right, bottom-left,
    bottom-right) as dots at the centre."""
    pixels = np.clip(rng.normal(128, spec.noise, (spec.size, spec.size, 3)), 0, 255).astype(np.uint8)
    x1, y1, _, _ = spec.box
    d = spec.dot
    for k, colour in enumerate(order):
        y, x = y1 + (k // 2) * d, x1 + (k % 2) * d
        pixels[y : y + d, x : x + d] = COLOURS[OPTIONS[colour]]
    return pixels


def write_split(root: Path, name: str, n: int, spec: ToolTaskSpec, rng: np.random.Generator) -> Path:
    """JSONL in the plain format (question / options / answer / image), images under root/images/."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        order = [int(k) for k in rng.permutation(4)]
        path = f"images/{name}-{i:04d}.png"
        Image.fromarray(image(rng, spec, order)).save(root / path)
        rows.append({"id": f"{name}-{i:04d}", "question": QUESTION, "options": OPTIONS, "answer": LETTERS[order[0]],
                     "image": path, "problem_type": "multiple_choice"})
    out = root / f"{name}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def make_tool_task(root: str | Path, spec: ToolTaskSpec) -> tuple[Path, Path]:
    """(train, held-out) JSONL files."""
    root = Path(root)
    return (write_split(root, "train", spec.n_train, spec, np.random.default_rng(spec.seed)),
            write_split(root, "heldout", spec.n_heldout, spec, np.random.default_rng(spec.seed + 1)))


def crop_call(spec: ToolTaskSpec) -> str:
    """The call that answers the question's need: crop the top-left dot."""
    x1, y1, _, _ = spec.box
    box = [x1, y1, x1 + spec.dot, y1 + spec.dot]
    return "<tool_call>" + json.dumps({"name": "crop", "arguments": {"box": box}}) + "</tool_call>"
