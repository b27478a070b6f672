"""Multi-turn tool conversations in the prompt, as TRL and ms-swift write them, normalised to the
Qwen convention the chat templates render (an assistant turn holding `<tool_call>{json}</tool_call>`,
then a `tool` turn with the answer):

- TRL / OpenAI: an assistant message with `tool_calls: [{"type": "function", "function": {"name",
  "arguments"}}]` (content empty or None), then `{"role": "tool", "content": ...}` messages;
- ms-swift (agent format): `{"role": "tool_call", "content": "<json>"}` and
  `{"role": "tool_response", "content": ...}` messages.

The row's `tools` column (function schemas) stays a column: tools/env.sample_tool_names reads it.
"""
from __future__ import annotations

import json
from typing import Any


def _call_text(name: Any, arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # kept as the string it is: the model saw it that way
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def _append_to_assistant(out: list[dict], text: str) -> None:
    """The call joins the assistant message just before it, or starts one."""
    if out and out[-1].get("role") == "assistant" and isinstance(out[-1].get("content"), str):
        previous = out[-1]["content"]
        out[-1] = {**out[-1], "content": (previous + "\n" if previous else "") + text}
    else:
        out.append({"role": "assistant", "content": text})


def tool_messages(messages: list) -> list:
    """Messages with TRL `tool_calls` and ms-swift `tool_call` / `tool_response` turns rewritten;
    anything else unchanged (and left for the format's own checks)."""
    out: list = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            continue
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            _append_to_assistant(out, m.get("content") or "")
            for call in m["tool_calls"]:
                fn = call.get("function", call) if isinstance(call, dict) else {}
                _append_to_assistant(out, _call_text(fn.get("name"), fn.get("arguments", {})))
        elif role == "tool_call":
            content = m.get("content")
            try:
                call = json.loads(content) if isinstance(content, str) else content
            except json.JSONDecodeError:
                call = None
            if isinstance(call, dict):
                _append_to_assistant(out, _call_text(call.get("name"), call.get("arguments", {})))
            else:  # not JSON: as written
                _append_to_assistant(out, f"<tool_call>\n{content}\n</tool_call>")
        elif role in ("tool_response", "tool"):
            content = m.get("content")
            out.append({"role": "tool", "content": content if isinstance(content, (str, list)) else json.dumps(content)})
        else:
            out.append(m)
    return out
