"""A small MCP server built with the official `mcp` SDK, served over stdio, for
tests/test_mcp_tools.py: two tools, each of which leaves a file in `$MCP_CALLS_DIR` per
call it runs (with the server's process id), so a test can prove which calls reached the
server, and that one server process served them."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("baton-test-tools")
CALLS = Path(os.environ["MCP_CALLS_DIR"])


@server.tool()
def lookup(term: str, limit: int = 3) -> str:
    """Look a term up in the glossary."""
    (CALLS / f"lookup-{secrets.token_hex(4)}").write_text(f"{os.getpid()} {term}")
    return f"{term}: a word ({limit} senses)"


@server.tool()
def wipe(path: str) -> str:
    """Delete a folder and everything in it."""
    (CALLS / f"wipe-{secrets.token_hex(4)}").write_text(f"{os.getpid()} {path}")
    return f"wiped {path}"


if __name__ == "__main__":
    server.run()
