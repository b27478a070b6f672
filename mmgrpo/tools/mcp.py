"""Tools served by an MCP server (Model Context Protocol) over stdio: the trainer starts the server
from a configured command, lists its tools and calls them through the same `Tool` interface as
the built-ins. The protocol is the `mcp` package's own client (`stdio_client` + `ClientSession`);
nothing here speaks JSON-RPC by hand.

The session is asynchronous; the trainer is not. One event loop runs in a daemon thread for the
life of the connection and every call is submitted to it and waited for (with the call's own
time-out in tools/base.run_call on top).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import shlex
import threading
from typing import Any

from PIL import Image

from mmgrpo.tools.base import ERROR_PREFIX, Tool, ToolAnswer


class MCPServer:
    """A running MCP stdio server and its client session. `close()` stops the server process."""

    def __init__(self, command: str, timeout_s: float):
        from mcp import ClientSession, StdioServerParameters, stdio_client

        argv = shlex.split(command)
        if not argv:
            raise ValueError("tools.mcp_servers holds an empty command")
        self.command, self.timeout_s = command, timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        params = StdioServerParameters(command=argv[0], args=argv[1:])

        async def connect():
            read, write = await self._stack.enter_async_context(stdio_client(params))
            session = await self._stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            return session

        try:
            self._session = self._run(connect(), timeout_s)
        except BaseException as e:
            self.close()
            raise RuntimeError(f"could not start the MCP server {command!r}: {type(e).__name__}: {e}") from e

    def _run(self, coroutine, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def tools(self) -> list[Tool]:
        """Every tool the server lists, callable as `tool.fn(context, **arguments)`."""
        listed = self._run(self._session.list_tools(), self.timeout_s).tools
        return [Tool(t.name, t.description or "", t.input_schema, self._caller(t.name)) for t in listed]

    def _caller(self, name: str):
        def call(context: Any, **arguments: Any) -> ToolAnswer:
            result = self._run(self._session.call_tool(name, arguments), self.timeout_s)
            return answer_of(result)

        return call

    def close(self) -> None:
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._run(self._stack.aclose(), self.timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout_s)


def answer_of(result) -> ToolAnswer:
    """An MCP `CallToolResult` as a tool answer: its text blocks joined, its image blocks decoded;
    `is_error` results are error answers (the server's message is what the model reads)."""
    texts, images = [], []
    for block in result.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "image":
            images.append(Image.open(io.BytesIO(base64.b64decode(block.data))).convert("RGB"))
        else:
            texts.append(f"[{block.type} content omitted]")
    text = "\n".join(texts)
    return ToolAnswer(f"{ERROR_PREFIX}{text}" if result.is_error else text, tuple(images), bool(result.is_error))
