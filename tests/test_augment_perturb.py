"""Video / image perturbations: contract shared by the registry, then each one's own behaviour."""
from __future__ import annotations

import pytest
import torch

from mmgrpo.augment import PERTURBATIONS, check_names, perturb
from mmgrpo.augment.perturb import FILL_RGB, NOISE_MAX_STD

RANDOM = ["gaussian_noise", "frame_mask", "frame_drop", "occlusion"]  # blur is deterministic


def clip(t: int = 6, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), generator=g, dtype=torch.uint8)  # [T, 3, H, W]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_is_the_documented_set():
    assert set(PERTURBATIONS) == {"gaussian_noise", "frame_mask", "frame_drop", "blur", "occlusion"}


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
@pytest.mark.parametrize("t", [1, 6])
def test_shape_dtype_kept(name, t):
    x = clip(t)
    for s in (0.0, 0.3, 1.0):
        y = PERTURBATIONS[name](x, s, gen(0))
        assert y.shape == x.shape and y.dtype == torch.uint8


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_strength_zero_is_identity_and_input_untouched(name):
    x = clip()
    before = x.clone()
    for s in (0.0, -0.5):  # negative strengths clip to 0
        y = PERTURBATIONS[name](x, s, gen(0))
        assert torch.equal(y, x)
    PERTURBATIONS[name](x, 1.0, gen(0))
    assert torch.equal(x, before)  # pure: the input is never modified in place


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_strength_one_changes_frames(name):
    x = clip()
    assert not torch.equal(PERTURBATIONS[name](x, 1.0, gen(0)), x)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_strength_clipped_to_one(name):
    x = clip()
    assert torch.equal(PERTURBATIONS[name](x, 5.0, gen(3)), PERTURBATIONS[name](x, 1.0, gen(3)))


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_deterministic_under_seed(name):
    x = clip()
    assert torch.equal(PERTURBATIONS[name](x, 0.5, gen(7)), PERTURBATIONS[name](x, 0.5, gen(7)))


@pytest.mark.parametrize("name", RANDOM)
def test_different_seeds_differ(name):
    x = clip(t=12, h=40, w=40)
    outs = {PERTURBATIONS[name](x, 0.5, gen(seed)).sum().item() for seed in range(4)}
    # 4 seeds giving one output would mean the generator is ignored
    assert len(outs) > 1


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="uint8"):
        PERTURBATIONS["blur"](clip().float(), 0.5, gen(0))
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        PERTURBATIONS["blur"](clip()[0], 0.5, gen(0))
    with pytest.raises(ValueError, match="unknown perturbation 'jpeg'"):
        check_names(["gaussian_noise", "jpeg"])


def test_gaussian_noise_std_grows_with_strength():
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)  # mid grey: little clamping
    d = lambda s: (PERTURBATIONS["gaussian_noise"](x, s, gen(0)).float() - 128).std().item()  # noqa: E731
    # std = strength * 127.5: 0.1 -> 12.75, 0.3 -> 38.25 (clamping at 0/255 barely matters there)
    assert d(0.1) == pytest.approx(0.1 * NOISE_MAX_STD, rel=0.05)
    assert d(0.3) == pytest.approx(0.3 * NOISE_MAX_STD, rel=0.05)


def test_frame_mask_blanks_the_right_count():
    x = clip(t=8)
    y = PERTURBATIONS["frame_mask"](x, 0.5, gen(1))
    fill = torch.tensor(FILL_RGB, dtype=torch.uint8).view(3, 1, 1)
    blank = [bool((f == fill).all()) for f in y]
    assert sum(blank) == 4  # round(0.5 * 8) = 4 frames
    kept = [i for i, b in enumerate(blank) if not b]
    assert torch.equal(y[kept], x[kept])  # the others untouched
    # image (T = 1): round(0.4 * 1) = 0 -> unchanged; round(0.5 * 1) = 1 -> blanked
    img = clip(t=1)
    assert torch.equal(PERTURBATIONS["frame_mask"](img, 0.4, gen(0)), img)
    assert bool((PERTURBATIONS["frame_mask"](img, 0.5, gen(0)) == fill).all())


def test_frame_drop_repeats_previous_kept_frame():
    x = clip(t=9)
    y = PERTURBATIONS["frame_drop"](x, 0.5, gen(2))
    # round(0.5 * (9 - 1)) = 4 of frames 1..8 dropped; frame 0 always kept
    src = [next(j for j in range(9) if torch.equal(y[i], x[j])) for i in range(9)]
    assert src[0] == 0 and len(set(src)) == 9 - 4
    assert src == sorted(src)  # order preserved: each slot shows the last kept frame at or before it
    assert all(s <= i for i, s in enumerate(src))
    # strength 1: every frame is frame 0
    assert torch.equal(PERTURBATIONS["frame_drop"](x, 1.0, gen(0)), x[:1].expand_as(x))
    # image: nothing to drop
    assert torch.equal(PERTURBATIONS["frame_drop"](clip(t=1), 1.0, gen(0)), clip(t=1))


def test_blur_grows_with_strength():
    x = clip(t=2, h=40, w=40)
    def roughness(y):  # mean absolute difference between horizontal neighbours
        return (y[..., 1:].float() - y[..., :-1].float()).abs().mean().item()
    r = [roughness(PERTURBATIONS["blur"](x, s, gen(0))) for s in (0.0, 0.25, 1.0)]
    # radius = ceil(s * 0.1 * 40): 0, 1, 4 -> smoother and smoother
    assert r[0] > r[1] > r[2]


@pytest.mark.parametrize("s", [0.25, 0.5, 1.0])
def test_occlusion_area_share_and_static_box(s):
    x = torch.zeros(3, 3, 40, 60, dtype=torch.uint8)  # black: any FILL pixel is the box
    y = PERTURBATIONS["occlusion"](x, s, gen(5))
    covered = (y != 0).any(dim=1)  # [T, H, W]
    # box side = sqrt(s) * side: 0.25 -> 20x30 = 600 px, 0.5 -> 28x42 = 1176, 1.0 -> 40x60 = 2400
    assert covered[0].sum().item() == pytest.approx(s * 40 * 60, rel=0.03)
    assert torch.equal(covered[0], covered[1]) and torch.equal(covered[0], covered[2])  # same box


def test_perturb_chain():
    x = clip()
    y = perturb(x, ["frame_drop", "gaussian_noise"], 0.5, gen(4))
    g = gen(4)
    expected = PERTURBATIONS["gaussian_noise"](PERTURBATIONS["frame_drop"](x, 0.5, g), 0.5, g)
    assert torch.equal(y, expected)
    assert torch.equal(perturb(x, [], 0.5, gen(0)), x)
    assert torch.equal(perturb(x, ["blur", "occlusion"], 0.0, gen(0)), x)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(x, ["nope"], 0.5, gen(0))
