"""`baton ui` over real HTTP against a real stack (tests/console_env.py): the login token,
the session and CSRF checks on every route and action, the refusals of bad input (each
changes nothing), and a person's decision on an escalated task sent from the console
through the orchestrator's API and recorded with that person as its actor."""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "starlette", reason="the console's tests need the ui extra (pip install '.[ui]')"
)

from bus import subjects
from bus.connection import Bus
from bus.protocol import ToolCallRecord
from bus.server import EmbeddedNats
from eventstore import EventQuery, JetStreamEventStore
from orchestrator.cli import history
from orchestrator.cli.console import reads
from orchestrator.cli.console.command import serving
from orchestrator.cli.console.guard import HEADERS
from orchestrator.service import journal, run_summaries
from tests.cluster import baton
from tests.console_env import ESCALATION, RESEARCH, ConsoleEnv, Reply, fetch, login
from tests.console_login import console_login

PAGES = ("/", "/runs/{run}", "/runs/{run}/live", "/approvals", "/agents", "/audit",
         "/why?ref=1", "/live/runs", "/live/approvals", "/live/agents")  # fmt: skip
ACTIONS = {
    "/runs/{run}/tasks/flaky/decide": {"action": "approve", "note": "x", "output": "{}"},
    "/runs/{run}/cancel": {"note": "x"},
    "/runs/{run}/fork": {"at": "{at}"},
    "/tools/call1/decide": {"agent": "agent-1", "approve": "1", "reason": "x"},
    "/audit/verify": {},
    "/logout": {},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEnv]:
    started = ConsoleEnv(tmp_path_factory.mktemp("console") / "state").start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def escalated(env: ConsoleEnv) -> str:
    """A run of examples/escalation whose `flaky` task waits for a person."""
    env.start_agents(ESCALATION)
    run_id = env.start_run(ESCALATION)
    env.call(env.cluster.until(run_id, lambda s: s.tasks["flaky"].status == "escalated"))
    return run_id


def _version(env: ConsoleEnv, run_id: str) -> int:
    return env.call(env.cluster.stack.store.stream_version(journal.run_stream(run_id)))


def _fill(path: str, run_id: str) -> str:
    return path.replace("{run}", run_id)


class Following:
    """A page's live stream (server-sent events), read on a thread of its own: each
    event's kind and data, in order."""

    def __init__(self, env: ConsoleEnv, path: str) -> None:
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._connection = http.client.HTTPConnection("127.0.0.1", env.running.port, timeout=60)
        headers = {"Host": f"127.0.0.1:{env.running.port}", "Cookie": f"baton_console={env.cookie}"}
        self._connection.request("GET", path, headers=headers)
        self._response = self._connection.getresponse()
        assert self._response.status == 200, self._response.read()
        assert self._response.getheader("content-type", "").startswith("text/event-stream")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = ""
        try:
            for raw in self._response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.put((kind, json.loads(line[6:])))
        except (OSError, ValueError, AttributeError):
            return  # closed (http.client drops its file at close: AttributeError)

    def until(self, kind: str, test: Callable[[Any], bool], timeout: float = 30) -> Any:
        """The first event of `kind` whose data passes `test` (AssertionError after
        `timeout` seconds without one)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} event passing the test in {timeout}s") from None
            if got == kind and test(data):
                return data

    def close(self) -> None:
        self._connection.close()


def test_the_login_token_works_once_and_nothing_is_served_without_a_session(
    env: ConsoleEnv, escalated: str
) -> None:
    token = env.running.console.guard.renew()
    wrong = env.get("/login?token=" + "x" * len(token), cookie="")
    assert wrong.status == 403
    assert "set-cookie" not in wrong.headers
    cookie = env.login(env.running.login_url)
    assert cookie
    assert cookie != env.cookie
    again = env.get(f"/login?token={token}", cookie="")
    assert again.status == 403, "a login token is spent by its first use"
    for page in PAGES:
        reply = env.get(_fill(page, escalated), cookie="")
        assert reply.status == 401, (page, reply.status)
        assert "open the login URL" in reply.text
        forged = env.get(_fill(page, escalated), cookie="forged-session")
        assert forged.status == 401, page
    for action, form in ACTIONS.items():
        reply = env.post(_fill(action, escalated), form, cookie="")
        assert reply.status == 401, action
    static = env.get("/static/console.js", cookie="")
    assert static.status == 200
    assert "EventSource" in static.text


def test_logging_out_ends_that_session_only(env: ConsoleEnv) -> None:
    env.running.console.guard.renew()
    other = env.login(env.running.login_url)
    csrf = env.csrf_of(env.get("/", cookie=other).text)
    out = env.request("POST", "/logout", {"csrf": csrf}, cookie=other)
    assert out.status == 200
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert env.get("/", cookie=other).status == 401
    assert env.get("/").status == 200, "the other session goes on"


def test_every_response_has_the_security_headers_and_a_foreign_host_is_refused(
    env: ConsoleEnv, escalated: str
) -> None:
    for page in ("/", f"/runs/{escalated}", "/static/console.css", "/login"):
        reply = env.get(page)
        for name, value in HEADERS.items():
            assert reply.headers.get(name) == value, (page, name)
    rebound = env.get("/", headers={"Host": "evil.example:80"})
    assert rebound.status == 400
    assert "own address" in rebound.text
    page = env.get(f"/runs/{escalated}").text
    assert "<script>" not in page
    assert 'src="/static/console.js"' in page
    token = env.running.console.guard.renew()
    page = env.get(f"/runs/{escalated}").text
    assert token not in page, "no login token in a page"
    assert "lease_token&quot;:&quot;(hidden)" in page.replace('"', "&quot;")
    state = env.call(journal.load_run(env.cluster.stack.store, escalated))
    leases = [t.lease_token for t in state.tasks.values() if t.lease_token]
    assert leases, "an attempt holds a lease"
    assert not any(lease in page for lease in leases), "no lease token in a page"
    where = env.running.console.live.where
    assert where is not None
    assert "@" in where.url
    password = where.url.rpartition("@")[0].rpartition(":")[2]
    assert len(password) > 8
    assert password not in page, "no NATS password in a page"
    assert where.url.rpartition("@")[2] in page, "the server it acts on is shown"


def test_every_action_needs_the_sessions_csrf_token_and_origin_and_changes_nothing(
    env: ConsoleEnv, escalated: str
) -> None:
    before = _version(env, escalated)
    at = str(env.call(env.cluster.stack.store.last_position()))
    for action, form in ACTIONS.items():
        path = _fill(action, escalated)
        filled = {k: v.replace("{at}", at) for k, v in form.items()}
        missing = env.request("POST", path, filled)
        assert missing.status == 403, (action, missing.status)
        assert "CSRF" in missing.text, action
        wrong = env.request("POST", path, {**filled, "csrf": "not-the-token"})
        assert wrong.status == 403, action
        foreign = env.post(path, filled, headers={"Origin": "http://evil.example"})
        assert foreign.status == 403, action
        assert "not sent from the console" in foreign.text, action
        other = env.request("POST", path, None, {"Content-Type": "application/json"})
        assert other.status == 400, action
        assert "x-www-form-urlencoded" in other.text, action
        read_only = env.get(path)
        assert read_only.status == 405, action
    assert _version(env, escalated) == before
    runs = env.call(env.cluster.stack.store.streams(journal.RUN_PREFIX))
    assert len(runs) == 1, "no fork was made"


BAD_PAGES = {
    "/?status=bogus": "status: one of",
    "/?size=0": "size: must be 1 to 200",
    "/?size=abc": "size: 'abc' is not a whole number",
    "/?since=yesterday": "neither a position",
    "/?until=tomorrow": "neither a position",
    "/runs/no-such-run": "no run 'no-such-run'",
    "/runs/a.b": "invalid subject token",
    "/runs/{run}?at=1": "had not started yet",
    "/runs/{run}?at=soon": "neither a position",
    "/audit?limit=0": "limit: must be 1 to 1000",
    "/audit?after=-1": "after: '-1' is not a whole number",
    "/audit?run=nope": "no run 'nope'",
    "/audit?since=never": "neither a position",
    "/why": "ref: an event id or a global position",
    "/why?ref=999999": "no event '999999'",
    "/runs/no-such-run/live": "no run 'no-such-run'",
    "/runs/{run}/live?after=abc": "after: 'abc' is not a whole number",
    "/live/runs?status=bogus": "status: one of",
    "/live/runs?since=yesterday": "neither a position",
}


def test_bad_input_on_every_page_is_a_clear_refusal(env: ConsoleEnv, escalated: str) -> None:
    for page, said in BAD_PAGES.items():
        reply = env.get(_fill(page, escalated))
        assert reply.status in (400, 404), (page, reply.status)
        assert said.replace("'", "&#x27;") in reply.text, (page, reply.text[-600:])


def test_bad_input_on_every_action_is_refused_and_changes_nothing(
    env: ConsoleEnv, escalated: str
) -> None:
    before = _version(env, escalated)
    decide = f"/runs/{escalated}/tasks/flaky/decide"
    refused = {
        (decide, "action=bogus"): ({"action": "bogus", "note": "x"}, 400, "action: one of"),
        (decide, "output"): ({"action": "approve", "output": "[1]"}, 400, "output"),
        (decide, "no JSON"): ({"action": "approve", "output": "{"}, 400, "output"),
        (f"/runs/{escalated}/tasks/finish/decide", "task"): (
            {"action": "approve", "note": "x"}, 409, "finish"),
        (f"/runs/{escalated}/tasks/a.b/decide", "token"): (
            {"action": "approve"}, 400, "invalid subject token"),
        (f"/runs/{escalated}/fork", "at"): ({"at": "abc"}, 400, "at: a global position"),
        (f"/runs/{escalated}/fork", "before"): ({"at": "1"}, 400, "had not started yet"),
        ("/runs/nope/fork", "run"): ({"at": "5"}, 404, "no run"),
        ("/tools/c1/decide", "approve"): ({"agent": "a", "approve": "2"}, 400, "approve: 1"),
        ("/tools/c1/decide", "agent"): ({"agent": "a.b", "approve": "1"}, 400, "invalid subject"),
        ("/tools/c1/decide", "waiting"): ({"agent": "ghost", "approve": "1"}, 503, "no agent"),
    }  # fmt: skip
    for (path, what), (form, status, said) in refused.items():
        reply = env.post(path, form)
        assert reply.status == status, (what, reply.status, reply.text[-500:])
        assert said in reply.text, (what, reply.text[-500:])
    big = env.post(decide, {"action": "approve", "note": "n" * 70000})
    assert big.status == 400
    assert "body: at most" in big.text
    assert _version(env, escalated) == before, "a refused action changed nothing"
    assert len(env.call(env.cluster.stack.store.streams(journal.RUN_PREFIX))) == 1


def test_approving_an_escalated_task_goes_through_the_api_as_the_person(
    env: ConsoleEnv, escalated: str
) -> None:
    person = env.running.console.live.actor
    assert person.startswith("human:")
    approvals = env.get("/approvals").text
    assert 'data-task="flaky"' in approvals
    assert escalated in approvals
    inbox = Following(env, "/live/approvals")
    runs = Following(env, "/live/runs")
    key = f"{escalated}/flaky"
    run_page = Following(env, f"/runs/{escalated}/live?after=0")
    first = run_page.until("extras", lambda d: True)
    assert ">task.escalated<" in first["events"]
    assert '<svg class="waterfall"' in first["waterfall"]
    assert first["ended"] is False
    assert first["usage"].startswith('<table class="usage">'), "the tokens and their cost"
    inbox.until("approvals", lambda d: key in [k for k, _ in d["tasks"]])
    runs.until("rows", lambda rows: any(r["run"] == escalated for r in rows))
    reply = env.post(
        f"/runs/{escalated}/tasks/flaky/decide",
        {"action": "approve", "note": "checked by hand", "output": '{"fixed": true}'},
    )
    assert reply.status == 303
    assert reply.headers["location"] == f"/runs/{escalated}"
    state = env.call(env.cluster.until(escalated, lambda s: s.status == "completed"))
    assert state.tasks["flaky"].output == {"fixed": True}
    # the pages that follow what moves saw it, pushed from the bus
    inbox.until("approvals", lambda d: key not in [k for k, _ in d["tasks"]])
    ended = runs.until("rows", lambda rows: any(
        r["run"] == escalated and ">completed<" in r["html"] for r in rows))  # fmt: skip
    assert any(">2/2<" in r["html"] for r in ended if r["run"] == escalated)
    lines: list[str] = []

    def the_end(extras: Any) -> bool:
        lines.append(extras.get("events", ""))  # each push brings the lines after the last
        return bool(extras["ended"])

    last = run_page.until("extras", the_end)
    assert ">human.decided<" in "".join(lines)
    assert ">run.completed<" in "".join(lines)
    assert '<g class="succeeded" data-task="finish">' in last["waterfall"]
    inbox.close()
    runs.close()
    run_page.close()
    page = env.get(f"/runs/{escalated}").text
    assert f"approve of task flaky recorded by {person}" in page
    assert page.count('<g class="failed" data-task="flaky">') == 2, "two failed attempts drawn"
    assert page.count('<g class="succeeded" data-task="finish">') == 1
    decided = env.call(
        env.cluster.stack.store.query(
            EventQuery(stream=journal.run_stream(escalated), type_glob="human.decided")
        )
    )
    assert [e.actor for e in decided] == [person]
    assert b"checked by hand" in decided[0].data
    again = env.post(f"/runs/{escalated}/tasks/flaky/decide", {"action": "retry", "note": "x"})
    assert again.status == 409, "the run is over: the orchestrator refuses, and says why"


def test_the_runs_list_filters_and_pages(env: ConsoleEnv, escalated: str) -> None:
    env.start_agents(RESEARCH)
    second = env.start_run(RESEARCH)
    env.call(env.cluster.until(second, lambda s: s.status == "completed"))
    both = env.get("/").text
    assert both.index(second) < both.index(escalated), "newest first"
    assert "5/5" in both
    assert "research-brief" in both
    only = env.get("/?workflow=escalation").text
    assert escalated in only
    assert second not in only
    assert second in env.get(f"/?text={second[-6:]}").text
    assert "no run matches" in env.get("/?status=failed").text
    state = env.call(journal.load_run(env.cluster.stack.store, second))
    assert "no run matches" in env.get(f"/?since={state.started_at + 1}").text
    before = env.get(f"/?until={state.started_at}").text
    assert escalated in before
    assert second not in before
    first_page = env.get("/?size=1").text
    assert second in first_page
    assert escalated not in first_page
    assert f"before={second}" in first_page
    older = env.get(f"/?size=1&before={second}").text
    assert escalated in older
    assert "older runs" not in older


def test_the_run_summaries_the_runs_list_reads_are_the_fold_of_each_run(
    env: ConsoleEnv, escalated: str
) -> None:
    """The console's projector keeps the rows beside the log; once it has caught up, each
    is exactly the fold of its run, and the runs list folds none."""
    store = env.cluster.stack.store
    summaries = env.running.console.summaries
    assert summaries.port is not None

    async def caught_up() -> dict[str, run_summaries.RunSummary]:
        assert summaries.port is not None
        async with asyncio.timeout(30):
            while await summaries.port.checkpoint(summaries.name) < await store.last_position():
                await asyncio.sleep(0.05)
        rows = await summaries.port.items(summaries.name)
        return {k: run_summaries.decode(v) for k, v in rows}

    rows = env.call(caught_up())
    runs = [journal.run_id_of(s) for s in env.call(store.streams(journal.RUN_PREFIX))]
    assert escalated in runs
    folded = {r: run_summaries.summary_of(env.call(journal.load_run(store, r))) for r in runs}
    assert rows == folded
    before = summaries.folded
    assert escalated in env.get("/").text
    assert summaries.folded == before, "every row read from the projection"


def test_baton_serve_ui_serves_the_console_beside_the_orchestrator(tmp_path: Path) -> None:
    server = subprocess.Popen(
        baton("serve", "--ui", "--ui-port", "0", "--state-dir", str(tmp_path / "state")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        said, port, cookie = console_login(server)
        assert "baton: serving on NATS" in said
        assert re.search(r"acting as human:\S+ on nats://127\.0\.0\.1:\d+\n", said), said
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/agents", headers={"Cookie": cookie})
        page = connection.getresponse()
        assert page.status == 200
        assert "<h1>Agents</h1>" in page.read().decode(), "the live agents, asked of the bus"
        connection.close()
    finally:
        server.terminate()
        server.wait(30)


def test_the_same_pages_on_the_jetstream_store(
    env: ConsoleEnv, escalated: str, tmp_path: Path
) -> None:
    """The escalated run, exported and imported into a JetStream store on its own
    nats-server, read by a console on that store: every page, time travel and a fork."""
    server = EmbeddedNats(tmp_path / "nats")

    async def scenario() -> None:
        url = await server.start()
        store = await JetStreamEventStore.open(url, timeout=5.0)
        try:
            origin = await history.run_events(env.cluster.stack.store, escalated)
            await history.import_lines(store, list(history.export_lines(escalated, origin)))
            positions = await reads.run_positions(store, escalated)
            async with serving(store, None, "human:tester", shown_store="jetstream") as running:
                port = running.port
                cookie = await asyncio.to_thread(login, port, running.login_url)

                def get(path: str) -> Reply:
                    return fetch(port, "GET", path, cookie=cookie)

                state = await journal.load_run(store, escalated)
                done = sum(t.status == "succeeded" for t in state.tasks.values())
                listed = await asyncio.to_thread(get, "/")
                assert escalated in listed.text
                assert f"<td>{done}/2</td>" in listed.text
                page = await asyncio.to_thread(get, f"/runs/{escalated}")
                assert f'id="run-status">{state.status}<' in page.text
                middle = positions[len(positions) // 2]
                past = await asyncio.to_thread(get, f"/runs/{escalated}?at={middle}")
                assert f"as of global position {middle}" in past.text
                audit = await asyncio.to_thread(get, f"/audit?run={escalated}&type=task.esc*")
                assert ">task.escalated<" in audit.text
                why = await asyncio.to_thread(get, f"/why?ref={positions[-1]}")
                assert why.status == 200
                csrf = ConsoleEnv.csrf_of(page.text)
                verified = await asyncio.to_thread(
                    fetch, port, "POST", "/audit/verify", {"csrf": csrf}, cookie=cookie
                )
                assert "hash chain: ok" in verified.text
                fork = {"csrf": csrf, "at": str(middle)}
                forked = await asyncio.to_thread(
                    fetch, port, "POST", f"/runs/{escalated}/fork", fork, cookie=cookie
                )
                assert forked.status == 303
                new_id = forked.headers["location"].rpartition("/")[2]
                state = await journal.load_run(store, new_id)
                assert state.forked_from == f"{escalated}@{middle}"
        finally:
            await store.close()

    try:
        env.call(scenario())
    finally:
        server.stop()


def test_a_tool_call_is_approved_from_the_console_as_the_person(env: ConsoleEnv) -> None:
    """The decision goes to the waiting agent as `baton tool approve` sends it, and the
    agent receives the console's person as the one who decided."""
    from agents.gateway import HumanApprover, Verdict
    from agents.tools import ToolRegistry
    from bus.codec import encode

    tools = ToolRegistry()

    @tools.tool(risk="high", needs_approval=True)
    async def publish(title: str) -> str:
        return title

    record = ToolCallRecord("run-t", "s", 1, "agent-t", "call-t1", "publish", "awaiting", "high")

    async def waiting() -> tuple[Bus, asyncio.Task[Verdict]]:
        agent = await Bus.connect(env.cluster.stack.agent_url("agent-t", "publisher"), "agent-t")
        asked = HumanApprover(agent, timeout_s=30).decide(record, tools.get("publish"))
        return agent, asyncio.create_task(asked)

    inbox = Following(env, "/live/approvals")
    inbox.until("approvals", lambda d: "call-t1" not in [k for k, _ in d["calls"]])

    async def prompted() -> None:  # as the orchestrator passes a checked request on
        await env.cluster.stack.bus.publish(subjects.tool_prompt("run-t"), encode(record))

    env.call(prompted())
    shown = inbox.until("approvals", lambda d: "call-t1" in [k for k, _ in d["calls"]])
    assert "publish (high)" in dict(shown["calls"])["call-t1"], "pushed to the open inbox"
    agent, verdict = env.call(waiting())
    try:
        form = {"agent": "agent-t", "approve": "1", "reason": "fine by me"}
        deadline = time.monotonic() + 10
        reply = env.post("/tools/call-t1/decide", form)
        while reply.status == 503 and time.monotonic() < deadline:  # until it subscribed
            reply = env.post("/tools/call-t1/decide", form)
        assert reply.status == 303, reply
        assert reply.headers["location"] == "/approvals"
        decided = env.call(asyncio.wait_for(asyncio.shield(verdict), 10))
        assert decided.approve
        assert decided.by == env.running.console.live.actor
        assert decided.reason == "fine by me"
        assert "tool call call-t1 approved" in env.get("/approvals").text
        again = env.post("/tools/call-t1/decide", form)
        assert again.status in (409, 503), "decided once: no second decision is taken"
        inbox.until("approvals", lambda d: "call-t1" not in [k for k, _ in d["calls"]])
        assert 'data-call="call-t1"' not in env.get("/approvals").text, "gone once decided"
    finally:
        inbox.close()
        env.call(agent.close())


def test_the_agents_page_follows_agents_joining(env: ConsoleEnv, escalated: str) -> None:
    """An agent that joins (or is refused: the escalation example's contracts may not
    know its role) reaches an open agents page from the bus, with its record."""
    from bus.codec import encode
    from bus.protocol import Heartbeat

    agents = Following(env, "/live/agents")
    try:
        first = agents.until("agents", lambda d: "data-agent=" in d["agents"])
        assert "agent-joining" not in first["agents"] + first["system"]

        async def join() -> None:
            url = env.cluster.stack.agent_url("agent-joining", "checker")
            agent = await Bus.connect(url, "agent-joining")
            try:
                beat = Heartbeat("agent-joining", "checker", [], 1, 0, instance="i1")
                await agent.publish(subjects.heartbeat("agent-joining"), encode(beat))
                await agent.flush()
            finally:
                await agent.close()

        env.call(join())
        joined = agents.until("agents", lambda d: "agent-joining" in d["system"])
        assert "agent.joined" in joined["system"] or "agent.refused" in joined["system"]
    finally:
        agents.close()


def test_a_console_started_before_the_orchestrator_connects_when_it_appears(
    env: ConsoleEnv,
) -> None:
    """`find` is how `baton ui` looks for the bus again: nothing at first, then the
    state directory's running server, found with the person's credentials."""
    from orchestrator.cli.console.live import Live
    from orchestrator.cli.reach import reach

    running = [False]

    async def scenario() -> tuple[str, str, str, int]:
        live = Live(None, "human:someone", lambda: reach("", env.directory) if running[0] else None)
        await live.start()
        before = live.problem
        await live.ensure()
        assert live.bus is None, "nothing to find yet"
        running[0] = True
        await live.ensure()
        try:
            agents = await live.agents()
            return before, live.actor, live.problem, len(agents.agents)
        finally:
            await live.close()

    before, actor, problem, _ = env.call(scenario())
    assert before == "no running orchestrator found"
    assert actor == env.running.console.live.actor, "the identity its credentials name"
    assert problem == ""


def test_audit_search_filters_and_pages(env: ConsoleEnv, escalated: str) -> None:
    def positions(page: str) -> list[int]:
        return [int(p) for p in re.findall(r'<tr id="ev(\d+)">', page)]

    first = env.get(f"/audit?run={escalated}&limit=2").text
    assert len(positions(first)) == 2
    after = re.search(r'href="/audit\?[^"]*after=(\d+)"', first)
    assert after, "a next page"
    assert int(after.group(1)) == positions(first)[-1]
    second = env.get(f"/audit?run={escalated}&limit=2&after={after.group(1)}").text
    assert min(positions(second)) > positions(first)[-1]
    typed = env.get(f"/audit?run={escalated}&type=task.escalated").text
    assert len(positions(typed)) == 1
    assert ">task.escalated<" in typed
