"""The tool environment of a rollout: a model turn's call is parsed, run on the trajectory's sample
and answered as a tool turn (models.multiturn calls `respond`). Also what a sample's own columns say
about its tools: `tools` (names, or TRL-style function schemas, which name them) and `max_turns`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from mmgrpo.config import ToolsConfig, VisionConfig
from mmgrpo.processors.budget import Grid
from mmgrpo.processors.sample import Sample
from mmgrpo.processors.toolturn import ToolTurn, ToolTurnEncoder
from mmgrpo.tools.base import CALL_CLOSE, CALL_OPEN, ToolCall, parse_call, run_call
from mmgrpo.tools.builtin import ToolContext
from mmgrpo.tools.registry import Toolbox


def sample_tool_names(sample: Sample) -> tuple[str, ...] | None:
    """The tools a sample allows (its `tools` column: names, TRL/OpenAI function schemas, or their
    JSON text), None when it has no such column (every tool of the run)."""
    raw = sample.columns.get("tools")
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = json.loads(raw) if raw.strip().startswith("[") else [raw]
    names = []
    for item in raw:
        if isinstance(item, str):
            item = json.loads(item) if item.strip().startswith("{") else item
        if isinstance(item, dict):
            item = item.get("function", item).get("name")
        if not isinstance(item, str):
            raise ValueError(f"sample {sample.id!r}: cannot read a tool name from {item!r}")
        names.append(item)
    return tuple(names)


def sample_max_turns(sample: Sample, cfg: ToolsConfig) -> int:
    """`tools.max_turns`, or the sample's `max_turns` column when it is lower (never higher: the
    run's cap bounds memory and time)."""
    raw = sample.columns.get("max_turns")
    if raw is None:
        return cfg.max_turns
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or int(raw) != raw or raw < 1:
        raise ValueError(f"sample {sample.id!r}: max_turns must be a positive integer, got {raw!r}")
    return min(int(raw), cfg.max_turns)


@dataclass(frozen=True)
class ToolEnv:
    toolbox: Toolbox
    encoder: ToolTurnEncoder
    cfg: ToolsConfig
    vision: VisionConfig
    grid: Grid

    def respond_for(self, samples: list[Sample]):
        """`respond(b, g, turn_text) -> ToolTurn` for the groups of `samples` (models.multiturn.Respond)."""
        allowed = [self.toolbox.subset(sample_tool_names(s)) for s in samples]

        def respond(b: int, g: int, text: str) -> ToolTurn:
            call = parse_call(text)
            if call is None:  # stopped at the closing tag without an opening one
                call = ToolCall("", {}, f"a tool call is {CALL_OPEN}{{\"name\": ..., \"arguments\": ...}}{CALL_CLOSE}")
            context = ToolContext(samples[b], self.vision, self.cfg, self.grid)
            answer = run_call(call, allowed[b], context, self.cfg.timeout_s)
            return self.encoder.encode(answer.text, answer.images, answer.error)

        return respond

    def schemas(self) -> list[dict]:
        """Every tool's schema (what a chat template's `tools=` takes)."""
        return [t.schema() for t in self.toolbox.tools.values()]
