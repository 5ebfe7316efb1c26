"""Records the golden logs beside this file by running workflows through the real CLI
(embedded NATS, agent processes, SQLite) and exporting them, with the state and pending
effects today's code replays them to. Re-record only on purpose: a golden log that stops
replaying means old logs in the field would stop replaying too.

    python -m tests.golden.record [name ...]    # default: every log below
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eventstore import MemoryEventStore
from orchestrator.cli import history
from orchestrator.service import journal
from tests.cluster import EXAMPLE, REPO, baton
from tests.test_golden import summary

HERE = Path(__file__).parent
FAILING = """
name = "worker-failed"
[[agents]]
role = "flaky"
handler = "agents.builtin:fail"
[[agents]]
role = "slow"
handler = "agents.builtin:sleep"
[[steps]]
id = "flaky"
role = "flaky"
max_attempts = 2
[[steps]]
id = "slow"
role = "slow"
params = { seconds = 5.0 }
[[steps]]
id = "after"
role = "slow"
needs = ["flaky", "slow"]
"""


BRANCHES = """
name = "branch-skipped"
[[agents]]
role = "reviewer"
handler = "agents.builtin:reviewer"
[[agents]]
role = "writer"
handler = "agents.builtin:writer"
[[steps]]
id = "review"
role = "reviewer"
params = { approve_on = 9 }
[[steps]]
id = "publish"
role = "writer"
needs = ["review"]
when = { step = "review", key = "approved", equals = true }
[[steps]]
id = "revise"
role = "writer"
needs = ["review"]
unless = { step = "review", key = "approved", equals = true }
[[steps]]
id = "notify"
role = "writer"
needs = ["publish", "revise"]
join = "any"
"""
SLOW = """
name = "cancelled"
[[agents]]
role = "sleeper"
handler = "agents.builtin:sleep"
[[steps]]
id = "nap"
role = "sleeper"
params = { seconds = 30 }
fan_out = 2
"""
EXAMPLES = REPO / "examples"
Person = tuple[str, ...]
"""A `baton` command a person runs while the workflow runs, `{run}` standing for its id."""


def _with_person(workflow: Path, state: Path, person: list[Person]) -> str:
    """Run `workflow`; once it has an id, run each of `person`'s commands until the
    orchestrator accepts it; return the run's output."""
    run = subprocess.Popen(
        baton("run", str(workflow), "--state-dir", str(state)), stdout=subprocess.PIPE,
        text=True, cwd=REPO,
    )  # fmt: skip
    assert run.stdout is not None
    lines: list[str] = []
    for line in run.stdout:
        lines.append(line)
        if line.startswith("run ") and ": workflow " in line:
            break
    run_id = lines[-1].split()[1].rstrip(":")
    for command in person:
        argv = [a.replace("{run}", run_id) for a in command]
        for _ in range(300):
            done = subprocess.run(
                baton(*argv, "--state-dir", str(state), "--as", "human:golden"),
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            if done.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{argv} never accepted: {done.stderr}")
    rest, _ = run.communicate(timeout=120)
    return "".join(lines) + rest


def record(name: str, workflow: Path, state: Path, person: list[Person] | None = None) -> None:
    if person is None:
        stdout = subprocess.run(
            baton("run", str(workflow), "--state-dir", str(state)), capture_output=True,
            text=True, cwd=REPO,
        ).stdout  # fmt: skip
    else:
        stdout = _with_person(workflow, state, person)
    run_id = stdout.split("baton replay ")[1].split()[0]
    log = HERE / f"{name}.jsonl"
    subprocess.run(
        baton("export", run_id, "-o", str(log), "--state-dir", str(state)), check=True, cwd=REPO
    )

    async def replayed() -> dict[str, object]:
        store = MemoryEventStore()
        imported = await history.import_lines(store, log.read_text().splitlines())
        return summary(await journal.load_run(store, imported))

    expected = asyncio.run(replayed())
    log.with_suffix(".state.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
    state_of = expected["state"]
    assert isinstance(state_of, dict)
    print(f"{name}: run {run_id}, status {state_of['status']}")


def main() -> None:
    wanted = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        failing = Path(tmp) / "failing.toml"
        failing.write_text(FAILING)
        branches = Path(tmp) / "branches.toml"
        branches.write_text(BRANCHES)
        slow = Path(tmp) / "slow.toml"
        slow.write_text(SLOW)
        people: dict[str, list[Person]] = {
            "escalated-retried-approved": [
                ("retry", "{run}", "flaky"),
                ("approve", "{run}", "flaky", "--output", '{"fixed": true}'),
            ],
            "cancelled": [("cancel", "{run}", "--note", "enough")],
        }
        logs = {
            "research-brief-completed": EXAMPLE,
            "worker-failed": failing,
            "branch-skipped": branches,
            "loop-approved": EXAMPLES / "review-loop" / "workflow.toml",
            "chat-max-turns": EXAMPLES / "group-chat" / "workflow.toml",
            "budget-stopped": EXAMPLES / "budget" / "workflow.toml",
            "subtasks-handoff": EXAMPLES / "delegation" / "workflow.toml",
            "replan-adopted": EXAMPLES / "replan" / "workflow.toml",
            "contract-net": EXAMPLES / "contract-net" / "workflow.toml",
            "escalated-retried-approved": EXAMPLES / "escalation" / "workflow.toml",
            "cancelled": slow,
        }
        for i, (name, workflow) in enumerate(logs.items()):
            if not wanted or name in wanted:
                record(name, workflow, Path(tmp) / str(i), people.get(name))


if __name__ == "__main__":
    main()
