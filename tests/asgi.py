"""An ASGI app (an A2A agent, an MCP server, a broken one) served by uvicorn on a free
loopback port inside the test's own event loop, for as long as a test needs it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any, Literal


@contextlib.asynccontextmanager
async def loopback(
    app: Any, lifespan: Literal["auto", "on", "off"] = "off", sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve `app` (on `sock` if given, bound already) until the block ends: its base URL."""
    import uvicorn  # the interop extra's; this module is imported where it is not installed

    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, 5)
        sock.close()
