"""Tools a policy can call in the middle of a rollout: what a tool is, what it answers, and how a
call written by the model is parsed and run.

A tool is a plain function with a JSON-schema description (name, description, parameters), the
form chat templates and TRL's `tools=` take. It returns text, images (PIL) or both (`ToolAnswer`).
Calls follow the Qwen convention, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the
assistant turn (Qwen2.5 / Qwen3 chat templates). Anything that goes wrong (malformed JSON, an
unknown tool, bad arguments, an exception, a time-out) comes back to the model as the tool's
answer with `error=True`, never as a crash: the policy learns from its own mistakes (ARTIST §3.2).

A call runs in a daemon thread and is waited for at most `timeout_s`; Python cannot kill a thread,
so a call that hangs is left running in the background (as reward functions are, trainer/rewards.py).
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ERROR_PREFIX = "Error: "  # what an error answer starts with (the model reads it; rewards may check it)
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ToolAnswer:
    """What a tool returned, as the model will read it."""

    text: str
    images: tuple[Image.Image, ...]  # shown to the model in the tool turn, in order
    error: bool  # the call failed (the text says why)


@dataclass(frozen=True)
class ToolCall:
    """A call parsed from a model turn; `problem` set when it could not be parsed."""

    name: str
    arguments: dict
    problem: str | None  # None = well-formed


@dataclass(frozen=True)
class Tool:
    """`fn(context, **arguments)`: `context` is what the trajectory's sample lets a tool see (the
    prompt's media, tools/builtin.py); user and MCP tools ignore it."""

    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable[..., Any]

    def schema(self) -> dict:
        """The OpenAI / chat-template form of the tool (what `apply_chat_template(tools=...)` takes)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def parse_call(turn_text: str) -> ToolCall | None:
    """The last `<tool_call>...</tool_call>` of a model turn (generation stops at the closing tag,
    so a turn holds at most one), or None when the turn calls no tool."""
    found = _CALL.findall(turn_text)
    if not found:
        return None
    try:
        call = json.loads(found[-1].strip())
    except json.JSONDecodeError as e:
        return ToolCall("", {}, f"the tool call is not valid JSON ({e.msg} at character {e.pos})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolCall("", {}, 'a tool call must be a JSON object {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string (OpenAI style)
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(call["name"], {}, "the arguments are a string that is not valid JSON")
    if not isinstance(arguments, dict):
        return ToolCall(call["name"], {}, "the arguments must be a JSON object")
    return ToolCall(call["name"], arguments, None)


def as_answer(value: Any) -> ToolAnswer:
    """A tool's return value as an answer: text, an image, a list of images, (text, images), or
    anything else as its JSON (or str) form."""
    if isinstance(value, ToolAnswer):
        return value
    if isinstance(value, Image.Image):
        return ToolAnswer("", (value,), False)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Image.Image) for v in value):
        return ToolAnswer("", tuple(value), False)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        images = (value[1],) if isinstance(value[1], Image.Image) else tuple(value[1])
        return ToolAnswer(value[0], images, False)
    if isinstance(value, str):
        return ToolAnswer(value, (), False)
    try:
        return ToolAnswer(json.dumps(value), (), False)
    except (TypeError, ValueError):
        return ToolAnswer(str(value), (), False)


def failed(message: str) -> ToolAnswer:
    return ToolAnswer(f"{ERROR_PREFIX}{message}", (), True)


def run_call(call: ToolCall, tools: dict[str, Tool], context: Any, timeout_s: float) -> ToolAnswer:
    """Run a parsed call with a time limit; every failure is an error answer."""
    if call.problem is not None:
        return failed(call.problem)
    tool = tools.get(call.name)
    if tool is None:
        return failed(f"unknown tool {call.name!r}; the tools are {sorted(tools)}")
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = as_answer(tool.fn(context, **call.arguments))
        except TypeError as e:  # wrong or missing arguments, mostly
            box["value"] = failed(f"{call.name}: {e}")
        except Exception as e:  # noqa: BLE001 - a tool's failure is the model's information
            box["value"] = failed(f"{call.name} raised {type(e).__name__}: {e}")

    thread = threading.Thread(target=target, name=f"tool-{call.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return failed(f"{call.name} did not answer within {timeout_s:g} s")
    return box["value"]
