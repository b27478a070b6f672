"""TRL's and ms-swift's multi-turn tool conversations load unchanged: the calls become the Qwen
`<tool_call>` convention inside assistant turns, answers become tool turns, and the row's `tools`
and `max_turns` columns reach the tool environment."""
from __future__ import annotations

import json

import numpy as np

from mmgrpo.config import ToolsConfig
from mmgrpo.processors.formats import load_samples
from mmgrpo.tools.env import sample_max_turns, sample_tool_names
from tests.media import write_image

CALL = {"name": "zoom", "arguments": {"x": 0.5, "y": 0.5}}
SCHEMA = {"type": "function", "function": {"name": "zoom", "description": "zoom in", "parameters": {}}}


def load_one(tmp_path, row: dict):
    write_image(tmp_path / "a.png", np.zeros((56, 56, 3), dtype=np.uint8))
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (sample,) = load_samples(str(path)).samples
    return sample


def expected_prompt():
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the middle?"}]},
            {"role": "assistant", "content": "Let me look.\n<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>"},
            {"role": "tool", "content": "a red dot"},
            {"role": "user", "content": [{"type": "text", "text": "And its colour?"}]}]


def test_trl_tool_calls_load(tmp_path):
    row = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the middle?"}]},
                      {"role": "assistant", "content": "Let me look.",
                       "tool_calls": [{"type": "function", "function": {"name": "zoom",
                                                                        "arguments": json.dumps(CALL["arguments"])}}]},
                      {"role": "tool", "name": "zoom", "content": "a red dot"},
                      {"role": "user", "content": "And its colour?"}],
           "images": ["a.png"], "answer": "red", "tools": [SCHEMA], "max_turns": 2}
    sample = load_one(tmp_path, row)
    assert sample.prompt == expected_prompt() and sample.answer == "red" and len(sample.media) == 1
    assert sample_tool_names(sample) == ("zoom",) and sample_max_turns(sample, ToolsConfig()) == 2


def test_swift_agent_format_loads(tmp_path):
    row = {"messages": [{"role": "user", "content": "<image>What is in the middle?"},
                        {"role": "assistant", "content": "Let me look."},
                        {"role": "tool_call", "content": json.dumps(CALL)},
                        {"role": "tool_response", "content": "a red dot"},
                        {"role": "user", "content": "And its colour?"},
                        {"role": "assistant", "content": "<answer>red</answer>"}],
           "images": ["a.png"], "tools": json.dumps([SCHEMA])}
    sample = load_one(tmp_path, row)
    assert sample.prompt == expected_prompt() and sample.answer == "red"
    assert sample_tool_names(sample) == ("zoom",)
