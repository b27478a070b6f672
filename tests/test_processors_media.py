"""Image and video loading: colour modes, EXIF, frame sampling rules, budgets, bad files, cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from media import (
    counting_frames,
    solid_frames,
    truncate,
    write_corrupt,
    write_empty,
    write_frame_folder,
    write_image,
    write_rgba_image,
    write_video,
)
from mmgrpo.config import VisionConfig
from mmgrpo.processors import Media, MediaCache, MediaError, MediaOptions, decode_media, decode_video, load_image
from mmgrpo.processors import encode as encode_module


def two_colour(h: int, w: int) -> np.ndarray:
    """[H, W, 3]: left half red, right half blue."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return a


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, ext):
    path = write_image(tmp_path / f"rot{ext}", two_colour(40, 80), exif_orientation=6)  # 90 deg clockwise
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (40, 80)  # (W, H): landscape became portrait
    a = np.asarray(image).astype(int)
    top, bottom = a[5], a[-5]
    assert top[:, 0].mean() > 200 and top[:, 2].mean() < 60  # the left (red) half is on top now
    assert bottom[:, 2].mean() > 200 and bottom[:, 0].mean() < 60


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    ext = ".jpg" if mode == "CMYK" else ".png"
    colour = (200, 200, 200) if mode in ("L", "LA", "I;16") else (200, 40, 10)
    path = write_image(tmp_path / f"m{ext}", solid_frames(1, 30, 30, colour)[0], mode=mode)
    image = load_image(str(path))
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image).astype(int) - np.array(colour)).max() <= 12


@pytest.mark.parametrize("mode, stored, top", [("I", np.int32, 65535), ("F", np.float32, 1.0), ("I", np.int32, 255)])
def test_wide_grey_modes_keep_their_levels(tmp_path, mode, stored, top):
    """32-bit int (a 16-bit TIFF opens as mode I) and float images are scaled from their stored range;
    PIL's own convert clips at 255 and turned a mid-grey 16-bit image white."""
    from PIL import Image

    levels = np.array([[0.0, 0.25, 0.5, 1.0]]).repeat(8, axis=0)  # [8, 4] fractions of full scale
    path = tmp_path / "wide.tif"
    Image.fromarray((levels * top).astype(stored), mode=mode).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB"
    got = np.asarray(image)[0, :, 0].astype(int)  # [4] one row, red channel (grey: all equal)
    assert np.abs(got - np.round(levels[0] * 255)).max() <= 1, got


def test_rgba_transparent_pixels_become_white(tmp_path):
    rgb = solid_frames(1, 20, 20, (0, 0, 0))[0]
    alpha = np.zeros((20, 20), dtype=np.uint8)
    alpha[:, :10] = 255  # left half opaque black, right half fully transparent
    image = np.asarray(load_image(str(write_rgba_image(tmp_path / "a.png", rgb, alpha))))
    assert (image[:, :10] == 0).all() and (image[:, 10:] == 255).all()


def test_image_resized_to_budget(tmp_path):
    path = write_image(tmp_path / "big.png", solid_frames(1, 300, 500, (9, 99, 199))[0])
    vision = VisionConfig(min_pixels=28 * 28, max_pixels=112 * 112)
    item = decode_media(Media("image", str(path)), vision)
    t, c, h, w = item.frames.shape
    assert (t, c) == (1, 3) and item.frames.dtype == torch.uint8
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 112 * 112 and (h, w) == (84, 140)
    # a per-sample override wins over the dataset budget
    small = decode_media(Media("image", str(path), MediaOptions(max_pixels=56 * 56)), vision)
    assert small.frames.shape[2] * small.frames.shape[3] <= 56 * 56


# -- videos ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames at 10 fps (2 s), 60x90."""
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", counting_frames(20, 60, 90), fps=10)


@pytest.mark.parametrize(
    "options, frames",
    [
        (MediaOptions(), 4),  # 2 s * 2 fps = 4
        (MediaOptions(fps=4.0), 8),
        (MediaOptions(fps=0.5), 4),  # 1 frame by fps, raised to min_frames 4
        (MediaOptions(fps=10.0, max_frames=6), 6),
        (MediaOptions(fps=3.0), 6),
        (MediaOptions(nframes=7), 8),  # rounded to a multiple of 2 (qwen: round(3.5) * 2)
        (MediaOptions(nframes=5), 4),  # round(2.5) * 2, Python's round-half-even as in qwen-vl-utils
        (MediaOptions(nframes=100), 20),  # clamped to the clip
        (MediaOptions(nframes=1), 2),  # at least one temporal patch
    ],
)
def test_frame_counts_follow_qwen_rules(clip, options, frames):
    out = decode_video(Media("video", str(clip), options), VisionConfig())
    assert out.frames.shape[0] == frames
    assert out.source_fps == pytest.approx(10.0) and out.duration == pytest.approx(2.0)
    assert out.fps == pytest.approx(frames / 20 * 10.0)


def test_sampled_frames_are_spread_over_the_clip(clip):
    out = decode_video(Media("video", str(clip), MediaOptions(nframes=4, max_pixels=60 * 90)), VisionConfig())
    widths = (out.frames[:, 0, 28, :] > 160).sum(-1)  # white bar width grows with the frame index
    assert widths.tolist() == sorted(widths.tolist()) and widths[0] < widths[-1]
    # linspace(0, 19, 4) = frames 0, 6, 13, 19: bar widths (i + 1) / 21 of the width
    expected = torch.tensor([(i + 1) * out.frames.shape[3] / 21 for i in (0, 6, 13, 19)])
    assert (widths.float() - expected).abs().max() < 4


def test_start_end_select_the_clip(tmp_path):
    frames = np.concatenate([solid_frames(10, 56, 56, (255, 0, 0)), solid_frames(21, 56, 56, (0, 255, 0)),
                             solid_frames(9, 56, 56, (0, 0, 255))])  # 40 frames at 10 fps
    path = write_video(tmp_path / "rgb.avi", frames, fps=10)
    out = decode_video(Media("video", str(path), MediaOptions(start=1.0, end=3.0)), VisionConfig())
    assert out.frames.shape[0] == 4  # frames 10..30 = 2.1 s at 2 fps -> 4
    green = out.frames.float().mean((0, 2, 3))  # [3]
    assert green[1] > 200 and green[0] < 40 and green[2] < 40
    assert out.fps == pytest.approx(4 / 21 * 10)


def test_total_pixels_shares_the_budget_between_frames(clip):
    vision = VisionConfig(min_pixels=28 * 28, max_pixels=448 * 448, total_pixels=8 * 56 * 56)
    out = decode_video(Media("video", str(clip), MediaOptions(nframes=8)), vision)
    t, _, h, w = out.frames.shape
    # qwen-vl-utils: per-frame cap = total_pixels / T * 2
    assert t == 8 and h * w <= 8 * 56 * 56 / 8 * 2 and h % 28 == 0 and w % 28 == 0


def test_avi_folder_and_frame_list(tmp_path):
    src = counting_frames(10, 56, 84)
    avi = write_video(tmp_path / "c.avi", src, fps=5)
    folder = write_frame_folder(tmp_path / "frames", src)
    listed = sorted(str(p) for p in folder.iterdir())
    vision = VisionConfig(max_frames=16)
    by_file = decode_video(Media("video", str(avi)), vision)
    by_folder = decode_video(Media("video", str(folder)), vision)
    by_list = decode_video(Media("video", listed[::2]), vision)
    assert by_file.frames.shape == (4, 3, 56, 84)  # 2 s at 2 fps
    assert by_folder.frames.shape == (10, 3, 56, 84)  # frames are taken as already sampled at fps
    assert by_folder.fps == 2.0 and torch.equal(by_folder.frames[0].permute(1, 2, 0), torch.from_numpy(src[0]))
    assert by_list.frames.shape == (4, 3, 56, 84)  # 5 frames -> smart_nframes floors to 4


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda d: d / "nope.mp4", "missing_media"),
        (lambda d: write_empty(d / "empty.mp4"), "empty_media"),
        (lambda d: write_corrupt(d / "noise.mp4"), "corrupt_media"),
        (lambda d: truncate(write_video(d / "t.mp4", counting_frames(20, 56, 56), 10), 0.5), "corrupt_media"),
        (lambda d: truncate(write_video(d / "t.avi", counting_frames(20, 56, 56), 10), 0.5), "corrupt_media"),
        (lambda d: truncate(write_video(d / "t9.avi", counting_frames(20, 56, 56), 10), 0.9), "corrupt_media"),
        (lambda d: write_video(d / "black.mp4", solid_frames(8, 56, 56, (0, 0, 0)), 4), "corrupt_media"),
        (lambda d: write_empty(d / "clip.txt").parent / "clip.txt", "unsupported_media"),
        (lambda d: (d / "no_frames").mkdir() or d / "no_frames", "empty_media"),
    ],
)
def test_bad_video_files(tmp_path, make, kind):
    path = make(tmp_path)
    if kind == "unsupported_media":
        path.write_text("not a video")
    with pytest.raises(MediaError) as info:
        decode_video(Media("video", str(path)), VisionConfig())
    assert info.value.kind == kind and str(path) in str(info.value)


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda d: write_corrupt(d / "noise.png"), "corrupt_media"),
        (lambda d: truncate(write_image(d / "t.jpg", counting_frames(1, 64, 64)[0]), 0.5), "corrupt_media"),
        (lambda d: write_empty(d / "e.png"), "empty_media"),
        (lambda d: d / "missing.png", "missing_media"),
    ],
)
def test_bad_image_files(tmp_path, make, kind):
    path = make(tmp_path)
    with pytest.raises(MediaError) as info:
        load_image(str(path))
    assert info.value.kind == kind and str(path) in str(info.value)


# -- cache ----------------------------------------------------------------------------------------


@pytest.fixture
def counted_decoder(monkeypatch):
    calls = []
    real = encode_module.decode_video

    def counting(media, *args):
        calls.append(media.source)
        return real(media, *args)

    monkeypatch.setattr(encode_module, "decode_video", counting)
    return calls


def test_memory_cache_hit_skips_the_decoder(clip, counted_decoder):
    cache, vision = MediaCache(4), VisionConfig()
    first = decode_media(Media("video", str(clip)), vision, cache)
    first.frames.zero_()  # a caller (augmentation) modifying its copy must not reach the cache
    second = decode_media(Media("video", str(clip)), vision, cache)
    assert len(counted_decoder) == 1 and cache.hits == 1 and cache.misses == 1
    assert second.frames.max() > 0
    decode_media(Media("video", str(clip), MediaOptions(fps=4.0)), vision, cache)  # other options: other key
    assert len(counted_decoder) == 2


def test_memory_cache_is_lru(clip, counted_decoder):
    cache, vision = MediaCache(1), VisionConfig()
    a, b = Media("video", str(clip)), Media("video", str(clip), MediaOptions(nframes=2))
    for m in (a, b, a):
        decode_media(m, vision, cache)
    assert len(counted_decoder) == 3  # capacity 1: b evicted a


def test_disk_cache_survives_a_new_process_and_sees_file_changes(tmp_path, counted_decoder):
    path = write_video(tmp_path / "v.mp4", counting_frames(12, 56, 56), fps=6)
    vision = VisionConfig(disk_cache=str(tmp_path / "cache"))
    first = decode_media(Media("video", str(path)), vision, MediaCache(0, vision.disk_cache))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1 and not list((tmp_path / "cache").glob("*.pkl"))
    again = decode_media(Media("video", str(path)), vision, MediaCache(0, vision.disk_cache))  # fresh cache object
    assert len(counted_decoder) == 1 and torch.equal(first.frames, again.frames) and again.fps == first.fps
    write_video(path, solid_frames(12, 56, 56, (0, 200, 0)), fps=6)  # same path, new content
    changed = decode_media(Media("video", str(path)), vision, MediaCache(0, vision.disk_cache))
    assert len(counted_decoder) == 2 and not torch.equal(changed.frames, first.frames)


def test_opencv_takes_over_when_decord_fails(clip, monkeypatch):
    from mmgrpo.processors import video as video_module

    with_decord = decode_video(Media("video", str(clip)), VisionConfig())

    class Broken:
        def __init__(self, path):
            raise RuntimeError("decord cannot open this")

    monkeypatch.setattr(video_module, "DecordReader", Broken)
    with_opencv = decode_video(Media("video", str(clip)), VisionConfig())
    assert with_opencv.frames.shape == with_decord.frames.shape and with_opencv.fps == with_decord.fps
    assert (with_opencv.frames.float() - with_decord.frames.float()).abs().mean() < 3  # same frames, two decoders
