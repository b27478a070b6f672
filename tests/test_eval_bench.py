"""Evaluation without a model: benchmark layouts, answer parsing, metrics, resume store, report, compare."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmgrpo.eval.bench import LoadError, labels, load_eval_data
from mmgrpo.eval.metrics import EvalMetrics, PredictionRecord, compute_metrics, duration_bucket, majority_vote
from mmgrpo.eval.report import compare, write_report
from mmgrpo.eval.scoring import parse_answer
from mmgrpo.eval.store import PredictionStore, ResumeMismatchError, RunInfo, write_run_info
from tests.media import solid_frames, write_image, write_video


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "videos" / "clip.mp4", solid_frames(4, 28, 28, (255, 0, 0)), fps=2)


def user_text(sample) -> str:
    return sample.question_text()


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_benchmark_rows_map_to_samples(tmp_path, clip):
    rows = [
        # MVBench: candidates as texts, answer as the option text, clip bounds, relative video
        {"video": "clip.mp4", "question": "What moves?", "candidates": ["a ball", "a car"], "answer": "a car",
         "start": 0.5, "end": 1.5},
        # Video-MME: lettered option strings, answer letter, labels, video by id
        {"question_id": "vm-1", "videoID": "clip", "question": "Colour?", "options": ["A. red", "B. blue", "C. green"],
         "answer": "A", "task_type": "Attribute Perception", "domain": "Sports", "duration": "short"},
        # answer as 0-based index
        {"video": "clip.mp4", "question": "Count?", "candidates": ["1", "2", "3"], "answer": 2},
        # TempCompass: options at the end of the question, answer "(B) ..." style
        {"video": "clip.mp4", "question": "Speed?\nA. slow\nB. fast", "answer": "(B) fast", "dim": "speed"},
        # options as a dict, answer index column
        {"video": "clip.mp4", "question": "Where?", "choices": {"A": "left", "B": "right"}, "answer_idx": 0},
    ]
    path = write_json(tmp_path / "action_sequence.json", rows)
    items = load_eval_data([str(path)], media_root=str(clip.parent))
    assert all(not isinstance(s, LoadError) for s in items), items
    s0, s1, s2, s3, s4 = items
    assert user_text(s0) == "What moves?\nA. a ball\nB. a car"  # one documented rendering
    assert (s0.answer, s0.problem_type, s0.media[0].options.start, s0.media[0].options.end) == ("B", "multiple_choice", 0.5, 1.5)
    assert s0.media[0].source == str(clip) and s0.id == "action_sequence-0"
    assert labels(s0).task == "action_sequence"  # MVBench: one task per file
    assert (s1.id, s1.answer, s1.media[0].source) == ("vm-1", "A", str(clip))
    assert labels(s1).task == "Attribute Perception" and labels(s1).category == "Sports" and labels(s1).duration == "short"
    assert s2.answer == "C" and s2.options == ["A. 1", "B. 2", "C. 3"]
    assert user_text(s3) == "Speed?\nA. slow\nB. fast" and s3.answer == "B" and labels(s3).task == "speed"
    assert s4.answer == "A" and s4.options == ["A. left", "B. right"]


def test_relative_media_root_is_taken_from_the_working_directory(tmp_path, clip, monkeypatch):
    (tmp_path / "json").mkdir()
    path = write_json(tmp_path / "json" / "t.json", [{"video": "clip.mp4", "question": "Q?", "candidates": ["x", "y"], "answer": 0}])
    monkeypatch.chdir(tmp_path)
    (sample,) = load_eval_data([str(path)], media_root="videos")
    assert sample.media[0].source == str(clip)


def test_bad_rows_become_errors_with_ids(tmp_path, clip):
    rows = [
        {"video": "videos/clip.mp4", "question": "Q?", "candidates": ["x", "y"], "answer": 0},
        {"video": "videos/missing.mp4", "question": "Q?", "candidates": ["x", "y"], "answer": 1, "task_type": "t"},
        {"video": "videos/clip.mp4", "question": "Q?", "candidates": ["x", "y"], "answer": 5},
    ]
    path = write_json(tmp_path / "f.json", rows)
    ok, missing, bad_index = load_eval_data([str(path)])
    assert not isinstance(ok, LoadError)
    assert isinstance(missing, LoadError) and missing.kind == "missing_media" and missing.id == "f-1" and missing.task == "t"
    assert isinstance(bad_index, LoadError) and "index" in bad_index.error
    with pytest.raises(ValueError, match="missing.mp4"):
        load_eval_data([str(path)], strict=True)


def test_other_formats_and_unique_ids(tmp_path, clip):
    image = write_image(tmp_path / "im.png", np.zeros((28, 28, 3), np.uint8))
    trl = {"id": "q", "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
           "image": str(image), "answer": "black", "task": "colour"}
    (tmp_path / "a").mkdir()
    a = tmp_path / "a" / "set.jsonl"
    a.write_text(json.dumps(trl) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"id": "q", "question": "Same id?", "image": str(image), "answer": "yes"}) + "\n")
    first, second = load_eval_data([str(a), str(b)], prompt_suffix="Answer briefly.")
    assert first.id == "q" and second.id == "b/q"  # repeated ids are made unique, deterministically
    assert labels(first).task == "colour" and labels(second).task == "b"
    assert user_text(second) == "Same id?\nAnswer briefly."


@pytest.mark.parametrize("text", ["B", "(B)", "B.", "answer: B", "The answer is (B).", "<answer>B</answer>", "b", "<answer>fast</answer>"])
def test_choice_letter_parsed_robustly(text):
    assert parse_answer(text, "multiple_choice", ["A. slow", "B. fast", "C. still"]) == "B"


@pytest.mark.parametrize("text", ["", "A or B", "<answer>A, B</answer>", "no idea", "<answer>D</answer>"])
def test_no_single_choice_is_invalid(text):
    assert parse_answer(text, "multiple_choice", ["A. slow", "B. fast", "C. still"]) is None


def test_other_problem_types_parse_canonically():
    assert parse_answer("<answer>3.0</answer>", "numeric") == parse_answer("answer: 3", "numeric") == "3"
    assert parse_answer("<answer>[1, 2.5]</answer>", "temporal_iou") == "[1.0, 2.5]"
    assert parse_answer("<answer>The Cat!</answer>", "exact") == "cat"


def rec(i, task, correct, parsed="A", tokens=4, latency=0.5, error=None, duration=None, scores=None):
    return PredictionRecord(
        id=str(i), task=task, problem_type="multiple_choice", reference="A",
        raw_outputs=[] if error else ["x"], parsed_answers=[] if error else [parsed],
        scores=[] if error else (scores or [float(correct)]), output_tokens=[] if error else [tokens],
        answer=None if error else parsed, score=float(correct), correct=correct, latency_s=0.0 if error else latency,
        duration=duration, error=error, error_kind="missing_media" if error else None,
    )


def test_metrics_by_hand():
    records = [
        rec(0, "a", True, duration=30), rec(1, "a", False, parsed=None, tokens=8, duration=600),
        rec(2, "b", True, duration="long"), rec(3, "b", False, error="no file"),
    ]
    m = compute_metrics(records)
    assert (m.n, m.n_evaluated, m.n_errors, m.errors_by_kind) == (4, 3, 1, {"missing_media": 1})
    assert m.accuracy == 2 / 4 and m.accuracy_valid == 2 / 3  # the error counts as wrong
    assert m.invalid_format_rate == 1 / 3 and m.mean_output_tokens == 16 / 3
    assert m.samples_per_s == 3 / 1.5 and m.generation_s == 1.5
    assert {k: (g.n, g.accuracy) for k, g in m.per_task.items()} == {"a": (2, 0.5), "b": (2, 0.5)}
    assert {k: g.n for k, g in m.per_duration.items()} == {"short": 1, "medium": 1, "long": 1}
    assert m.sampling is None
    assert EvalMetrics.from_json(json.loads(json.dumps(m.to_json()))) == m
    assert m.flat()["task/a"] == 0.5 and m.flat()["error_rate"] == 0.25


def test_sampling_metrics_and_vote():
    assert majority_vote(["B", None, "A", "B"], [0.0, 0.0, 1.0, 0.0]) == ("B", 0.0)
    assert majority_vote(["A", "B"], [1.0, 0.0]) == ("A", 1.0)  # tie: first seen
    assert majority_vote([None, None], [0.0, 0.0]) == (None, 0.0)
    records = [rec(0, "a", False, scores=[0.0, 1.0, 0.0]), rec(1, "a", True, scores=[1.0, 1.0, 0.0])]
    s = compute_metrics(records).sampling
    assert (s.k, s.pass_at_k, s.mean_at_k, s.majority) == (3, 1.0, 0.5, 0.5)
    assert duration_bucket(119.9) == "short" and duration_bucket("900") == "long" and duration_bucket(None) is None


def test_store_drops_cut_off_line_and_resume_checks_settings(tmp_path):
    store = PredictionStore(tmp_path)
    store.append([rec(0, "a", True), rec(1, "a", False)])
    with store.path.open("a") as f:
        f.write('{"id": "2", "task": "a", "probl')  # killed mid-write
    assert [r.id for r in store.load()] == ["0", "1"]
    assert store.path.read_text().endswith("\n") and len(store.path.read_text().splitlines()) == 2
    store.append([rec(2, "a", True)])
    assert [r.id for r in store.load()] == ["0", "1", "2"]
    info = RunInfo(model="m", adapter=None, data=["d"], num_samples=1, max_new_tokens=8, temperature=1.0)
    info.check_resume(RunInfo(model="m", adapter=None, data=["other"], num_samples=1, max_new_tokens=8, temperature=1.0))
    with pytest.raises(ResumeMismatchError, match="max_new_tokens"):
        info.check_resume(RunInfo(model="m", adapter=None, data=["d"], num_samples=1, max_new_tokens=16, temperature=1.0))


def test_report_and_compare(tmp_path):
    base = [rec(0, "a", False), rec(1, "b", True), rec(2, "b", False, error="gone")]
    tuned = [rec(0, "a", True), rec(1, "b", True), rec(2, "b", True)]
    for name, records in (("base", base), ("rl", tuned)):
        out = tmp_path / name
        out.mkdir()
        m = compute_metrics(records)
        (out / "metrics.json").write_text(json.dumps(m.to_json()))
        info = RunInfo(model="m", adapter=None, data=["d"], num_samples=1, max_new_tokens=8, temperature=1.0, name=name)
        write_run_info(out, info)
        report = write_report(out, m, records, info).read_text()
        assert "| a | 1 |" in report and (out / "task_accuracy.png").stat().st_size > 1000
    assert "gone" in (tmp_path / "base" / "report.md").read_text()  # errors are listed
    result = compare([tmp_path / "base", tmp_path / "rl"], tmp_path / "cmp")
    lines = result.table.splitlines()
    assert lines[0] == "| task | base | rl | Δ rl |"
    assert "| **overall** | **33.3** | **100.0** | **+66.7** |" in lines
    assert "| a | 0.0 | 100.0 | +100.0 |" in lines and "| b | 50.0 | 100.0 | +50.0 |" in lines
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000 and "Δ rl" in (tmp_path / "cmp" / "compare.md").read_text()
