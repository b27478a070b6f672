"""Shared by the vLLM test files: vllm is optional, so they skip where it is not installed, except in
CI's vLLM invocation (`MMGRPO_REQUIRE_VLLM=1`, set by .ci/run), where a missing vllm is a failure."""
from __future__ import annotations

import os

import pytest

REQUIRED = os.environ.get("MMGRPO_REQUIRE_VLLM") == "1"


def require_vllm() -> None:
    """Call at module level, before the test module imports anything of vllm."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        if REQUIRED:
            raise RuntimeError("MMGRPO_REQUIRE_VLLM=1 but vllm cannot be imported "
                               "(scripts/install_vllm_cpu.sh constraints-vllm.txt)") from e
        pytest.skip(f"vllm is not installed (the `vllm` extra, or scripts/install_vllm_cpu.sh): {e}",
                    allow_module_level=True)
