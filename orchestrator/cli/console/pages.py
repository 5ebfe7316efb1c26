"""The console's pages as HTML, built on the server from what `reads` and `live` return:
every value is escaped here, the pages hold no script of their own (the one script,
`static/console.js`, only listens for a run's updates and moves the time-travel slider)
and no secret but the session's CSRF token, which every form sends back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from bus.config import Price
from bus.protocol import ToolCallRecord
from orchestrator.cli import costs
from orchestrator.cli.console import graph
from orchestrator.cli.console.reads import (
    EVENTS_MAX,
    Approvals,
    AuditQuery,
    Escalated,
    EventLine,
)
from orchestrator.cli.console.runs_list import RUN_STATUSES, RunFilter, RunsPage
from orchestrator.core.state import RunState
from orchestrator.service.api import AgentsReply
from orchestrator.service.run_summaries import RunSummary

NAV = (("/", "Runs"), ("/approvals", "Approvals"), ("/agents", "Agents"), ("/audit", "Audit"))


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def clock(unix: float) -> str:
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(unix: float) -> str:
    """A time as a form shows it, read back the same (UTC, ISO 8601, to the microsecond)."""
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def layout(title: str, body: str, csrf: str, said: str = "", where: str = "") -> str:
    nav = " ".join(f'<a href="{href}">{name}</a>' for href, name in NAV)
    note = f'<p class="said" role="status">{_e(said)}</p>' if said else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="csrf" content="{_e(csrf)}"><title>{_e(title)} · Baton</title>'
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        f'<body><header><b>Baton</b> {nav}<span class="where">{_e(where)}</span>'
        + _form("/logout", csrf, "", "Log out", "logout")
        + "</header>"
        + f"<main><h1>{_e(title)}</h1>{note}{body}</main></body></html>"
    )


def _form(action: str, csrf: str, fields: str, button: str, cls: str = "") -> str:
    return (
        f'<form method="post" action="{_e(action)}" class="{cls}">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">{fields}'
        f"<button>{_e(button)}</button></form>"
    )


def _table(head: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (
        f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def runs(page: RunsPage, wanted: RunFilter, size: int, before: str = "",
         follow: bool = False) -> str:  # fmt: skip
    now = time.time()
    options = "".join(
        f'<option value="{s}"{" selected" if s == wanted.status else ""}>{s or "any"}</option>'
        for s in ("", *RUN_STATUSES)
    )
    since = iso(wanted.since) if wanted.since else ""
    until = iso(wanted.until) if wanted.until else ""
    form = (
        '<form method="get" action="/" class="filters">'
        f'<label>status <select name="status">{options}</select></label>'
        f'<label>workflow <input name="workflow" value="{_e(wanted.workflow)}"></label>'
        f'<label>text <input name="text" value="{_e(wanted.text)}"></label>'
        f'<label>started since <input name="since" value="{_e(since)}" '
        'placeholder="ISO 8601 or Unix s"></label>'
        f'<label>before <input name="until" value="{_e(until)}" '
        'placeholder="ISO 8601 or Unix s"></label><button>Filter</button></form>'
    )
    table = _table(
        ("run", "workflow", "status", "started (UTC)", "duration", "tasks done", "tokens"),
        [run_row(r, now) for r in page.rows],
        "runs",
    )
    more = ""
    if page.next_before:
        query = {
            "status": wanted.status,
            "workflow": wanted.workflow,
            "text": wanted.text,
            "since": since,
            "until": until,
            "size": str(size),
            "before": page.next_before,
        }
        more = f'<p><a class="next" href="/?{_e(urlencode(query))}">older runs</a></p>'
    empty = "" if page.rows else "<p>no run matches</p>"
    live = ""
    if follow:
        # the first page also shows the runs that start while it is open
        same = urlencode({"status": wanted.status, "workflow": wanted.workflow,
                          "text": wanted.text, "since": since, "until": until})  # fmt: skip
        live = f' data-follow="/live/runs?{_e(same)}" data-fresh="{"0" if before else "1"}"'
    return f'<section id="follow"{live}>' + form + table + empty + more + "</section>"


def run_row(r: RunSummary, now: float) -> str:
    """One line of the runs list (also pushed to an open list when the run moves); a run
    not ended has lasted until `now`."""
    return (
        f'<tr data-run="{_e(r.run_id)}">'
        f'<td><a href="/runs/{quote(r.run_id)}">{_e(r.run_id)}</a></td>'
        f'<td>{_e(r.workflow)}</td><td class="st {_e(r.status)}">{_e(r.status)}</td>'
        f"<td>{clock(r.started_at)}</td><td>{r.duration_s(now):.3f}s</td>"
        f"<td>{r.done}/{r.total}</td><td>{r.tokens}</td></tr>"
    )


def _task_rows(state: RunState) -> list[str]:
    rows = []
    for task_id, task in state.tasks.items():
        spec = state.graph.get(task_id)
        needs = ", ".join(spec.deps) if spec is not None else ""
        shown = json.dumps(task.output, default=str)[:200] if task.output is not None else ""
        step = f' data-step="{_e(spec.step)}"' if spec is not None else ""
        rows.append(
            f'<tr data-task="{_e(task_id)}"{step}><td>{_e(task_id)}</td>'
            f"<td>{_e(state.role_of(task_id) if spec else task.role)}</td>"
            f"<td>{_e(needs)}</td>"
            f'<td class="st {_e(task.status)}">{_e(task.status)}</td>'
            f'<td class="attempt">{task.attempt}</td><td class="agent">{_e(task.agent_id)}</td>'
            f'<td class="tokens">{task.tokens}</td>'
            f'<td class="out">{_e(shown or task.error[:200])}</td></tr>'
        )
    return rows


USAGE_HEAD = ("agent", "role", "model", "attempts", "input tokens", "output tokens", "tokens",
              "cost")  # fmt: skip


def usage(rows: list[costs.Usage], prices: Mapping[str, Price]) -> str:
    """The run's tokens and their cost per agent, role and model (`costs`), and the
    totals: the cost only of what has a price, per currency."""
    body = []
    for r in rows:
        cost = costs.cost(r, prices)
        priced = "cost" if cost.amount is not None else "cost none"
        body.append(
            f'<tr data-agent="{_e(r.agent_id)}" data-model="{_e(r.model)}">'
            f"<td>{_e(r.agent_id)}</td><td>{_e(r.role)}</td><td>{_e(r.model or 'unknown')}</td>"
            f"<td>{r.attempts}</td><td>{r.input_tokens}</td><td>{r.output_tokens}</td>"
            f'<td>{r.tokens}</td><td class="{priced}">{_e(cost.shown())}</td></tr>'
        )
    summed = costs.totals(rows, prices)
    priced = ", ".join(costs.Cost(a, c).shown() for c, a in sorted(summed.items())) or "—"
    if summed and any(costs.cost(r, prices).amount is None for r in rows):
        priced += " (and usage without a price)"
    foot = (
        f'<tfoot><tr><td colspan="3">total</td><td>{sum(r.attempts for r in rows)}</td>'
        f"<td>{sum(r.input_tokens for r in rows)}</td><td>{sum(r.output_tokens for r in rows)}</td>"
        f'<td>{sum(r.tokens for r in rows)}</td><td class="cost">{_e(priced)}</td></tr></tfoot>'
    )
    return _table(USAGE_HEAD, body, "usage").replace("</table>", foot + "</table>")


def _decide_forms(state: RunState, csrf: str) -> str:
    out = []
    for task_id, task in state.tasks.items():
        if task.status == "escalated":
            out.append(decide_task(state.run_id, task_id, csrf))
    return "".join(out)


def decide_task(run_id: str, task_id: str, csrf: str) -> str:
    """The approve / reject / retry forms of an escalated task."""
    action = f"/runs/{quote(run_id)}/tasks/{quote(task_id)}/decide"
    note = '<input name="note" placeholder="reason" required>'
    output = '<input name="output" value="{}" title="the task\'s output, a JSON object">'
    return (
        f'<div class="decide" data-task="{_e(task_id)}">{_e(task_id)} waits for a person: '
        + _form(
            action,
            csrf,
            note + output + '<input type="hidden" name="action" value="approve">',
            "Approve",
            "approve",
        )
        + _form(
            action,
            csrf,
            note + '<input type="hidden" name="action" value="reject">',
            "Reject",
            "reject",
        )
        + _form(
            action,
            csrf,
            note + '<input type="hidden" name="action" value="retry">',
            "Retry",
            "retry",
        )
        + "</div>"
    )


def event_rows(lines: Iterable[EventLine]) -> list[str]:
    rows = []
    for e in lines:
        cause = (
            f'<a href="/why?ref={quote(e.causation_id)}">{_e(e.causation_id)}</a>'
            if e.cause_is_event
            else _e(e.causation_id)
        )
        rows.append(
            f'<tr id="ev{e.position}"><td><a href="/why?ref={e.position}">{e.position}</a></td>'
            f"<td>{clock(e.recorded_at)}</td><td>{_e(e.stream)}</td><td>{_e(e.type)}</td>"
            f"<td>{_e(e.actor)}</td><td>{cause}</td><td><code>{_e(e.summary)}</code></td></tr>"
        )
    return rows


EVENT_HEAD = ("pos", "recorded (UTC)", "stream", "type", "actor", "caused by", "data")


def run(
    state: RunState,
    at: int,
    positions: list[int],
    events: list[EventLine],
    csrf: str,
    live: bool,
    drawn: str = "",
    used: str = "",
) -> str:
    """A run's page; `used` is its `usage` table."""
    run_id = state.run_id
    head_pos = positions[-1] if positions else 0
    first_pos = positions[0] if positions else 0
    shown_at = at or head_pos
    took = (state.finished_at or 0.0) - state.started_at if state.finished_at else 0.0
    facts = (
        f'<p class="facts">workflow <b>{_e(state.workflow.name if state.workflow else "?")}</b>, '
        f'status <b class="st {_e(state.status)}" id="run-status">{_e(state.status)}</b>, '
        f"started {clock(state.started_at)} UTC"
        + (f", took {took:.3f}s" if took else "")
        + f', tokens <b id="run-tokens">{state.tokens_spent}</b>'
        + (
            f', forked from <a href="/runs/{quote(state.forked_from.partition("@")[0])}">'
            f"{_e(state.forked_from)}</a>"
            if state.forked_from
            else ""
        )
        + (f"; {_e(state.reason)}" if state.reason else "")
        + "</p>"
    )
    as_of = f'<p class="asof">as of global position {at} (time travel)</p>' if at else ""
    slider = (
        f'<form method="get" action="/runs/{quote(run_id)}" class="travel">'
        f'<label>position <input type="range" name="at" id="travel" min="{first_pos}" '
        f'max="{head_pos}" value="{shown_at}" list="stops"></label>'
        f'<output id="travel-at">{shown_at}</output>'
        '<datalist id="stops">'
        + "".join(f'<option value="{p}">' for p in positions)
        + "</datalist>"
        "<button>Show</button>"
        f'<a href="/runs/{quote(run_id)}">now</a></form>'
    )
    fork = _form(
        f"/runs/{quote(run_id)}/fork",
        csrf,
        f'<input type="hidden" name="at" value="{shown_at}">',
        f"Fork from position {shown_at}",
        "fork",
    )
    tasks = _table(
        ("task", "role", "needs", "status", "attempt", "agent", "tokens", "output / error"),
        _task_rows(state),
        "tasks",
    )
    decide = "" if at else _decide_forms(state, csrf)
    cancel = (
        _form(
            f"/runs/{quote(run_id)}/cancel",
            csrf,
            '<input name="note" placeholder="reason" required>',
            "Cancel run",
            "cancel",
        )
        if not at and not state.terminal
        else ""
    )
    result = (
        f"<h2>Result</h2><pre>{_e(json.dumps(state.result, indent=2, default=str))}</pre>"
        if state.result is not None
        else ""
    )
    live_attr = "1" if live and not at and not state.terminal else "0"
    return (
        f'<section id="run" data-run="{_e(run_id)}" data-live="{live_attr}" '
        f'data-version="{state.version}" data-after="{events[-1].position if events else 0}">'
        + facts + as_of + slider + fork + decide + cancel
        + "<h2>Timeline</h2>"
        + f'<div id="waterfall">{drawn}</div>'
        + "<h2>Tasks</h2>" + f'<div id="graph">{graph.draw(state)}</div>' + tasks
        + "<h2>Token usage and cost</h2>" + used + result
        + f'<h2>Events (<span id="events-count">{len(events)}</span>)</h2>'
        + (
            f'<p>the newest {len(events)}; every one in <a href="/audit?run={quote(run_id)}">'
            "audit search</a></p>"
            if len(events) >= EVENTS_MAX
            else ""
        )
        + _table(EVENT_HEAD, event_rows(events), "events")
        + "</section>"
    )  # fmt: skip


def escalated_row(t: Escalated, csrf: str) -> str:
    return (
        f'<tr data-key="{_e(t.run_id)}/{_e(t.task_id)}" data-task="{_e(t.task_id)}">'
        f'<td><a href="/runs/{quote(t.run_id)}">{_e(t.run_id)}</a></td>'
        f"<td>{_e(t.workflow)}</td><td>{_e(t.task_id)}</td><td>{t.attempt}</td>"
        f"<td>{_e(t.error[:200])}</td><td>{decide_task(t.run_id, t.task_id, csrf)}</td></tr>"
    )


def call_row(c: ToolCallRecord, csrf: str) -> str:
    action = f"/tools/{quote(c.call_id)}/decide"
    fields = (
        '<input name="reason" placeholder="reason" required>'
        f'<input type="hidden" name="agent" value="{_e(c.agent_id)}">'
    )
    return (
        f'<tr data-key="{_e(c.call_id)}" data-call="{_e(c.call_id)}"><td>{_e(c.call_id)}</td>'
        f'<td><a href="/runs/{quote(c.run_id)}">{_e(c.run_id)}</a></td>'
        f"<td>{_e(c.task_id)}</td><td>{_e(c.agent_id)}</td><td>{_e(c.tool)} ({_e(c.risk)})</td>"
        f"<td><code>{_e(c.arguments[:300])}</code></td><td>"
        + _form(
            action, csrf, fields + '<input type="hidden" name="approve" value="1">', "Approve",
            "approve",
        )
        + _form(
            action, csrf, fields + '<input type="hidden" name="approve" value="0">', "Deny",
            "deny",
        )
        + "</td></tr>"
    )  # fmt: skip


def _inbox_table(head: tuple[str, ...], rows: list[str], cls: str, none: str) -> str:
    """A table of what waits, shown even empty (a live page fills it), and what to say
    while it is."""
    table = _table(head, rows, cls)
    if not rows:
        table = table.replace(f'<table class="{cls}">', f'<table class="{cls}" hidden>', 1)
    return table + f'<p class="none"{" hidden" if rows else ""}>{_e(none)}</p>'


def approvals(found: Approvals, csrf: str, follow: bool = False) -> str:
    tasks = [escalated_row(t, csrf) for t in found.tasks]
    calls = [call_row(c, csrf) for c in found.calls]
    live = ' data-follow="/live/approvals"' if follow else ""
    return (
        f'<section id="follow"{live}>'
        "<h2>Escalated tasks</h2>"
        + _inbox_table(("run", "workflow", "task", "attempts", "error", "decide"), tasks,
                       "escalated", "no task waits for a person")
        + "<h2>Tool calls awaiting approval</h2>"
        + _inbox_table(("call", "run", "task", "agent", "tool", "arguments", "decide"), calls,
                       "calls", "no tool call waits for a decision")
        + "</section>"
    )  # fmt: skip


def agent_rows(reply: AgentsReply) -> list[str]:
    return [
        f'<tr data-agent="{_e(a.agent_id)}"><td>{_e(a.agent_id)}</td><td>{_e(a.role)}</td>'
        f"<td>{_e(a.contract_digest[:12] or '-')}</td>"
        f"<td>{a.load}/{a.capacity}</td><td>{a.reported_load}</td>"
        f"<td>{a.heartbeat_age_s:.3f}s</td>"
        f"<td>{_e(', '.join(f'{h.run_id}/{h.task_id}#{h.attempt}' for h in a.held))}</td></tr>"
        for a in reply.agents
    ]


AGENT_HEAD = ("agent", "role", "contract", "load/capacity", "reported load", "heartbeat age",
              "holds")  # fmt: skip


def agents(reply: AgentsReply | None, problem: str, system: list[EventLine],
           follow: bool = False) -> str:  # fmt: skip
    if reply is None:
        live = f"<p>live agents are known only to a running orchestrator: {_e(problem)}</p>"
    else:
        live = _table(AGENT_HEAD, agent_rows(reply), "agents")
    attr = ' data-follow="/live/agents"' if follow and reply is not None else ""
    return (
        f'<section id="follow"{attr}>'
        + live
        + "<h2>Joins, losses and refusals (newest first)</h2>"
        + _table(EVENT_HEAD, event_rows(system), "events system")
        + "</section>"
    )


def audit(q: AuditQuery, lines: list[EventLine], next_after: int,
          verdict: tuple[bool, list[str]] | None, csrf: str) -> str:  # fmt: skip
    """The audit page; with `verdict`, what `audit_verify.check_log` found."""

    def field(name: str, value: object, hint: str = "") -> str:
        return (
            f'<label>{name} <input name="{name}" value="{_e(value)}" placeholder="{hint}"></label>'
        )

    form = (
        '<form method="get" action="/audit" class="filters">'
        + field("run", q.run) + field("actor", q.actor) + field("type", q.type_glob, "task.*")
        + field("text", q.text) + field("since", q.since, "ISO 8601 or Unix s")
        + field("until", q.until, "ISO 8601 or Unix s") + field("limit", q.limit)
        + "<button>Search</button></form>"
    )  # fmt: skip
    verify = _form("/audit/verify", csrf, "", "Verify the log", "verify")
    if verdict is not None:
        holds, said = verdict
        verify += "".join(
            f'<p class="verdict {"ok" if holds else "bad"}">{_e(line)}</p>' for line in said
        )
    more = ""
    if next_after:
        query = {
            "run": q.run, "actor": q.actor, "type": q.type_glob, "text": q.text,
            "since": q.since, "until": q.until, "limit": str(q.limit), "after": str(next_after),
        }  # fmt: skip
        more = f'<p><a class="next" href="/audit?{_e(urlencode(query))}">next page</a></p>'
    return form + verify + _table(EVENT_HEAD, event_rows(lines), "events") + more


def why(ref: str, chain: list[EventLine]) -> str:
    origin = chain[-1] if chain else None
    began = (
        f"<p>the chain began with {_e(origin.causation_id or 'nothing')} "
        f"from {_e(origin.actor)}</p>"
        if origin
        else ""
    )
    return began + _table(EVENT_HEAD, event_rows(chain), "events")


def problem(message: str) -> str:
    return f'<p class="problem" role="alert">{_e(message)}</p>'
