"""The run's tools by name: built-ins (tools/builtin.py), user functions named like reward functions
(`path/to/file.py:function` or `package.module:function`), and every tool of the configured MCP
servers. A user function is called with the model's arguments only; its JSON schema comes from its
type hints and Google-style docstring (transformers' `get_json_schema`, as TRL's `tools=` does).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers.utils import get_json_schema

from mmgrpo.config import ToolsConfig
from mmgrpo.tools.base import Tool
from mmgrpo.tools.builtin import BUILTIN_TOOLS
from mmgrpo.tools.mcp import MCPServer


def load_function(spec: str) -> Callable:
    """`file.py:function` (a path) or `module:function` (importable)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"tool {spec!r}: expected a built-in {sorted(BUILTIN_TOOLS)}, 'file.py:function' "
                         "or 'module:function'")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"tool {spec!r}: file {where} not found")
        module_spec = importlib.util.spec_from_file_location(f"mmgrpo_user_tool_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"tool {spec!r}: {where} has no function {name!r}")
    return fn


def user_tool(spec: str) -> Tool:
    fn = load_function(spec)
    schema = get_json_schema(fn)["function"]
    return Tool(schema["name"], schema.get("description", ""), schema["parameters"],
                lambda context, **arguments: fn(**arguments))


@dataclass(frozen=True)
class Toolbox:
    """The run's tools and the MCP servers behind some of them (closed with the toolbox)."""

    tools: dict[str, Tool]
    servers: tuple[MCPServer, ...]

    def subset(self, names: tuple[str, ...] | None) -> dict[str, Tool]:
        """The tools a sample allows (its `tools` column), all of them for None."""
        if names is None:
            return self.tools
        unknown = sorted(set(names) - set(self.tools))
        if unknown:
            raise ValueError(f"the sample names tools {unknown} that the run does not have ({sorted(self.tools)})")
        return {n: self.tools[n] for n in names}

    def close(self) -> None:
        for server in self.servers:
            server.close()


def load_toolbox(cfg: ToolsConfig) -> Toolbox:
    tools: dict[str, Tool] = {}
    servers: list[MCPServer] = []

    def add(tool: Tool, source: str) -> None:
        if tool.name in tools:
            raise ValueError(f"two tools are named {tool.name!r} (the second from {source})")
        tools[tool.name] = tool

    for spec in cfg.names:
        add(BUILTIN_TOOLS[spec] if spec in BUILTIN_TOOLS else user_tool(spec), spec)
    try:
        for command in cfg.mcp_servers:
            servers.append(MCPServer(command, cfg.timeout_s))
            for tool in servers[-1].tools():
                add(tool, f"MCP server {command!r}")
    except BaseException:
        for server in servers:
            server.close()
        raise
    return Toolbox(tools, tuple(servers))
