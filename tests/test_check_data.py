"""`mmgrpo check-data` on a dataset with good and bad samples."""
from __future__ import annotations

import json

import pytest

from media import counting_frames, truncate, write_corrupt, write_image, write_video
from mmgrpo.cli import main as cli_main


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("check")
    write_video(d / "good.mp4", counting_frames(20, 56, 84), fps=10)
    write_image(d / "good.png", counting_frames(1, 56, 56)[0])
    write_corrupt(d / "noise.mp4")
    truncate(write_video(d / "cut.avi", counting_frames(20, 56, 56), fps=10), 0.5)
    rows = [
        {"id": "v-ok", "question": "colour?", "answer": "red", "video": "good.mp4"},
        {"id": "i-ok", "question": "count?", "answer": "3", "image": "good.png"},
        {"id": "gone", "question": "q", "answer": "a", "video": "missing.mp4"},
        {"id": "noise", "question": "q", "answer": "a", "video": "noise.mp4"},
        {"id": "cut", "question": "q", "answer": "a", "video": "cut.avi"},
        {"id": "nocol", "answer": "a", "video": "good.mp4"},
    ]
    path = d / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


EXPECTED_BAD = {"gone": "missing_media", "noise": "corrupt_media", "cut": "corrupt_media", "nocol": "bad_column"}


def test_check_data_reports_each_bad_sample(mixed, tiny_dir, tmp_path, capsys):
    report = tmp_path / "report.jsonl"
    status = cli_main(["check-data", str(mixed), "--model", str(tiny_dir), "--report", str(report)])
    assert status == 1
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    by_id = {r["id"]: r for r in lines}
    assert set(by_id) == {"v-ok", "i-ok", *EXPECTED_BAD}
    assert {k: r["kind"] for k, r in by_id.items() if not r["ok"]} == EXPECTED_BAD
    video = by_id["v-ok"]
    assert video["ok"] and video["frames"] == [4] and video["resolution"] == [[56, 84]] and video["video"] == 12
    assert video["text"] + video["video"] == video["total"]
    assert by_id["i-ok"]["image"] == 4
    out = capsys.readouterr().out
    assert "6 samples: 2 ok, 4 bad" in out and "corrupt_media: 2" in out and "total tokens: p50" in out
    for name in ("missing.mp4", "noise.mp4", "cut.avi", "cannot tell the format"):
        assert name in out


def test_allow_bad_and_no_model(mixed, capsys):
    assert cli_main(["check-data", str(mixed), "--allow-bad"]) == 0
    out = capsys.readouterr().out
    assert "2 ok, 4 bad" in out and "video tokens: p50" in out


def test_all_good_exits_zero(mixed, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(mixed.read_text().splitlines()[:2]).replace('"good.', f'"{mixed.parent}/good.'))
    assert cli_main(["check-data", str(good)]) == 0


def test_unreadable_dataset_file_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["check-data", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_no_model_sizes_media_on_the_family_grid(mixed, tmp_path):
    """Without --model, --family picks the patch grid: Qwen3-VL's 32-pixel grid gives other frame
    sizes and token counts than Qwen2.5-VL's 28."""
    reports = {}
    for family in ("qwen2_5_vl", "qwen3_vl"):
        report = tmp_path / f"{family}.jsonl"
        cli_main(["check-data", str(mixed), "--family", family, "--report", str(report), "--allow-bad"])
        reports[family] = {r["id"]: r for r in map(json.loads, report.read_text().splitlines())}
    assert reports["qwen2_5_vl"]["v-ok"]["resolution"] == [[56, 84]] and reports["qwen2_5_vl"]["v-ok"]["video"] == 12
    assert reports["qwen3_vl"]["v-ok"]["resolution"] == [[64, 96]] and reports["qwen3_vl"]["v-ok"]["video"] == 12
