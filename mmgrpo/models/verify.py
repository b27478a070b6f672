"""Verification of an exported folder, run after every `mmgrpo merge` unless turned off.

1. Reference: before anything is merged, the loaded checkpoint (base + adapter, or the full
   weights) answers a probe prompt holding one image and one 8-frame video; its logits are kept.
2. A fresh Python process that imports only torch, transformers (and peft for an adapter folder)
   rebuilds the probe with the exported processor (same input ids and pixels as the reference?),
   loads the exported weights with `AutoModelForImageTextToText` (`output_loading_info=True`: zero
   missing / unexpected keys), runs them on the reference's own inputs (so a weight difference and
   a processor difference are told apart), compares logits and generates a few tokens. Doing the
   whole check there proves that the folder alone, without mmgrpo, reproduces the trained model.
3. The folder holds every file a loader or serving engine looks for.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

# Allowed |logits difference| per export dtype, relative to max(1, max |reference logit|). fp32 is
# exact up to summation order; half precision rounds W + BA once more than base + adapter does.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
PROBE_QUESTION = "What colour is the square in the video, and what is in the picture?"
GENERATED_TOKENS = 4

MERGED_FILES = ["config.json", "generation_config.json"]
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]
PROCESSOR_FILES = [
    "preprocessor_config.json", "video_preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
]


@dataclass
class Probe:
    """The probe prompt and what the reference model made of it."""

    messages: list[dict]
    image: np.ndarray  # [H, W, 3] uint8
    video: np.ndarray  # [T, H, W, 3] uint8
    batch: dict[str, torch.Tensor]  # processor output: input_ids [1, P], pixel_values, grids, ...
    logits: torch.Tensor  # [1, P, V] float32, CPU
    source: str  # what made the logits, for messages: "base + adapter", "the checkpoint as loaded"


@dataclass
class VerifyReport:
    missing: list[str]
    unexpected: list[str]
    max_abs_diff: float | None  # None when the fresh process did not get as far as the logits
    tolerance: float
    fresh_process_ok: bool
    messages: list[str]  # one line per failed check, saying what differs; empty = passed
    missing_files: list[str] = field(default_factory=list)
    model_class: str = ""
    generated_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.messages

    def summary(self) -> str:
        diff = "not computed" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        fresh = f"loaded and generated {self.generated_tokens} tokens" if self.fresh_process_ok else "FAILED"
        lines = [
            f"  keys: {len(self.missing)} missing, {len(self.unexpected)} unexpected ({self.model_class or '?'})",
            f"  probe logits (image + video): max abs diff {diff}, tolerance {self.tolerance:.3g}",
            f"  fresh process without mmgrpo: {fresh}",
            f"  files: {'all present' if not self.missing_files else 'missing ' + ', '.join(self.missing_files)}",
        ]
        return "\n".join(lines)


def probe_media(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 56x56 image and an 8-frame 56x56 video with a square moving over a gradient: structured
    enough to exercise every patch, small enough for any Qwen2.5-VL pixel budget."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 56, dtype=np.float32)
    background = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (56, 1)), np.tile(ramp[:, None], (1, 56))], -1)
    image = (background + rng.normal(0, 20, background.shape)).clip(0, 255).astype(np.uint8)
    video = np.repeat(background[None], 8, axis=0).astype(np.uint8)
    for t in range(8):
        video[t, 10:26, 4 + 5 * t : 20 + 5 * t] = (220, 40, 40)
    return image, video


def probe_messages() -> list[dict]:
    content = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": PROBE_QUESTION}]
    return [{"role": "user", "content": content}]


def probe_batch(processor, messages: list[dict], image: np.ndarray, video: np.ndarray):
    # Mirrored line for line by the fresh-process script below; its comparison of the whole batch
    # catches any drift between the two copies.
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[image], videos=[video], return_tensors="pt")


def model_inputs(batch, device: str | torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # only pixels take the model dtype; second_per_grid_ts stays float32 (mRoPE positions)
    pixels = ("pixel_values", "pixel_values_videos")
    return {k: v.to(device, dtype) if k in pixels else v.to(device) for k, v in batch.items()}


@torch.no_grad()
def make_probe(model: torch.nn.Module, processor, device: str | torch.device, source: str) -> Probe:
    """Reference logits of `model` (base + adapter unmerged, or full weights) on the probe."""
    image, video = probe_media()
    messages = probe_messages()
    batch = probe_batch(processor, messages, image, video)
    dtype = next(model.parameters()).dtype
    logits = model.eval()(**model_inputs(batch, device, dtype)).logits.float().cpu()
    return Probe(messages, image, video, dict(batch), logits, source)


def tolerance_for(dtype: str, probe: Probe) -> float:
    return TOLERANCE[dtype] * max(1.0, float(probe.logits.abs().max()))


def required_files(folder: Path, mode: Literal["merged", "adapter"]) -> list[str]:
    """Files a plain loader or serving engine needs that `folder` lacks."""
    names = (MERGED_FILES if mode == "merged" else ADAPTER_FILES) + PROCESSOR_FILES
    missing = [n for n in names if not (folder / n).is_file()]
    if mode == "merged" and not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if not _has_chat_template(folder):
        missing.append("chat template")
    return missing


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and json.loads(path.read_text()).get("chat_template"):
            return True
    return False


def verify_export(
    folder: str | Path,
    probe: Probe,
    mode: Literal["merged", "adapter"],
    dtype: str,
    base: str | None = None,
    device: str = "cpu",
    tolerance: float | None = None,
    timeout_s: float = 3600,
) -> VerifyReport:
    """Check an exported folder against the reference `probe` (see the module docstring).
    `base` is needed for an adapter folder (the fresh process loads base + adapter)."""
    folder = Path(folder).resolve()
    tol = tolerance if tolerance is not None else tolerance_for(dtype, probe)
    args = {"model_dir": str(folder), "mode": mode, "base": base, "dtype": TORCH_NAMES[dtype], "device": device,
            "messages": probe.messages, "new_tokens": GENERATED_TOKENS}
    with tempfile.TemporaryDirectory(prefix="mmgrpo-verify-") as tmp:
        result = _run_fresh(Path(tmp), args, probe, timeout_s)
    done = result.get("stage") == "done"
    report = VerifyReport(
        missing=result.get("missing", []),
        unexpected=result.get("unexpected", []),
        max_abs_diff=result.get("max_abs_diff"),
        tolerance=tol,
        fresh_process_ok=done and not result.get("mmgrpo_imported") and not result.get("processor_error"),
        messages=[],
        missing_files=required_files(folder, mode),
        model_class=result.get("model_class", ""),
        generated_tokens=result.get("new_tokens", 0),
    )
    report.messages = _failures(report, result, probe.source)
    return report


def _run_fresh(tmp: Path, args: dict, probe: Probe, timeout_s: float) -> dict:
    """FRESH_SCRIPT in a new interpreter; its result.json, or what is known when it wrote none."""
    batch = {f"batch_{k}": v.numpy() for k, v in probe.batch.items()}
    np.savez(tmp / "probe.npz", image=probe.image, video=probe.video, logits=probe.logits.numpy(), **batch)
    args = {**args, "probe": str(tmp / "probe.npz"), "result": str(tmp / "result.json")}
    (tmp / "args.json").write_text(json.dumps(args))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FRESH_SCRIPT, str(tmp / "args.json")],
            capture_output=True, text=True, cwd=tmp, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"stage": "timeout", "error": f"no answer within {timeout_s:.0f} s"}
    path = tmp / "result.json"
    if not path.is_file():  # the interpreter died before the script could report (e.g. killed for memory)
        return {"stage": "start", "error": f"exit code {proc.returncode}: {proc.stderr[-1500:]}"}
    return json.loads(path.read_text())


def _failures(report: VerifyReport, result: dict, reference: str) -> list[str]:
    msgs = []
    if result.get("processor_error"):
        msgs.append(f"the exported processor failed on the probe: {result['processor_error']}")
    if result.get("error"):
        msgs.append(f"fresh process failed at stage '{result.get('stage')}': {result['error']}")
    if report.missing:
        msgs.append(f"{len(report.missing)} missing keys when loading the export: {_head(report.missing)}")
    if report.unexpected:
        msgs.append(f"{len(report.unexpected)} unexpected keys when loading the export: {_head(report.unexpected)}")
    if result.get("processor_differs"):
        names = ", ".join(result["processor_differs"])
        msgs.append(f"the exported processor gives different {names} on the probe than the checkpoint's processor")
    if result.get("stage") in ("generate", "done") and report.max_abs_diff is None:
        msgs.append("logits of the export have a different shape than the reference's")
    if report.max_abs_diff is not None and not report.max_abs_diff <= report.tolerance:  # NaN fails too
        msgs.append(f"logits differ from {reference}: max abs diff {report.max_abs_diff:.3g}"
                    f" > tolerance {report.tolerance:.3g}")
    if result.get("stage") == "done" and report.generated_tokens < 1:
        msgs.append("the export generated no tokens in the fresh process")
    if result.get("mmgrpo_imported"):
        msgs.append("the fresh process imported mmgrpo: the export depends on mmgrpo code")
    if report.missing_files:
        msgs.append(f"files missing from the export: {', '.join(report.missing_files)}")
    return msgs


def _head(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


# Runs in a fresh interpreter: imports nothing from mmgrpo. Reports stage by stage into result.json
# so that a failure still says how far loading got.
FRESH_SCRIPT = r"""
import json, sys, traceback
args = json.load(open(sys.argv[1]))
result = {"stage": "import", "processor_differs": []}
def last_line():
    return traceback.format_exc().strip().splitlines()[-1][:1000]
try:
    import numpy as np, torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    probe = np.load(args["probe"])
    ref = {k[len("batch_"):]: torch.from_numpy(probe[k]) for k in probe.files if k.startswith("batch_")}
    dtype, device = getattr(torch, args["dtype"]), args["device"]
    result["stage"] = "processor"
    try:
        processor = AutoProcessor.from_pretrained(args["model_dir"])
        text = processor.apply_chat_template(args["messages"], add_generation_prompt=True, tokenize=False)
        batch = processor(text=[text], images=[probe["image"]], videos=[probe["video"]], return_tensors="pt")
        for k, v in ref.items():
            same = k in batch and batch[k].shape == v.shape and torch.allclose(batch[k].double(), v.double(), atol=1e-6)
            if not same:
                result["processor_differs"].append(k)
    except Exception:
        result["processor_error"] = last_line()
    result["stage"] = "model"
    load = dict(dtype=dtype, attn_implementation="sdpa", output_loading_info=True)
    if args["mode"] == "merged":
        model, info = AutoModelForImageTextToText.from_pretrained(args["model_dir"], **load)
        result["missing"], result["unexpected"] = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    else:
        from peft import PeftModel, get_peft_model_state_dict
        from safetensors import safe_open
        model, info = AutoModelForImageTextToText.from_pretrained(args["base"], **load)
        model = PeftModel.from_pretrained(model, args["model_dir"])
        with safe_open(args["model_dir"] + "/adapter_model.safetensors", "pt") as f:
            saved = set(f.keys())
        expected = set(get_peft_model_state_dict(model))
        result["missing"] = sorted(info["missing_keys"]) + sorted(expected - saved)
        result["unexpected"] = sorted(info["unexpected_keys"]) + sorted(saved - expected)
    result["model_class"] = type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__
    model = model.to(device).eval()
    pixels = ("pixel_values", "pixel_values_videos")
    inputs = {k: v.to(device, dtype) if k in pixels else v.to(device) for k, v in ref.items()}
    result["stage"] = "forward"
    with torch.no_grad():
        logits = model(**inputs).logits.float().cpu().numpy()
    if logits.shape == probe["logits"].shape:
        result["max_abs_diff"] = float(np.abs(logits - probe["logits"]).max())
    result["stage"] = "generate"
    out = model.generate(**inputs, max_new_tokens=args["new_tokens"], do_sample=False)
    result["new_tokens"] = int(out.shape[1] - inputs["input_ids"].shape[1])
    result["stage"] = "done"
except Exception:
    result["error"] = last_line()
result["mmgrpo_imported"] = "mmgrpo" in sys.modules
json.dump(result, open(args["result"], "w"))
"""
