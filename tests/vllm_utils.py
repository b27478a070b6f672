"""Shared by the vLLM test files: vllm is optional, so they skip where it is not installed, except in
CI's vLLM invocation (`MMGRPO_REQUIRE_VLLM=1`, set by .ci/run), where a missing vllm is a failure."""
from __future__ import annotations

import importlib.util
import os

import pytest

REQUIRED = os.environ.get("MMGRPO_REQUIRE_VLLM") == "1"


def require_vllm() -> None:
    """Call at module level, before anything imports vllm."""
    if importlib.util.find_spec("vllm") is not None:
        return
    if REQUIRED:
        raise RuntimeError("MMGRPO_REQUIRE_VLLM=1 but vllm is not installed (scripts/install_vllm_cpu.sh)")
    pytest.skip("vllm is not installed (the `vllm` extra, or scripts/install_vllm_cpu.sh)", allow_module_level=True)
