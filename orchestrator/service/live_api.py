"""`baton.api.status`, `baton.api.health` and `baton.api.agents`: what a running
orchestrator answers when `baton status` / `baton health` / `baton agents` ask, from its
live state (runs, health) and registry (agents)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, get_args

from bus import discovery, subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Handler, Incoming, Subscription
from bus.errors import BusError
from bus.protocol import ErrorReply, Heartbeat
from eventstore import EventStoreError
from orchestrator.core.run_state import TaskStatus
from orchestrator.core.state import RunState
from orchestrator.service.api import (
    AgentsReply,
    AgentsRequest,
    AgentStatus,
    HealthIssue,
    HealthReply,
    HealthRequest,
    RunProgress,
    StatusReply,
    StatusRequest,
)

log = logging.getLogger("baton.api")
_status: Decoder[StatusRequest] = Decoder(StatusRequest)
_agents: Decoder[AgentsRequest] = Decoder(AgentsRequest)
_health: Decoder[HealthRequest] = Decoder(HealthRequest)


class LiveView(Protocol):
    """What the API reads of the orchestrator."""

    def runs(self) -> list[RunState]: ...

    def agent_status(self) -> list[tuple[Heartbeat, int, float]]: ...

    def health(self) -> list[HealthIssue]: ...


TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
"""Every status a task can have, from the core's own vocabulary (so a status added there
is counted here too, never a KeyError)."""


def progress(state: RunState, now: float) -> RunProgress:
    """A run's progress: task counts by status, and how long it has been going."""
    counts = Counter({status: 0 for status in TASK_STATUSES})
    counts.update(task.status for task in state.tasks.values())
    end = state.finished_at or now
    return RunProgress(
        run_id=state.run_id,
        workflow=state.workflow.name if state.workflow else "?",
        status=state.status,
        trace_id=state.trace_id,
        started_at=state.started_at,
        elapsed_s=max(0.0, end - state.started_at) if state.started_at else 0.0,
        tasks=len(state.tasks),
        succeeded=counts["succeeded"],
        running=counts["running"],
        failed=counts["failed"] + counts["cancelled"],
        pending=counts["pending"],
        attempts=sum(t.attempt for t in state.tasks.values()),
        by_status=dict(counts),
    )


def status_reply(
    view: LiveView, request: StatusRequest, now: float, others: Sequence[RunState] = ()
) -> StatusReply:
    served = view.runs()
    mine = {s.run_id for s in served}
    known = [*served, *(s for s in others if s.run_id not in mine)]
    runs = [s for s in known if request.all or not s.terminal]
    return StatusReply(
        sorted((progress(s, now) for s in runs), key=lambda p: p.started_at), view.health()
    )


def health_reply(view: LiveView, now: float) -> HealthReply:
    issues = view.health()
    return HealthReply(not any(i.until == 0.0 for i in issues), issues, now)


def agents_reply(view: LiveView) -> AgentsReply:
    return AgentsReply(
        sorted(
            (
                AgentStatus(
                    hb.agent_id,
                    hb.role,
                    hb.capacity,
                    load,
                    hb.load,
                    round(age, 3),
                    hb.held,
                    hb.contract_digest,
                )
                for hb, load, age in view.agent_status()
            ),
            key=lambda a: a.agent_id,
        )
    )


async def serve(
    bus: Bus,
    view: LiveView,
    wall: Callable[[], float] = time.time,
    service: discovery.Service | None = None,
    others: Callable[[], Awaitable[list[RunState]]] | None = None,
) -> list[Subscription]:
    """Answer status and agents requests until the subscriptions are dropped; with a
    discovery `service`, as its endpoints (counted). `others`: when orchestrators share
    the runs, the unfinished runs the others serve (read from the log), so that whichever
    answers a status request answers with every run."""

    def counted(name: str, subject: str, handler: Handler) -> Handler:
        return service.endpoint(name, subject, handler) if service is not None else handler

    async def answer(msg: Incoming, make: Callable[[], StatusReply | AgentsReply]) -> None:
        """Reply with what `make` builds; a request that does not decode, or a view that
        fails to build, gets an error reply (never silence, which a client would wait out)."""
        try:
            reply: StatusReply | AgentsReply | ErrorReply = make()
        except BusError as exc:
            reply = ErrorReply(type(exc).__name__, str(exc))
        except Exception as exc:  # a bug in a view must not leave people waiting
            log.exception("answering %s failed", msg.subject)
            reply = ErrorReply(type(exc).__name__, str(exc))
        await msg.reply(encode(reply))

    async def on_status(msg: Incoming) -> None:
        if others is None:
            await answer(msg, lambda: status_reply(view, _status.decode(msg.data), wall()))
            return
        try:
            more = await others()
        except EventStoreError as exc:
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        await answer(msg, lambda: status_reply(view, _status.decode(msg.data), wall(), more))

    async def on_health(msg: Incoming) -> None:
        try:
            _health.decode(msg.data)
        except BusError as exc:
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        await msg.reply(encode(health_reply(view, wall())))

    async def on_agents(msg: Incoming) -> None:
        def make() -> AgentsReply:
            _agents.decode(msg.data)
            return agents_reply(view)

        await answer(msg, make)

    return [
        await bus.subscribe(subjects.API_STATUS, counted("status", subjects.API_STATUS, on_status)),
        await bus.subscribe(subjects.API_HEALTH, counted("health", subjects.API_HEALTH, on_health)),
        await bus.subscribe(subjects.API_AGENTS, counted("agents", subjects.API_AGENTS, on_agents)),
    ]
