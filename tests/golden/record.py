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
from pathlib import Path

from eventstore import MemoryEventStore
from orchestrator import history, journal
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
EXAMPLES = REPO / "examples"


def record(name: str, workflow: Path, state: Path) -> None:
    run = subprocess.run(
        baton("run", str(workflow), "--state-dir", str(state)), capture_output=True, text=True,
        cwd=REPO,
    )  # fmt: skip
    run_id = run.stdout.split("baton replay ")[1].split()[0]
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
        }
        for i, (name, workflow) in enumerate(logs.items()):
            if not wanted or name in wanted:
                record(name, workflow, Path(tmp) / str(i))


if __name__ == "__main__":
    main()
