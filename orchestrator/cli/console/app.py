"""The console's routes (Starlette): each page reads the event store through `reads`,
each action checks the session's CSRF token and goes out through `live` as the CLI's
would; a bad value is a 400 page naming it, and changes nothing."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
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
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bus import subjects
from bus.config import Price
from bus.errors import BusError, InvalidSubjectToken
from eventstore import EventStore, EventStoreError
from orchestrator.cli import audit_verify, history
from orchestrator.cli.console import pages, reads, runs_list, streams, waterfall
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
from orchestrator.cli.console.live import Live
from orchestrator.cli.trace_model import build as build_timeline
from orchestrator.core.errors import ControlRefused, OrchestratorError, UnknownRun, WorkflowError
from orchestrator.service.api import RunControlRequest
from orchestrator.service.service import new_run_id
from orchestrator.service.workflow_files import parse_input

STATIC = Path(__file__).parent / "static"
BODY_MAX = 64 * 1024
PASTS = 32


@dataclass
class Console:
    """What every route works with: the store, the bus side, the guard."""

    store: EventStore
    live: Live
    guard: Guard
    summaries: runs_list.Summaries = field(default_factory=runs_list.Summaries)
    said: dict[str, str] = field(default_factory=dict)
    """A message for each session's next page (what its last action did)."""
    store_name: str = ""
    directory: Path | None = None
    """The state directory: Audit's verify checks the log against its signed checkpoints."""
    prices: Mapping[str, Price] = field(default_factory=dict)
    """Each model's price (`prices` in baton.toml or `$BATON_PRICES`), for the costs."""
    joins: reads.Joins = field(default_factory=reads.Joins)
    """The agents' joins (the models they announced), read as the log grows."""
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
        Route("/", bound(runs_page)),
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


def _run_filter(q: Any) -> runs_list.RunFilter:
    status = _text(q, "status", 20)
    if status and status not in runs_list.RUN_STATUSES:
        raise BadInput("status", f"one of {', '.join(runs_list.RUN_STATUSES)}")
    since = _text(q, "since", 40)
    until = _text(q, "until", 40)
    return runs_list.RunFilter(
        status=status,  # type: ignore[arg-type]  # checked against RUN_STATUSES above
        workflow=_text(q, "workflow", 200),
        text=_text(q, "text", 200),
        since=history.parse_time(since) if since else 0.0,
        until=history.parse_time(until) if until else 0.0,
    )


async def runs_page(console: Console, request: Request) -> Response:
    q = request.query_params
    wanted = _run_filter(q)
    size = _number(q, "size", 50)
    before = _text(q, "before", 200)
    page = await runs_list.runs_page(console.store, console.summaries, wanted, before, size)
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
    rows = await reads.run_usage(console.store, state, console.joins, at)
    used = pages.usage(rows, console.prices)
    body = pages.run(state, at, positions, events, _session(request).csrf, live, drawn, used)
    return _page(console, request, f"Run {run_id}", body)


async def run_live(console: Console, request: Request) -> Response:
    after = _number(request.query_params, "after", 0)
    return await streams.run_live(
        console.store, console.live, _run_id(request), after, (console.prices, console.joins)
    )


async def runs_live(console: Console, request: Request) -> Response:
    wanted = _run_filter(request.query_params)
    return await streams.runs_live(console.store, console.live, console.summaries, wanted)


async def approvals_live(console: Console, request: Request) -> Response:
    return await streams.approvals_live(console.store, console.live, _session(request).csrf)


async def agents_live(console: Console, request: Request) -> Response:
    return await streams.agents_live(console.store, console.live)


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
        f"forked run {new_id} from {run_id} at position {history.forked_at(state, at)}: "
        f"{done}/{len(state.tasks)} tasks "
        f"done; carry it on with baton resume {new_id} ({history.SERVED_FORKS})"
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
    against = (
        audit_verify.anchoring(console.directory) if console.directory else "no state directory"
    )
    verdict = await audit_verify.check_log(console.store, against)
    body = pages.audit(reads.AuditQuery(), [], 0, verdict, _session(request).csrf)
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
