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
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bus import subjects
from bus.codec import Decoder, encode
from bus.config import Config
from bus.connection import Bus
from bus.errors import BusError, ConnectRefused, OversizedMessage, RequestFailed
from bus.permissions import shown_url
from bus.protocol import ErrorReply
from orchestrator.core.errors import OrchestratorError, RunNotRecorded
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service.api import RunAccepted, StartRunRequest
from orchestrator.service.bootstrap import (
    DEFAULT_CONFIG,
    Stack,
    bootstrap,
    store_name,
)
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S

_answer: Decoder[RunAccepted | ErrorReply] = Decoder(RunAccepted | ErrorReply)


class RunRefused(OrchestratorError):
    """The orchestrator service answered a run request with an error."""


async def serve(
    directory: Path,
    nats_url: str = "",
    *,
    agent_ttl: float = AGENT_TTL,
    heartbeat_s: float = HEARTBEAT_S,
    config: Config = DEFAULT_CONFIG,
    beside: Callable[[Stack], Awaitable[object]] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; prints one line with the NATS URL once serving. With
    `beside`, that runs too once the stack is up (`baton serve --ui`: the console), and
    is stopped first; if it ends on its own, serving ends too. On a SQLite log,
    `AlreadyServed` if another orchestrator serves it (one may)."""
    stack = await bootstrap(
        directory, nats_url, agent_ttl=agent_ttl, heartbeat_s=heartbeat_s, config=config
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        shared = stack.orchestrator.partitioned.sharing
        sharing = f", sharing the runs as orchestrator {shared.me}" if shared else ""
        print(f"baton: serving on NATS {shown_url(stack.nats_url)}, "
              f"event store {store_name(directory, config)}{sharing}", flush=True)  # fmt: skip
        if beside is None:
            await stop.wait()
        else:
            await _with(beside(stack), stop)
    finally:
        await stack.close()
    return 0


async def _with(work: Awaitable[object], stop: asyncio.Event) -> None:
    """Until `stop` is set or `work` ends (its error raised); `work` is cancelled first."""
    running = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()
    finally:
        for task in (running, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


ATTEMPT_S = 2.0
"""How long one try of a submit waits for its answer before it is sent again."""


class SubmitUnanswered(RequestFailed):
    """No orchestrator answered a submit in time; the run may still start."""


async def submit(
    nats_url: str,
    workflow: WorkflowSpec,
    input: dict[str, Any] | None = None,
    *,
    run_id: str = "",
    requested_by: str = "cli",
    request_id: str = "",
    timeout: float = 10.0,
    inbox_prefix: str = "",
) -> RunAccepted:
    """Ask a serving orchestrator to start a run; answered once `RunStarted` is durable.

    The request carries a request id (a new one unless given), so it is safe to send
    again, and it is, until `timeout`, whenever no answer came: nobody serving yet, an
    orchestrator paused or restarting, a store that refused the append. A try that did
    start the run is answered with that run. `SubmitUnanswered` names the id to retry with.
    A server that refuses this client's login (`ConnectRefused`) is not asked again: no
    run was asked for, and none can start.
    `requested_by` is the requester's subject token: on the embedded server, the identity
    of the login (`human:<login>`), the only one it may publish as.
    """
    request_id = request_id or secrets.token_hex(16)
    request = encode(StartRunRequest(workflow, input or {}, run_id, request_id))
    subject = subjects.run_start(requested_by)
    shown = nats_url.rpartition("@")[2]  # never echo a password
    deadline = time.monotonic() + timeout
    pause, why = 0.2, "no try"
    bus: Bus | None = None
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                if bus is None:
                    async with asyncio.timeout(left):
                        bus = await Bus.connect(
                            nats_url, name="baton-submit", inbox_prefix=inbox_prefix
                        )
                reply = await bus.request(subject, request, min(left, ATTEMPT_S))
            except OversizedMessage as exc:
                raise RunRefused(
                    f"the request is {exc.size} bytes, over the bus's {exc.limit}-byte message "
                    "limit: a submitted input must fit in one message (baton run stores a "
                    "large input by reference)"
                ) from exc
            except ConnectRefused:
                raise
            except (BusError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            else:
                answer = _answer.decode(reply)
                if isinstance(answer, RunAccepted):
                    return answer
                if answer.error != RunNotRecorded.__name__:
                    raise RunRefused(f"{answer.error}: {answer.detail}")
                why = answer.detail
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(2 * pause, 1.0)
    finally:
        if bus is not None:
            await bus.close()
    raise SubmitUnanswered(
        f"no orchestrator answered on {shown} within {timeout:g}s ({why}); the run may "
        f"still start: retry with --request-id {request_id}, which never starts it twice"
    )
