"""`mmgrpo infer` on the tiny model: greedy answer from real video / image files, adapter vs merged,
vision placeholders never generated, errors."""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GenerationConfig

from mmgrpo.config import LoraConfig, VisionConfig
from mmgrpo.models.export import ExportOptions, export_checkpoint
from mmgrpo.models.generate import Sampling, hf_generate
from mmgrpo.models.infer import InferRequest, build_sample, infer_main, infer_parser
from mmgrpo.models.layout import collate_prompts
from mmgrpo.models.loading import load_processor
from mmgrpo.models.lora import apply_lora
from mmgrpo.models.special import VISION_TOKENS, special_ids
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.sample import Media, Sample

QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, Path]:
    """(mp4 with 12 frames of a moving red square at 4 fps, png image)."""
    root = tmp_path_factory.mktemp("media")
    video, image = root / "clip.mp4", root / "picture.png"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (56, 56))
    for t in range(12):
        frame = np.full((56, 56, 3), 110, np.uint8)
        frame[10:30, 3 * t : 3 * t + 20] = (40, 40, 220)  # BGR red
        writer.write(frame)
    writer.release()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(image)
    return video, image


def run_infer(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = infer_main(argv)
    captured = capsys.readouterr()
    return rc, captured.out.strip(), captured.err


def test_media_order_follows_command_line():
    args = infer_parser().parse_args(["--image", "a.png", "--video", "b.mp4", "--image", "c.png", "--question", "q"])
    assert args.media == [("image", "a.png"), ("video", "b.mp4"), ("image", "c.png")]
    sample = build_sample(InferRequest(model="m", media=args.media, question="q", system_prompt="be brief"))
    assert [c["type"] for c in sample.prompt[1]["content"]] == ["image", "video", "image", "text"]
    assert sample.prompt[0] == {"role": "system", "content": "be brief"}
    assert [m.kind for m in sample.media] == ["image", "video", "image"]


def test_infer_prints_the_greedy_answer(tiny, tiny_dir, media, capsys):
    video, image = media
    rc, out, err = run_infer(["--model", str(tiny_dir), "--video", str(video), "--image", str(image),
                              "--question", QUESTION, "--max-new-tokens", "6"], capsys)
    assert rc == 0, err

    # the same prompt, generated here with plain transformers calls
    model, _ = tiny
    processor = load_processor(str(tiny_dir))
    content = [{"type": "video"}, {"type": "image"}, {"type": "text", "text": QUESTION}]
    sample = Sample(id="t", prompt=[{"role": "user", "content": content}], answer=None, problem_type="free_text",
                    media=[Media("video", str(video)), Media("image", str(image))])
    prompt = PromptEncoder(processor, VisionConfig()).encode(sample)
    assert prompt.vision.video_grid_thw is not None and prompt.vision.image_grid_thw is not None
    tok = processor.tokenizer
    config = GenerationConfig(do_sample=False, max_new_tokens=6, repetition_penalty=1.0, pad_token_id=tok.pad_token_id,
                              eos_token_id=model.generation_config.eos_token_id,
                              bad_words_ids=[[tok.convert_tokens_to_ids(t)] for t in VISION_TOKENS])
    with torch.no_grad():
        seq = model.generate(input_ids=prompt.input_ids, attention_mask=torch.ones_like(prompt.input_ids),
                             mm_token_type_ids=prompt.mm_token_type_ids, generation_config=config,
                             **prompt.vision.as_kwargs())
    assert out == tok.decode(seq[0, prompt.length :], skip_special_tokens=True).strip()
    assert out  # the random tiny model still says something


def test_adapter_answers_like_its_merged_folder(tiny_dir, media, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    peft_model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), train_vision=False)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    peft_model.save_pretrained(adapter)
    export_checkpoint(ExportOptions(checkpoint=str(adapter), out=str(merged), verify=False), log=lambda _: None)

    video, image = media
    ask = ["--video", str(video), "--image", str(image), "--question", QUESTION, "--max-new-tokens", "8"]
    answers = [run_infer(argv + ask, capsys) for argv in (
        ["--model", str(tiny_dir), "--adapter", str(adapter)],
        ["--adapter", str(adapter)],  # base from the adapter config
        ["--model", str(merged)],
    )]
    assert all(rc == 0 for rc, _, _ in answers), [err for _, _, err in answers]
    assert answers[0][1] == answers[1][1] == answers[2][1]


def test_vision_placeholders_are_never_generated(tiny, tiny_dir, media):
    model, _ = tiny
    processor = load_processor(str(tiny_dir))
    tok = processor.tokenizer
    image_pad, video_pad = (tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>"))
    # every logit 0 except image_pad = h.w and video_pad = -h.w: one of the two is the argmax
    rigged = copy.deepcopy(model)
    with torch.no_grad():
        w = rigged.lm_head.weight
        direction = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(0))
        w.zero_()
        w[image_pad], w[video_pad] = direction, -direction
    sample = build_sample(InferRequest(model=None, media=[("video", str(media[0]))], question=QUESTION))
    prompt = PromptEncoder(processor, VisionConfig()).encode(sample)
    plain = rigged.generate(input_ids=prompt.input_ids, attention_mask=torch.ones_like(prompt.input_ids),
                            mm_token_type_ids=prompt.mm_token_type_ids, max_new_tokens=1, do_sample=False,
                            **prompt.vision.as_kwargs())
    assert int(plain[0, -1]) in (image_pad, video_pad)  # the rig works without the ban
    special = special_ids(rigged, tok)  # what `mmgrpo infer` generates with (models.infer.greedy_answer)
    ids = hf_generate(rigged, collate_prompts([prompt], special.pad, 1), Sampling(4, 0.0, 1.0, 0), special, None)[0]
    banned = {tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    assert len(ids) > 0 and not set(ids.tolist()) & banned


def test_errors_exit_nonzero_with_a_message(tiny_dir, media, tmp_path, capsys):
    rc, _, err = run_infer(["--model", str(tiny_dir), "--video", str(tmp_path / "nope.mp4"), "--question", "q"], capsys)
    assert rc == 1 and "nope.mp4: no such file" in err
    rc, _, err = run_infer(["--model", str(tiny_dir), "--question", "q"], capsys)
    assert rc == 1 and "at least one --video or --image" in err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    rc, _, err = run_infer(["--model", str(tiny_dir), "--video", str(broken), "--question", "q"], capsys)
    assert rc == 1 and "broken.mp4" in err
