"""Chaos, seeded and bounded (issue 13): runs of every pattern go through `baton serve` on
its embedded NATS with agents started by hand (each with its own admitted login), while
kill -9 strikes at random moments the orchestrator (started again on the same state
directory), its embedded nats-server (restarted by its supervisor) or an agent (replaced
by a new one). Afterwards every run has ended, no task succeeded twice, and the hash
chain verifies.

`BATON_CHAOS_FAULTS` (default 12, about a minute) and `BATON_CHAOS_SEED` choose the
profile; `BATON_CHAOS_FAULTS=60` is the long one. The counts are printed (`-s`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import msgspec

from orchestrator.core.workflow import AgentSpec
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.workflow_files import load
from tests.cluster import REPO, baton
from tests.processes import (
    admitted,
    audit_verify,
    event_types,
    nats_pid,
    serving_url,
    slow_research,
    start_baton,
    submit_run,
    terminate,
    until,
)

FAULTS = int(os.environ.get("BATON_CHAOS_FAULTS", "12"))
SEED = int(os.environ.get("BATON_CHAOS_SEED", "20261204"))
ENDED = ("run.completed", "run.failed", "run.stopped")


def _workflows(folder: Path) -> list[Path]:
    """Sequential, parallel fan-out and join (research), orchestrator-subagent and handoff
    (delegation), group chat: examples whose roles do not overlap, so one set of agents
    serves them all."""
    (folder / "research").mkdir()
    paths = [slow_research(folder / "research", work_s=0.3)]
    for name in ("delegation", "group-chat"):
        paths.append(REPO / "examples" / name / "workflow.toml")
    return paths


def _successes(state: Path, runs: list[str]) -> dict[str, Counter[str]]:
    """How often each task of each run succeeded, as `baton audit` shows the log."""
    out = subprocess.run(
        baton("audit", "--type", "task.succeeded", "--json", "--state-dir", str(state)),
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    ).stdout  # fmt: skip
    succeeded: dict[str, Counter[str]] = {run: Counter() for run in runs}
    for event in map(json.loads, out.splitlines()):
        succeeded[event["correlation_id"]][event["data"]["task_id"]] += 1
    return succeeded


def test_runs_of_every_pattern_survive_random_kills(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    state = tmp_path / "state"
    workflows = _workflows(tmp_path)
    logs = iter(tmp_path / f"serve-{n}.log" for n in range(1000))
    serve = start_baton(log := next(logs), "serve", "--state-dir", str(state))
    agents = AgentProcesses(tmp_path / "agents")
    specs: dict[str, AgentSpec] = {}
    runs: list[str] = []
    kills: Counter[str] = Counter()
    try:
        url = serving_url(log, serve)

        def start(spec: AgentSpec) -> None:
            for agent in agents.start(
                spec, url, REPO, url_for_agent=lambda a, role: admitted(state, a, role)
            ):
                specs[agent] = msgspec.structs.replace(spec, count=1)

        for path in workflows:
            for spec in load(path).agents:
                start(spec)
        for _ in range(FAULTS):
            runs.append(submit_run(rng.choice(workflows), state))
            time.sleep(rng.uniform(0.1, 1.5))
            kind = rng.choice(["orchestrator", "nats", "agent"])
            if kind == "orchestrator":
                os.kill(serve.pid, signal.SIGKILL)
                serve.wait()
                serve = start_baton(log := next(logs), "serve", "--state-dir", str(state))
                assert serving_url(log, serve) == url, "the same port after a restart"
            elif kind == "nats":
                os.kill(nats_pid(state), signal.SIGKILL)
            else:
                live = sorted(a for a, p in agents.processes.items() if p.poll() is None)
                victim = rng.choice(live)
                os.kill(agents.processes[victim].pid, signal.SIGKILL)
                agents.processes[victim].wait()
                start(specs[victim])  # a new process, a new id, its own login
            kills[kind] += 1
        until(
            lambda: all(set(ENDED) & set(event_types(state, r)) for r in runs),
            240,
            f"every one of {len(runs)} runs to end",
        )
    finally:
        terminate(serve)
        agents.stop()
    ended = Counter(next(t for t in event_types(state, r) if t in ENDED) for r in runs)
    succeeded = _successes(state, runs)
    twice = {(run, task): n for run in runs for task, n in succeeded[run].items() if n > 1}
    tasks = sum(len(s) for s in succeeded.values())
    print(f"chaos seed {SEED}: kills {dict(kills)}, runs {len(runs)} {dict(ended)}, "
          f"tasks succeeded {tasks}, twice {len(twice)}")  # fmt: skip
    assert twice == {}, "no task succeeded twice"
    completed = [r for r in runs if "run.completed" in event_types(state, r)]
    assert completed, "some runs completed"
    assert all(succeeded[r] for r in completed), "a completed run's successes were all read"
    verified = audit_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
