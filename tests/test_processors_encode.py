"""PromptEncoder on the tiny Qwen2.5-VL: exact multimodal bookkeeping, mRoPE positions, fps,
fitting the prompt to max_prompt_length, and the two-step (load_media / build) API."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import transformers

from media import counting_frames, truncate, write_corrupt, write_empty, write_image, write_video
from mmgrpo.config import VisionConfig
from mmgrpo.processors import (
    BadSampleError,
    Media,
    MediaCache,
    MediaOptions,
    PromptEncoder,
    Sample,
    count_tokens,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    return {
        "video": str(write_video(d / "v.mp4", counting_frames(20, 120, 160), fps=10)),  # 2 s
        "image": str(write_image(d / "i.png", counting_frames(1, 90, 130)[0])),
    }


def make_sample(files, kinds: list[str], options: MediaOptions | None = None, text: str = "What colour is it?") -> Sample:
    media = [Media(k, files[k], options or MediaOptions()) for k in kinds]
    content = [{"type": k} for k in kinds] + [{"type": "text", "text": text}]
    return Sample(id="s1", prompt=[{"role": "user", "content": content}], media=media, answer="A",
                  problem_type="exact", index=0, source="test")


def encoder(tiny, **vision) -> PromptEncoder:
    return PromptEncoder(tiny[1], VisionConfig(**vision), MediaCache(8))


def pad_ids(processor) -> tuple[int, int]:
    tok = processor.tokenizer
    return tok.convert_tokens_to_ids("<|image_pad|>"), tok.convert_tokens_to_ids("<|video_pad|>")


@pytest.mark.parametrize("kinds", [["video"], ["image"], ["image", "video"], ["video", "video"]])
def test_placeholder_counts_match_grids_and_mrope_has_model_shape(tiny, files, kinds):
    model, processor = tiny
    inputs = encoder(tiny, max_pixels=112 * 112).encode(make_sample(files, kinds))
    image_id, video_id = pad_ids(processor)
    ids, v = inputs.input_ids, inputs.vision
    merge = processor.video_processor.merge_size ** 2
    n_video = int((ids == video_id).sum())
    n_image = int((ids == image_id).sum())
    assert n_video == (int(v.video_grid_thw.prod(-1).sum()) // merge if "video" in kinds else 0)
    assert n_image == (int(v.image_grid_thw.prod(-1).sum()) // merge if "image" in kinds else 0)
    assert ((inputs.mm_token_type_ids == 2) == (ids == video_id)).all()
    assert ((inputs.mm_token_type_ids == 1) == (ids == image_id)).all()
    assert count_tokens(inputs) == {"text": inputs.length - n_image - n_video, "image": n_image, "video": n_video}
    if v.pixel_values_videos is not None:
        assert v.pixel_values_videos.shape[0] == int(v.video_grid_thw.prod(-1).sum())
    position_ids, _ = model.model.get_rope_index(
        ids, inputs.mm_token_type_ids, v.image_grid_thw, v.video_grid_thw, v.second_per_grid_ts, torch.ones_like(ids)
    )
    assert position_ids.shape == (3, 1, inputs.length)
    with torch.no_grad():  # the vision features and placeholder tokens agree: the forward runs
        logits = model(input_ids=ids, mm_token_type_ids=inputs.mm_token_type_ids, **v.as_kwargs()).logits
    assert logits.shape[:2] == (1, inputs.length) and torch.isfinite(logits).all()


def test_video_budget_and_fps_reach_the_processor(tiny, files):
    inputs = encoder(tiny, max_pixels=112 * 112).encode(make_sample(files, ["video"], MediaOptions(fps=3.0)))
    # 20 frames at 10 fps, fps 3 -> 6 frames; sampled fps = 6 / 20 * 10 = 3.0; 120x160 -> 84x112
    assert inputs.num_frames == [6] and inputs.resolutions == [(84, 112)]
    assert inputs.vision.video_grid_thw.tolist() == [[3, 6, 8]]
    assert inputs.vision.second_per_grid_ts.tolist() == pytest.approx([2 / 3.0])
    nframes = encoder(tiny, max_pixels=112 * 112).encode(make_sample(files, ["video"], MediaOptions(nframes=4)))
    assert nframes.vision.second_per_grid_ts.tolist() == pytest.approx([2 / (4 / 20 * 10)])


def test_no_cap_pixels_per_frame_warning(tiny, files):
    transformers.utils.logging.warning_once.cache_clear()  # it warns once per process
    logger = transformers.utils.logging.get_logger("transformers.models.qwen2_vl.video_processing_qwen2_vl")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        encoder(tiny).encode(make_sample(files, ["video"]))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "cap_pixels_per_frame" in r.getMessage()]


def test_shrink_lowers_the_pixel_budget_until_it_fits(tiny, files):
    sample = make_sample(files, ["image", "video"], MediaOptions(nframes=8))
    full = encoder(tiny, max_pixels=112 * 112).encode(sample)
    limit = full.length - 30
    fitted = encoder(tiny, max_pixels=112 * 112, max_prompt_length=limit, min_pixels=28 * 28).encode(sample)
    assert fitted.length <= limit < full.length
    assert fitted.num_frames == full.num_frames  # frames kept, pixels given up
    for small, big in zip(fitted.resolutions, full.resolutions):
        assert small[0] * small[1] < big[0] * big[1] and small[0] % 28 == 0 and small[1] % 28 == 0
    image_id, video_id = pad_ids(tiny[1])
    v = fitted.vision
    assert int((fitted.input_ids == video_id).sum()) == int(v.video_grid_thw.prod()) // 4


def test_reject_and_impossible_fit_give_the_numbers(tiny, files):
    sample = make_sample(files, ["video"], MediaOptions(nframes=8))
    full = encoder(tiny, max_pixels=112 * 112).encode(sample)
    with pytest.raises(BadSampleError) as info:
        encoder(tiny, max_pixels=112 * 112, max_prompt_length=full.length - 1, fit="reject").encode(sample)
    msg = str(info.value)
    assert info.value.kind == "too_long" and "'s1'" in msg
    assert f"needs {full.length} tokens" in msg and f"max_prompt_length is {full.length - 1}" in msg and "8x84x112" in msg
    text_only = count_tokens(full)["text"]
    with pytest.raises(BadSampleError) as info:  # 8 frames at min_pixels 28x28 still need 4 tokens
        encoder(tiny, max_pixels=112 * 112, max_prompt_length=text_only + 2, min_pixels=28 * 28).encode(sample)
    assert info.value.kind == "too_long" and "even at min_pixels [784]" in str(info.value)
    assert f"needs {text_only + 4} tokens" in str(info.value)


def test_two_step_api_carries_perturbed_frames(tiny, files):
    enc = encoder(tiny, max_pixels=112 * 112)
    sample = make_sample(files, ["video", "image"])
    media = enc.load_media(sample)
    assert [m.kind for m in media] == ["video", "image"] and media[1].frames.shape[0] == 1
    assert all(m.frames.dtype == torch.uint8 and m.frames.ndim == 4 for m in media)
    clean = enc.build(sample, media)
    noisy_media = [dataclasses.replace(m, frames=(255 - m.frames)) for m in media]  # same shape and dtype
    noisy = enc.build(sample, noisy_media)
    assert torch.equal(noisy.input_ids, clean.input_ids)
    assert not torch.allclose(noisy.vision.pixel_values_videos, clean.vision.pixel_values_videos)
    again = enc.build(sample, enc.load_media(sample))  # the cache handed out copies: unchanged
    assert torch.equal(again.vision.pixel_values_videos, clean.vision.pixel_values_videos)


@pytest.mark.parametrize(
    "kind, make, error",
    [
        ("video", lambda d: write_corrupt(d / "noise.mp4"), "corrupt_media"),
        ("video", lambda d: truncate(write_video(d / "cut.mp4", counting_frames(20, 56, 56), 10), 0.6), "corrupt_media"),
        ("video", lambda d: write_empty(d / "empty.avi"), "empty_media"),
        ("image", lambda d: write_corrupt(d / "noise.jpg"), "corrupt_media"),
        ("image", lambda d: d / "gone.png", "missing_media"),
    ],
)
def test_decode_errors_name_the_sample(tiny, tmp_path, kind, make, error):
    path = make(tmp_path)
    sample = make_sample({kind: str(path)}, [kind])
    with pytest.raises(BadSampleError) as info:
        encoder(tiny).encode(sample)
    assert info.value.kind == error and "'s1' (row 0 in test)" in str(info.value)
    assert str(path) in str(info.value) and info.value.sample_id == "s1"
