"""A handler whose tools are an MCP server's (tests/mcp_server.py, over stdio): it calls
both, as its role's contract may allow or not, one with bad arguments, then the first
again, and says what each call came to."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from agents.errors import ToolError
from agents.mcp_tools import McpServer
from agents.sdk import TaskContext
from agents.tools import ToolRegistry

tools = ToolRegistry()
tools.mcp(
    McpServer(
        command=sys.executable,
        args=[str(Path(__file__).with_name("mcp_server.py"))],
        env={"MCP_CALLS_DIR": os.environ.get("MCP_CALLS_DIR", ".")},
        timeout_s=20,
    )
)


async def use_both(task: TaskContext) -> dict[str, Any]:
    assert task.tools is not None
    said: dict[str, Any] = {}
    for name, arguments in (("lookup", {"term": "lease"}), ("wipe", {"path": "/"})):
        try:
            said[name] = await task.tools.call(name, arguments)
        except ToolError as exc:
            said[name] = f"{type(exc).__name__}: {exc.reason}"
    try:
        await task.tools.call("lookup", {"term": 7})
    except ToolError as exc:
        said["bad"] = f"{type(exc).__name__}: {exc.reason}"
    said["again"] = await task.tools.call("lookup", {"term": "fence", "limit": 1})
    return said
