"""The counting task's generator (mmgrpo/demo/counting.py): the labels are what the written clips
show, the strata are as designed, and the trace parser reads the reference trace back."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mmgrpo.demo.counting import (
    COLOURS, FRAMES_PER_SCENE, LETTERS, OPTIONS, CountingSpec, make_counting, profiles, trace,
)
from mmgrpo.demo.counting_run import trace_counts

SPEC = CountingSpec(n_train=12, n_heldout=6, n_sft=4, seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_counting(tmp_path_factory.mktemp("counting"), SPEC)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_frames(path) -> np.ndarray:
    cap, frames = cv2.VideoCapture(str(path)), []
    ok, f = cap.read()
    while ok:
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        ok, f = cap.read()
    return np.stack(frames)  # [T, H, W, 3]


def seen_colour(frame: np.ndarray) -> int:
    """The option whose colour the frame's most saturated pixels are closest to (the square; the
    background is grey noise, whatever the mp4 codec did to it)."""
    px = frame.reshape(-1, 3).astype(float)  # [H*W, 3]
    square = px[np.argsort(px.max(1) - px.min(1))[-100:]].mean(0)  # [3] the 100 most saturated pixels
    return int(np.argmin([np.abs(square - np.array(COLOURS[c])).sum() for c in OPTIONS]))


@pytest.mark.parametrize("split", ["train", "heldout", "sft"])
def test_labels_are_what_the_frames_show(files, split):
    for r in rows(getattr(files, split)):
        frames = read_frames(files.train.parent / r["video"])
        assert len(frames) == SPEC.scenes * FRAMES_PER_SCENE
        scenes = [seen_colour(frames[i * FRAMES_PER_SCENE + j]) for i in range(SPEC.scenes) for j in (0, 1)]
        assert scenes[0::2] == scenes[1::2], "both frames of a scene show the same square"
        counts = np.bincount(scenes[0::2], minlength=len(OPTIONS)).tolist()
        assert counts == r["counts"], r["id"]
        assert r["answer"] == LETTERS[int(np.argmax(counts))]
        assert r["trace"] == trace(counts)
        assert trace_counts(r["trace"]) == counts


def test_strata_as_designed(files):
    held = rows(files.heldout)
    assert [r["task"] for r in held] == ["easy", "hard"] * SPEC.n_heldout  # n_heldout per stratum
    assert {r["task"] for r in rows(files.sft)} == {"easy"}  # the warm-up never sees a hard clip
    for r in held + rows(files.train):
        top, second = sorted(r["counts"], reverse=True)[:2]
        assert (top - second >= 2) if r["task"] == "easy" else (top - second == 1), r
        assert sum(r["counts"]) == SPEC.scenes


def test_profiles():
    assert profiles(6, "hard") == [(3, 2, 1, 0)]  # the only 6-scene profile won by one scene
    assert (3, 1, 1, 1) in profiles(6, "easy") and (6, 0, 0, 0) in profiles(6, "easy")
    assert all(p[0] - p[1] >= 2 for p in profiles(6, "easy"))


def test_deterministic_and_splits_differ(files, tmp_path):
    again = make_counting(tmp_path, SPEC)
    assert again.heldout.read_text() == files.heldout.read_text()
    assert read_frames(again.train.parent / "videos/train-0000.mp4").tobytes() == \
        read_frames(files.train.parent / "videos/train-0000.mp4").tobytes()
    first = {s: read_frames(files.train.parent / f"videos/{s}-0000.mp4").tobytes() for s in ("train", "heldout", "sft")}
    assert len(set(first.values())) == 3


def test_trace_parser_refuses_other_forms():
    assert trace_counts("<think>red 1 green 2</think><answer>B</answer>") is None
    assert trace_counts("<answer>A</answer>") is None
    assert trace_counts("<think> red 3 green 2 blue 1 yellow 0 </think>") == [3, 2, 1, 0]
