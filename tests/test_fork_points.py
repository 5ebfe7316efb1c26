"""A fork from a position inside one decision starts at the end of that decision: the log
never held part of one, and a fork that copied only part of it would decide the rest
again. In the review loop, the decision on a rejecting review appends the next round's
tasks first, then the review's success and the next assignment; a fork that stopped
after the added round made its resume add the round a second time, and never end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import REPO, baton

REVIEW_LOOP = REPO / "examples" / "review-loop" / "workflow.toml"


def _baton(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(baton(*args), capture_output=True, text=True, cwd=REPO, timeout=180)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _events(state: Path, run_id: str) -> list[dict[str, Any]]:
    out = _baton("audit", "--run", run_id, "--json", "--state-dir", str(state)).stdout
    return [
        json.loads(line)
        for line in out.splitlines()
        if json.loads(line)["stream"] == f"run-{run_id}"
    ]


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real run of the review loop (three rounds), for the tests to copy."""
    state = tmp_path_factory.mktemp("loop") / "state"
    run = _baton("run", str(REVIEW_LOOP), "--state-dir", str(state))
    return state, run.stdout.split("baton replay ")[1].split()[0]


def _copy(looped: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    state, run_id = looped
    shutil.copytree(state, tmp_path / "state")
    return tmp_path / "state", run_id


def test_a_fork_inside_a_loop_decision_starts_after_it_and_resumes_to_the_end(
    looped: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = _copy(looped, tmp_path)
    events = _events(state, run_id)
    added = [e for e in events if e["type"] == "tasks.added"]
    assert len(added) == 2, "the example rejects two drafts"
    for n, point in enumerate(added):
        after = events[events.index(point) + 1]
        assert after["type"] == "task.succeeded", "the round is added before the review ends"
        fork = f"fork-{n}"
        said = _baton("fork", run_id, "--at", str(point["position"]), "--new-id", fork,
                      "--state-dir", str(state)).stdout  # fmt: skip
        moved = re.search(r"at position (\d+) \(position (\d+) falls inside one decision", said)
        assert moved is not None, said
        assert int(moved[2]) == point["position"] < int(moved[1])
        copied = _events(state, fork)
        assert copied[-1]["type"] == "task.assigned", "the decision's last event is copied"

        resumed = _baton("resume", fork, "--timeout", "60", "--state-dir", str(state))
        assert f"run {fork} completed" in resumed.stdout, resumed.stdout + resumed.stderr
        final = _events(state, fork)
        rounds = [e["data"]["reason"] for e in final if e["type"] == "tasks.added"]
        assert rounds == ["loop round 2", "loop round 3"], "each round is added once"
        succeeded = [e["data"]["task_id"] for e in final if e["type"] == "task.succeeded"]
        assert sorted(succeeded) == sorted(set(succeeded)), "no task succeeds twice"
        assert "publish" in succeeded


def test_a_fork_of_a_fork_keeps_the_decisions_it_copied(
    looped: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = _copy(looped, tmp_path)
    last = _events(state, run_id)[-1]["position"]
    _baton("fork", run_id, "--at", str(last), "--new-id", "whole", "--state-dir", str(state))
    copied = _events(state, "whole")
    inside = next(e for e in copied if e["type"] == "tasks.added")
    said = _baton("fork", "whole", "--at", str(inside["position"]), "--new-id", "again",
                  "--state-dir", str(state)).stdout  # fmt: skip
    assert "falls inside one decision" in said
    again = _events(state, "again")
    assert again[-1]["type"] == "task.assigned"
    # its own start and link, then a copy of `whole`'s link and events
    assert [e["type"] for e in again[2:]] == [e["type"] for e in copied[1 : len(again) - 1]]
