"""Multi-turn tool rollouts on the tiny model, asserted exactly: the shared-prefix log-prob forward
of a trajectory with a tool image equals a plain forward of the whole sequence, tool images reach
the vision tower, loss masks, token-in/token-out rollouts, caps and over-turn masking, a tool that
raises, hangs, or is called with malformed JSON."""
from __future__ import annotations

import copy
import time

import pytest
import torch

from mmgrpo.config import ToolsConfig, VisionConfig
from mmgrpo.models.generate import Sampling, generate_groups
from mmgrpo.models.layout import extended
from mmgrpo.models.logprobs import batch_logprobs
from mmgrpo.models.multiturn import TurnCaps, append_turn, generate_trajectories, group_tensors, start_trajectory
from mmgrpo.models.special import special_ids
from mmgrpo.models.tiny import TinySpec, build_tiny
from mmgrpo.processors.budget import Grid
from mmgrpo.processors.encode import PromptEncoder
from mmgrpo.processors.sample import Media, Sample
from mmgrpo.processors.toolturn import ToolTurnEncoder
from mmgrpo.tools.base import Tool
from mmgrpo.tools.builtin import BUILTIN_TOOLS
from mmgrpo.tools.env import ToolEnv
from mmgrpo.tools.registry import Toolbox
from tests.media import write_image

pytestmark = pytest.mark.usefixtures("one_thread")

CALL = '<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 0.5, 0.5], "relative": true}}</tool_call>'
TOOLS = ToolsConfig(enabled=True, names=("crop",), min_pixels=28 * 28, max_pixels=56 * 56, timeout_s=2.0)
VISION = VisionConfig(min_pixels=28 * 28, max_pixels=56 * 56, max_prompt_length=512)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny model with Qwen's tool tokens, a prompt about an image file, and its tool environment."""
    import numpy as np

    model, processor = build_tiny(TinySpec(tool_tokens=True))
    pixels = np.zeros((112, 112, 3), dtype=np.uint8)
    pixels[:40, :40] = (255, 0, 0)  # a red square in the top-left quarter
    path = write_image(tmp_path_factory.mktemp("img") / "red.png", pixels)
    sample = Sample(id="s0", prompt=[{"role": "user", "content": [{"type": "image"},
                                                                   {"type": "text", "text": "What colour?"}]}],
                    media=[Media("image", str(path))], answer="red", problem_type="free_text")
    prompt = PromptEncoder(processor, VISION).encode(sample)
    env = ToolEnv(Toolbox(dict(BUILTIN_TOOLS), ()), ToolTurnEncoder(processor, TOOLS), TOOLS, VISION, Grid.of(processor))
    return model, processor, sample, prompt, env


def tokens(processor, text: str) -> torch.Tensor:
    return torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"])  # [n]


def scripted(processor, env, sample, call: str, final: str):
    """A trajectory written by hand: a model turn with `call`, the real tool's answer (an image of
    the crop), and a final model turn ending with <|im_end|>."""
    tok = processor.tokenizer
    t = append_turn(start_trajectory("cpu"), tokens(processor, "<think>look</think>" + call), True, None, "t1")
    reply = env.respond_for([sample])(0, 0, call)
    t = append_turn(t, reply.input_ids, False, reply, None)
    end = torch.tensor([tok.convert_tokens_to_ids("<|im_end|>")])
    return append_turn(t, torch.cat([tokens(processor, final), end]), True, None, final)


def plain_logprobs(model, prompt, t):
    """log pi(token) of every completion token from one plain HF forward of [prompt | trajectory]
    with all its images: the model computes its own positions (transformers' rule, which agrees
    with the family rule for images)."""
    full = extended(prompt, t.ids, t.mm_token_type_ids, t.pixel_values, t.image_grid_thw)
    out = model(input_ids=full.input_ids, attention_mask=torch.ones_like(full.input_ids),
                mm_token_type_ids=full.mm_token_type_ids, **full.vision.as_kwargs())
    logits = out.logits[0, prompt.length - 1 : -1].double()  # [C, V]
    return logits.log_softmax(-1).gather(1, t.ids.view(-1, 1)).squeeze(1)  # [C]


def test_shared_forward_equals_plain_forward_of_whole_trajectory(setup):
    model, processor, sample, prompt, env = setup
    with_tool = scripted(processor, env, sample, CALL, "<answer>red</answer>")
    text_only = append_turn(start_trajectory("cpu"), tokens(processor, "<answer>blue</answer>"), True, None, "x")
    assert with_tool.image_grid_thw is not None and int((with_tool.mm_token_type_ids == 1).sum()) > 0
    pad = processor.tokenizer.pad_token_id
    ids, mask, media = group_tensors([with_tool, text_only], pad, mask_capped=False)  # [2, C]
    with torch.no_grad():
        shared = batch_logprobs(model, [prompt], [ids], [mask], "shared", 1.0, pad, media=[media])[0]  # [2, C]
        plain_rows = batch_logprobs(model, [prompt], [ids], [mask], "repeat", 1.0, pad, media=[media])[0]  # [2, C]
        reference = [plain_logprobs(model, prompt, t) for t in (with_tool, text_only)]
    for g, ref in enumerate(reference):
        n = ref.shape[0]
        expected = ref * mask[g, :n]  # tool tokens: mask 0
        torch.testing.assert_close(shared[g, :n].double(), expected, atol=2e-5, rtol=0)
        torch.testing.assert_close(plain_rows[g, :n].double(), expected, atol=2e-5, rtol=0)
        assert shared[g, n:].abs().sum() == 0
    assert bool((shared[0][with_tool.model_mask == 0] == 0).all())  # tool tokens carry no log-prob


def test_loss_mask_zero_on_tool_tokens_and_over_turn_masking(setup):
    model, processor, sample, prompt, env = setup
    t = scripted(processor, env, sample, CALL, "<answer>red</answer>")
    tool_cols = (t.model_mask == 0).nonzero().squeeze(1)
    capped = dataclasses_replace(t, ending="turns")
    ids, mask, media = group_tensors([t, capped], processor.tokenizer.pad_token_id, mask_capped=False)
    assert mask[0].tolist() == t.model_mask.tolist() and int(mask[0, tool_cols].sum()) == 0
    assert int(mask[0].sum()) == t.length - t.answers[0].length  # model tokens only: the loss normaliser
    assert bool((media.mm_token_type_ids[0, tool_cols] == 1).any())  # the tool image is inside the tool turn
    _, masked, _ = group_tensors([t, capped], processor.tokenizer.pad_token_id, mask_capped=True)
    assert masked[0].tolist() == mask[0].tolist() and int(masked[1].sum()) == 0  # Mini-o3: capped -> no loss


def dataclasses_replace(t, **changes):
    import dataclasses

    return dataclasses.replace(t, **changes)


def test_tool_images_reach_the_vision_tower(setup):
    model, processor, sample, prompt, env = setup
    t = scripted(processor, env, sample, CALL, "<answer>red</answer>")
    seen = []
    hook = model.model.visual.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get(
        "grid_thw", args[1] if len(args) > 1 else None).clone()), with_kwargs=True)
    try:
        ids, mask, media = group_tensors([t, t], processor.tokenizer.pad_token_id, mask_capped=False)
        with torch.no_grad():
            batch_logprobs(model, [prompt], [ids], [mask], "shared", 1.0, processor.tokenizer.pad_token_id, media=[media])
    finally:
        hook.remove()
    assert len(seen) == 1  # one tower call: the prompt's image once, each completion's tool image
    expected = torch.cat([prompt.vision.image_grid_thw, t.image_grid_thw, t.image_grid_thw])  # [3, 3]
    assert seen[0].tolist() == expected.tolist()
    # and the features matter: another tool image changes the completion's log-probs after it
    other = dataclasses_replace(t, pixel_values=torch.zeros_like(t.pixel_values))
    ids2, mask2, media2 = group_tensors([other, other], processor.tokenizer.pad_token_id, mask_capped=False)
    with torch.no_grad():
        a = batch_logprobs(model, [prompt], [ids], [mask], "shared", 1.0, 0, media=[media])[0]
        b = batch_logprobs(model, [prompt], [ids2], [mask2], "shared", 1.0, 0, media=[media2])[0]
    after = t.image_ends[0]
    assert torch.equal(a[:, :after], b[:, :after]) and not torch.allclose(a[:, after:], b[:, after:])


def memorized(model, processor, prompt, trajectory, steps: int = 80):
    """A copy of the model trained to write `trajectory` (its model tokens) after `prompt`, through
    the multi-turn log-prob forward itself: the greedy rollout then reproduces it."""
    model = copy.deepcopy(model).train()
    pad = processor.tokenizer.pad_token_id
    ids, mask, media = group_tensors([trajectory], pad, mask_capped=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logp = batch_logprobs(model, [prompt], [ids], [mask], "shared", 1.0, pad, media=[media])[0]  # [1, C]
        loss = -logp.sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.02, f"the tiny model did not learn the script (loss {float(loss.detach()):.3f})"
    return model.eval()


@pytest.fixture(scope="module")
def trained(setup):
    model, processor, sample, prompt, env = setup
    script = scripted(processor, env, sample, CALL, "<answer>red</answer>")
    return memorized(model, processor, prompt, script), script


def rollout(model, processor, prompt, respond, max_turns=3, max_total_tokens=400, G=2, max_new_tokens=96):
    special = special_ids(model, processor.tokenizer)
    caps = TurnCaps((max_turns,), max_total_tokens, processor.tokenizer.convert_tokens_to_ids("</tool_call>"))
    return generate_trajectories(model, processor.tokenizer, special, [prompt], G, Sampling(max_new_tokens, 0.0, 1.0, 0),
                                 [7], caps, respond)[0]


def test_rollout_token_in_token_out_with_tool_images(setup, trained):
    _, processor, sample, prompt, env = setup
    model, script = trained
    out = rollout(model, processor, prompt, env.respond_for([sample]))
    for t in out:
        assert t.ending == "eos" and len(t.turns) == 2 and len(t.answers) == 1
        assert t.ids.tolist() == script.ids.tolist()  # the ids, never re-rendered from text
        assert t.model_mask.tolist() == script.model_mask.tolist()
        assert torch.equal(t.pixel_values, script.pixel_values) and t.image_grid_thw.tolist() == script.image_grid_thw.tolist()
        assert not t.answers[0].error and "<tool_call>" in t.turns[0] and t.turns[1] == "<answer>red</answer>"
    # greedy tokens after the tool image are the argmax of a plain forward of the whole sequence
    t = out[0]
    full = extended(prompt, t.ids, t.mm_token_type_ids, t.pixel_values, t.image_grid_thw)
    with torch.no_grad():
        logits = model(input_ids=full.input_ids, mm_token_type_ids=full.mm_token_type_ids,
                       **full.vision.as_kwargs()).logits[0, prompt.length - 1 : -1]  # [C, V]
    banned = torch.tensor(special_ids(model, processor.tokenizer).banned)
    greedy = logits.index_fill(-1, banned, float("-inf")).argmax(-1)  # [C]
    model_cols = t.model_mask.bool()
    assert greedy[model_cols].tolist() == t.ids[model_cols].tolist()


def test_turn_cap_and_token_cap(setup, trained):
    _, processor, sample, prompt, env = setup
    model, script = trained
    first_turn = int(script.model_mask.tolist().index(0))  # tokens of the first model turn
    one_turn = rollout(model, processor, prompt, env.respond_for([sample]), max_turns=1)
    assert all(t.ending == "turns" and t.capped and t.length == first_turn and not t.answers for t in one_turn)
    tight = rollout(model, processor, prompt, env.respond_for([sample]), max_total_tokens=first_turn + 5)
    assert all(t.ending == "tokens" and t.capped and t.length == first_turn for t in tight)  # the tool turn would not fit
    short = rollout(model, processor, prompt, env.respond_for([sample]), max_total_tokens=first_turn - 3)
    assert all(t.ending == "tokens" and t.length == first_turn - 3 for t in short)


def env_with(env, fn) -> ToolEnv:
    crop = BUILTIN_TOOLS["crop"]
    return ToolEnv(Toolbox({"crop": Tool("crop", crop.description, crop.parameters, fn)}, ()), env.encoder,
                   env.cfg, env.vision, env.grid)


def test_a_tool_that_raises_or_hangs_answers_with_an_error(setup, trained):
    _, processor, sample, prompt, env = setup
    model, _ = trained

    def boom(context, **arguments):
        raise RuntimeError("disk on fire")

    def hang(context, **arguments):
        time.sleep(60)

    for fn, message in ((boom, "crop raised RuntimeError: disk on fire"), (hang, "crop did not answer within 2 s")):
        t0 = time.perf_counter()
        out = rollout(model, processor, prompt, env_with(env, fn).respond_for([sample]), max_total_tokens=200)
        assert time.perf_counter() - t0 < 30
        for t in out:
            assert t.answers and t.answers[0].error and t.answers[0].answer == f"Error: {message}"
            assert t.answers[0].pixel_values is None and len(t.turns) >= 2  # the model went on after the error
            assert message in processor.tokenizer.decode(t.answers[0].input_ids)


def test_malformed_calls_answer_with_errors(setup):
    _, processor, sample, prompt, env = setup
    respond = env.respond_for([sample])
    cases = {'<tool_call>{"name": crop}</tool_call>': "not valid JSON",
             '<tool_call>["crop"]</tool_call>': "must be a JSON object",
             '<tool_call>{"name": "paint", "arguments": {}}</tool_call>': "unknown tool 'paint'",
             '<tool_call>{"name": "crop", "arguments": {"bogus": 1}}</tool_call>': "unexpected keyword",
             '<tool_call>{"name": "crop", "arguments": {"box": [5, 5, 5, 5]}}</tool_call>': "is empty",
             'no opening tag</tool_call>': "a tool call is <tool_call>"}
    for text, expected in cases.items():
        turn = respond(0, 0, text)
        assert turn.error and expected in turn.answer, (text, turn.answer)
        assert turn.pixel_values is None and expected in processor.tokenizer.decode(turn.input_ids)


def test_without_tool_calls_the_rollout_is_generate_groups(setup):
    model, processor, sample, prompt, env = setup
    special = special_ids(model, processor.tokenizer)
    sampling = Sampling(12, 1.0, 1.0, 0)
    stop = processor.tokenizer.convert_tokens_to_ids("</tool_call>")

    def never(b, g, text):
        raise AssertionError("no tool call expected")

    prompts = [prompt, prompt]
    groups = generate_groups(model, processor.tokenizer, special, prompts, 4, sampling,
                             [torch.Generator().manual_seed(s) for s in (3, 4)], "shared")
    trajectories = generate_trajectories(model, processor.tokenizer, special, prompts, 4, sampling, [3, 4],
                                         TurnCaps((2, 2), 64, stop), never)
    for group, trajs in zip(groups, trajectories):
        ids, mask, _ = group_tensors(trajs, special.pad, mask_capped=False)
        assert ids.tolist() == group.completion_ids.tolist() and mask.tolist() == group.completion_mask.tolist()
        assert [t.ending != "eos" for t in trajs] == group.truncated.tolist()
