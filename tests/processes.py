"""Helpers for tests that drive real `baton` processes and kill them: a slower copy of
the research example, the events a state directory's log holds (read with sqlite3, as an
operator would), the processes a process started, bounded waits, and a `baton serve`
with hand-started agents (its address, an agent's admitted login, a submitted run)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.service import journal
from tests.cluster import EXAMPLE, REPO, baton


def slow_research(folder: Path, work_s: float) -> Path:
    """The research example with each research task taking `work_s` seconds (its
    handlers by absolute path), written into `folder`."""
    text = EXAMPLE.read_text()
    text = text.replace('handler = "agents.py:', f'handler = "{EXAMPLE.parent / "agents.py"}:')
    text = text.replace("work_s = 0.2", f"work_s = {work_s}")
    assert f"work_s = {work_s}" in text
    path = folder / "workflow.toml"
    path.write_text(text)
    return path


def event_types(state: Path, run_id: str = "") -> list[str]:
    """Types of the events in the state directory's log (of one run, if given), in order;
    [] while there is no log yet."""
    db = state / "events.db"
    if not db.exists():
        return []
    query = "SELECT type FROM events"
    params: tuple[str, ...] = ()
    if run_id:
        query += " WHERE stream = ?"
        params = (journal.run_stream(run_id),)
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return [str(row[0]) for row in conn.execute(query + " ORDER BY position", params)]
    except sqlite3.OperationalError:  # the schema is not there yet
        return []


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until `check()` holds; a generous bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def research_running(state: Path) -> bool:
    """Whether the plan and all three research tasks have been handed out."""
    return event_types(state).count("task.assigned") >= 4


def research_held(state: Path) -> bool:
    """Whether the agents themselves say (in their heartbeats, as `baton agents` shows)
    that they hold the three research tasks: sent and taken, not only recorded."""
    done = subprocess.run(
        baton("agents", "--json", "--state-dir", str(state)),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        return False
    held: list[str] = [h["task_id"] for a in json.loads(done.stdout)["agents"] for h in a["held"]]
    return sum(task.startswith("research") for task in held) >= 3


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def nats_pid(state: Path) -> int:
    """The pid of the embedded nats-server running for a state directory."""
    running = [
        int(p.stem.rsplit("_", 1)[1])
        for p in (state / "nats" / "ports").glob("nats-server_*.ports")
        if alive(int(p.stem.rsplit("_", 1)[1]))
    ]
    assert len(running) == 1, running
    return running[0]


def audit_verify(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        baton("audit", "verify", "--state-dir", str(state)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def start_baton(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """A `baton` command in the background, its output into `log`, in a session of its
    own (so a kill of it is a kill of it alone)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            baton(*args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serving_url(log: Path, process: subprocess.Popen[bytes]) -> str:
    """The address `baton serve` (logging to `log`) says it serves on, once it does."""
    found: list[str] = []

    def serving() -> bool:
        assert process.poll() is None, log.read_text()
        found[:] = re.findall(r"serving on NATS (nats://\S+),", log.read_text())
        return bool(found)

    until(serving, 60, f"baton serve to serve ({log})")
    return found[0]


def _baton_ok(*args: str) -> str:
    """A `baton` command that must succeed; its output."""
    done = subprocess.run(baton(*args), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def failed_attempts(state: Path, run_id: str) -> list[str]:
    """Why each of the run's failed attempts failed, as `baton audit` shows it."""
    out = _baton_ok("audit", "--run", run_id, "--type", "task.attempt_failed", "--json",
                    "--state-dir", str(state))  # fmt: skip
    return [json.loads(line)["data"]["reason"] for line in out.splitlines()]


def admitted(state: Path, agent_id: str, role: str) -> str:
    """The agent's own login (`baton admit`), kept across restarts of the server."""
    out = state.parent / f"{agent_id}.url"
    _baton_ok("admit", agent_id, "--role", role, "-o", str(out), "--state-dir", str(state))
    return out.read_text().strip()


def submit_run(workflow: Path, state: Path) -> str:
    """`baton submit` to the orchestrator of `state`, as its person; the run id."""
    done = subprocess.run(
        baton("submit", str(workflow), "--state-dir", str(state)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]
