"""The console in a real headless Chromium (Debian's, driven by Playwright with the system
browser): a live run of examples/research turns succeeded on the page without a reload;
an escalated task of examples/escalation is approved from the page and the run
completes; the time-travel slider shows what `baton replay --until` shows, and the page
forks from there; audit search, verify and the agents page. A screenshot of each page is
saved in the test's temporary directory."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

pytest.importorskip("starlette", reason="the console needs the ui extra (pip install '.[ui]')")

from orchestrator.core.workflow import StepSpec, WorkflowSpec
from tests.cluster import baton
from tests.console_env import ESCALATION, RESEARCH, ConsoleEnv, JetStreamConsoleEnv
from tests.programs import CHROMIUM, need_browser

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEnv]:
    need_browser()
    started = ConsoleEnv(tmp_path_factory.mktemp("console-browser") / "state").start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def page(env: ConsoleEnv) -> Iterator[Any]:
    """A logged-in page of headless Chromium (its own one-time login link)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()  # the context can open a second tab on this session
            env.running.console.guard.renew()
            tab.goto(env.running.login_url)
            assert tab.url == f"{env.running.base}/", "the login lands on the runs list"
            yield tab
        finally:
            browser.close()


def _until_completed(page: Any) -> None:
    """Until the page itself says the run completed (the live update, no reload)."""
    from playwright.sync_api import expect

    expect(page.locator("#run-status")).to_have_text("completed", timeout=WAIT_MS)


class Watched(NamedTuple):
    run_id: str
    statuses: dict[str, str]
    reloaded: bool
    delays: list[float]
    pushed: dict[str, int]
    """Event lines and waterfalls the live pushes brought (`window.batonPushed`)."""
    graph: dict[str, str]
    """Each task graph node's state at the end."""


def _statuses(page: Any) -> dict[str, str]:
    found: dict[str, str] = page.eval_on_selector_all(
        "table.tasks tbody tr",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.task, "
        "r.querySelector('td.st').textContent]))",
    )
    return found


@pytest.fixture(scope="module")
def watched(env: ConsoleEnv, page: Any, tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """A research run opened before its agents exist, then watched to its end."""
    run_id = env.start_run(RESEARCH)
    page.goto(f"{env.running.base}/runs/{run_id}")
    page.wait_for_selector('#run[data-live="following"]', timeout=WAIT_MS)
    assert set(_statuses(page).values()) <= {"pending"}, "no agent has started yet"
    page.evaluate("window.sameDocument = true")
    env.start_agents(RESEARCH)
    _until_completed(page)
    # once ended, the rest of the run's section is read again in place
    page.wait_for_selector('#run[data-live="ended"] svg.waterfall g.succeeded', timeout=WAIT_MS)
    shots = tmp_path_factory.mktemp("screenshots")
    page.screenshot(path=str(shots / "run-live.png"), full_page=True)
    reloaded = page.evaluate("window.sameDocument !== true")
    delays = [float(d) for d in page.evaluate("window.batonDelays")]
    page.wait_for_function("window.batonPushed.succeededDrawn === 5", timeout=WAIT_MS)
    pushed = page.evaluate("window.batonPushed")
    graph: dict[str, str] = page.eval_on_selector_all(
        "svg.graph g[data-node]",
        "nodes => Object.fromEntries(nodes.map(n => [n.dataset.node, "
        "n.getAttribute('class').replace('node st ', '')]))",
    )
    return Watched(run_id, _statuses(page), reloaded, delays, pushed, graph)


def test_a_live_run_turns_succeeded_without_a_reload(watched: Watched, tmp_path: Path) -> None:
    assert not watched.reloaded, "the page was updated in place"
    assert len(watched.statuses) == 5
    assert set(watched.statuses.values()) == {"succeeded"}
    assert watched.delays, "states were pushed after the page opened"
    assert watched.pushed["events"] > 0, "the run's new events came with the pushes"
    assert watched.pushed["waterfalls"] > 0, "so did its waterfall"
    assert watched.pushed["graphSucceeded"] == 5, "the graph's nodes turned with the pushes"
    assert watched.graph == watched.statuses, "and the graph drawn at the end agrees"
    figures = {
        "pushes": len(watched.delays),
        "median_append_to_page_ms": round(statistics.median(watched.delays) * 1000, 1),
        "max_ms": round(max(watched.delays) * 1000, 1),
    }
    (tmp_path / "append-to-page.json").write_text(json.dumps(figures))
    print(f"append-to-page delay: {figures}")


def test_an_escalated_task_is_approved_from_the_page(
    env: ConsoleEnv, page: Any, tmp_path: Path
) -> None:
    env.start_agents(ESCALATION)
    # the approvals inbox, open before the run starts, shows the escalation when it comes
    inbox = page.context.new_page()
    inbox.goto(f"{env.running.base}/approvals")
    inbox.wait_for_selector('#follow[data-live="following"]', timeout=WAIT_MS)
    inbox.evaluate("window.sameDocument = true")
    run_id = env.start_run(ESCALATION)
    page.goto(f"{env.running.base}/runs/{run_id}")
    page.evaluate("window.sameDocument = true")
    # the task fails twice and escalates while the page is open: its decision forms come
    page.wait_for_selector(
        '#run[data-live="following"] .decide[data-task="flaky"]', timeout=WAIT_MS
    )
    assert page.evaluate("window.sameDocument === true"), "no reload"
    assert _statuses(page)["flaky"] == "escalated"
    page.screenshot(path=str(tmp_path / "escalated.png"), full_page=True)
    row = inbox.locator(f'table.escalated tr[data-key="{run_id}/flaky"]')
    row.wait_for(timeout=WAIT_MS)
    assert inbox.evaluate("window.sameDocument === true"), "the inbox was not reloaded"
    approve = row.locator("form.approve")
    approve.locator('input[name="note"]').fill("looked at it: fine")
    approve.locator('input[name="output"]').fill('{"fixed": true}')
    inbox.screenshot(path=str(tmp_path / "approvals.png"), full_page=True)
    approve.locator("button").click()
    inbox.wait_for_url(f"{env.running.base}/runs/{run_id}", timeout=WAIT_MS)
    said = inbox.locator(".said").text_content() or ""
    assert re.match(r"approve of task flaky recorded by human:\S+; run \S+ is running", said)
    _until_completed(page)
    _until_completed(inbox)
    assert _statuses(page) == {"flaky": "succeeded", "finish": "succeeded"}
    page.screenshot(path=str(tmp_path / "approved.png"), full_page=True)
    inbox.close()


def _replayed(env: ConsoleEnv, run_id: str, at: int) -> dict[str, str]:
    out = subprocess.run(
        baton("replay", run_id, "--until", str(at), "--state-dir", str(env.directory)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("output\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0]: line.split()[1] for line in table.splitlines() if line.strip()}


def _run_events(env: ConsoleEnv, run_id: str) -> list[dict[str, Any]]:
    """The run's own stream's events, as `baton audit --json` lists them."""
    where = ["--state-dir", str(env.directory)]
    out = subprocess.run(
        baton("audit", "--run", run_id, "--json", "--limit", "100000", *where),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    stream = next(e["stream"] for e in events if e["type"] == "run.started")
    return [e for e in events if e["stream"] == stream]


def _last_copy(env: ConsoleEnv, origin: str, at: int, forked: str) -> int:
    """The global position of the fork's copy of the origin's last event up to `at` (the
    fork starts with the origin's `run.started`, then its `run.forked` link, then the
    copies of the rest, in one append)."""
    copied = [e for e in _run_events(env, origin) if e["position"] <= at]
    fork = _run_events(env, forked)
    assert [e["type"] for e in fork[:2]] == ["run.started", "run.forked"]
    assert [e["type"] for e in fork[2 : len(copied) + 1]] == [e["type"] for e in copied[1:]]
    return int(fork[len(copied)]["position"])


def test_the_time_travel_slider_shows_what_replay_until_shows_and_forks_from_there(
    env: ConsoleEnv, page: Any, watched: Watched, tmp_path: Path
) -> None:
    page.goto(f"{env.running.base}/runs/{watched.run_id}")
    stops = [
        int(v) for v in page.eval_on_selector_all("#stops option", "os => os.map(o => o.value)")
    ]
    assert len(stops) > 10
    middle = stops[len(stops) // 2]
    page.eval_on_selector(
        "#travel", "(el, at) => { el.value = at; el.dispatchEvent(new Event('change')); }", middle
    )
    page.wait_for_url(re.compile(rf"/runs/{watched.run_id}\?at={middle}$"), timeout=WAIT_MS)
    shown = _statuses(page)
    assert f"as of global position {middle}" in (page.locator(".asof").text_content() or "")
    assert shown == _replayed(env, watched.run_id, middle)
    assert set(shown.values()) != {"succeeded"}, "the past differs from the end"
    page.screenshot(path=str(tmp_path / "time-travel.png"), full_page=True)
    page.locator("form.fork button").click()
    page.wait_for_url(re.compile(r"/runs/(?!" + watched.run_id + r")[\w-]+$"), timeout=WAIT_MS)
    forked = page.url.rpartition("/")[2]
    said = page.locator(".said").text_content() or ""
    start = re.match(rf"forked run {forked} from {watched.run_id} at position (\d+)", said)
    assert start is not None, said
    at = int(start[1])  # the end of the decision `middle` falls inside, if it does
    assert at == middle or f"(position {middle} falls inside one decision" in said, said
    assert f"{watched.run_id}@{at}" in (page.locator(".facts").text_content() or "")
    # what the fork copied is the run as it was at `at`: the fork replayed to its last copy
    # (the serving orchestrator carries the fork on within seconds, past what it copied)
    then = _replayed(env, watched.run_id, at)
    assert _replayed(env, forked, _last_copy(env, watched.run_id, at, forked)) == then
    done = sum(status == "succeeded" for status in then.values())
    assert f": {done}/{len(then)} tasks done;" in said, said
    page.screenshot(path=str(tmp_path / "forked.png"), full_page=True)


def test_audit_search_verify_and_the_agents_page(
    env: ConsoleEnv, page: Any, watched: Watched, tmp_path: Path
) -> None:
    page.goto(f"{env.running.base}/audit")
    page.fill('input[name="run"]', watched.run_id)
    page.fill('input[name="type"]', "task.*")
    page.locator("form.filters button").click()
    page.wait_for_url(re.compile(r"/audit\?"), timeout=WAIT_MS)
    types = page.eval_on_selector_all(
        "table.events tbody tr", "rows => rows.map(r => r.children[3].textContent)"
    )
    assert types
    assert all(t.startswith("task.") for t in types)
    assert "task.succeeded" in types
    page.screenshot(path=str(tmp_path / "audit.png"), full_page=True)
    page.locator("form.verify button").click()
    page.wait_for_selector(".verdict", timeout=WAIT_MS)
    said = page.eval_on_selector_all(".verdict", "ps => ps.map(p => p.textContent)")
    chain, anchor, snapshots = said  # what baton audit verify prints, line for line
    assert re.match(r"hash chain: ok \(\d+ events checked\)", chain)
    assert re.match(r"snapshots: ok \(\d+ checked\)", snapshots)
    kept = env.directory / "checkpoints.jsonl"  # signed by the orchestrator at each run's end
    signed = re.match(
        rf"anchor: ok \((\d+) signed checkpoint\(s\) in {re.escape(str(kept))} ", anchor
    )
    assert signed is not None, anchor
    assert 1 <= int(signed[1]) <= len(kept.read_text().splitlines()), "(a run may end meanwhile)"
    page.goto(f"{env.running.base}/agents")
    roles = page.eval_on_selector_all(
        "table.agents tbody tr", "rows => rows.map(r => r.children[1].textContent)"
    )
    assert {"planner", "researcher", "writer"} <= set(roles), "the watched run's agents"
    page.screenshot(path=str(tmp_path / "agents.png"), full_page=True)
    page.goto(f"{env.running.base}/")
    assert watched.run_id in (page.locator("table.runs").text_content() or "")
    page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)


CHAIN = WorkflowSpec(
    "chain",
    [StepSpec(f"s{i}", role="worker", needs=[f"s{i - 1}"] if i else []) for i in range(4)],
)


def test_a_live_run_on_the_jetstream_store_turns_succeeded_without_a_reload(
    page: Any, tmp_path: Path
) -> None:
    """The same live run page with the log on JetStream: the console folds the run from
    that store and follows its progress on the bus."""
    jet = JetStreamConsoleEnv(tmp_path / "state").start()
    try:
        tab = page.context.browser.new_context().new_page()
        jet.running.console.guard.renew()  # start() spent the first login link
        tab.goto(jet.running.login_url)
        run_id = jet.start_workflow(CHAIN)
        tab.goto(f"{jet.running.base}/runs/{run_id}")
        tab.wait_for_selector('#run[data-live="following"]', timeout=WAIT_MS)
        assert set(_statuses(tab).values()) <= {"pending"}, "no agent serves the role yet"
        tab.evaluate("window.sameDocument = true")
        jet.start_worker(step_s=0.1)
        _until_completed(tab)
        tab.wait_for_selector('#run[data-live="ended"] svg.waterfall g.succeeded', timeout=WAIT_MS)
        assert tab.evaluate("window.sameDocument === true"), "updated in place"
        assert _statuses(tab) == {f"s{i}": "succeeded" for i in range(4)}
        assert "jetstream" in (tab.locator("header .where").text_content() or "")
        tab.goto(f"{jet.running.base}/")
        assert "<td>4/4</td>" in tab.content(), "the runs list, from the projection or the fold"
        tab.screenshot(path=str(tmp_path / "jetstream-run.png"), full_page=True)
        tab.context.close()
    finally:
        jet.close()
