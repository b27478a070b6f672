"""Bad data is a per-sample error (a BadSampleError naming the sample, so `on_bad_sample=skip` can
skip and count it), never a crash and never silent: over-long text, bytes that are not UTF-8, lone
surrogates, oversized per-row media options, media paths outside `data.media_root`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from media import counting_frames, write_frame_folder, write_image, write_video
from mmgrpo.cli import main as cli_main
from mmgrpo.config import DataConfig, VisionConfig
from mmgrpo.eval.bench import LoadError, load_eval_data
from mmgrpo.processors import (
    BadSampleError,
    MediaCache,
    MediaOptions,
    PromptEncoder,
    decode_media,
    load_samples,
    load_samples_from_config,
    resolve_budget,
)
from mmgrpo.processors.budget import shrink_to_fit

LONG_TEXT = "word " * 400  # far over a 64-token limit on its own


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def pic(tmp_path_factory) -> Path:
    return write_image(tmp_path_factory.mktemp("pic") / "pic.png", counting_frames(1, 56, 56)[0])


# -- 1. text alone longer than max_prompt_length ------------------------------------------------


@pytest.mark.parametrize("with_image", [False, True], ids=["text_only", "with_image"])
def test_text_alone_over_the_limit_is_too_long(tiny, tmp_path, pic, with_image):
    row = {"id": "long", "question": LONG_TEXT, "answer": "a"} | ({"image": str(pic)} if with_image else {})
    sample = load_samples(jsonl(tmp_path / "d.jsonl", [row])).samples[0]
    for fit in ("shrink", "reject"):
        enc = PromptEncoder(tiny[1], VisionConfig(max_prompt_length=64, fit=fit), MediaCache(0))
        with pytest.raises(BadSampleError) as info:
            enc.encode(sample)
        message = str(info.value)
        assert info.value.kind == "too_long" and "'long'" in message and "row 0" in message
        assert f"text alone is {enc.text_tokens(sample)} tokens" in message and "max_prompt_length is 64" in message


def test_shrink_to_fit_with_nothing_to_shrink():
    assert shrink_to_fit([], [], -5) is None  # the text alone is over: no vision to give up
    assert shrink_to_fit([], [], 0) == []


# -- 2. bytes that are not UTF-8 ----------------------------------------------------------------


def test_a_non_utf8_line_is_one_bad_row(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"id": "ok", "question": "q", "answer": "a"}).encode()
    bad = b'{"id": "bad", "question": "caf\xe9", "answer": "a"}'  # latin-1 e-acute
    path.write_bytes(b"\n".join([good, bad, b"", good.replace(b'"ok"', b'"ok2"')]) + b"\n")
    result = load_samples(path, on_bad_sample="skip")
    assert [s.id for s in result.samples] == ["ok", "ok2"]
    (error,) = result.skipped
    assert error.kind == "bad_encoding"
    assert "row 1" in str(error) and "line 2" in str(error) and "0xe9" in str(error)
    position = bad.index(b"\xe9")
    assert f"position {position} of the line" in str(error)
    with pytest.raises(BadSampleError, match=r"row 1 in .*d\.jsonl.*not valid UTF-8"):
        load_samples(path)


def test_a_non_utf8_json_file_names_the_file_and_position(tmp_path):
    path = tmp_path / "d.json"
    data = b'[{"question": "q", "answer": "a"},\n {"question": "\xff"}]'
    path.write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(ValueError, match=rf"d\.json: not valid UTF-8: byte 0xff at offset {offset} \(line 2\b"):
        load_samples(path)
    path.write_text('[{"question": "q",}]')
    with pytest.raises(ValueError, match=r"d\.json: not valid JSON"):
        load_samples(path)


# -- 3. lone surrogates -------------------------------------------------------------------------


SURROGATE_ROWS = [
    ('{"id": "s1", "question": "why \\ud800?", "answer": "a"}', "column 'question'"),
    ('{"id": "s2", "question": "q", "answer": "\\udfff"}', "column 'answer'"),
    ('{"id": "s3", "prompt": [{"role": "user", "content": [{"type": "text", "text": "x\\ud83d"}]}]}',
     "column 'prompt'[0]['content'][0]['text']"),
    ('{"id": "s4", "question": "q", "answer": "a", "meta": {"\\ud800": 1}}', "column 'meta' (a key)"),
]


@pytest.mark.parametrize("kind", ["jsonl", "json"])
@pytest.mark.parametrize("line, where", SURROGATE_ROWS, ids=[r[1] for r in SURROGATE_ROWS])
def test_lone_surrogates_are_found_at_load(tmp_path, kind, line, where):
    good = '{"id": "ok", "question": "caf\\u00e9 \\ud83d\\ude00", "answer": "a"}'  # a valid pair is fine
    path = tmp_path / f"d.{kind}"
    path.write_text("\n".join([good, line]) if kind == "jsonl" else f"[{good}, {line}]")
    result = load_samples(path, on_bad_sample="skip")
    assert [s.id for s in result.samples] == ["ok"] and result.samples[0].question_text() == "café 😀"
    (error,) = result.skipped
    assert error.kind == "bad_encoding" and where in str(error) and "row 1" in str(error)
    str(error).encode("utf-8")  # the message itself can be logged


# -- 4. per-row media options are capped ---------------------------------------------------------


CEILING = {"sample_max_frames": 4, "sample_max_pixels": 64 * 28 * 28}
GREEDY = {"nframes": 20, "max_pixels": 1280 * 720, "min_pixels": 1280 * 720, "total_pixels": 10**9}


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("hd") / "hd.mp4", counting_frames(24, 720, 1280), fps=8)  # 3 s


def test_resolve_budget_caps_a_rows_own_options():
    vision = VisionConfig(**CEILING)
    budget = resolve_budget(MediaOptions(**GREEDY, min_frames=30, max_frames=30), vision)
    assert (budget.nframes, budget.min_frames, budget.max_frames) == (4, 4, 4)
    assert budget.max_pixels == budget.min_pixels == 64 * 28 * 28 and budget.total_pixels == 4 * 64 * 28 * 28
    assert resolve_budget(MediaOptions(nframes=2, max_pixels=3136), vision).nframes == 2  # under: unchanged
    defaults = resolve_budget(MediaOptions(), VisionConfig(max_frames=16, sample_max_frames=4))
    assert defaults.max_frames == 16  # the dataset's own settings are not a row's overrides


@pytest.mark.parametrize("where", ["row", "item", "fps"])
def test_decoded_frames_stay_within_the_ceilings(tmp_path, hd_clip, where):
    if where == "row":
        row = {"id": "big", "question": "q", "answer": "a", "video": str(hd_clip), **GREEDY}
    elif where == "item":
        item = {"type": "video", "video": str(hd_clip), **GREEDY}
        row = {"id": "big", "prompt": [{"role": "user", "content": [item, {"type": "text", "text": "q"}]}]}
    else:  # frame count from fps, bounded by the row's own min / max_frames
        row = {"id": "big", "question": "q", "answer": "a", "video": str(hd_clip), "fps": 8, "min_frames": 24,
               "max_frames": 24, "max_pixels": 1280 * 720}
    sample = load_samples(jsonl(tmp_path / "d.jsonl", [row])).samples[0]
    frames = decode_media(sample.media[0], VisionConfig(**CEILING)).frames  # [T, 3, H, W]
    t, _, h, w = frames.shape
    assert t <= CEILING["sample_max_frames"] and h * w <= CEILING["sample_max_pixels"]
    assert t == 4 and abs(w / h - 1280 / 720) < 0.2  # as much as allowed, aspect kept


# -- 5. media paths outside data.media_root -------------------------------------------------------


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """root/ holds the media a dataset may use; outside/ (and a fake home) what it must not reach."""
    root, outside, home = tmp_path / "root", tmp_path / "outside", tmp_path / "home"
    frames = counting_frames(4, 56, 56)
    write_image(root / "in.png", frames[0])
    write_image(outside / "out.png", frames[0])
    write_image(home / "h.png", frames[0])
    write_frame_folder(root / "frames", frames)
    write_frame_folder(outside / "frames", frames)
    write_frame_folder(root / "leaky", frames[:2])
    (root / "leaky" / "00002.png").symlink_to(outside / "out.png")  # one frame links out
    (root / "link.png").symlink_to(outside / "out.png")
    (root / "inner_link.png").symlink_to(root / "in.png")
    (root / "out_dir").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "data").mkdir()
    return tmp_path


OUTSIDE = {
    "dotdot": ("image", "../outside/out.png"),
    "absolute": ("image", "{tmp}/outside/out.png"),
    "home": ("image", "~/h.png"),
    "symlink": ("image", "link.png"),
    "symlinked_dir": ("image", "out_dir/out.png"),
    "frame_list": ("video", ["frames/00000.png", "../outside/frames/00001.png"]),
    "frame_folder": ("video", "../outside/frames"),
    "frame_in_folder": ("video", "leaky"),
}


def plain_row(ident: str, kind: str, value, tmp: Path) -> dict:
    value = [v.format(tmp=tmp) for v in value] if isinstance(value, list) else value.format(tmp=tmp)
    return {"id": ident, "question": "q", "answer": "a", kind: value}


def test_media_outside_the_root_are_bad_samples(tree):
    rows = [plain_row(name, kind, value, tree) for name, (kind, value) in OUTSIDE.items()]
    rows += [plain_row("inside", "image", "in.png", tree), plain_row("inner_link", "image", "inner_link.png", tree),
             plain_row("abs_inside", "image", f"{tree}/root/in.png", tree), plain_row("folder", "video", "frames", tree)]
    path = jsonl(tree / "data" / "d.jsonl", rows)
    result = load_samples(path, on_bad_sample="skip", media_root=str(tree / "root"))
    assert [s.id for s in result.samples] == ["inside", "inner_link", "abs_inside", "folder"]
    assert result.samples[0].media[0].source == str(tree / "root" / "in.png")  # against the root, not data/
    assert {e.sample_id: e.kind for e in result.skipped} == {name: "media_outside_root" for name in OUTSIDE}
    for e in result.skipped:
        assert f"'{e.sample_id}'" in str(e) and "outside media_root" in str(e) and str(tree / "root") in str(e)
    with pytest.raises(BadSampleError, match="'dotdot'.*outside media_root"):
        load_samples(path, media_root=str(tree / "root"))


def test_without_a_root_paths_are_followed_and_embedded_bytes_need_none(tree):
    path = jsonl(tree / "root" / "d.jsonl", [plain_row("dotdot", "image", "../outside/out.png", tree)])
    assert load_samples(path).samples[0].media[0].source == str(tree / "outside" / "out.png")  # peers' default
    row = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
           "images": [{"bytes": (tree / "outside" / "out.png").read_bytes(), "path": "../../x.png"}]}
    import datasets

    ds = datasets.Dataset.from_list([row])
    assert load_samples(ds, media_root=str(tree / "root")).samples[0].media[0].data


def test_media_root_from_config_and_a_missing_root(tree):
    path = jsonl(tree / "data" / "d.jsonl", [plain_row("in", "image", "in.png", tree),
                                            plain_row("out", "image", "../outside/out.png", tree)])
    cfg = DataConfig(train=(str(path),), on_bad_sample="skip", media_root=str(tree / "root"))
    result = load_samples_from_config(cfg)
    assert [s.id for s in result.samples] == ["in"] and result.skipped[0].kind == "media_outside_root"
    with pytest.raises(FileNotFoundError, match="media_root"):
        load_samples(path, media_root=str(tree / "nowhere"))


def test_eval_media_root_resolves_and_confines(tree):
    trl = {"id": "t", "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
           "image": "in.png", "answer": "a"}
    rows = [trl, {"id": "b", "image": "../outside/out.png", "question": "Q?", "candidates": ["x", "y"], "answer": 0},
            {"id": "v", "videoID": "../outside/frames", "question": "Q?", "candidates": ["x", "y"], "answer": 0}]
    path = jsonl(tree / "data" / "bench.jsonl", rows)
    first, second, third = load_eval_data([str(path)], media_root=str(tree / "root"))
    assert first.media[0].source == str(tree / "root" / "in.png")  # every format resolves against the root
    assert isinstance(second, LoadError) and second.kind == "media_outside_root" and second.id == "b"
    assert isinstance(third, LoadError) and third.kind == "media_outside_root"
    unconfined = load_eval_data([str(path)])  # without a root: the data file's folder, paths followed
    assert isinstance(unconfined[0], LoadError) and unconfined[0].kind == "missing_media"
    assert not isinstance(unconfined[1], LoadError)


# -- 6. check-data reports each of them -----------------------------------------------------------


def test_check_data_reports_every_data_fault(tree, tiny_dir, hd_clip, capsys):
    rows = [
        json.dumps({"id": "ok", "question": "q", "answer": "a", "image": "in.png"}).encode(),
        b'{"id": "latin1", "question": "caf\xe9", "answer": "a"}',
        b'{"id": "surrogate", "question": "\\ud800", "answer": "a"}',
        json.dumps({"id": "long", "question": LONG_TEXT, "answer": "a"}).encode(),
        json.dumps({"id": "out", "question": "q", "answer": "a", "image": "../outside/out.png"}).encode(),
    ]
    (tree / "root" / "hd.mp4").symlink_to(hd_clip)  # a symlink pointing out of the root is refused too
    rows.append(json.dumps({"id": "hd", "question": "q", "answer": "a", "video": "hd.mp4", **GREEDY}).encode())
    data = tree / "data" / "d.jsonl"
    data.write_bytes(b"\n".join(rows))
    config = tree / "c.yaml"
    config.write_text(yaml.safe_dump({"vision": {"max_prompt_length": 64}, "data": {"media_root": str(tree / "root")}}))
    report = tree / "report.jsonl"
    status = cli_main(["check-data", str(data), "--model", str(tiny_dir), "--config", str(config), "--report", str(report)])
    assert status == 1
    kinds = [(r["ok"], r.get("kind")) for r in map(json.loads, report.read_text().splitlines())]
    assert sorted(kinds, key=str) == sorted([(True, None), (False, "bad_encoding"), (False, "bad_encoding"),
                                             (False, "too_long"), (False, "media_outside_root"),
                                             (False, "media_outside_root")], key=str)
    out = capsys.readouterr().out
    assert "6 samples: 1 ok, 5 bad" in out and "internal_error" not in out
    for words in ("line 2", "column 'question'", "text alone", "'out'", "hd.mp4"):
        assert words in out
    assert os.path.islink(tree / "root" / "hd.mp4")
