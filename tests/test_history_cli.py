"""The tools people use on the log, through the real CLI: export and import, fork and
resume, time travel, audit filters, paging, causation chains and chain verification."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

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


def _events(state: Path, run_id: str) -> list[dict[str, object]]:
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
    refused = _baton("import", str(forged), "--state-dir", str(tmp_path / "third"), check=False)
    assert refused.returncode == 2
    assert "was changed" in refused.stderr


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
