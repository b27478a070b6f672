"""A small MCP stdio server for the tests: `python tests/mcp_server.py`. Tools: `add` (text), `square`
(an image: a red square on black, its size the argument), `fail` (an error result)."""
import base64
import io

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent
from PIL import Image

server = MCPServer("mmgrpo-test-tools", log_level="CRITICAL")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def square(size: int) -> ImageContent:
    """A red square of `size` pixels on a 64x64 black image."""
    image = Image.new("RGB", (64, 64))
    image.paste((255, 0, 0), (0, 0, size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageContent(type="image", data=base64.b64encode(buffer.getvalue()).decode(), mime_type="image/png")


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ToolError(reason)


if __name__ == "__main__":
    server.run("stdio")
