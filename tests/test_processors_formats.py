"""Dataset formats (TRL, ms-swift, plain) and file types (JSONL, JSON, parquet, datasets) -> Sample."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
import torch

from media import counting_frames, write_image, write_video
from mmgrpo.config import DataConfig
from mmgrpo.processors import BadSampleError, MediaOptions, load_samples, load_samples_from_config

QUESTION = "What colour is the square?"
RENDERED = "What colour is the square?\nA. red\nB. green\nC. blue"


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_video(d / "media" / "clip.mp4", counting_frames(8, 56, 56), fps=4)
    write_image(d / "media" / "pic.png", counting_frames(1, 56, 56)[0])
    return d


def same_question_rows() -> dict[str, dict]:
    """One multiple-choice question about a video, written in each of the three formats."""
    return {
        "plain": {"id": "q1", "question": QUESTION, "options": ["red", "green", "blue"], "answer": "B",
                  "video": "media/clip.mp4", "fps": 4},
        "trl": {"id": "q1", "prompt": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": RENDERED}]}],
                "videos": ["media/clip.mp4"], "options": ["A. red", "B. green", "C. blue"], "solution": "<answer>B</answer>",
                "fps": 4},
        "swift": {"id": "q1", "messages": [{"role": "user", "content": f"<video>\n{RENDERED}"},
                                           {"role": "assistant", "content": "<answer>B</answer>"}],
                  "videos": ["media/clip.mp4"], "options": ["A. red", "B. green", "C. blue"], "fps": 4},
    }


def write_rows(rows: list[dict], folder: Path, kind: str, name: str = "d"):
    """The rows as a file / folder / Dataset of the given kind; returns what load_samples takes."""
    if kind == "jsonl":
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        return folder / f"{name}.jsonl"
    if kind == "json":
        (folder / f"{name}.json").write_text(json.dumps(rows))
        return folder / f"{name}.json"
    ds = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        ds.to_parquet(str(folder / f"{name}.parquet"))
        return folder / f"{name}.parquet"
    if kind == "saved":
        ds.save_to_disk(str(folder / name))
        return folder / name
    return ds


def fields(sample) -> tuple:
    return sample.prompt, sample.media, sample.answer, sample.problem_type, sample.options, sample.id


def up_one(row: dict) -> dict:
    """The row with media paths relative to a folder one level down (a saved datasets folder is
    its own base directory)."""
    text = json.dumps(row).replace('"media/', '"../media/')
    return json.loads(text)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "saved", "dataset"])
def test_three_formats_load_to_equal_samples(media_dir, monkeypatch, kind):
    monkeypatch.chdir(media_dir)  # an in-memory Dataset resolves relative paths against the cwd
    loaded = {}
    for fmt, row in same_question_rows().items():
        source = write_rows([up_one(row) if kind == "saved" else row], media_dir, kind, name=f"{kind}_{fmt}")
        loaded[fmt] = load_samples(source, system_prompt="Be brief.", prompt_suffix="Answer with a letter.").samples[0]
    plain = loaded["plain"]
    assert plain.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": RENDERED + "\nAnswer with a letter."}]},
    ]
    assert plain.answer == "B" and plain.problem_type == "multiple_choice" and plain.options[1] == "B. green"
    assert plain.media[0].options == MediaOptions(fps=4.0)
    assert plain.media[0].source == str(media_dir / "media" / "clip.mp4")
    assert fields(loaded["trl"]) == fields(plain)
    assert fields(loaded["swift"]) == fields(plain)


def test_columns_keep_everything_for_rewards(media_dir):
    row = same_question_rows()["trl"] | {"difficulty": 3}
    sample = load_samples(write_rows([row], media_dir, "jsonl")).samples[0]
    assert sample.columns["solution"] == "<answer>B</answer>" and sample.columns["difficulty"] == 3
    assert sample.index == 0 and sample.source.endswith("d.jsonl")


@pytest.mark.parametrize(
    "answer, options, declared, want_answer, want_type",
    [
        ("3", None, None, "3", "numeric"),
        (2.5, None, None, "2.5", "numeric"),
        ([1.5, 4], None, None, "[1.5, 4.0]", "temporal_iou"),
        ("<answer>[1.5, 4]</answer>", None, None, "[1.5, 4.0]", "temporal_iou"),
        ("a cat", None, None, "a cat", "exact"),
        ("a long story", None, "free_text", "a long story", "free_text"),
        ("green", ["red", "green"], None, "B", "multiple_choice"),
        ("(A)", '["A. red", "B. green"]', None, "A", "multiple_choice"),
        ("<answer> B. green </answer>", ["A) red", "B) green"], None, "B", "multiple_choice"),
    ],
)
def test_answers_and_problem_types(media_dir, answer, options, declared, want_answer, want_type):
    row = {"question": "q?", "answer": answer, "image": "media/pic.png"}
    if options is not None:
        row["options"] = options
    if declared is not None:
        row["problem_type"] = declared
    sample = load_samples(write_rows([row], media_dir, "json")).samples[0]
    assert (sample.answer, sample.problem_type) == (want_answer, want_type)
    if options is not None:
        assert sample.options[0] == "A. red"
        assert sample.prompt[-1]["content"][-1]["text"] == "q?\n" + "\n".join(sample.options)


def test_trl_inline_items_and_item_options(media_dir):
    row = {
        "prompt": [
            {"role": "system", "content": "Own system prompt."},
            {"role": "user", "content": [
                {"type": "image"},
                {"type": "video", "video": "media/clip.mp4", "nframes": 4, "video_start": 0.5, "max_pixels": 3136},
                {"type": "text", "text": "Compare."},
            ]},
        ],
        "images": ["media/pic.png"],
        "min_pixels": 784,
        "answer": "same",
    }
    sample = load_samples(write_rows([row], media_dir, "jsonl"), system_prompt="ignored").samples[0]
    assert [m.kind for m in sample.media] == ["image", "video"]
    assert sample.media[0].options == MediaOptions(min_pixels=784)
    assert sample.media[1].options == MediaOptions(nframes=4, min_pixels=784, max_pixels=3136, start=0.5)
    assert sample.prompt[0] == {"role": "system", "content": "Own system prompt."}  # the row's own wins
    assert sample.prompt[1]["content"] == [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Compare."}]


def test_relative_paths_resolve_against_the_dataset_folder(media_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the dataset's folder
    sub = media_dir / "nested"
    sub.mkdir(exist_ok=True)
    row = {"question": "q", "answer": "x", "video": "../media/clip.mp4"}
    sample = load_samples(write_rows([row], sub, "jsonl")).samples[0]
    assert sample.media[0].source == str((media_dir / "media" / "clip.mp4").resolve())


BAD_ROWS = [
    ({"id": "m1", "question": "q", "answer": "a", "video": "media/missing.mp4"}, "missing_media", "missing.mp4"),
    ({"id": "c1", "answer": "a", "video": "media/clip.mp4"}, "bad_column", "cannot tell the format"),
    ({"id": "c2", "question": "q", "answer": "a", "options": 5}, "bad_column", "options"),
    ({"id": "c3", "question": "q", "answer": "a", "problem_type": "essay"}, "bad_column", "essay"),
    ({"id": "c4", "messages": [{"role": "user", "content": "<image><image>q"}], "images": ["media/pic.png"]},
     "bad_column", "more image placeholders"),
    ({"id": "c5", "prompt": [{"role": "user", "content": [{"type": "text", "text": "q"}]}], "images": ["media/pic.png"]},
     "bad_column", "1 image entries but 0"),
    ({"id": "c6", "question": "q", "answer": "a", "fps": "fast", "video": "media/clip.mp4"}, "bad_column", "fps"),
    ({"id": "u1", "prompt": [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "q"}]}]},
     "unsupported_media", "audio"),
    ({"id": "u2", "question": "q", "answer": "a", "image": "media/clip.mp4"}, "unsupported_media", "clip.mp4"),
    ({"id": "u3", "question": "q", "answer": "a", "video": "https://example.com/v.mp4"}, "unsupported_media", "remote"),
]


@pytest.mark.parametrize("row, kind, words", BAD_ROWS, ids=[r[0]["id"] for r in BAD_ROWS])
def test_bad_rows_name_the_sample_and_reason(media_dir, row, kind, words):
    source = write_rows([row], media_dir, "jsonl")
    with pytest.raises(BadSampleError) as info:
        load_samples(source)
    message = str(info.value)
    assert info.value.kind == kind and words in message
    assert f"'{row['id']}'" in message and "row 0" in message and "d.jsonl" in message


def test_skip_mode_counts_and_logs(media_dir, caplog):
    good = {"id": "ok", "question": "q", "answer": "a", "video": "media/clip.mp4"}
    path = media_dir / "mixed.jsonl"
    lines = [json.dumps(good), "{not json", json.dumps(BAD_ROWS[0][0]), json.dumps(good | {"id": "ok2"})]
    path.write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="mmgrpo.processors.formats"):
        result = load_samples(path, on_bad_sample="skip")
    assert [s.id for s in result.samples] == ["ok", "ok2"] and [s.index for s in result.samples] == [0, 3]
    assert [e.kind for e in result.skipped] == ["bad_column", "missing_media"]
    assert "row 1" in str(result.skipped[0]) and result.skipped[1].sample_id == "m1"
    assert "skipped 2 of 4 rows" in caplog.text and "missing.mp4" in caplog.text
    with pytest.raises(BadSampleError, match="not valid JSON"):
        load_samples(path)


def test_load_samples_from_config_concatenates(media_dir):
    a = media_dir / "a"
    b = media_dir / "b"
    for folder, n in ((a, 2), (b, 3)):
        folder.mkdir(exist_ok=True)
        (folder / "media").exists() or (folder / "media").symlink_to(media_dir / "media")
        rows = [{"question": f"q{i}", "answer": "x", "image": "media/pic.png"} for i in range(n)]
        write_rows(rows, folder, "jsonl")
    cfg = DataConfig(train=[str(a / "d.jsonl"), str(b / "d.jsonl")], eval=[str(b / "d.jsonl")], prompt_suffix="S")
    train = load_samples_from_config(cfg)
    assert len(train.samples) == 5 and train.samples[2].source.endswith("b/d.jsonl")
    assert train.samples[0].question_text() == "q0\nS"
    assert len(load_samples_from_config(cfg, "eval").samples) == 3


@pytest.mark.parametrize("kind", ["dataset", "saved", "parquet"])
def test_embedded_images_of_a_datasets_image_column(tmp_path, kind):
    from PIL import Image

    from mmgrpo.config import VisionConfig
    from mmgrpo.processors import decode_media

    pixels = counting_frames(1, 56, 84)[0]  # [H, W, 3], sides already multiples of 28: no resize
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    ds = datasets.Dataset.from_dict({"prompt": [prompt], "images": [[Image.fromarray(pixels)]], "answer": ["bar"]})
    assert "Image" in repr(ds.features["images"])  # stored as encoded bytes, decoded lazily by datasets
    source = ds if kind == "dataset" else write_rows(ds.to_list(), tmp_path, kind)
    sample = load_samples(source).samples[0]
    media = sample.media[0]
    assert media.kind == "image" and media.data and "embedded image" in media.source
    frames = decode_media(media, VisionConfig()).frames  # [1, 3, 56, 84]
    assert torch.equal(frames[0].permute(1, 2, 0), torch.from_numpy(pixels))
