"""The orchestrator as a service process of its own (`baton serve`), and the client side
that hands it a run (`baton submit`).

`baton run` keeps the orchestrator inside the command that watches one run; `serve` is
the long-lived shape: it recovers every unfinished run from the log, then takes runs on
`baton.api.run.start` until SIGTERM or SIGINT. Killed (even with SIGKILL) and started
again on the same state directory, it carries on from the log: that is its whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.errors import BusError, RequestFailed
from bus.protocol import ErrorReply
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service.api import RunAccepted, StartRunRequest
from orchestrator.service.bootstrap import bootstrap, store_path

_answer: Decoder[RunAccepted | ErrorReply] = Decoder(RunAccepted | ErrorReply)


class RunRefused(OrchestratorError):
    """The orchestrator service answered a run request with an error."""


async def serve(directory: Path, nats_url: str = "", *, agent_ttl: float = 2.0) -> int:
    """Serve until SIGTERM/SIGINT; prints one line with the NATS URL once serving."""
    stack = await bootstrap(directory, nats_url, agent_ttl=agent_ttl)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        print(f"baton: serving on NATS {stack.nats_url}, event store {store_path(directory)}",
              flush=True)  # fmt: skip
        await stop.wait()
    finally:
        await stack.close()
    return 0


async def submit(
    nats_url: str,
    workflow: WorkflowSpec,
    input: dict[str, Any] | None = None,
    *,
    run_id: str = "",
    requested_by: str = "cli",
    timeout: float = 10.0,
) -> str:
    """Ask a serving orchestrator to start a run; its id once `RunStarted` is durable."""
    request = StartRunRequest(workflow, input or {}, run_id, requested_by)
    bus = await Bus.connect(nats_url, name="baton-submit")
    try:
        reply = await bus.request(subjects.API_START_RUN, encode(request), timeout)
    except RequestFailed as exc:
        raise BusError(f"no orchestrator answered on {nats_url} ({exc})") from exc
    finally:
        await bus.close()
    answer = _answer.decode(reply)
    if isinstance(answer, ErrorReply):
        raise RunRefused(f"{answer.error}: {answer.detail}")
    return answer.run_id
