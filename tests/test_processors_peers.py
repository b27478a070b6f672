"""Rows in the formats of Video-R1, EasyR1, ms-swift and TRL, each copied from the project's own code
or documentation (named at each row), load unchanged; missing media placeholders are added the
way that project adds them, and check-data says so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from media import counting_frames, write_image, write_video
from mmgrpo.cli import main as cli_main
from mmgrpo.config import DataConfig, TrainConfig, load_config
from mmgrpo.processors import BadSampleError, load_samples, load_samples_from_config

# A Video-R1-260k.json row: the columns tulerfeng/Video-R1 src/r1-v/src/open_r1/grpo.py reads
# (problem, data_type, problem_type, options, solution, path; its trainer joins `path` to the
# Video-R1-data folder) and the rest of the released JSON (problem_id, process, data_source).
VIDEO_R1_ROW = {
    "problem_id": 7, "problem": "What is the colour of the moving square?", "data_type": "video",
    "problem_type": "multiple choice", "options": ["A. red", "B. green", "C. blue", "D. white"],
    "process": "<think>The square is green in every frame.</think>", "solution": "<answer>B</answer>",
    "path": "./media/clip.mp4", "data_source": "LLaVA-Video-178K",
}

# hiyouga/EasyR1 tests/test_dataset.py reads hiyouga/geometry3k with prompt_key="problem",
# answer_key="answer", image_key="images" and expects ground_truth "48"; verl/utils/dataset.py
# splits the prompt at its <image> tags.
EASYR1_ROW = {"images": ["media/pic.png"], "problem": "<image>Find x. Round to the nearest tenth.", "answer": "48"}

# modelscope/ms-swift docs/source_en/BestPractices/GRPO-Multi-Modal-Training.md: "images" without
# an <image> tag in the messages (ms-swift adds the tags itself)
SWIFT_ROW = {
    "images": ["media/pic.png", "media/pic2.png"],
    "messages": [{"role": "user", "content": "How many items are there in the image? Output the thinking process in "
                                             "<think> </think> and\n final answer (number) in <answer> </answer> tags."}],
    "solution": "<answer> 3 </answer>",
}

# huggingface/trl examples/scripts/grpo_vlm.py make_conversation: a system message, the problem as
# a string user message, and the dataset's `image` column
TRL_SYSTEM = ("A conversation between user and assistant. The user asks a question, and the assistant solves it.")
TRL_ROW = {"prompt": [{"role": "system", "content": TRL_SYSTEM}, {"role": "user", "content": "What is 2 + 2?"}],
           "image": "media/pic.png", "solution": "4"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("peers")
    write_video(d / "media" / "clip.mp4", counting_frames(8, 56, 56), fps=4)
    write_image(d / "media" / "pic.png", counting_frames(1, 56, 56)[0])
    write_image(d / "media" / "pic2.png", counting_frames(2, 56, 56)[1])
    return d


def write(d: Path, name: str, rows: list[dict]) -> Path:
    path = d / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("spelled, ours", [("multiple choice", "multiple_choice"), ("numerical", "numeric"),
                                           ("OCR", "free_text"), ("free-form", "free_text"), ("regression", "numeric")])
def test_video_r1_rows(data_dir, spelled, ours):
    row = dict(VIDEO_R1_ROW, problem_type=spelled)
    if spelled != "multiple choice":
        row = dict(row, options=[], solution="<answer>3.5</answer>" if ours == "numeric" else "<answer>some text</answer>")
    s = load_samples(write(data_dir, "Video-R1-260k.json", [row])).samples[0]
    assert s.problem_type == ours
    assert s.media[0].kind == "video" and s.media[0].source == str(data_dir / "media" / "clip.mp4")
    text = s.prompt[0]["content"][1]["text"]
    assert s.prompt[0]["content"][0] == {"type": "video"} and text.startswith("What is the colour")
    if ours == "multiple_choice":
        assert s.answer == "B" and s.options == VIDEO_R1_ROW["options"] and text.endswith("D. white")
    assert s.columns["problem_type"] == spelled and s.columns["data_source"] == "LLaVA-Video-178K"


def test_video_r1_bad_type_names_the_row(data_dir):
    with pytest.raises(BadSampleError, match="problem_type 'essay'"):
        load_samples(write(data_dir, "v.json", [dict(VIDEO_R1_ROW, problem_type="essay")]))


def test_easyr1_rows_default_and_configured_keys(data_dir):
    s = load_samples(write(data_dir, "geo.jsonl", [EASYR1_ROW])).samples[0]
    assert s.answer == "48" and s.problem_type == "numeric"
    assert s.prompt == [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": "Find x. Round to the nearest tenth."}]}]
    renamed = {"query": "<video>What happens?", "gt": "it moves", "clips": ["media/clip.mp4"]}
    path = write(data_dir, "renamed.jsonl", [renamed])
    cfg = load_config(TrainConfig, None, [f"data.train=[{path}]", "data.prompt_key=query", "data.answer_key=gt",
                                          "data.video_key=clips", "data.image_key="])
    s = load_samples_from_config(cfg.data).samples[0]
    assert s.answer == "it moves" and [m.kind for m in s.media] == ["video"]
    with pytest.raises(BadSampleError, match="cannot tell the format"):
        load_samples_from_config(DataConfig(train=(str(path),)))  # EasyR1's default keys: not this file's


def test_swift_row_without_tags_gets_them_as_ms_swift_does(data_dir):
    s = load_samples(write(data_dir, "swift.jsonl", [SWIFT_ROW])).samples[0]
    content = s.prompt[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert [Path(m.source).name for m in s.media] == ["pic.png", "pic2.png"]
    assert s.answer == "3" and s.notes == ("inserted 2 image placeholders (as ms-swift does)",)


def test_trl_grpo_vlm_row_gets_its_placeholder_as_trl_does(data_dir):
    s = load_samples(write(data_dir, "trl.jsonl", [TRL_ROW])).samples[0]
    assert s.prompt[0] == {"role": "system", "content": TRL_SYSTEM}
    assert s.prompt[1] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2 + 2?"}]}
    assert s.answer == "4" and s.notes == ("inserted 1 image placeholder (as TRL does)",)


def test_check_data_reports_inserted_placeholders(data_dir, capsys):
    path = write(data_dir, "mixed.jsonl", [dict(SWIFT_ROW, id="a"), dict(TRL_ROW, id="b"), dict(EASYR1_ROW, id="c")])
    assert cli_main(["check-data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 samples: 3 ok, 0 bad" in out
    assert "1 sample: inserted 2 image placeholders (as ms-swift does)" in out
    assert "1 sample: inserted 1 image placeholder (as TRL does)" in out


def test_training_run_on_every_peer_format_with_trl_rewards(tiny_dir, data_dir, tmp_path):
    """A new user's run: Video-R1, EasyR1, ms-swift and TRL rows (one file each) and TRL's reward
    function, none of them edited; one step takes every sample."""
    pytest.importorskip("trl")
    from mmgrpo.trainer.loop import train

    files = [write(data_dir, "Video-R1-train.json", [VIDEO_R1_ROW]), write(data_dir, "easyr1.jsonl", [EASYR1_ROW]),
             write(data_dir, "swift-train.jsonl", [SWIFT_ROW]), write(data_dir, "trl-train.jsonl", [TRL_ROW])]
    cfg = load_config(TrainConfig, None, [
        f"model.name_or_path={tiny_dir}", "model.dtype=fp32", f"data.train=[{','.join(map(str, files))}]",
        "vision.nframes=2", "vision.min_frames=2", "vision.max_frames=2", "vision.max_pixels=3136",
        "vision.min_pixels=784", "generation.num_generations=2", "generation.max_new_tokens=4", "prompts_per_step=4",
        "max_steps=1", "reward.functions=[trl.rewards:think_format_reward, accuracy]", "reward.weights=[1.0, 1.0]",
        f"output_dir={tmp_path / 'run'}", "progress_bar=false", "report_to=[jsonl]", "lora.r=2", "lora.alpha=4",
        "sample_every=1"])
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["step"] == 1 and metrics["reward/mean"] is not None and metrics["count/skipped_samples"] == 0


def test_video_r1_rows_in_evaluation(data_dir):
    """Video-R1's evaluation JSON has the training JSON's columns: read as written by `mmgrpo eval`."""
    from mmgrpo.eval.bench import load_eval_data

    (item,) = load_eval_data([str(write(data_dir, "eval_mvbench.json", [VIDEO_R1_ROW]))])
    assert item.answer == "B" and item.problem_type == "multiple_choice" and item.media[0].kind == "video"
