"""Harder inputs for easy samples (ΔR < −δ): video / image perturbations (DeepVideo-R1 §3.3).

The paper perturbs easy videos with frame-level Gaussian noise (or frame masking) whose strength
grows with |ΔR|. We offer those two plus frame drop, blur and occlusion, each a pure function

    fn(frames [T, 3, H, W] uint8, strength in [0, 1], generator) -> [T, 3, H, W] uint8

(images are T = 1). Contract shared by all of them: shape and dtype kept; strength is clipped to
[0, 1]; strength 0 returns an equal tensor (a copy) without drawing random numbers; all randomness
comes from `generator`, so a seeded generator gives the same output. Frames are decoded pixels,
before the processor's resize / normalisation, so one perturbation serves every processor setting.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torchvision.transforms.functional as TF

Perturbation = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]

# Noise std at strength 1, in pixel units: 0.5·255 buries most of the signal, so strength spans
# "untouched" to "barely visible".
NOISE_MAX_STD = 0.5 * 255.0
# Fill of masked frames / occluders: the CLIP mean the Qwen2.5-VL image processor subtracts
# (OPENAI_CLIP_MEAN · 255, rounded), so a blanked pixel is ~0 after normalisation: no information,
# and no colour statistic of the clip leaks into it as a per-clip mean would.
FILL_RGB = (123, 117, 104)
# Blur radius at strength 1 as a share of the shorter frame side (10%: objects stay recognisable
# only coarsely). The kernel is 2·radius + 1, sigma = radius / 2.
BLUR_MAX_RADIUS_SHARE = 0.1


def _check(frames: torch.Tensor, strength: float) -> float:
    """Validate the frame tensor; return the strength clipped to [0, 1]."""
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected frames [T, 3, H, W] uint8, got {tuple(frames.shape)} {frames.dtype}")
    return min(1.0, max(0.0, float(strength)))


def _fill_like(frames: torch.Tensor) -> torch.Tensor:
    return torch.tensor(FILL_RGB, dtype=torch.uint8, device=frames.device).view(1, 3, 1, 1)  # [1, 3, 1, 1]


def _pick_frames(t: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Boolean mask of n frames out of t, chosen uniformly without replacement."""
    order = torch.randperm(t, generator=generator, device=generator.device).to(device)  # [T]
    mask = torch.zeros(t, dtype=torch.bool, device=device)  # [T]
    mask[order[:n]] = True
    return mask


def gaussian_noise(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Additive i.i.d. Gaussian pixel noise, std = strength·NOISE_MAX_STD, rounded and clamped to [0, 255]."""
    s = _check(frames, strength)
    if s == 0.0:
        return frames.clone()
    noise = torch.randn(frames.shape, generator=generator, device=generator.device)  # [T, 3, H, W] float
    noisy = frames.float() + noise.to(frames.device) * (s * NOISE_MAX_STD)  # [T, 3, H, W] float
    return noisy.round().clamp(0, 255).to(torch.uint8)  # [T, 3, H, W] uint8


def frame_mask(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Blank round(strength·T) random frames to FILL_RGB (grey). Images (T = 1): blanked iff strength ≥ 0.5."""
    s = _check(frames, strength)
    t = frames.shape[0]
    n = math.floor(s * t + 0.5)  # round half up, not Python's banker's rounding
    if n == 0:
        return frames.clone()
    mask = _pick_frames(t, n, generator, frames.device)  # [T] bool
    return torch.where(mask.view(t, 1, 1, 1), _fill_like(frames), frames)  # [T, 3, H, W] uint8


def frame_drop(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Drop round(strength·(T−1)) random frames, each replaced by the previous kept frame so T is kept
    (a stutter, as in a low frame rate clip). Frame 0 is always kept: it has no previous frame. At
    strength 1 every frame is frame 0. Images (T = 1) are returned unchanged: nothing to drop."""
    s = _check(frames, strength)
    t = frames.shape[0]
    n = math.floor(s * (t - 1) + 0.5)
    if n == 0:
        return frames.clone()
    dropped = torch.zeros(t, dtype=torch.bool, device=frames.device)  # [T]
    dropped[1:] = _pick_frames(t - 1, n, generator, frames.device)  # [T-1] bool
    pos = torch.arange(t, device=frames.device)  # [T]
    # index of the last kept frame at or before each position: kept frames point to themselves,
    # dropped ones to 0, and a running max carries the last kept index forward
    src = torch.cummax(torch.where(dropped, torch.zeros_like(pos), pos), dim=0).values  # [T]
    return frames[src].clone()  # [T, 3, H, W] uint8


def blur(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur, radius = ceil(strength·BLUR_MAX_RADIUS_SHARE·min(H, W)), capped so that the
    reflect padding fits (radius ≤ min(H, W) − 1). Deterministic: `generator` is unused, taken only
    to share the registry's signature."""
    s = _check(frames, strength)
    h, w = frames.shape[-2:]
    radius = min(math.ceil(s * BLUR_MAX_RADIUS_SHARE * min(h, w)), min(h, w) - 1)
    if radius <= 0:
        return frames.clone()
    k = 2 * radius + 1
    sigma = radius / 2.0
    return TF.gaussian_blur(frames, [k, k], [sigma, sigma])  # [T, 3, H, W] uint8


def occlusion(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """One FILL_RGB box covering a share `strength` of the frame area (frame aspect ratio, side
    sqrt(strength)), at a random position, the same in every frame: a fixed occluder hides one
    region for the whole clip instead of flickering around it."""
    s = _check(frames, strength)
    h, w = frames.shape[-2:]
    bh, bw = round(h * math.sqrt(s)), round(w * math.sqrt(s))
    if bh == 0 or bw == 0:
        return frames.clone()
    top = int(torch.randint(0, h - bh + 1, (1,), generator=generator, device=generator.device))
    left = int(torch.randint(0, w - bw + 1, (1,), generator=generator, device=generator.device))
    out = frames.clone()  # [T, 3, H, W] uint8
    out[:, :, top : top + bh, left : left + bw] = _fill_like(frames)  # [T, 3, bh, bw] <- [1, 3, 1, 1]
    return out


PERTURBATIONS: dict[str, Perturbation] = {
    "gaussian_noise": gaussian_noise,
    "frame_mask": frame_mask,
    "frame_drop": frame_drop,
    "blur": blur,
    "occlusion": occlusion,
}


def check_names(names: list[str]) -> None:
    """Fail early (e.g. on config load) on a perturbation name that is not registered."""
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbation {unknown[0]!r}; known: {sorted(PERTURBATIONS)}")


def perturb(frames: torch.Tensor, names: list[str], strength: float, generator: torch.Generator) -> torch.Tensor:
    """Apply the named perturbations in order, each at `strength`. No names = a copy of `frames`."""
    check_names(names)
    out = frames.clone() if not names else frames  # [T, 3, H, W] uint8
    for name in names:
        out = PERTURBATIONS[name](out, strength, generator)  # [T, 3, H, W] uint8
    return out
