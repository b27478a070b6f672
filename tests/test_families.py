"""The family table (models.families) on a tiny model of every family: loading picks the family from
config.json, exact multimodal bookkeeping (placeholders = grid product / merge^2, Qwen3's
timestamps, position shapes), pixel budgets on the family's grid, the mRoPE positions of the
original Qwen rule against an independent implementation (tests.rope_reference) and where
transformers' rule differs, LoRA targets and MoE router losses."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import typing

import pytest
import torch

from media import counting_frames, write_image, write_video
from mmgrpo.config import Family, LoraConfig, ModelConfig, VisionConfig
from mmgrpo.models.families import FAMILIES, family_of
from mmgrpo.models.layout import collate_prompts, rope_positions
from mmgrpo.models.loading import LoadError, checkpoint_family, load_model
from mmgrpo.processors import Media, MediaCache, MediaOptions, PromptEncoder, Sample, count_tokens
from tests.prompts import make_prompt
from tests.rope_reference import original_positions, prompt_positions

ALL = list(FAMILIES)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_config_names_every_family():
    assert set(typing.get_args(Family)) == set(FAMILIES)
    assert ModelConfig().family == "auto"


def test_tiny_folders_load_in_plain_transformers(family_dir, tmp_path):
    """`mmgrpo tiny-model OUT --family NAME` for every family: the folder loads with the family's own
    classes (no mmgrpo import), and generates from an image + video prompt."""
    from mmgrpo.models.cli import tiny_main

    folders = {}
    for name in ALL:
        out = tmp_path / name
        assert tiny_main([str(out), "--family", name, "--layers", "1"]) == 0
        folders[name] = str(out)
    expected = {n: (f.model_class, f.processor_class) for n, f in FAMILIES.items()}
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, transformers
        from transformers.video_utils import VideoMetadata
        out = {{}}
        for name, folder in {folders!r}.items():
            cls, proc_cls = {expected!r}[name]
            proc = transformers.AutoProcessor.from_pretrained(folder)
            model = getattr(transformers, cls).from_pretrained(folder)
            msgs = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "image"}}, {{"type": "text", "text": "Colour?"}}]}}]
            text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            video = np.random.randint(0, 255, (8, 64, 64, 3), dtype=np.uint8)
            image = np.random.randint(0, 255, (64, 64, 3), dtype=np.uint8)
            meta = [VideoMetadata(total_num_frames=8, fps=2.0, frames_indices=list(range(8)))]
            inp = proc(text=[text], videos=[video], images=[image], video_metadata=meta, do_sample_frames=False,
                       return_tensors="pt")
            gen = model.generate(**inp, max_new_tokens=3, do_sample=False)
            out[name] = [type(proc).__name__, type(model).__name__, int(gen.shape[1] - inp["input_ids"].shape[1])]
        assert "mmgrpo" not in sys.modules
        print(json.dumps(out))
        """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {n: [p, c, 3] for n, (c, p) in expected.items()}


@pytest.mark.parametrize("name", ALL)
def test_loading_picks_the_family_from_config_json(family_dir, name):
    folder = family_dir(name)
    assert checkpoint_family(folder).name == name == json.loads((folder / "config.json").read_text())["model_type"]
    model = load_model(folder, "fp32", "cpu", family=name)
    assert type(model).__name__ == FAMILIES[name].model_class and family_of(model).name == name
    other = "qwen3_vl" if name != "qwen3_vl" else "qwen2_vl"
    with pytest.raises(LoadError, match=f"model.family={other}, but .* is a {FAMILIES[name].title} checkpoint"):
        checkpoint_family(folder, other)


def test_unsupported_model_type_is_a_clear_error(family_dir, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(LoadError) as info:
        load_model(tmp_path, "fp32", "cpu")
    message = str(info.value)
    assert "model_type 'llama'" in message and "mmgrpo does not support" in message
    assert all(name in message for name in FAMILIES)


# ----------------------------------------------------------------------------------------------
# bookkeeping: placeholders, timestamps, positions


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("fam_media")
    return {
        "video": str(write_video(d / "v.mp4", counting_frames(20, 120, 160), fps=10)),  # 2 s at 10 fps
        "image": str(write_image(d / "i.png", counting_frames(1, 90, 130)[0])),
    }


def encode(processor, clips, kinds, options=None, **vision):
    media = [Media(k, clips[k], options or MediaOptions()) for k in kinds]
    content = [{"type": k} for k in kinds] + [{"type": "text", "text": "What colour is it?"}]
    sample = Sample(id="s", prompt=[{"role": "user", "content": content}], media=media, answer="A",
                    problem_type="exact", index=0, source="test")
    return PromptEncoder(processor, VisionConfig(max_pixels=128 * 128, **vision), MediaCache(0)).encode(sample)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kinds", [["video"], ["image", "video"]], ids=["video", "image_video"])
def test_placeholders_grids_and_positions(family_model, clips, name, kinds):
    model, processor = family_model(name)
    family = FAMILIES[name]
    inputs = encode(processor, clips, kinds, MediaOptions(fps=3.0))
    v, ids, cfg = inputs.vision, inputs.input_ids, model.config
    merge = family.grid.merge ** 2
    assert int((ids == cfg.video_token_id).sum()) == int(v.video_grid_thw.prod(-1).sum()) // merge
    n_image = int((ids == cfg.image_token_id).sum())
    assert n_image == (int(v.image_grid_thw.prod(-1).sum()) // merge if "image" in kinds else 0)
    assert ((inputs.mm_token_type_ids == 2) == (ids == cfg.video_token_id)).all()
    # 20 frames at 10 fps, fps 3 -> 6 frames; sides snap to the family's patch * merge
    f = family.grid.factor
    assert inputs.num_frames == [6] and all(h % f == 0 and w % f == 0 for h, w in inputs.resolutions)
    assert v.video_grid_thw[0].tolist()[0] == 3 and v.pixel_values_videos.shape[0] == int(v.video_grid_thw.prod())
    patch_dim = 3 * family.grid.temporal * family.grid.patch ** 2
    assert v.pixel_values_videos.shape[1] == patch_dim
    positions, next_pos = rope_positions(model, collate_prompts([inputs], processor.tokenizer.pad_token_id, 1))
    assert positions.shape == (3, 1, inputs.length) and next_pos.shape == (1,)
    assert torch.equal(positions[:, 0], prompt_positions(model, inputs)) and int(next_pos) == int(positions.max()) + 1
    with torch.no_grad():  # the features and placeholders agree: the forward runs
        logits = model(input_ids=ids, mm_token_type_ids=inputs.mm_token_type_ids, position_ids=positions,
                       **v.as_kwargs()).logits
    assert logits.shape[:2] == (1, inputs.length) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.video_time == "timestamps"])
def test_timestamps_are_the_frames_times(family_model, clips, name):
    """Qwen3-VL / Qwen3.5 write each temporal patch's time (the mean of its two frames' times, from
    their source indices) before it, so the prompt's text depends on the frames' times."""
    model, processor = family_model(name)
    start = encode(processor, clips, ["video"], MediaOptions(nframes=4))  # frames 0, 6, 13, 19 of 10 fps
    later = encode(processor, clips, ["video"], MediaOptions(nframes=4, start=1.0))  # frames 10, 13, 16, 19
    text = processor.tokenizer.decode(start.input_ids[0])
    assert "<0.3 seconds><|vision_start|>" in text and "<1.6 seconds><|vision_start|>" in text
    assert "<1.1 seconds><|vision_start|>" in processor.tokenizer.decode(later.input_ids[0])
    assert text.count("<|vision_start|>") == 2 and "<|vision_end|><|vision_end|>" not in text
    assert count_tokens(start)["text"] != count_tokens(encode(processor, clips, ["video"], MediaOptions(nframes=2)))["text"]
    # the prompt fits: the timestamps are counted before the processor runs
    fitted = encode(processor, clips, ["video"], MediaOptions(nframes=4), max_prompt_length=start.length)
    assert fitted.length == start.length
    with pytest.raises(Exception, match="too long"):
        encode(processor, clips, ["video"], MediaOptions(nframes=4), max_prompt_length=count_tokens(start)["text"] + 1,
               fit="reject")


VIDEOS = [(8, 2.0), (16, 2.0), (16, 1.0), (12, 3.0), (32, 0.5)]  # (frames, sampled fps)


@pytest.mark.parametrize("name", ALL)
def test_positions_follow_the_original_rule(family_model, name):
    """Videos of several lengths and frame rates, after and before text and images: positions equal
    the independent implementation of the original rule, batched and left-padded."""
    model, processor = family_model(name)
    prompts = [make_prompt(processor, ["video", "image"], frames=t, fps=fps, seed=i) for i, (t, fps) in enumerate(VIDEOS)]
    prompts.append(make_prompt(processor, ["image", "video", "image"], frames=8, fps=2.0))
    batch = collate_prompts(prompts, processor.tokenizer.pad_token_id, 1)
    positions, next_pos = rope_positions(model, batch)  # [3, B, P], [B]
    for b, p in enumerate(prompts):
        expected = prompt_positions(model, p)  # [3, P_b]
        assert torch.equal(positions[:, b, -p.length:], expected), b
        assert (positions[:, b, : batch.input_ids.shape[1] - p.length] == 0).all()
        assert int(next_pos[b]) == int(expected.max()) + 1


@pytest.mark.parametrize("name", ALL)
def test_where_transformers_positions_differ(family_model, name):
    """transformers 5.24's `get_rope_index` continues text after a vision block at start + max(h, w):
    the same as the original rule for images and Qwen3's one-frame blocks, but for a Qwen2-VL /
    Qwen2.5-VL video whose temporal extent exceeds its height and width, the text after it starts
    inside the clip's temporal positions."""
    model, processor = family_model(name)
    for kinds, frames in ((["image", "image"], 8), (["video"], 16)):
        p = make_prompt(processor, kinds, frames=frames, fps=2.0)
        ours = prompt_positions(model, p)
        theirs, _ = model.model.get_rope_index(p.input_ids, p.mm_token_type_ids, p.vision.image_grid_thw,
                                               p.vision.video_grid_thw, second_per_grid_ts=p.vision.second_per_grid_ts,
                                               attention_mask=torch.ones_like(p.input_ids))
        differs = kinds == ["video"] and FAMILIES[name].video_time != "timestamps"
        assert torch.equal(ours, theirs[:, 0]) != differs, kinds
    if FAMILIES[name].video_time == "seconds":  # 16 frames at 2 fps: 8 temporal patches, 1 s each, 2 tokens / s
        after = int((p.mm_token_type_ids[0] == 2).nonzero().max()) + 1  # <|vision_end|>
        clip_end = int(ours[0, after - 1])
        # the clip starts at s, its times reach s + 14 (7 s * 2); transformers puts the next token at s + 2
        assert ours[:, after].tolist() == [clip_end + 1] * 3 and clip_end - int(theirs[0, 0, after]) == 12


def test_original_positions_by_hand():
    """The reference rule itself, on a hand-made prompt: text, a 2 x (4 x 4) video at 1 s per grid and
    2 tokens per second (merge 2), text."""
    cfg = type("C", (), {"vision_config": type("V", (), {"spatial_merge_size": 2, "tokens_per_second": 2}),
                         "image_token_id": 9, "video_token_id": 8})
    ids = torch.tensor([1, 2, 3] + [8] * 8 + [4, 5])
    pos = original_positions(cfg, "seconds", ids, None, torch.tensor([[2, 4, 4]]), torch.tensor([1.0]))
    assert pos[:, :3].tolist() == [[0, 1, 2]] * 3
    assert pos[0, 3:11].tolist() == [3] * 4 + [5] * 4 and pos[1, 3:11].tolist() == [3, 3, 4, 4] * 2
    assert pos[:, 11:].tolist() == [[6, 7]] * 3  # after the clip's largest position, 5


# ----------------------------------------------------------------------------------------------
# LoRA targets, MoE


@pytest.mark.parametrize("name", ALL)
def test_lora_targets_exist_in_each_family(family_model, name):
    import copy

    from mmgrpo.models.lora import apply_lora

    model, _ = family_model(name)
    family = FAMILIES[name]
    peft_model = apply_lora(copy.deepcopy(model), LoraConfig(r=2, dropout=0.0), train_vision=False)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == set(family.lora_targets)
    assert not any("visual" in n for n, _ in peft_model.named_parameters() if "lora_" in n)
    # a trained tower (model.freeze_vision=false): every linear of the vision blocks and the merger
    # (Qwen3-VL's deepstack mergers too), the language model's targets unchanged
    with_vision = apply_lora(copy.deepcopy(model), LoraConfig(r=2, dropout=0.0), train_vision=True)
    vision = {n.removeprefix("base_model.model.").split(".lora_A")[0] for n, _ in with_vision.named_parameters()
              if "lora_A" in n and "visual" in n}
    assert vision == {n for n, m in model.named_modules() if "visual" in n and isinstance(m, torch.nn.Linear)}
    assert any("merger" in n for n in vision)
    assert {n for n, _ in with_vision.named_parameters() if "lora_A" in n and "visual" not in n} == {
        n for n, _ in peft_model.named_parameters() if "lora_A" in n}
    if family.moe:
        with_experts = apply_lora(copy.deepcopy(model), LoraConfig(r=2, dropout=0.0, experts=True), train_vision=False)
        wrapped = {n for n, m in with_experts.named_modules() if type(m).__name__ == "ParamWrapper"}
        assert wrapped and all("mlp.experts" in n for n in wrapped)
        assert not any(type(m).__name__ == "ParamWrapper" for m in peft_model.modules())
    else:
        with pytest.raises(ValueError, match="not a mixture-of-experts"):
            apply_lora(copy.deepcopy(model), LoraConfig(r=2, dropout=0.0, experts=True), train_vision=False)
    with pytest.raises(ValueError, match=r"\['qkv_proj'\] match no linear layer"):
        apply_lora(copy.deepcopy(model), LoraConfig(r=2, target_modules=("q_proj", "qkv_proj")), train_vision=False)


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.moe])
def test_router_loss_of_moe_families(family_model, name):
    """The load-balancing loss over the routers of a log-prob forward: positive, with gradients to
    the router weights; a dense model refuses it."""
    import copy

    from mmgrpo.models.logprobs import batch_logprobs
    from mmgrpo.models.moe import routing

    model, processor = family_model(name)
    model = copy.deepcopy(model).train()
    prompt = make_prompt(processor, ["video", "image"])
    ids = torch.randint(3, 250, (2, 4), generator=torch.Generator().manual_seed(0))
    with routing(model) as routed:
        batch_logprobs(model, [prompt], [ids], [torch.ones_like(ids)], "shared", 1.0, processor.tokenizer.pad_token_id)
    layers = model.config.get_text_config().num_hidden_layers
    assert len(routed.logits) % layers == 0 and routed.logits[0].shape[-1] == model.config.get_text_config().num_experts
    aux = routed.loss()
    assert float(aux.detach()) > 0
    aux.backward()
    router = [p for n, p in model.named_parameters() if n.endswith(FAMILIES[name].router + ".weight")]
    assert router and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in router)
    dense, _ = family_model("qwen3_vl")
    with pytest.raises(ValueError, match="no experts"):
        with routing(dense):
            pass


def test_expert_lora_merges_and_verifies(family_dir, tmp_path, capsys):
    """LoRA on fused MoE experts (PEFT ParamWrapper) merges into the expert weights: the export loads
    with the family's class in a fresh process and its logits equal base + adapter."""
    from transformers import AutoModelForImageTextToText

    from mmgrpo.models.export import merge_main
    from mmgrpo.models.lora import apply_lora

    base = family_dir("qwen3_vl_moe")
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft_model = apply_lora(model, LoraConfig(r=2, alpha=4, dropout=0.0, experts=True), train_vision=False)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    adapter = tmp_path / "checkpoint-1"
    peft_model.save_pretrained(adapter)
    assert merge_main(["--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert "(Qwen3VLMoeForConditionalGeneration)" in out and "OK:" in out
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", dtype=torch.float32).state_dict()
    original = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32).state_dict()
    experts = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    assert not torch.equal(merged[experts], original[experts])  # the expert update is in the merged weights


def test_router_loss_reaches_the_training_step(family_dir, tmp_path):
    """model.router_aux_loss_coef adds the load-balancing loss to an RL step of a MoE model (logged
    as moe/aux_loss); a dense model refuses the setting at setup."""
    from mmgrpo.trainer.loop import train
    from tests.trainer_utils import reward_file, small_task, tiny_train_config

    task, rewards = small_task(tmp_path / "task"), reward_file(tmp_path)
    cfg = tiny_train_config(family_dir("qwen3_vl_moe"), task, tmp_path / "run", rewards, "max_steps=1",
                            "model.router_aux_loss_coef=0.01", "lora.enabled=false")
    train(cfg)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["moe/aux_loss"] > 0
    dense = tiny_train_config(family_dir("qwen3_vl"), task, tmp_path / "dense", rewards, "max_steps=1",
                              "model.router_aux_loss_coef=0.01")
    with pytest.raises(ValueError, match="Qwen3-VL has no experts"):
        train(dense)
