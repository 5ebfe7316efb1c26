"""The console's live streams (server-sent events): a run's page follows the run (its
state at each progress the bus brings, then the rest of the page that changed), and the
runs list, the approvals inbox and the agents page follow what moves anywhere. Nothing is
polled: each push answers something the bus said."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.responses import Response, StreamingResponse

from bus.config import Price
from bus.protocol import ToolCallRecord
from eventstore import EventQuery, EventStore, EventStoreError, StoredEvent
from orchestrator.cli import trace_model
from orchestrator.cli.console import pages, reads, runs_list, waterfall
from orchestrator.cli.console.errors import NotReachable
from orchestrator.cli.console.live import Changes, Live
from orchestrator.core.errors import OrchestratorError, UnknownRun
from orchestrator.core.events import RunEvent
from orchestrator.core.state import RunState
from orchestrator.service import journal

KEEPALIVE_S = 15.0
"""A comment line on an idle live stream this often, so proxies and the browser keep it."""
GAP_S = 0.1
"""A page that follows what moves gets at most one push this often."""
AGENTS_GAP_S = 0.5
"""The agents page at most this often: each push asks the orchestrator again."""
DRAW_GAP_S = 0.5
"""A live run's waterfall is sent at most this often (and at the run's end)."""


async def live_state(
    store: EventStore, run_id: str, before: RunState | None = None
) -> tuple[RunState, dict[str, Any]]:
    """What a run's page updates itself with: the run's state now (folded on from
    `before`, the state last sent, by the events appended since: the log only grows) with
    the tasks that changed since `before` (all of them the first time), and when the
    newest event it folds was recorded."""
    if before is None:
        state = await journal.load_run(store, run_id)
        changed = list(state.tasks.items())
    else:
        state = await journal.fold_run(store, before, None)
        changed = [(i, t) for i, t in state.tasks.items() if before.tasks.get(i) is not t]
    last = await store.read_stream(journal.run_stream(run_id), from_version=state.version)
    tasks = {
        task_id: {"status": t.status, "attempt": t.attempt, "agent": t.agent_id,
                  "tokens": t.tokens, "role": t.role or (spec.role if spec else ""),
                  "step": spec.step if spec else ""}
        for task_id, t in changed
        for spec in [state.graph.get(task_id)]
    }  # fmt: skip
    sent = {
        "status": state.status,
        "version": state.version,
        "tokens": state.tokens_spent,
        "recorded_at": last[0].recorded_at if last else 0.0,
        "tasks": tasks,
    }
    return state, sent


Pricing = tuple[Mapping[str, Price], reads.Joins]
"""The configured prices, and the agents' joins that name their models."""


class RunExtras:
    """What else a run's live page shows, brought up to date at each push from only the
    events appended since the last one: the events' lines (those after `after`, the
    newest the page has), the token use, and the waterfall (its timeline grows by the
    new events of the run's own stream; drawn at most every `DRAW_GAP_S`, and at the
    run's end)."""

    def __init__(self, store: EventStore, run_id: str, after: int, pricing: Pricing) -> None:
        self._store = store
        self._prices, self._joins = pricing
        self._run_id = run_id
        self._after = after
        self._growing = trace_model.Growing(run_id)
        self._charging: list[tuple[int, RunEvent]] = []
        """The run's events its usage is derived from (`reads.charging`), as they grow."""
        self._drawn_at = 0.0

    def _add(self, stored: StoredEvent) -> None:
        self._growing.add(stored)
        self._charging += reads.charging((stored,))

    async def add_to(self, sent: dict[str, Any], state: RunState, moved: bool) -> None:
        """Put what changed in `sent`: new lines, the token use if a task `moved`, the
        waterfall if due."""
        store, own = self._store, journal.run_stream(self._run_id)
        if not self._growing.count:  # the first push: the stream so far, once
            for stored in await store.read_stream(own):
                self._add(stored)
        found = await store.query(
            EventQuery(correlation_id=self._run_id, from_position=self._after + 1)
        )
        for stored in found:
            if stored.stream == own and stored.version == self._growing.count + 1:
                self._add(stored)
        if found:
            self._after = found[-1].position
            sent["recorded_at"] = found[-1].recorded_at
            lines = found[-reads.EVENTS_MAX :]
            sent["events"] = "".join(pages.event_rows(reads.line_of(s) for s in lines))
        if moved:
            used = await reads.usage_of(store, state, self._joins, self._charging)
            sent["usage"] = pages.usage(used, self._prices)
        now = time.monotonic()
        if state.terminal or now - self._drawn_at >= DRAW_GAP_S:
            self._drawn_at = now
            sent["waterfall"] = waterfall.render(self._growing.timeline())


async def run_live(
    store: EventStore, live: Live, run_id: str, after: int, pricing: Pricing
) -> Response:
    """Server-sent events: the run's state once, then again each time the bus says the
    run moved (its `baton.events.<run>` progress), each followed by the rest of the page
    it changed (`RunExtras`, from the events after `after`); nothing is polled."""
    if not await store.stream_version(journal.run_stream(run_id)):
        raise UnknownRun(run_id)
    await live.ensure()
    if live.bus is None:
        raise NotReachable(live.problem)

    extras = RunExtras(store, run_id, after, pricing)

    async def stream() -> AsyncIterator[bytes]:
        state: RunState | None = None
        with live.watch(run_id) as changed:
            while True:
                changed.clear()
                try:
                    state, sent = await live_state(store, run_id, state)
                except (OrchestratorError, EventStoreError) as exc:  # said, then the end
                    yield b"event: problem\ndata: " + json.dumps(str(exc)).encode() + b"\n\n"
                    return
                yield b"event: state\ndata: " + json.dumps(sent).encode() + b"\n\n"
                # the tasks first (they matter most), then the rest of the page
                more: dict[str, Any] = {"ended": state.terminal}
                try:
                    await extras.add_to(more, state, bool(sent["tasks"]))
                except (OrchestratorError, EventStoreError) as exc:
                    yield b"event: problem\ndata: " + json.dumps(str(exc)).encode() + b"\n\n"
                    return
                yield b"event: extras\ndata: " + json.dumps(more).encode() + b"\n\n"
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await changed.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


Push = Callable[[Changes], Awaitable[bytes]]


def _following(
    live: Live, first: Callable[[], Awaitable[bytes]], push: Push, gap_s: float = GAP_S
) -> Response:
    """Server-sent events for a page that follows what moves (the runs list, the
    approvals inbox, the agents page): `first` once, then `push` each time the bus says
    something moved, at most every `gap_s` (what moves meanwhile goes in the next one);
    nothing is polled."""
    if live.bus is None:
        raise NotReachable(live.problem)

    async def stream() -> AsyncIterator[bytes]:
        with live.follow() as changes:
            work: Callable[[], Awaitable[bytes]] = first
            while True:
                try:
                    sent = await work()
                except (OrchestratorError, EventStoreError, NotReachable) as exc:
                    yield b"event: problem\ndata: " + json.dumps(str(exc)).encode() + b"\n\n"
                    return
                if sent:
                    yield sent
                await asyncio.sleep(gap_s)
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await changes.moved.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    work = _nothing
                    continue
                work = functools.partial(push, changes)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def _nothing() -> bytes:
    return b""


def _sse(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps(data).encode() + b"\n\n"


async def runs_live(
    store: EventStore, live: Live, summaries: runs_list.Summaries, wanted: runs_list.RunFilter
) -> Response:
    """The runs list's rows of the runs that move, as they move: each run that
    progressed (its row folded from the log as it is now), and at first every run still
    open (what moved between the page and this stream)."""
    await live.ensure()

    async def rows(run_ids: Iterable[str]) -> bytes:
        now = time.time()
        sent = []
        for run_id in sorted(run_ids, reverse=True):
            if not await store.stream_version(journal.run_stream(run_id)):
                continue  # not a run of this log
            row = await summaries.row(store, run_id)
            sent.append({"run": row.run_id, "html": pages.run_row(row, now),
                         "match": wanted.matches(row)})  # fmt: skip
        return _sse("rows", sent) if sent else b""

    async def first() -> bytes:
        open_runs = await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS)
        return await rows(journal.run_id_of(s) for s in open_runs)

    async def push(changes: Changes) -> bytes:
        return await rows(changes.take()[0])

    return _following(live, first, push)


async def approvals_live(store: EventStore, live: Live, csrf: str) -> Response:
    """The approvals inbox as it changes: the escalated tasks of each run that moved are
    read again (the others' are kept), and the tool calls waiting whenever one is passed
    on for approval, decided, or a run moved; the page adds and removes rows."""
    await live.ensure()
    escalated: dict[str, list[reads.Escalated]] = {}

    def sent(calls: list[ToolCallRecord]) -> bytes:
        tasks = [t for waiting in escalated.values() for t in waiting]
        return _sse("approvals", {
            "tasks": [[f"{t.run_id}/{t.task_id}", pages.escalated_row(t, csrf)] for t in tasks],
            "calls": [[c.call_id, pages.call_row(c, csrf)] for c in calls],
        })  # fmt: skip

    async def first() -> bytes:
        found = await reads.approvals(store, list(live.prompted.values()), list(live.decided))
        for t in found.tasks:
            escalated.setdefault(t.run_id, []).append(t)
        return sent(found.calls)

    async def push(changes: Changes) -> bytes:
        runs, _calls, _agents = changes.take()
        for run_id in runs:
            if await store.stream_version(journal.run_stream(run_id)):
                escalated[run_id] = await reads.escalated_in(store, run_id)
                if not escalated[run_id]:
                    del escalated[run_id]
        calls = await reads.waiting_calls(store, list(live.prompted.values()), list(live.decided))
        return sent(calls)

    return _following(live, first, push)


async def agents_live(store: EventStore, live: Live) -> Response:
    """The agents page as it changes: asked of the orchestrator again (`baton agents`)
    when an agent joins, is lost or refused, or a run moved (its load); the newest
    joins, losses and refusals with it."""
    await live.ensure()

    async def first() -> bytes:
        reply = await live.agents()
        system = await reads.system_events(store)
        return _sse("agents", {"agents": "".join(pages.agent_rows(reply)),
                               "system": "".join(pages.event_rows(system))})  # fmt: skip

    async def push(changes: Changes) -> bytes:
        changes.take()
        return await first()

    return _following(live, first, push, AGENTS_GAP_S)
