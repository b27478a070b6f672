"""A counting task that needs the frames and a short reasoning trace (the learning benchmark's task,
issue 15; scripts/bench_learning.py --task counting).

Each clip is a sequence of scenes; every scene shows one coloured square (red, green, blue or
yellow) at a random place on a grey, noisy background. The question asks which colour the square
has most often (in the most scenes); four fixed options, so the text alone carries nothing (chance 25%). The
reference completion counts first, then answers:

    <think>red 3 green 2 blue 1 yellow 0</think><answer>A</answer>

Why this task: colour is a spatial attribute the tiny model can see (docs/bench_learning.md;
direction of motion was not learned at 0.75M parameters even with true labels), and the answer
follows from counts over the whole clip, so the trace is the reasoning DeepVideo-R1 §3.3's
"easier" branch hands out as a hint. Difficulty is graded by the margin between the most frequent colour and the runner-up: "easy" clips win by
>= 2 scenes, "hard" ones by exactly 1 (one miscounted scene flips the answer).

Each scene lasts two frames, the Qwen-VL temporal patch: a video token then sees one scene, never
two half scenes blended.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmgrpo.demo.task import COLOURS, LETTERS, OPTIONS, write_mp4

QUESTION = "Which colour does the square have most often in the video?"
SUFFIX = ("\nCount how often each colour appears inside <think></think>, then answer with the option's letter "
          "in the form <answer>X</answer>.")
FRAMES_PER_SCENE = 2  # the temporal patch size of every supported family
STRATA = ("easy", "hard")


@dataclass
class CountingSpec:
    scenes: int = 6
    n_train: int = 512
    n_heldout: int = 64  # per stratum
    n_sft: int = 256
    sft_strata: tuple[str, ...] = ("easy",)  # the warm-up sees easy clips only: format and some skill
    size: int = 56
    square: int = 20
    fps: float = 4.0
    seed: int = 0


def profiles(scenes: int, stratum: str) -> list[tuple[int, ...]]:
    """Sorted count profiles (largest first, 4 colours, summing to `scenes`) with a unique winner,
    in the stratum: margin to the runner-up >= 2 (easy) or == 1 (hard)."""
    out = []
    for counts in itertools.product(range(scenes + 1), repeat=len(OPTIONS)):
        if sum(counts) != scenes or list(counts) != sorted(counts, reverse=True):
            continue
        margin = counts[0] - counts[1]
        if (stratum == "easy" and margin >= 2) or (stratum == "hard" and margin == 1):
            out.append(counts)
    if not out:
        raise ValueError(f"no {stratum} profile with {scenes} scenes")
    return out


def draw_counts(rng: np.random.Generator, scenes: int, stratum: str) -> list[int]:
    """Counts per colour (in OPTIONS order): a profile of the stratum, colours assigned at random,
    so every answer letter is equally likely."""
    choices = profiles(scenes, stratum)
    profile = choices[int(rng.integers(0, len(choices)))]
    counts = [0] * len(OPTIONS)
    for colour, n in zip(rng.permutation(len(OPTIONS)), profile):
        counts[int(colour)] = n
    return counts


def scene_colours(rng: np.random.Generator, counts: list[int]) -> list[int]:
    """The colour index of each scene: every colour its count of times, in a random order."""
    seq = [k for k, n in enumerate(counts) for _ in range(n)]
    return [seq[i] for i in rng.permutation(len(seq))]


def render(rng: np.random.Generator, spec: CountingSpec, colours: list[int]) -> np.ndarray:
    """[T, H, W, 3] uint8, T = scenes x FRAMES_PER_SCENE: one still square per scene."""
    S, q = spec.size, spec.square
    frames = np.clip(rng.normal(110, 20, (len(colours) * FRAMES_PER_SCENE, S, S, 3)), 0, 255).astype(np.uint8)
    for i, k in enumerate(colours):
        y, x = rng.integers(0, S - q, 2)
        frames[i * FRAMES_PER_SCENE : (i + 1) * FRAMES_PER_SCENE, y : y + q, x : x + q] = COLOURS[OPTIONS[k]]
    return frames


def trace(counts: list[int]) -> str:
    """The reference completion: counts in the options' order, then the winner's letter."""
    think = " ".join(f"{c} {n}" for c, n in zip(OPTIONS, counts))
    return f"<think>{think}</think><answer>{LETTERS[int(np.argmax(counts))]}</answer>"


def write_split(root: Path, name: str, n: int, strata: tuple[str, ...], spec: CountingSpec,
                rng: np.random.Generator) -> Path:
    """JSONL (plain format) with clips under root/videos/; strata alternate row by row. `task` is the
    stratum, so the evaluator reports accuracy per stratum (eval/task/easy, eval/task/hard)."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        stratum = strata[i % len(strata)]
        counts = draw_counts(rng, spec.scenes, stratum)
        video = f"videos/{name}-{i:04d}.mp4"
        write_mp4(root / video, render(rng, spec, scene_colours(rng, counts)), spec.fps)
        rows.append({"id": f"{name}-{i:04d}", "question": QUESTION, "options": OPTIONS,
                     "answer": LETTERS[int(np.argmax(counts))], "video": video, "problem_type": "multiple_choice",
                     "task": stratum, "counts": counts, "trace": trace(counts)})
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass
class CountingFiles:
    train: Path  # both strata
    heldout: Path  # n_heldout clips per stratum, rows tagged task=easy|hard
    sft: Path  # clips of spec.sft_strata with their reference traces (SFT target column "trace")


def make_counting(root: str | Path, spec: CountingSpec | None = None) -> CountingFiles:
    """Deterministic in spec.seed: the splits draw from separate generators, so they never share a clip."""
    spec = spec or CountingSpec()
    root = Path(root)
    train = write_split(root, "train", spec.n_train, STRATA, spec, np.random.default_rng([spec.seed, 0]))
    heldout = write_split(root, "heldout", 2 * spec.n_heldout, STRATA, spec, np.random.default_rng([spec.seed, 1]))
    sft = write_split(root, "sft", spec.n_sft, spec.sft_strata, spec, np.random.default_rng([spec.seed, 2]))
    return CountingFiles(train, heldout, sft)
