"""A synthetic video QA task that cannot be answered without looking at the frames.

Each clip shows one coloured square moving over a grey, noisy background; the question asks for
its colour among four fixed options, so the text alone carries no information (chance = 25%).
Colour is a spatial attribute a tiny model can learn (measured here: direction of motion is not
learnable at this size). Clips are written as real mp4 files and read back through the same
processors as user data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 60, 230), "yellow": (230, 220, 30)}
OPTIONS = list(COLOURS)  # fixed order: A red, B green, C blue, D yellow
LETTERS = "ABCD"
QUESTION = "What colour is the moving square in the video?"
IMAGE_QUESTION = "What colour is the square in the image?"
SUFFIX = "\nAnswer with the option's letter in the form <answer>X</answer>."


@dataclass
class TaskSpec:
    n_train: int = 256
    n_heldout: int = 64
    frames: int = 8
    size: int = 56  # pixels per side (56 = 2x2 merged patches of 28)
    square: int = 20
    fps: float = 4.0
    seed: int = 0
    media: str = "video"  # "image": the same task on one frame of each clip (a PNG), for image prompts


def clip(rng: np.random.Generator, spec: TaskSpec, colour: tuple[int, int, int] | None) -> np.ndarray:
    """[T, H, W, 3] uint8: a square moving in a straight line; colour None = pure noise frames."""
    T, S, q = spec.frames, spec.size, spec.square
    if colour is None:
        return rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8)
    frames = np.clip(rng.normal(110, 20, (T, S, S, 3)), 0, 255).astype(np.uint8)  # [T, H, W, 3]
    start = rng.integers(0, S - q, 2)
    end = rng.integers(0, S - q, 2)
    for t in range(T):
        y, x = (start + (end - start) * t / max(T - 1, 1)).astype(int)
        frames[t, y : y + q, x : x + q] = colour
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    T, H, W, _ = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def write_split(root: Path, name: str, n: int, spec: TaskSpec, rng: np.random.Generator, noise: bool = False,
                random_labels: bool = False) -> Path:
    """JSONL in the plain format (question/options/answer/video) with clips under root/videos/."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = int(rng.integers(0, 4))
        frames = clip(rng, spec, None if noise else COLOURS[OPTIONS[k]])  # [T, H, W, 3]
        label = LETTERS[int(rng.integers(0, 4))] if random_labels else LETTERS[k]
        sample_id = f"{name}-{i:04d}" if spec.media == "video" else f"{name}-image-{i:04d}"  # both in one run
        row = {"id": sample_id, "options": OPTIONS, "answer": label, "problem_type": "multiple_choice"}
        if spec.media == "image":
            row.update(question=IMAGE_QUESTION, image=f"videos/{sample_id}.png")
            cv2.imwrite(str(root / row["image"]), cv2.cvtColor(frames[len(frames) // 2], cv2.COLOR_RGB2BGR))
        else:
            row.update(question=QUESTION, video=f"videos/{name}-{i:04d}.mp4")
            write_mp4(root / row["video"], frames, spec.fps)
        rows.append(row)
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass
class TaskFiles:
    train: Path
    heldout: Path
    heldout_noise: Path  # same questions and answers, every frame replaced by noise
    sft_format: Path  # training clips with random labels: teaches the answer format, not the task


def make_task(root: str | Path, spec: TaskSpec | None = None) -> TaskFiles:
    spec = spec or TaskSpec()
    root = Path(root)
    train = write_split(root, "train", spec.n_train, spec, np.random.default_rng(spec.seed))
    heldout = write_split(root, "heldout", spec.n_heldout, spec, np.random.default_rng(spec.seed + 1))
    noise = write_split(root, "heldout_noise", spec.n_heldout, spec, np.random.default_rng(spec.seed + 1), noise=True)
    _copy_answers(heldout, noise)
    sft = write_split(root, "sft_format", spec.n_train // 2, spec, np.random.default_rng(spec.seed + 2),
                      random_labels=True)
    return TaskFiles(train, heldout, noise, sft)


def _copy_answers(src: Path, dst: Path) -> None:
    """The noise split keeps the held-out answers (its rng draws match, but be explicit)."""
    answers = [json.loads(line)["answer"] for line in src.read_text().splitlines()]
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    for r, a in zip(rows, answers):
        r["answer"] = a
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
