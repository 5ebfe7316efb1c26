"""The views people read: `baton trace` (terminal and HTML, from the log alone, also for an
imported log), the HTML rendered by a real headless Chromium, and `baton status` /
`baton agents` asked of a running orchestrator over `baton.api.*`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.protocol import ErrorReply
from eventstore import StoredEvent
from orchestrator.cli import trace_html, trace_view
from orchestrator.cli.trace_model import build
from orchestrator.core.events import RunStarted
from orchestrator.core.events import encode as encode_event
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.api import StatusReply
from tests.cluster import REPO, baton, cluster
from tests.programs import CHROMIUM, need_browser

FLAKY = WorkflowSpec(
    name="flaky",
    agents=[
        AgentSpec(role="noop", handler="agents.builtin:noop"),
        AgentSpec(role="worker", handler="agents.builtin:fail", count=2),
        AgentSpec(role="sleeper", handler="agents.builtin:sleep"),
    ],
    steps=[
        StepSpec(id="first", role="noop"),
        StepSpec(id="doomed", role="worker", needs=["first"], max_attempts=2),
        StepSpec(id="slow", role="sleeper", needs=["first"], params={"seconds": 5}),
        StepSpec(id="after", role="noop", needs=["doomed", "slow"]),
    ],
)


def _dump_dom(page: Path) -> str:
    """The DOM after the page's scripts ran, from Debian's headless Chromium."""
    need_browser()
    with tempfile.TemporaryDirectory(prefix="baton-chromium-") as profile:
        done = subprocess.run(
            [
                str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                "--dump-dom", page.resolve().as_uri(),
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def flaky_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One recorded run with a retried, then failed task, a cancelled one and a success."""
    directory = tmp_path_factory.mktemp("trace")

    async def scenario() -> str:
        async with cluster(directory / "state") as c:
            await c.add_agents(FLAKY.agents)
            run_id = await c.orchestrator.start_run(FLAKY)
            state = await c.orchestrator.wait(run_id, timeout=60)
            assert state.status == "failed"
            return run_id

    return directory / "state", asyncio.run(scenario())


def test_terminal_waterfall_marks_retries_failures_and_cancellations(
    flaky_run: tuple[Path, str],
) -> None:
    state, run_id = flaky_run
    out = subprocess.run(
        baton("trace", run_id, "--state-dir", str(state)), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"run {run_id}  workflow flaky  failed in ")
    rows = {
        line.split()[0] + line.split()[1]: line for line in text.splitlines()[5:] if "#" in line
    }
    assert set(rows) == {"first#1", "doomed#1", "doomed#2", "slow#1"}
    assert "█" in rows["first#1"]
    assert "✗ error: doomed fails on purpose, retried" in rows["doomed#1"]
    assert "✗ error: doomed fails on purpose" in rows["doomed#2"]
    assert "retried" not in rows["doomed#2"]
    assert rows["slow#1"].rstrip().endswith("cancelled")
    assert "task failed: doomed fails on purpose (after 2 attempts)" in text
    assert re.search(r"^  after\s+-\s+cancelled$", text, re.M), "never started, cancelled"
    assert "failed: task doomed failed" in text


def test_html_page_renders_the_run_in_headless_chromium(
    flaky_run: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = flaky_run
    page = tmp_path / "run.html"
    out = subprocess.run(
        baton("trace", run_id, "--html", str(page), "--state-dir", str(state)),
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    source = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", source), "no external resources"
    assert 'data-rendered="no"' in source
    assert 'class="row"' not in source, "rows are drawn by the script, not in the file"

    dom = _dump_dom(page)
    assert 'data-rendered="5"' in dom, "the inline script ran and drew five rows"
    rows = re.findall(r'<div class="row" data-task="([^"]+)" data-attempt="(\d)"', dom)
    assert sorted(rows) == sorted(
        [("first", "1"), ("doomed", "1"), ("doomed", "2"), ("slow", "1"), ("after", "0")]
    )
    bars = re.findall(r'class="bar (\w+)" data-outcome="(\w+)"', dom)
    assert sorted(bars) == sorted(
        [("succeeded", "succeeded"), ("failed", "error"), ("failed", "error"),
         ("cancelled", "cancelled")]
    )  # fmt: skip
    nodes = re.findall(r'<g class="node (\w+)" data-task="([^"]+)"', dom)
    assert sorted(nodes) == sorted(
        [("succeeded", "first"), ("failed", "doomed"), ("cancelled", "slow"),
         ("cancelled", "after")]
    )  # fmt: skip
    edges = re.findall(r'class="edge" data-from="([^"]+)" data-to="([^"]+)"', dom)
    assert sorted(edges) == sorted(
        [("first", "doomed"), ("first", "slow"), ("doomed", "after"), ("slow", "after")]
    )
    assert f">run {run_id} — flaky<" in dom
    assert 'id="run-status">failed<' in dom


def test_html_keeps_log_text_as_text() -> None:
    """A task id or error that looks like markup stays text: the JSON cannot end the
    script element, and the script only ever sets textContent."""

    nasty = "</script><img src=x onerror=alert(1)>"
    workflow = WorkflowSpec(name=nasty, steps=[StepSpec(id="a", role="r")])
    started = RunStarted("r1", workflow, {}, "ab" * 16, "cli", 1.0)
    stored = StoredEvent(
        position=1, stream="run-r1", version=1, event_id="run-r1@1", type="run.started",
        data=encode_event(started), schema=1, recorded_at=1.0, correlation_id="r1",
        causation_id="", actor="cli", trace_id="ab" * 16, span_id="cd" * 8, prev_hash="",
        hash="",
    )  # fmt: skip
    page = trace_html.render(build("r1", [stored]))
    assert nasty not in page
    assert page.count("</script>") == 2
    assert "\\u003c/script>\\u003cimg" in page
    assert "run r1" in trace_view.render(build("r1", [stored]))


def test_trace_works_on_an_imported_log(flaky_run: tuple[Path, str], tmp_path: Path) -> None:
    state, run_id = flaky_run
    exported = tmp_path / "run.jsonl"
    elsewhere = tmp_path / "elsewhere"
    for argv in (
        baton("export", run_id, "-o", str(exported), "--state-dir", str(state)),
        baton("import", str(exported), "--state-dir", str(elsewhere)),
    ):
        done = subprocess.run(argv, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    here, there = (
        subprocess.run(
            baton("trace", run_id, "--state-dir", str(d)), capture_output=True, text=True
        ).stdout
        for d in (state, elsewhere)
    )
    assert "doomed #2" in there
    assert here == there


def test_trace_of_an_unknown_run_is_a_clear_error(flaky_run: tuple[Path, str]) -> None:
    state, _ = flaky_run
    done = subprocess.run(
        baton("trace", "no-such-run", "--state-dir", str(state)), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "no-such-run" in done.stderr
    assert done.stdout == ""


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *baton(*args),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_status_and_agents_show_live_runs_and_agents(tmp_path: Path) -> None:
    slow = WorkflowSpec(
        name="slow",
        agents=[AgentSpec(role="sleeper", handler="agents.builtin:sleep", count=2)],
        steps=[
            StepSpec(id="nap", role="sleeper", params={"seconds": 30}),
            StepSpec(id="quick", role="sleeper", params={"seconds": 0}),
        ],
    )
    state_dir = tmp_path / "state"

    async def scenario() -> None:
        async with cluster(state_dir) as c:
            ids = await c.add_agents(slow.agents)
            run_id = await c.orchestrator.start_run(slow)
            running = await c.until(
                run_id, lambda s: s.tasks["quick"].status == "succeeded"
            )  # fmt: skip
            holder = running.tasks["nap"].agent_id
            await c.until_held(holder, run_id, "nap", 1)

            code, out, err = await _cli("status", "--state-dir", str(state_dir))
            assert code == 0, err
            (row,) = [line for line in out.splitlines() if line.startswith(run_id)]
            assert row.split()[1:3] == ["slow", "running"]
            assert "1/2" in row
            assert "live, from the orchestrator on nats://127.0.0.1:" in out

            code, out, err = await _cli("status", "--json", "--nats", c.stack.nats_url)
            assert code == 0, err
            (run,) = json.loads(out)["runs"]
            assert (run["run_id"], run["succeeded"], run["running"], run["tasks"]) == (
                run_id, 1, 1, 2,
            )  # fmt: skip

            code, out, err = await _cli("agents", "--state-dir", str(state_dir))
            assert code == 0, err
            lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
            assert set(lines) == set(ids)
            assert f"nap#1 ({run_id})" in lines[holder]
            assert "1/4" in lines[holder]
            assert "s ago" in lines[holder]
            other = next(a for a in ids if a != holder)
            assert lines[other].split()[1:3] == ["sleeper", "0/4"]
            assert lines[other].rstrip().endswith("-")

            code, out, err = await _cli("agents", "--json", "--state-dir", str(state_dir))
            agents = {a["agent_id"]: a for a in json.loads(out)["agents"]}
            assert agents[holder]["held"] == [{"run_id": run_id, "task_id": "nap", "attempt": 1}]
            assert 0 <= agents[holder]["heartbeat_age_s"] < 2

            # a malformed request gets an error reply, and the API keeps serving
            bus = await Bus.connect(c.stack.nats_url, name="t")
            try:
                reply = await bus.request(subjects.API_STATUS, b"\xc1junk", 5)
                error = Decoder[ErrorReply](ErrorReply).decode(reply)
                assert error.error == "MalformedMessage"
                good = await bus.request(subjects.API_STATUS, encode({"kind": "status"}), 5)
                runs = Decoder[StatusReply](StatusReply).decode(good).runs
                assert [r.run_id for r in runs] == [run_id]
            finally:
                await bus.close()
            for agent_id in ids:  # no 30 s drain at teardown
                c.kill(agent_id)

    asyncio.run(scenario())

    # with the orchestrator gone: status falls back to the log, agents says why it cannot
    code = subprocess.run(
        baton("status", "--state-dir", str(state_dir)), capture_output=True, text=True
    )
    assert code.returncode == 0, code.stderr
    assert "as recorded in the event log" in code.stdout
    assert "slow" in code.stdout
    agents = subprocess.run(
        baton("agents", "--state-dir", str(state_dir)), capture_output=True, text=True
    )
    assert agents.returncode == 2
    assert "no orchestrator running" in agents.stderr


def test_trace_model_reads_only_the_log(flaky_run: tuple[Path, str]) -> None:
    state, run_id = flaky_run

    async def read() -> list[StoredEvent]:
        from orchestrator.service.bootstrap import open_store

        store = await open_store(state)
        try:
            return list(await store.read_stream(journal.run_stream(run_id)))
        finally:
            await store.close()

    stored = asyncio.run(read())
    timeline = build(run_id, stored)
    doomed = next(t for t in timeline.tasks if t.task_id == "doomed")
    assert [(a.attempt, a.outcome, a.retried) for a in doomed.attempts] == [
        (1, "error", True),
        (2, "error", False),
    ]
    assert timeline.status == "failed"
    assert timeline.finished is not None
    assert timeline.end == timeline.finished


def test_live_views_fail_clearly_when_nothing_answers(tmp_path: Path) -> None:
    for command in ("status", "agents"):
        done = subprocess.run(
            baton(command, "--nats", "nats://127.0.0.1:1", "--timeout", "1"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2
        said = done.stderr.strip()
        assert said.startswith(f"baton {command}: error: cannot "), said
        assert "nats://127.0.0.1:1" in said
        assert "\n" not in said, "one clear line, no traceback"
    nothing = subprocess.run(
        baton("status", "--state-dir", str(tmp_path / "empty")), capture_output=True, text=True
    )
    assert nothing.returncode == 2
    assert "no orchestrator running" in nothing.stderr
    assert not (tmp_path / "empty").exists(), "looking changed nothing"
