"""Evaluation on the tiny model (random weights: accuracy values are arbitrary, these tests check the
bookkeeping): batched = one-by-one generation, resume, the CLI outputs, metrics rebuilt by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmgrpo.config import EvalConfig, VisionConfig
from mmgrpo.eval.bench import LoadError, load_eval_data
from mmgrpo.eval.cli import main
from mmgrpo.models.generate import Sampling, generate_texts
from mmgrpo.models.special import special_ids
from mmgrpo.eval.runner import evaluate
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.sample import Media, Sample
from tests.media import counting_frames, solid_frames, write_image, write_video

VISION = VisionConfig(max_pixels=56 * 56, min_pixels=28 * 28, min_frames=2, max_frames=4)
VISION_FLAGS = ["--max-pixels", str(56 * 56), "--max-frames", "4"]


@pytest.fixture(scope="module")
def mvbench(tmp_path_factory) -> Path:
    """An MVBench-style folder: two per-task files (no ids, no task column) and a Video-MME-style
    one; options as lists and as "A. ..." strings; answers as text, letter and index; one missing video."""
    root = tmp_path_factory.mktemp("mvbench")
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        write_video(root / "video" / f"v{i}.mp4", solid_frames(6 + 2 * i, 56, 84 - 14 * i, color), fps=4)
    write_video(root / "video" / "count.mp4", counting_frames(8, 70, 56), fps=4)
    json_dir = root / "json"
    json_dir.mkdir()
    colours = ["red", "green", "blue"]
    action = [{"video": f"v{i}.mp4", "question": "What colour is the video?", "candidates": colours, "answer": colours[i]}
              for i in range(3)]
    action.append({"video": "gone.mp4", "question": "What colour?", "candidates": colours, "answer": "red"})
    (json_dir / "action_colour.json").write_text(json.dumps(action))
    counting = [{"video": "count.mp4", "question": "How many frames?", "candidates": ["4", "8", "16"], "answer": 1,
                 "start": 0.0, "end": 1.5}, {"video": "v0.mp4", "question": "Count the shapes.", "candidates": ["0", "1"], "answer": 0}]
    (json_dir / "object_count.json").write_text(json.dumps(counting))
    videomme = [{"question_id": f"mme-{i}", "videoID": f"v{i}", "duration": "short", "domain": "Synthetic",
                 "task_type": "Attribute Perception", "question": "Which colour?",
                 "options": ["A. red", "B. green", "C. blue"], "answer": "ABC"[i]} for i in range(3)]
    (json_dir / "videomme.jsonl").write_text("\n".join(json.dumps(r) for r in videomme) + "\n")
    return root


def data_args(root: Path) -> list[str]:
    files = [str(root / "json" / n) for n in ("action_colour.json", "object_count.json", "videomme.jsonl")]
    return ["--data", *files, "--media-root", str(root / "video")]


def mixed_samples(tmp_path) -> list[Sample]:
    """Prompts of different lengths and media (two videos, an image, text only, image + video)."""
    a = write_video(tmp_path / "a.mp4", counting_frames(8, 56, 84), fps=4)
    b = write_video(tmp_path / "b.mp4", solid_frames(12, 84, 56, (0, 200, 0)), fps=4)
    c = write_image(tmp_path / "c.png", np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))

    def s(i, media, q):
        content = [{"type": m.kind} for m in media] + [{"type": "text", "text": q}]
        return Sample(id=str(i), prompt=[{"role": "user", "content": content}], media=media, answer="A",
                      problem_type="multiple_choice", options=["A. red", "B. blue"])

    return [s(0, [Media("video", str(a))], "What colour is the square?\nA. red\nB. blue"),
            s(1, [Media("video", str(b))], "Which direction?"), s(2, [Media("image", str(c))], "What is in the picture?"),
            s(3, [], "Count 1 2 3"), s(4, [Media("image", str(c)), Media("video", str(a))], "Both?")]


def test_batched_greedy_equals_one_by_one(tiny, tmp_path):
    model, processor = tiny
    prompts = [PromptEncoder(processor, VISION).encode(s) for s in mixed_samples(tmp_path)]
    assert len({p.length for p in prompts}) > 2  # left padding is exercised
    special = special_ids(model, processor.tokenizer)
    greedy = Sampling(10, temperature=0.0, top_p=1.0, top_k=0)

    def run(ps, s, k):
        return generate_texts(model, processor.tokenizer, special, ps, s, num_samples=k, seed=0)

    alone = [run([p], greedy, 1) for p in prompts]
    batched = run(prompts, greedy, 1)
    assert batched.texts == tuple(a.texts[0] for a in alone)
    assert batched.num_tokens == tuple(a.num_tokens[0] for a in alone)
    # K rows per prompt: vision inputs must follow their repeated rows. A near-zero temperature
    # makes sampling greedy, so every one of the K rows must reproduce its prompt's greedy output.
    k = run(prompts[:3], Sampling(10, temperature=1e-6, top_p=1.0, top_k=0), 2)
    assert k.texts == tuple(a.texts[0] for a in alone[:3] for _ in range(2))


def count_generate_calls(model, monkeypatch) -> list[int]:
    """Rows per `generate` call, recorded on the (shared, session-scoped) model instance."""
    calls: list[int] = []
    real = model.generate

    def counting(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return calls


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_regenerating(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    samples = mixed_samples(tmp_path)
    cfg = EvalConfig(batch_size=2, max_new_tokens=6)
    calls = count_generate_calls(model, monkeypatch)

    def stop(records):
        raise Interrupt  # killed right after the first batch was written

    with pytest.raises(Interrupt):
        evaluate(model, processor, samples, cfg, VISION, out_dir=tmp_path / "out", progress=False, numeric_tolerance=1e-2, on_batch=stop)
    assert calls == [2]
    first = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in first] == ["0", "1"]
    result = evaluate(model, processor, samples, cfg, VISION, out_dir=tmp_path / "out", progress=False, numeric_tolerance=1e-2)
    assert calls == [2, 2, 1] and result.generated == 3  # only samples 2, 3, 4 were generated again
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert lines[:2] == first and [json.loads(line)["id"] for line in lines] == ["0", "1", "2", "3", "4"]
    assert [r.id for r in result.records] == ["0", "1", "2", "3", "4"]
    again = evaluate(model, processor, samples, cfg, VISION, out_dir=tmp_path / "out", progress=False, numeric_tolerance=1e-2)
    assert calls == [2, 2, 1] and again.generated == 0 and again.metrics == result.metrics


def test_trainer_call_in_memory(tiny, tmp_path):
    """What the trainer runs every N steps: no output folder, metrics in memory, train mode restored."""
    model, processor = tiny
    samples = mixed_samples(tmp_path)[:3]
    model.train()
    try:
        result = evaluate(model, processor, samples, EvalConfig(batch_size=3, max_new_tokens=4, num_samples=2), VISION, progress=False, numeric_tolerance=1e-2)
        assert model.training
    finally:
        model.eval()
    flat = result.flat_metrics()
    assert result.out_dir is None and flat["mean_output_tokens"] <= 4 and "pass@2" in flat
    assert all(len(r.raw_outputs) == 2 and len(r.scores) == 2 for r in result.records)


def recompute(records: list[dict]) -> dict:
    """metrics.json's numbers, rebuilt from predictions.jsonl by hand (not with compute_metrics)."""
    ok = [r for r in records if r["error"] is None]
    outputs = [(p, t) for r in ok for p, t in zip(r["parsed_answers"], r["output_tokens"])]
    tasks = sorted({r["task"] for r in records})
    return {
        "n": len(records),
        "n_errors": len(records) - len(ok),
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "invalid_format_rate": sum(p is None for p, _ in outputs) / len(outputs),
        "mean_output_tokens": sum(t for _, t in outputs) / len(outputs),
        "samples_per_s": len(ok) / sum(r["latency_s"] for r in ok),
        "per_task": {t: sum(r["correct"] for r in records if r["task"] == t) / sum(r["task"] == t for r in records) for t in tasks},
    }


def test_cli_mvbench_limit_resume_metrics_report_compare(tiny_dir, mvbench, tmp_path):
    out = tmp_path / "base"
    common = ["--model", str(tiny_dir), *data_args(mvbench), "--batch-size", "3", "--max-new-tokens", "6", "--no-progress", *VISION_FLAGS]
    assert main([*common, "--out", str(out), "--limit", "4"]) == 0  # an "interrupted" first run
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    assert main([*common, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 9 and len({r["id"] for r in records}) == 9  # resumed: no id twice
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_errors"] == 1 and metrics["errors_by_kind"] == {"missing_media": 1}
    (bad,) = [r for r in records if r["error"] is not None]
    assert bad["id"] == "action_colour-3" and "gone.mp4" in bad["error"] and not bad["correct"]
    expected = recompute(records)
    assert {k: metrics[k] for k in expected if k != "per_task"} == pytest.approx({k: v for k, v in expected.items() if k != "per_task"})
    assert {t: g["accuracy"] for t, g in metrics["per_task"].items()} == pytest.approx(expected["per_task"])
    assert set(expected["per_task"]) == {"action_colour", "object_count", "Attribute Perception"}
    assert metrics["per_duration"]["short"]["n"] == 3 and metrics["per_category"]["Synthetic"]["n"] == 3
    refs = {r["id"]: r["reference"] for r in records}
    assert (refs["action_colour-1"], refs["object_count-0"], refs["object_count-1"], refs["mme-2"]) == ("B", "B", "A", "C")
    for r in records:  # a multiple-choice answer is correct exactly when its letter is the reference
        if r["error"] is None:
            assert r["correct"] == (r["parsed_answers"][0] == r["reference"]) and len(r["raw_outputs"]) == 1
    assert (out / "report.md").read_text().count("| action_colour |") == 1 and (out / "task_accuracy.png").stat().st_size > 1000

    # a second "model" run (different settings => its own folder), then the side-by-side table
    assert main([*common, "--out", str(tmp_path / "sampled"), "--num-samples", "2", "--name", "sampled"]) == 0
    with pytest.raises(SystemExit):
        main(["--compare"])
    assert main(["--compare", str(out), str(tmp_path / "sampled"), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| task | base | sampled | Δ sampled |" in table and "| object_count |" in table
    assert (tmp_path / "cmp" / "compare.png").exists()


def test_cli_refuses_to_mix_settings_and_strict_stops(tiny_dir, mvbench, tmp_path, capsys):
    common = ["--model", str(tiny_dir), *data_args(mvbench), "--out", str(tmp_path / "o"), "--no-progress", *VISION_FLAGS]
    assert main([*common, "--limit", "1", "--max-new-tokens", "4"]) == 0
    assert main([*common, "--max-new-tokens", "8"]) == 1
    assert "max_new_tokens" in capsys.readouterr().err
    assert main([*common, "--max-new-tokens", "4", "--strict"]) == 1
    assert "gone.mp4" in capsys.readouterr().err
    assert main(["--data", "x.json"]) == 2


def test_load_errors_keep_their_place_in_the_order(mvbench):
    items = load_eval_data([str(mvbench / "json" / "action_colour.json")], media_root=str(mvbench / "video"))
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "Sample", "LoadError"]
    assert isinstance(items[3], LoadError) and items[3].task == "action_colour"
