"""Tools: parsing Qwen-style calls, the built-ins on real media files (crop / zoom on an image,
frames re-decoding a video window, the calculator), user tools from a file or a module, tools of a
real MCP server process, and what a sample's columns say about its tools."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mmgrpo.config import ToolsConfig, VisionConfig
from mmgrpo.processors.budget import Grid
from mmgrpo.processors.sample import Media, Sample
from mmgrpo.tools.base import ToolCall, parse_call, run_call
from mmgrpo.tools.builtin import BUILTIN_TOOLS, ToolContext, calculator
from mmgrpo.tools.env import sample_max_turns, sample_tool_names
from mmgrpo.tools.registry import load_toolbox
from tests.media import counting_frames, write_image, write_video

CFG = ToolsConfig(enabled=True, frames_fps=4.0, frames_max=8, max_pixels=112 * 112)
SERVER = Path(__file__).with_name("mcp_server.py")


def sample_with(*media: Media, **columns) -> Sample:
    return Sample(id="s", prompt=[], media=list(media), answer=None, problem_type="free_text", columns=columns)


def call(name: str, ctx, timeout_s: float = 5.0, **arguments):
    return run_call(ToolCall(name, arguments, None), BUILTIN_TOOLS, ctx, timeout_s)


def test_parse_calls():
    ok = parse_call('I will look. <tool_call>\n{"name": "zoom", "arguments": {"x": 0.5, "y": 0.2}}\n</tool_call>')
    assert ok == ToolCall("zoom", {"x": 0.5, "y": 0.2}, None)
    assert parse_call("<answer>A</answer>") is None
    as_string = parse_call('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2+2\\"}"}</tool_call>')
    assert as_string == ToolCall("calculator", {"expression": "2+2"}, None)
    assert "not valid JSON" in parse_call("<tool_call>{'name': 'zoom'}</tool_call>").problem
    assert "JSON object" in parse_call('<tool_call>{"name": "zoom", "arguments": [1]}</tool_call>').problem


def test_calculator_is_safe():
    assert calculator(None, "2 * (3 + 4) - 10 / 4") == "11.5"
    assert calculator(None, "2 ** 10 // 3 % 7") == "5"  # 1024 // 3 = 341, 341 % 7 = 5
    for bad in ("__import__('os')", "x + 1", "9 ** 9 ** 9", "[1, 2]"):
        with pytest.raises(ValueError):
            calculator(None, bad)
    answer = call("calculator", None, expression="open('/etc/passwd')")
    assert answer.error and "not Call" in answer.text


def test_crop_and_zoom_read_the_source_image(tmp_path):
    pixels = np.zeros((400, 600, 3), dtype=np.uint8)
    pixels[300:340, 500:560] = (0, 255, 0)  # a small green patch near the bottom-right corner
    ctx = ToolContext(sample_with(Media("image", str(write_image(tmp_path / "big.png", pixels)))),
                      VisionConfig(), CFG, Grid())
    crop = call("crop", ctx, box=[500, 300, 560, 340])
    assert not crop.error and crop.images[0].size == (60, 40)
    assert np.asarray(crop.images[0])[20, 30].tolist() == [0, 255, 0]
    rel = call("crop", ctx, box=[0.5, 0.5, 1.0, 1.0], relative=True).images[0]
    assert rel.size == (300, 200) and np.asarray(rel)[110, 230].tolist() == [0, 255, 0]
    zoomed = call("zoom", ctx, x=0.9, y=0.8, factor=4).images[0]
    assert zoomed.size == (150, 100) and (np.asarray(zoomed) == [0, 255, 0]).all(-1).any()
    assert "out of range" in call("crop", ctx, box=[0, 0, 1, 1], media=3).text


def test_frames_redecodes_a_window_of_the_video(tmp_path):
    path = write_video(tmp_path / "v.mp4", counting_frames(40, 56, 84), fps=8)  # 5 s
    ctx = ToolContext(sample_with(Media("video", str(path))), VisionConfig(fps=1.0), CFG, Grid())
    answer = call("frames", ctx, start=1.0, end=2.0)
    assert not answer.error and len(answer.images) == 4  # 1 s at tools.frames_fps = 4
    bars = [int((np.asarray(im)[28, :, 0] > 160).sum()) for im in answer.images]  # frame i's bar: (i+1)*84//41
    assert bars == sorted(bars) and len(set(bars)) == 4  # four distinct frames, in order
    assert 84 * 9 // 41 - 2 <= bars[0] and bars[-1] <= 84 * 17 // 41 + 2  # within source frames 8..16 (1 s..2 s)
    frame = call("crop", ctx, box=[0, 0, 1, 1], relative=True, time=4.5)
    assert not frame.error and frame.images[0].size == (84, 56)
    assert "start < end" in call("frames", ctx, start=3.0, end=1.0).text
    assert "not a video" in run_call(ToolCall("frames", {"start": 0, "end": 1}, None), BUILTIN_TOOLS, ToolContext(
        sample_with(Media("image", str(write_image(tmp_path / "i.png", np.zeros((8, 8, 3), np.uint8))))),
        VisionConfig(), CFG, Grid()), 5.0).text


USER_TOOLS = '''
def count_letters(word: str, letter: str) -> int:
    """Count a letter in a word.

    Args:
        word: the word to search
        letter: the letter to count
    """
    return word.count(letter)
'''


def test_user_tools_from_a_file_and_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_tools.py").write_text(USER_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    box = load_toolbox(ToolsConfig(names=("calculator", f"{tmp_path / 'my_tools.py'}:count_letters")))
    tool = box.tools["count_letters"]
    assert tool.parameters["required"] == ["word", "letter"] and tool.description == "Count a letter in a word."
    assert run_call(ToolCall("count_letters", {"word": "banana", "letter": "a"}, None), box.tools, None, 5).text == "3"
    assert "count_letters" in load_toolbox(ToolsConfig(names=("my_tools:count_letters",))).tools
    with pytest.raises(ValueError, match="two tools are named"):
        load_toolbox(ToolsConfig(names=("my_tools:count_letters", f"{tmp_path / 'my_tools.py'}:count_letters")))
    with pytest.raises(ValueError, match="expected a built-in"):
        load_toolbox(ToolsConfig(names=("nonsense",)))


def test_mcp_tools_from_a_real_server_process():
    box = load_toolbox(ToolsConfig(names=("calculator",), mcp_servers=(f"{sys.executable} {SERVER}",), timeout_s=20))
    try:
        assert set(box.tools) == {"calculator", "add", "square", "fail"}
        assert box.tools["add"].parameters["required"] == ["a", "b"]
        run = lambda name, **a: run_call(ToolCall(name, a, None), box.tools, None, 20)  # noqa: E731
        assert run("add", a=2, b=40).text == "42"
        square = run("square", size=10).images[0]
        assert square.size == (64, 64) and square.getpixel((5, 5)) == (255, 0, 0) and square.getpixel((20, 20)) == (0, 0, 0)
        failed = run("fail", reason="out of paint")
        assert failed.error and "out of paint" in failed.text
        missing = run("add", a=2)
        assert missing.error and "b" in missing.text
        process_alive = box.servers[0]._loop.is_running()
    finally:
        box.close()
    assert process_alive and not box.servers[0]._loop.is_running()
    with pytest.raises(RuntimeError, match="could not start the MCP server"):
        load_toolbox(ToolsConfig(names=(), mcp_servers=(f"{sys.executable} -c pass",), timeout_s=10))


def test_a_sample_names_its_tools_and_max_turns():
    assert sample_tool_names(sample_with()) is None
    assert sample_tool_names(sample_with(tools=["crop", "zoom"])) == ("crop", "zoom")
    trl = [{"type": "function", "function": {"name": "crop", "parameters": {}}}, '{"name": "frames"}']
    assert sample_tool_names(sample_with(tools=trl)) == ("crop", "frames")
    assert sample_tool_names(sample_with(tools='["zoom"]')) == ("zoom",)
    assert sample_max_turns(sample_with(), CFG) == CFG.max_turns
    assert sample_max_turns(sample_with(max_turns=2), CFG) == 2
    assert sample_max_turns(sample_with(max_turns=99), CFG) == CFG.max_turns  # the run's cap bounds it
    with pytest.raises(ValueError, match="positive integer"):
        sample_max_turns(sample_with(max_turns=0), CFG)
