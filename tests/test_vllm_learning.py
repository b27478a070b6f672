"""The demo task learned with generation.backend=vllm, as `mmgrpo demo` learns it with the HF backend
(held-out accuracy 1.000 there): the demo's own pipeline (tiny model, SFT on the answer format with
random labels, Reg-GRPO with the demo config, greedy held-out evaluation), on video and image
prompts in one run, with full fine-tuning and with LoRA (in CI, about 3 minutes each)."""
from __future__ import annotations

import dataclasses

import pytest

from tests.vllm_utils import require_vllm

require_vllm()

from mmgrpo.demo.run import accuracy, demo_vision, rl_config, sft_config  # noqa: E402
from mmgrpo.demo.task import TaskSpec, make_task  # noqa: E402
from mmgrpo.models.tiny import TinySpec, save_tiny  # noqa: E402
from mmgrpo.trainer.loop import train  # noqa: E402
from mmgrpo.trainer.sft import sft  # noqa: E402


def learn(root, tuning: list[str]) -> dict[str, float]:
    """Held-out accuracy per media kind after SFT (format only) and after Reg-GRPO with vLLM rollouts."""
    base = save_tiny(root / "base", TinySpec(seed=0))
    tasks = {kind: make_task(root / kind, TaskSpec(seed=0, media=kind)) for kind in ("video", "image")}
    warmup = sft_config(base, tasks["video"].sft_format, root / "sft", 40, "qwen2_5_vl")
    formats = (str(tasks["video"].sft_format), str(tasks["image"].sft_format))
    start = sft(dataclasses.replace(warmup, data=dataclasses.replace(warmup.data, train=formats)))
    cfg = rl_config(start, tasks["video"].train, tasks["video"].heldout, root / "rl", [
        f"data.train=[{tasks['video'].train},{tasks['image'].train}]", "generation.backend=vllm",
        "progress_bar=false", "sample_every=0", *tuning])
    final = train(cfg)
    out = {f"sft/{k}": accuracy(start, t.heldout, demo_vision()) for k, t in tasks.items()}
    out.update({f"rl/{k}": accuracy(final, t.heldout, cfg.vision) for k, t in tasks.items()})
    print(out)
    return out


# LoRA (r 16 on the language model, the vision blocks and the merger, as the demo's
# model.freeze_vision=false asks) at lr 1e-3: measured with the HF backend, held-out 1.000 after 300
# steps (0.703 at the demo's lr 3e-4; lr 3e-3 diverges).
@pytest.mark.parametrize("tuning", [[], ["lora.enabled=true", "optim.lr=1e-3"]], ids=["full", "lora"])
def test_learns_video_and_image_prompts(tmp_path, tuning):
    acc = learn(tmp_path, tuning)
    assert acc["sft/video"] < 0.5 and acc["sft/image"] < 0.5  # the format alone does not answer the task
    assert acc["rl/video"] >= 0.9 and acc["rl/image"] >= 0.9
