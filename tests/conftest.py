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


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's ops are too small to gain from threads, and on a shared 2-core machine
    intra-op threads contend with other processes (about 2x slower); restored afterwards.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """`family_dir(name)`: path of a saved tiny model folder of that family (built once per session)."""
    from mmgrpo.models.tiny import save_tiny

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = save_tiny(tmp_path_factory.mktemp(name) / "model", family=name)
        return made[name]

    return get


@pytest.fixture(scope="session")
def family_model(family_dir):
    """`family_model(name)`: (model, processor) of that family's tiny folder, fp32, eval mode (built
    once per session; deepcopy before changing it)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    loaded = {}

    def get(name: str):
        if name not in loaded:
            folder = family_dir(name)
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype="float32").eval()
            loaded[name] = (model, AutoProcessor.from_pretrained(folder))
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The small demo-style task (media + JSONL) of tests.trainer_utils, once per test module."""
    from tests.trainer_utils import small_task

    return small_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    """A reward-function file (accuracy on the task's answers), once per test module."""
    from tests.trainer_utils import reward_file

    return reward_file(tmp_path_factory.mktemp("rewards"))
