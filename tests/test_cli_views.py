"""Every view people run (`status`, `status --all`, `agents`, `trace`, `trace --html`,
`audit`, `replay`, `export`) works, through the real CLI, on runs in every terminal and
non-terminal state, in open mode and in governed mode (role contracts on: every client
logs in, and a person uses the credentials the state directory keeps for them); and in
both, a person sees and decides a run from the CLI and is recorded as the actor.

Per mode, one state directory holds a completed run (with a handoff), a failed one
(tasks failed and cancelled), one stopped at its token budget, and a live one that a
`baton run` in the background keeps serving, with tasks succeeded, running, pending,
skipped, active (waiting for its subtask) and escalated (waiting for a person)."""

from __future__ import annotations

import getpass
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, get_args

import pytest

from bus.permissions import person_identity
from orchestrator.cli.main import EXIT_CODES
from orchestrator.core.run_state import RunStatus, TaskStatus
from tests.cluster import REPO, baton

ME = person_identity(getpass.getuser())
ROLES = """
[[roles]]
name = "noop"
[[roles]]
name = "sleeper"
[[roles]]
name = "flaky"
[[roles]]
name = "spender"
[[roles]]
name = "lead"
[[roles]]
name = "triage"
handoff_to = ["specialist"]
[[roles]]
name = "specialist"
"""
DONE = """
name = "done"
[[agents]]
role = "noop"
handler = "agents.builtin:noop"
[[agents]]
role = "triage"
handler = "agents.builtin:triage"
[[agents]]
role = "specialist"
handler = "agents.builtin:triage"
[[steps]]
id = "first"
role = "noop"
[[steps]]
id = "desk"
role = "triage"
needs = ["first"]
handoff_to = ["specialist"]
params = { to = "specialist" }
"""
BROKEN = """
name = "broken"
[[agents]]
role = "noop"
handler = "agents.builtin:noop"
[[agents]]
role = "flaky"
handler = "agents.builtin:fail"
[[agents]]
role = "sleeper"
handler = "agents.builtin:sleep"
[[steps]]
id = "doomed"
role = "flaky"
max_attempts = 1
params = { retryable = false }
[[steps]]
id = "slow"
role = "sleeper"
params = { seconds = 30 }
[[steps]]
id = "after"
role = "noop"
needs = ["doomed", "slow"]
"""
LIVE = """
name = "live"
[limits]
max_subtask_depth = 1
[[agents]]
role = "noop"
handler = "agents.builtin:noop"
[[agents]]
role = "sleeper"
handler = "agents.builtin:sleep"
[[agents]]
role = "lead"
handler = "agents.builtin:delegator"
[[agents]]
role = "flaky"
handler = "agents.builtin:fail"
[[steps]]
id = "first"
role = "noop"
[[steps]]
id = "nap"
role = "sleeper"
needs = ["first"]
params = { seconds = 300 }
timeout_s = 600
[[steps]]
id = "later"
role = "noop"
needs = ["nap"]
[[steps]]
id = "maybe"
role = "noop"
needs = ["first"]
when = { step = "first", key = "go", equals = true }
[[steps]]
id = "stuck"
role = "flaky"
max_attempts = 1
on_exhausted = "escalate"
[[steps]]
id = "doubt"
role = "flaky"
max_attempts = 1
on_exhausted = "escalate"
[[steps]]
id = "lead"
role = "lead"
max_subtasks = 1
params = { subtasks = 1, sub_role = "sleeper", seconds = 300 }
timeout_s = 600
"""
LIVE_STATUSES = {
    "first": "succeeded",
    "nap": "running",
    "later": "pending",
    "maybe": "skipped",
    "stuck": "escalated",
    "doubt": "escalated",
    "lead": "active",
    "lead/0": "running",
}


class Recorded(NamedTuple):
    mode: str
    state: Path
    runs: dict[str, str]
    """Run id by the status it is in."""
    live: subprocess.Popen[str]
    live_out: Path


def _baton(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        baton(*args, "--state-dir", str(state)),
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _run_id(out: str) -> str:
    return out.split("\nrun ", 1)[1].split(":", 1)[0] if "\nrun " in out else ""


def _workflow(directory: Path, name: str, text: str, governed: bool) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(('contracts = "roles.toml"\n' if governed else "") + text)
    return path


def _live_status(state: Path) -> dict[str, Any]:
    """The live run as `baton status` shows it; {} while its orchestrator is not up yet
    (exit status 2: none is running, or the one found has not answered yet)."""
    done = _baton(state, "status", "--json", check=False)
    if done.returncode == 2:
        return {}
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(done.stdout)["runs"]
    return runs[0] if runs else {}


@pytest.fixture(scope="module", params=["open", "governed"])
def recorded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorded]:
    mode = str(request.param)
    governed = mode == "governed"
    directory = tmp_path_factory.mktemp(mode)
    (directory / "roles.toml").write_text(ROLES)
    state = directory / "state"
    runs: dict[str, str] = {}
    for name, text, code, status in (
        ("done", DONE, 0, "completed"),
        ("broken", BROKEN, 1, "failed"),
        ("budget", (REPO / "examples" / "budget" / "workflow.toml").read_text(), 3, "stopped"),
    ):
        done = _baton(state, "run", str(_workflow(directory, name, text, governed)), check=False)
        assert done.returncode == code, (name, done.stdout, done.stderr)
        runs[status] = _run_id(done.stdout)
    live_out = directory / "live.out"
    live = subprocess.Popen(
        baton("run", str(_workflow(directory, "live", LIVE, governed)), "--state-dir", str(state)),
        stdout=live_out.open("w"), stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        wanted = {s: list(LIVE_STATUSES.values()).count(s) for s in set(LIVE_STATUSES.values())}
        deadline = time.monotonic() + 60
        while True:
            if live.poll() is not None:
                raise AssertionError(live_out.read_text())
            shown = _live_status(state)
            counts = {s: n for s, n in shown.get("by_status", {}).items() if n}
            if counts == wanted:
                break
            assert time.monotonic() < deadline, (counts, wanted, live_out.read_text())
            time.sleep(0.2)
        runs["running"] = shown["run_id"]
        yield Recorded(mode, state, runs, live, live_out)
    finally:
        if live.poll() is None:
            live.terminate()
            live.wait(30)


def test_the_runs_cover_every_status_of_the_core(recorded: Recorded) -> None:
    assert set(recorded.runs) == set(get_args(RunStatus)) - {"new"}, "a logged run has started"
    seen = set()
    for run_id in recorded.runs.values():
        page = _trace_data(recorded, run_id)
        seen |= {t["status"] for t in page["tasks"]}
    assert seen == set(get_args(TaskStatus))


def test_status_shows_the_live_run_with_every_status_counted(recorded: Recorded) -> None:
    out = _baton(recorded.state, "status").stdout
    [row] = [line for line in out.splitlines() if line.startswith(recorded.runs["running"])]
    assert row.split()[1:3] == ["live", "running"]
    assert "live, from the orchestrator on nats://127.0.0.1:" in out
    assert "@" not in out, "no credentials are printed"
    run = _live_status(recorded.state)
    assert run["by_status"]["escalated"] == 2
    assert run["by_status"]["skipped"] == 1
    assert run["by_status"]["active"] == 1


def test_status_all_shows_every_run_in_its_status(recorded: Recorded) -> None:
    out = _baton(recorded.state, "status", "--all").stdout
    for status, run_id in recorded.runs.items():
        [row] = [line for line in out.splitlines() if line.startswith(run_id)]
        assert row.split()[2] == status, row
    shown = json.loads(_baton(recorded.state, "status", "--all", "--json").stdout)["runs"]
    assert {r["run_id"]: r["status"] for r in shown} == {v: k for k, v in recorded.runs.items()}


def test_agents_shows_the_live_agents_and_what_they_hold(recorded: Recorded) -> None:
    out = _baton(recorded.state, "agents").stdout
    rows = {line.split()[1]: line for line in out.splitlines()[1:-1]}
    assert set(rows) == {"noop", "sleeper", "lead", "flaky"}
    assert f"nap#1 ({recorded.runs['running']})" in rows["sleeper"]
    assert "@" not in out


def _trace_data(recorded: Recorded, run_id: str) -> dict[str, Any]:
    page = recorded.state.parent / f"{run_id}.html"
    _baton(recorded.state, "trace", run_id, "--html", str(page))
    data = (
        page.read_text().split('id="baton-data" type="application/json">')[1].split("</script>")[0]
    )
    decoded: dict[str, Any] = json.loads(data)
    return decoded


def _replayed(recorded: Recorded, run_id: str) -> tuple[str, dict[str, str]]:
    out = _baton(recorded.state, "replay", run_id).stdout
    status = out.split("  status ")[1].split()[0]
    table = out.split("\n\n")[1].splitlines()[1:]
    return status, {line.split()[0]: line.split()[1] for line in table}


@pytest.mark.parametrize("status", ["completed", "failed", "stopped", "running"])
def test_trace_replay_audit_and_export_show_the_run_as_it_is(
    recorded: Recorded, status: str
) -> None:
    run_id = recorded.runs[status]
    replayed, tasks = _replayed(recorded, run_id)
    assert replayed == status
    if status == "running":
        assert tasks == LIVE_STATUSES

    text = _baton(recorded.state, "trace", run_id).stdout
    assert text.startswith(f"run {run_id}  workflow ")
    assert text.splitlines()[0].split()[4] == status
    for task_id, task_status in tasks.items():
        if task_status not in ("succeeded", "running", "pending"):
            assert f"task {task_status}" in text or text.count(f" {task_status}\n"), task_id
    data = _trace_data(recorded, run_id)
    assert data["status"] == status
    assert {t["task_id"]: t["status"] for t in data["tasks"]} == tasks
    if status in ("completed", "failed", "stopped"):
        running = [a for t in data["tasks"] for a in t["attempts"] if a["outcome"] == "running"]
        assert not running, "nothing is drawn running in a run that has ended"

    audit = _baton(recorded.state, "audit", "--run", run_id, "--json").stdout.splitlines()
    events = [json.loads(line) for line in audit]
    assert events[0]["type"] == "run.started"
    assert data["events"] == sum(e["stream"] == f"run-{run_id}" for e in events)
    exported = _baton(recorded.state, "export", run_id).stdout.splitlines()
    assert len(exported) == len(events) + 1, "the export holds the events the audit shows"


def test_resuming_an_ended_run_exits_as_running_it_did(recorded: Recorded) -> None:
    for status, code in EXIT_CODES.items():
        done = _baton(recorded.state, "resume", recorded.runs[status], check=False)
        assert done.returncode == code, (status, done.stdout, done.stderr)
        assert f"already {status}; nothing to resume" in done.stdout


def test_a_handoff_is_drawn_ended_when_the_next_owner_starts(recorded: Recorded) -> None:
    data = _trace_data(recorded, recorded.runs["completed"])
    desk = next(t for t in data["tasks"] if t["task_id"] == "desk")
    first, second = desk["attempts"]
    assert first["outcome"] == "handed_off"
    assert first["end"] <= second["start"]


def test_a_person_decides_a_run_from_the_cli_as_themselves(recorded: Recorded) -> None:
    """Last in this module: its decisions end the live run."""
    state, run_id = recorded.state, recorded.runs["running"]
    retried = _baton(state, "retry", run_id, "stuck")
    assert f"recorded by {ME}" in retried.stdout
    deadline = time.monotonic() + 30
    while not _escalated_again(recorded, run_id):
        assert time.monotonic() < deadline, "the retried task never escalated again"
        time.sleep(0.2)
    approved = _baton(state, "approve", run_id, "stuck", "--output", '{"fixed": true}')
    assert f"approve of task stuck recorded by {ME}" in approved.stdout
    # in every mode the embedded server knows the person from their login
    other = _baton(state, "reject", run_id, "doubt", "--as", "human:mallory", check=False)
    assert other.returncode == 2
    assert f"you decide as {ME}" in other.stderr
    _baton(state, "cancel", run_id, "--note", "enough")
    assert recorded.live.wait(60) == 3, "a run stopped (cancelled) exits 3"
    out = _baton(state, "audit", "--run", run_id, "--json").stdout
    events = [json.loads(line) for line in out.splitlines()]
    decided = [
        (e["type"], e["actor"], e["data"].get("decision"))
        for e in events
        if e["type"] in ("human.decided", "cancel.requested")
    ]
    assert decided == [
        ("human.decided", ME, "retry"),
        ("human.decided", ME, "approve"),
        ("cancel.requested", ME, None),
    ]


def _escalated_again(recorded: Recorded, run_id: str) -> bool:
    out = _baton(recorded.state, "audit", "--run", run_id, "--type", "task.*", "--json").stdout
    types = [(e["type"], e["data"].get("task_id")) for e in map(json.loads, out.splitlines())]
    return types.count(("task.escalated", "stuck")) == 2
