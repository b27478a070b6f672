"""The tiny model folder is a plain HF folder: it loads and generates without importing mmgrpo."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from mmgrpo.models.tiny import SPECIAL_TOKENS, TinySpec, build_tiny


def test_special_tokens_are_single_ids():
    _, processor = build_tiny(TinySpec(layers=1))
    tok = processor.tokenizer
    for t in SPECIAL_TOKENS + ["<answer>", "</answer>", "<think>", "</think>"]:
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id
        assert tok.tokenize(t) == [t]
    assert tok.decode(tok("<answer>B</answer>")["input_ids"]) == "<answer>B</answer>"


def test_cli_folder_loads_and_generates_without_mmgrpo(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "mmgrpo.cli", "tiny-model", str(out), "--layers", "1"], check=True)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        proc = AutoProcessor.from_pretrained({str(out)!r})
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained({str(out)!r})
        msgs = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "image"}}, {{"type": "text", "text": "What colour?"}}]}}]
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        video = np.random.randint(0, 255, (8, 56, 56, 3), dtype=np.uint8)
        image = np.random.randint(0, 255, (56, 56, 3), dtype=np.uint8)
        inp = proc(text=[text], videos=[video], images=[image], return_tensors="pt")
        out = model.generate(**inp, max_new_tokens=5, do_sample=False)
        assert out.shape[1] > inp["input_ids"].shape[1]
        assert "mmgrpo" not in sys.modules
        print("OK", inp["video_grid_thw"].tolist(), inp["image_grid_thw"].tolist())
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "OK [[4, 4, 4]] [[1, 4, 4]]" in res.stdout
