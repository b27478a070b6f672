"""Bad data is a per-sample error (a BadSampleError naming the sample, so `on_bad_sample=skip` can
skip and count it), never a crash and never silent: over-long text, bytes that are not UTF-8, lone
surrogates, oversized per-row media options, media paths outside `data.media_root`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from media import counting_frames, write_frame_folder, write_image, write_video
from mmgrpo.cli import main as cli_main
from mmgrpo.config import DataConfig, VisionConfig
from mmgrpo.eval.bench import LoadError, load_eval_data
from mmgrpo.processors import (
    BadSampleError,
    MediaCache,
    MediaOptions,
    PromptEncoder,
    decode_media,
    load_samples,
    load_samples_from_config,
    resolve_budget,
)
from mmgrpo.processors.budget import shrink_to_fit

LONG_TEXT = "word " * 400  # far over a 64-token limit on its own


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def pic(tmp_path_factory) -> Path:
    return write_image(tmp_path_factory.mktemp("pic") / "pic.png", counting_frames(1, 56, 56)[0])


# -- 1. text alone longer than max_prompt_length ------------------------------------------------


@pytest.mark.parametrize("with_image", [False, True], ids=["text_only", "with_image"])
def test_text_alone_over_the_limit_is_too_long(tiny, tmp_path, pic, with_image):
    row = {"id": "long", "question": LONG_TEXT, "answer": "a"} | ({"image": str(pic)} if with_image else {})
    sample = load_samples(jsonl(tmp_path / "d.jsonl", [row])).samples[0]
    for fit in ("shrink", "reject"):
        enc = PromptEncoder(tiny[1], VisionConfig(max_prompt_length=64, fit=fit), MediaCache(0))
        with pytest.raises(BadSampleError) as info:
            enc.encode(sample)
        message = str(info.value)
        assert info.value.kind == "too_long" and "'long'" in message and "row 0" in message
        assert f"text alone is {enc.text_tokens(sample)} tokens" in message and "max_prompt_length is 64" in message


def test_shrink_to_fit_with_nothing_to_shrink():
    assert shrink_to_fit([], [], -5) is None  # the text alone is over: no vision to give up
    assert shrink_to_fit([], [], 0) == []
