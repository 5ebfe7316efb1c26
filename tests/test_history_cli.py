"""The tools people use on the log, through the real CLI: export and import, fork and
resume (and a fork from inside one decision), time travel, audit filters, paging,
causation chains and chain verification."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import EXAMPLE, REPO, baton


def _baton(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(baton(*args), capture_output=True, text=True, cwd=REPO, timeout=180)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real run of the example, shared by the read-only tests of this module."""
    state = tmp_path_factory.mktemp("history") / "state"
    run = _baton("run", str(EXAMPLE), "--state-dir", str(state))
    return state, run.stdout.split("baton replay ")[1].split()[0]


def _events(state: Path, run_id: str) -> list[dict[str, Any]]:
    out = _baton("audit", "--run", run_id, "--json", "--state-dir", str(state)).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_export_import_round_trip_and_tampering_is_refused(
    recorded: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = recorded
    dump = tmp_path / "run.jsonl"
    _baton("export", run_id, "-o", str(dump), "--state-dir", str(state))
    elsewhere = tmp_path / "elsewhere"
    imported = _baton("import", str(dump), "--state-dir", str(elsewhere))
    assert f"imported run {run_id}" in imported.stdout
    original = _baton("replay", run_id, "--state-dir", str(state)).stdout
    copy = _baton("replay", run_id, "--state-dir", str(elsewhere)).stdout
    assert original.split("\n\nhash chain")[0] == copy.split("\n\nhash chain")[0]
    assert "hash chain: ok" in copy
    again = _baton("import", str(dump), "--state-dir", str(elsewhere))
    assert again.returncode == 0, "importing the same export twice changes nothing"
    assert len(_events(elsewhere, run_id)) == len(_events(state, run_id))

    lines = dump.read_text().splitlines()
    record = json.loads(lines[3])
    record["actor"] = "someone-else"
    lines[3] = json.dumps(record)
    forged = tmp_path / "forged.jsonl"
    forged.write_text("\n".join(lines))
    for bad, said in ((forged, "was changed"), (Path("/etc/hostname"), "not a Baton run export")):
        refused = _baton("import", str(bad), "--state-dir", str(tmp_path / "third"), check=False)
        assert refused.returncode == 2
        assert said in refused.stderr, refused.stderr
        assert not (tmp_path / "third").exists(), "a refused import leaves no store behind"


def test_time_travel_shows_the_past_state_and_what_would_happen_next(
    recorded: tuple[Path, str],
) -> None:
    state, run_id = recorded
    events = _events(state, run_id)
    plan_done = next(e for e in events if e["type"] == "task.succeeded")
    position = str(plan_done["position"])
    past = _baton("replay", run_id, "--until", position, "--state-dir", str(state)).stdout
    assert "status running" in past
    assert past.count("succeeded") == 1
    assert "assign when an agent is free: research[0], research[1], research[2]" in past
    by_time = _baton(
        "replay", run_id, "--until", str(plan_done["recorded_at"]), "--state-dir", str(state)
    ).stdout
    assert "status running" in by_time
    full = _baton("replay", run_id, "--state-dir", str(state), "--no-snapshots").stdout
    assert "status completed" in full


def test_audit_filters_paging_why_and_verify(recorded: tuple[Path, str]) -> None:
    state, run_id = recorded
    events = _events(state, run_id)
    where = ["--state-dir", str(state)]

    texts = _baton("audit", "--run", run_id, "--text", "governance", "--json", *where).stdout
    found = [json.loads(line) for line in texts.splitlines()]
    assert found
    assert all("governance" in json.dumps(e["data"]) for e in found)

    first, last = events[0]["recorded_at"], events[-1]["recorded_at"]
    assert isinstance(first, float)
    assert isinstance(last, float)
    window = _baton("audit", "--run", run_id, "--since", str(last), "--json", *where).stdout
    assert [json.loads(x)["type"] for x in window.splitlines()][-1] == "run.completed"
    assert _baton("audit", "--run", run_id, "--until", str(first), *where).stdout == ""

    page = _baton("audit", "--run", run_id, "--limit", "3", *where)
    assert len(page.stdout.splitlines()) == 3
    after = page.stderr.split("--after ")[1].split()[0]
    rest = _baton("audit", "--run", run_id, "--after", after, "--json", *where).stdout
    assert len(rest.splitlines()) == len(events) - 3

    completed = next(e for e in events if e["type"] == "run.completed")
    why = _baton("audit", "--why", str(completed["event_id"]), "--json", *where)
    chain = [json.loads(x) for x in why.stdout.splitlines()]
    assert [c["type"] for c in chain][:2] == ["run.completed", "task.succeeded"]
    assert chain[-1]["type"] == "run.started"
    assert chain[-1]["causation_id"] == f"start:{run_id}"
    assert f"the chain began with start:{run_id} from cli" in why.stderr
    steps = {c["type"] for c in chain}
    assert {"task.assigned", "task.succeeded"} <= steps

    assert "hash chain: ok" in _baton("audit", "verify", *where).stdout


def test_fork_from_the_past_then_resume_it_to_completion(
    recorded: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = recorded
    work = tmp_path / "state"
    dump = tmp_path / "run.jsonl"
    _baton("export", run_id, "-o", str(dump), "--state-dir", str(state))
    _baton("import", str(dump), "--state-dir", str(work))
    events = _events(work, run_id)
    plan_done = next(e for e in events if e["type"] == "task.succeeded")
    forked = _baton(
        "fork", run_id, "--at", str(plan_done["position"]), "--new-id", "fork-1",
        "--state-dir", str(work),
    )  # fmt: skip
    assert "forked run fork-1" in forked.stdout
    assert "1/5 tasks done" in forked.stdout
    copied = _events(work, "fork-1")
    assert [e["type"] for e in copied[:3]] == ["run.started", "run.forked", "task.assigned"]
    assert copied[2]["causation_id"] == events[1]["event_id"], "each copy names its original"

    resumed = _baton("resume", "fork-1", "--state-dir", str(work))
    assert "run fork-1 completed" in resumed.stdout
    final = _baton("replay", "fork-1", "--state-dir", str(work)).stdout
    assert "status completed" in final
    assert final.count("succeeded") == 5
    assert _baton("replay", run_id, "--state-dir", str(work)).stdout.count("succeeded") == 5


def test_verify_names_the_first_tampered_position(
    recorded: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = recorded
    work = tmp_path / "state"
    dump = tmp_path / "run.jsonl"
    _baton("export", run_id, "-o", str(dump), "--state-dir", str(state))
    _baton("import", str(dump), "--state-dir", str(work))
    with sqlite3.connect(work / "events.db") as db:
        db.execute("UPDATE events SET actor = 'mallory' WHERE position = 4")
    broken = _baton("audit", "verify", "--state-dir", str(work), check=False)
    assert broken.returncode == 1
    assert "BROKEN at position 4" in broken.stdout


def test_bad_points_and_ids_are_clear_errors(recorded: tuple[Path, str]) -> None:
    state, run_id = recorded
    where = ["--state-dir", str(state)]
    bad_time = _baton("replay", run_id, "--until", "yesterday-ish", *where, check=False)
    assert bad_time.returncode == 2
    assert "neither a position" in bad_time.stderr
    early = _baton("replay", run_id, "--until", "1970-01-02T00:00:00", *where, check=False)
    assert early.returncode == 2
    assert "recorded nothing before" in early.stderr
    why = _baton("audit", "--why", "run-nope@1", *where, check=False)
    assert why.returncode == 2
    assert "no event 'run-nope@1'" in why.stderr
    bad_id = _baton("fork", run_id, "--at", "3", "--new-id", "a.b", *where, check=False)
    assert bad_id.returncode == 2
    assert "invalid subject token" in bad_id.stderr


def test_a_fork_past_the_runs_end_says_it_starts_at_its_last_event(
    recorded: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = recorded
    shutil.copytree(state, tmp_path / "state")
    where = ["--state-dir", str(tmp_path / "state")]
    last = _events(tmp_path / "state", run_id)[-1]["position"]
    forked = _baton("fork", run_id, "--at", "99999", "--new-id", "past", *where)
    assert f"at position {last} (the run's last event up to position 99999)" in forked.stdout
    assert "5/5 tasks done, status completed" in forked.stdout


# A fork from a position inside one decision starts at the end of that decision: the log
# never held part of one, and a fork that copied only part of it would decide the rest
# again. In the review loop, the decision on a rejecting review appends the next round's
# tasks first, then the review's success and the next assignment; a fork that stopped
# after the added round made its resume add the round a second time, and never end.

REVIEW_LOOP = REPO / "examples" / "review-loop" / "workflow.toml"


def _own_events(state: Path, run_id: str) -> list[dict[str, Any]]:
    return [e for e in _events(state, run_id) if e["stream"] == f"run-{run_id}"]


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
    events = _own_events(state, run_id)
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
        copied = _own_events(state, fork)
        assert copied[-1]["type"] == "task.assigned", "the decision's last event is copied"

        resumed = _baton("resume", fork, "--timeout", "60", "--state-dir", str(state))
        assert f"run {fork} completed" in resumed.stdout, resumed.stdout + resumed.stderr
        final = _own_events(state, fork)
        rounds = [e["data"]["reason"] for e in final if e["type"] == "tasks.added"]
        assert rounds == ["loop round 2", "loop round 3"], "each round is added once"
        succeeded = [e["data"]["task_id"] for e in final if e["type"] == "task.succeeded"]
        assert sorted(succeeded) == sorted(set(succeeded)), "no task succeeds twice"
        assert "publish" in succeeded


def test_a_fork_of_a_fork_keeps_the_decisions_it_copied(
    looped: tuple[Path, str], tmp_path: Path
) -> None:
    state, run_id = _copy(looped, tmp_path)
    last = _own_events(state, run_id)[-1]["position"]
    _baton("fork", run_id, "--at", str(last), "--new-id", "whole", "--state-dir", str(state))
    copied = _own_events(state, "whole")
    inside = next(e for e in copied if e["type"] == "tasks.added")
    said = _baton("fork", "whole", "--at", str(inside["position"]), "--new-id", "again",
                  "--state-dir", str(state)).stdout  # fmt: skip
    moved = re.search(r"from whole at position (\d+) \(position (\d+) falls inside one", said)
    assert moved, said  # the fork's own link is to `whole`, not the copy of whole's to its origin
    assert int(moved.group(1)) > int(moved.group(2)) == inside["position"]
    traced = _baton("trace", "again", "--state-dir", str(state)).stdout
    assert f"forked from whole@{moved.group(1)}" in traced, traced
    again = _own_events(state, "again")
    assert again[-1]["type"] == "task.assigned"
    # its own start and link, then a copy of `whole`'s link and events
    assert [e["type"] for e in again[2:]] == [e["type"] for e in copied[1 : len(again) - 1]]
