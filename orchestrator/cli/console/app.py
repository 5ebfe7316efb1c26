"""The console's routes (Starlette): each page reads the event store through `reads`,
each action checks the session's CSRF token and goes out through `live` as the CLI's
would; a bad value is a 400 page naming it, and changes nothing."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bus import subjects
from bus.errors import BusError, InvalidSubjectToken
from bus.protocol import ToolCallRecord
from eventstore import EventQuery, EventStore, EventStoreError
from orchestrator.cli import history, trace_model
from orchestrator.cli.console import pages, reads, waterfall
from orchestrator.cli.console.errors import BadInput, NotReachable
from orchestrator.cli.console.guard import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    Guard,
    Secured,
    Session,
    cookie_header,
)
from orchestrator.cli.console.live import Changes, Live
from orchestrator.cli.trace_model import build as build_timeline
from orchestrator.core.errors import ControlRefused, OrchestratorError, UnknownRun, WorkflowError
from orchestrator.core.state import RunState
from orchestrator.service import journal
from orchestrator.service.api import RunControlRequest
from orchestrator.service.service import new_run_id
from orchestrator.service.workflow_files import parse_input

STATIC = Path(__file__).parent / "static"
BODY_MAX = 64 * 1024
PASTS = 32
KEEPALIVE_S = 15.0
"""A comment line on an idle live stream this often, so proxies and the browser keep it."""
GAP_S = 0.1
"""A page that follows what moves gets at most one push this often."""
DRAW_GAP_S = 0.5
"""A live run's waterfall is sent at most this often (and at the run's end)."""


@dataclass
class Console:
    """What every route works with: the store, the bus side, the guard."""

    store: EventStore
    live: Live
    guard: Guard
    summaries: reads.Summaries = field(default_factory=reads.Summaries)
    said: dict[str, str] = field(default_factory=dict)
    """A message for each session's next page (what its last action did)."""
    store_name: str = ""
    pasts: OrderedDict[tuple[str, int], tuple[list[reads.EventLine], str]] = field(
        default_factory=OrderedDict
    )
    """A run's event lines and drawn timeline at a past position, or at the end of a run
    that ended: they never change, so a page read again reuses them (at most `PASTS`)."""

    def remember(self, key: tuple[str, int], value: tuple[list[reads.EventLine], str]) -> None:
        self.pasts[key] = value
        while len(self.pasts) > PASTS:
            self.pasts.popitem(last=False)

    def where(self) -> str:
        """What the console reads and whom it acts as, for the top of each page."""
        live = self.live
        acting = f"; acting as {live.actor}"
        if live.bus is not None:
            return f"{self.store_name}{acting} on {live.url}"
        return f"{self.store_name}{acting} (read-only: {live.problem})"


def _session(request: Request) -> Session:
    session: Session | None = request.scope.get("session")
    assert session is not None  # Secured let the request in only with one
    return session


def _page(console: Console, request: Request, title: str, body: str, status: int = 200) -> Response:
    session = _session(request)
    said = console.said.pop(session.sid, "")
    html = pages.layout(title, body, session.csrf, said, console.where())
    return HTMLResponse(html, status_code=status)


async def _form(console: Console, request: Request) -> dict[str, str]:
    """The POSTed form, once its CSRF token and origin are this session's; `BadInput`
    (403 for CSRF) otherwise."""
    session = _session(request)
    if not console.guard.origin_ok(request.headers.get("origin", ""), request.headers["host"]):
        raise Forbidden("origin", "this action was not sent from the console's own page")
    kind = request.headers.get("content-type", "").partition(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise BadInput("content-type", "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_MAX:
            raise BadInput("body", f"at most {BODY_MAX} bytes")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput("body", f"not a form: {exc}") from None
    form = {key: values[-1] for key, values in parsed.items()}
    offered = form.pop(CSRF_FIELD, "") or request.headers.get(CSRF_HEADER, "")
    if not console.guard.csrf_ok(session, offered):
        raise Forbidden("csrf", "missing or wrong CSRF token: reload the page and try again")
    return form


class Forbidden(BadInput):
    """A request that is well formed but not this session's to make (CSRF, origin)."""


def _text(values: Any, name: str, limit: int = 500) -> str:
    value = values.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise BadInput(name, f"at most {limit} characters")
    return value


def _number(values: Any, name: str, default: int) -> int:
    value = _text(values, name, 20)
    if not value:
        return default
    if not value.isdigit():
        raise BadInput(name, f"{value!r} is not a whole number")
    return int(value)


def _back(console: Console, request: Request, to: str, said: str) -> Response:
    console.said[_session(request).sid] = said
    return RedirectResponse(to, status_code=303)


Handler = Callable[[Console, Request], Awaitable[Response]]


def routes(console: Console) -> list[Route | Mount]:
    def bound(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            try:
                return await handler(console, request)
            except Forbidden as exc:
                return _page(console, request, "Refused", pages.problem(str(exc)), 403)
            except UnknownRun as exc:
                return _page(console, request, "Not found", pages.problem(str(exc)), 404)
            except (BadInput, WorkflowError, history.BadPoint, InvalidSubjectToken) as exc:
                return _page(console, request, "Bad request", pages.problem(str(exc)), 400)
            except ControlRefused as exc:
                return _page(console, request, "Refused", pages.problem(str(exc)), 409)
            except (NotReachable, BusError) as exc:
                return _page(console, request, "Unavailable", pages.problem(str(exc)), 503)
            except (OrchestratorError, EventStoreError) as exc:
                return _page(console, request, "Error", pages.problem(str(exc)), 500)

        return call

    return [
        Route("/login", login),
        Route("/", bound(runs_list)),
        Route("/runs/{run_id}", bound(run_page)),
        Route("/runs/{run_id}/live", bound(run_live)),
        Route("/runs/{run_id}/tasks/{task_id}/decide", bound(decide_task), methods=["POST"]),
        Route("/runs/{run_id}/cancel", bound(cancel_run), methods=["POST"]),
        Route("/runs/{run_id}/fork", bound(fork_run), methods=["POST"]),
        Route("/approvals", bound(approvals)),
        Route("/tools/{call_id}/decide", bound(decide_tool), methods=["POST"]),
        Route("/agents", bound(agents)),
        Route("/live/runs", bound(runs_live)),
        Route("/live/approvals", bound(approvals_live)),
        Route("/live/agents", bound(agents_live)),
        Route("/audit", bound(audit)),
        Route("/audit/verify", bound(verify), methods=["POST"]),
        Route("/why", bound(why)),
        Route("/logout", bound(logout), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


async def login(request: Request) -> Response:
    guard: Guard = request.app.state.console.guard
    session = guard.login(request.query_params.get("token", ""))
    if session is None:
        return PlainTextResponse(
            "this login link was used already or is wrong: run baton ui again for a new one",
            status_code=403,
        )
    response = RedirectResponse("/", status_code=303)
    response.headers["set-cookie"] = cookie_header(session)
    return response


def _run_filter(q: Any) -> reads.RunFilter:
    status = _text(q, "status", 20)
    if status and status not in reads.RUN_STATUSES:
        raise BadInput("status", f"one of {', '.join(reads.RUN_STATUSES)}")
    since = _text(q, "since", 40)
    until = _text(q, "until", 40)
    return reads.RunFilter(
        status=status,  # type: ignore[arg-type]  # checked against RUN_STATUSES above
        workflow=_text(q, "workflow", 200),
        text=_text(q, "text", 200),
        since=history.parse_time(since) if since else 0.0,
        until=history.parse_time(until) if until else 0.0,
    )


async def runs_list(console: Console, request: Request) -> Response:
    q = request.query_params
    wanted = _run_filter(q)
    size = _number(q, "size", 50)
    before = _text(q, "before", 200)
    page = await reads.runs_page(console.store, console.summaries, wanted, before, size)
    await console.live.ensure()
    follow = console.live.bus is not None
    return _page(console, request, "Runs", pages.runs(page, wanted, size, before, follow))


def _run_id(request: Request) -> str:
    return subjects.token(str(request.path_params["run_id"]))


async def run_page(console: Console, request: Request) -> Response:
    run_id = _run_id(request)
    state, at = await reads.run_state(console.store, run_id, _text(request.query_params, "at", 40))
    positions = await reads.run_positions(console.store, run_id)
    fixed = console.pasts.get((run_id, at))
    if fixed is not None:
        events, drawn = fixed
    else:
        events, own = await reads.run_events(console.store, run_id, at)
        drawn = waterfall.render(build_timeline(run_id, own))
        if at or state.terminal:  # a past, or a run that has ended: it never changes
            console.remember((run_id, at), (events, drawn))
    await console.live.ensure()
    live = console.live.bus is not None
    body = pages.run(state, at, positions, events, _session(request).csrf, live, drawn)
    return _page(console, request, f"Run {run_id}", body)


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
                  "tokens": t.tokens, "role": t.role or (state.graph[task_id].role
                                                         if task_id in state.graph else "")}
        for task_id, t in changed
    }  # fmt: skip
    sent = {
        "status": state.status,
        "version": state.version,
        "tokens": state.tokens_spent,
        "recorded_at": last[0].recorded_at if last else 0.0,
        "tasks": tasks,
    }
    return state, sent


class RunExtras:
    """What else a run's live page shows, brought up to date at each push from only the
    events appended since the last one: the events' lines (those after `after`, the
    newest the page has), the token use, and the waterfall (its timeline grows by the
    new events of the run's own stream; drawn at most every `DRAW_GAP_S`, and at the
    run's end)."""

    def __init__(self, store: EventStore, run_id: str, after: int) -> None:
        self._store = store
        self._run_id = run_id
        self._after = after
        self._growing = trace_model.Growing(run_id)
        self._drawn_at = 0.0

    async def add_to(self, sent: dict[str, Any], state: RunState, moved: bool) -> None:
        """Put what changed in `sent`: new lines, the token use if a task `moved`, the
        waterfall if due."""
        store, own = self._store, journal.run_stream(self._run_id)
        if not self._growing.count:  # the first push: the stream so far, once
            for stored in await store.read_stream(own):
                self._growing.add(stored)
        found = await store.query(
            EventQuery(correlation_id=self._run_id, from_position=self._after + 1)
        )
        for stored in found:
            if stored.stream == own and stored.version == self._growing.count + 1:
                self._growing.add(stored)
        if found:
            self._after = found[-1].position
            sent["recorded_at"] = found[-1].recorded_at
            lines = found[-reads.EVENTS_MAX :]
            sent["events"] = "".join(pages.event_rows(reads.line_of(s) for s in lines))
        if moved:
            sent["usage"] = pages.usage(state)
        now = time.monotonic()
        if state.terminal or now - self._drawn_at >= DRAW_GAP_S:
            self._drawn_at = now
            sent["waterfall"] = waterfall.render(self._growing.timeline())


async def run_live(console: Console, request: Request) -> Response:
    """Server-sent events: the run's state once, then again each time the bus says the
    run moved (its `baton.events.<run>` progress); nothing is polled."""
    run_id = _run_id(request)
    if not await console.store.stream_version(journal.run_stream(run_id)):
        raise UnknownRun(run_id)
    await console.live.ensure()
    if console.live.bus is None:
        raise NotReachable(console.live.problem)

    extras = RunExtras(console.store, run_id, _number(request.query_params, "after", 0))

    async def stream() -> AsyncIterator[bytes]:
        state: RunState | None = None
        with console.live.watch(run_id) as changed:
            while True:
                changed.clear()
                try:
                    state, sent = await live_state(console.store, run_id, state)
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


def _following(console: Console, first: Callable[[], Awaitable[bytes]], push: Push) -> Response:
    """Server-sent events for a page that follows what moves (the runs list, the
    approvals inbox, the agents page): `first` once, then `push` each time the bus says
    something moved, at most every `GAP_S` (what moves meanwhile goes in the next one);
    nothing is polled."""
    if console.live.bus is None:
        raise NotReachable(console.live.problem)

    async def stream() -> AsyncIterator[bytes]:
        with console.live.follow() as changes:
            work: Callable[[], Awaitable[bytes]] = first
            while True:
                try:
                    sent = await work()
                except (OrchestratorError, EventStoreError, NotReachable) as exc:
                    yield b"event: problem\ndata: " + json.dumps(str(exc)).encode() + b"\n\n"
                    return
                if sent:
                    yield sent
                await asyncio.sleep(GAP_S)
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


async def runs_live(console: Console, request: Request) -> Response:
    """The runs list's rows of the runs that move, as they move: each run that
    progressed (its row folded from the log as it is now), and at first every run still
    open (what moved between the page and this stream)."""
    wanted = _run_filter(request.query_params)
    await console.live.ensure()
    store = console.store

    async def rows(run_ids: Iterable[str]) -> bytes:
        now = time.time()
        sent = []
        for run_id in sorted(run_ids, reverse=True):
            if not await store.stream_version(journal.run_stream(run_id)):
                continue  # not a run of this log
            row = reads.row_of(await console.summaries.row(store, run_id), now)
            sent.append({"run": row.run_id, "html": pages.run_row(row),
                         "match": wanted.matches(row)})  # fmt: skip
        return _sse("rows", sent) if sent else b""

    async def first() -> bytes:
        open_runs = await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS)
        return await rows(journal.run_id_of(s) for s in open_runs)

    async def push(changes: Changes) -> bytes:
        return await rows(changes.take()[0])

    return _following(console, first, push)


async def approvals_live(console: Console, request: Request) -> Response:
    """The approvals inbox as it changes: the escalated tasks of each run that moved are
    read again (the others' are kept), and the tool calls waiting whenever one is passed
    on for approval, decided, or a run moved; the page adds and removes rows."""
    await console.live.ensure()
    store = console.store
    live = console.live
    csrf = _session(request).csrf
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

    return _following(console, first, push)


async def agents_live(console: Console, request: Request) -> Response:
    """The agents page as it changes: asked of the orchestrator again (`baton agents`)
    when an agent joins, is lost or refused, or a run moved (its load); the newest
    joins, losses and refusals with it."""
    await console.live.ensure()

    async def first() -> bytes:
        reply = await console.live.agents()
        system = await reads.system_events(console.store)
        return _sse("agents", {"agents": "".join(pages.agent_rows(reply)),
                               "system": "".join(pages.event_rows(system))})  # fmt: skip

    async def push(changes: Changes) -> bytes:
        changes.take()
        return await first()

    return _following(console, first, push)


async def decide_task(console: Console, request: Request) -> Response:
    form = await _form(console, request)
    run_id = _run_id(request)
    task_id = subjects.token(str(request.path_params["task_id"]))
    action = _text(form, "action", 10)
    if action not in ("approve", "reject", "retry"):
        raise BadInput("action", "one of approve, reject, retry")
    note = _text(form, "note", 1000)
    output = parse_input(_text(form, "output", 32000) or "{}", "output")
    request_ = RunControlRequest(run_id, action, task_id, note, output)  # type: ignore[arg-type]
    reply = await console.live.control(request_)
    said = f"{action} of task {task_id} recorded by {reply.actor}; run {run_id} is {reply.status}"
    return _back(console, request, f"/runs/{quote(run_id)}", said)


async def cancel_run(console: Console, request: Request) -> Response:
    form = await _form(console, request)
    run_id = _run_id(request)
    reply = await console.live.control(
        RunControlRequest(run_id, "cancel", "", _text(form, "note", 1000))
    )
    said = f"cancel of the run recorded by {reply.actor}; run {run_id} is {reply.status}"
    return _back(console, request, f"/runs/{quote(run_id)}", said)


async def fork_run(console: Console, request: Request) -> Response:
    """`baton fork <run> --at <position>`, recorded as this person, then its page."""
    form = await _form(console, request)
    run_id = _run_id(request)
    point = _text(form, "at", 40)
    if not point.isdigit():
        raise BadInput("at", "a global position")
    at = await history.position_at(console.store, run_id, point)
    new_id = new_run_id()
    state = await history.fork(console.store, run_id, at, new_id, actor=console.live.actor)
    done = sum(t.status == "succeeded" for t in state.tasks.values())
    said = (
        f"forked run {new_id} from {run_id} at position {at}: {done}/{len(state.tasks)} tasks "
        f"done; carry it on with baton resume {new_id}"
    )
    return _back(console, request, f"/runs/{quote(new_id)}", said)


async def approvals(console: Console, request: Request) -> Response:
    await console.live.ensure()
    live = console.live
    found = await reads.approvals(console.store, list(live.prompted.values()), list(live.decided))
    follow = console.live.bus is not None
    body = pages.approvals(found, _session(request).csrf, follow)
    return _page(console, request, "Approvals", body)


async def decide_tool(console: Console, request: Request) -> Response:
    form = await _form(console, request)
    call_id = subjects.token(str(request.path_params["call_id"]))
    agent_id = subjects.token(_text(form, "agent", 200))
    approve = _text(form, "approve", 1)
    if approve not in ("0", "1"):
        raise BadInput("approve", "1 to approve, 0 to deny")
    await console.live.decide_tool(agent_id, call_id, approve == "1", _text(form, "reason", 1000))
    said = f"tool call {call_id} {'approved' if approve == '1' else 'denied'}"
    return _back(console, request, "/approvals", said)


async def agents(console: Console, request: Request) -> Response:
    await console.live.ensure()
    problem = console.live.problem
    reply = None
    if console.live.bus is not None:
        try:
            reply = await console.live.agents()
        except NotReachable as exc:
            problem = str(exc)
    system = await reads.system_events(console.store)
    body = pages.agents(reply, problem, system, follow=True)
    return _page(console, request, "Agents", body)


def _audit_query(values: Any) -> reads.AuditQuery:
    return reads.AuditQuery(
        run=_text(values, "run", 200),
        actor=_text(values, "actor", 200),
        type_glob=_text(values, "type", 100),
        text=_text(values, "text", 500),
        since=_text(values, "since", 40),
        until=_text(values, "until", 40),
        after=_number(values, "after", 0),
        limit=_number(values, "limit", 100),
    )


async def audit(console: Console, request: Request) -> Response:
    q = _audit_query(request.query_params)
    lines, next_after = await reads.audit(console.store, q)
    body = pages.audit(q, lines, next_after, None, _session(request).csrf)
    return _page(console, request, "Audit", body)


async def verify(console: Console, request: Request) -> Response:
    await _form(console, request)
    report = await console.store.verify()
    body = pages.audit(reads.AuditQuery(), [], 0, report, _session(request).csrf)
    return _page(console, request, "Audit", body)


async def why(console: Console, request: Request) -> Response:
    ref = _text(request.query_params, "ref", 300)
    if not ref:
        raise BadInput("ref", "an event id or a global position")
    chain = await reads.why(console.store, ref)
    return _page(console, request, f"Why {ref}", pages.why(ref, chain))


async def logout(console: Console, request: Request) -> Response:
    """End this session (the cookie no longer lets anyone in)."""
    await _form(console, request)
    console.guard.end(_session(request))
    response = PlainTextResponse("logged out: run baton ui again for a new login link")
    response.headers["set-cookie"] = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    return response


def build(console: Console) -> Starlette:
    """The console as an ASGI app, behind its guard."""
    app = Starlette(routes=routes(console))
    app.state.console = console
    return app


def secured(console: Console) -> Secured:
    return Secured(build(console), console.guard)
