"""Shared fixtures: the tiny model is built once per test session, offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Path of a saved tiny Qwen2.5-VL folder (default TinySpec)."""
    from mmgrpo.models.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, processor) loaded from `tiny_dir`, fp32, eval mode. Do not train it in place: deepcopy."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype="float32").eval()
    return model, AutoProcessor.from_pretrained(tiny_dir)
