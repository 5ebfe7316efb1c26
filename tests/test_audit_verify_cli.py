"""`baton audit verify`, with and without `--anchor`, against the attacks of the security
review, through the real CLI on a real state directory: the log and the checkpoints of a
real `baton run` (the orchestrator signs the head at the run's end), then the SQLite file
edited with sqlite3. Exit status 0: everything holds; 1: something does not."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import stat
import subprocess
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

from eventstore import SqliteEventStore, StoredEvent
from eventstore.chain import snapshot_digest
from eventstore.model import Snapshot
from eventstore.sqlite.schema import SELECT, to_event
from orchestrator.core.state import RunState
from orchestrator.service import journal
from tests.cluster import EXAMPLE, REPO, baton
from tests.test_eventstore_tamper import forged_after, reseal

COPIED = ("events.db", "anchor.key", "checkpoints.jsonl")


def _baton(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(baton(*args), capture_output=True, text=True, cwd=REPO, timeout=180)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real run of the example, its log anchored by the orchestrator."""
    state = tmp_path_factory.mktemp("anchored") / "state"
    run = _baton("run", str(EXAMPLE), "--state-dir", str(state))
    assert run.returncode == 0, run.stdout + run.stderr
    return state, run.stdout.split("baton replay ")[1].split()[0]


@pytest.fixture
def work(recorded: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the recorded state directory to attack."""
    state, _ = recorded
    copy = tmp_path / "state"
    copy.mkdir()
    for name in COPIED:
        shutil.copy2(state / name, copy / name)
    return copy


def verify(state: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return _baton("audit", "verify", "--state-dir", str(state), *more)


def anchored(state: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return verify(state, "--anchor", str(state / "checkpoints.jsonl"), *more)


def log_of(state: Path) -> list[StoredEvent]:
    with closing(sqlite3.connect(state / "events.db")) as db:
        return [to_event(row) for row in db.execute(f"{SELECT} ORDER BY position")]


def write_log(state: Path, events: list[StoredEvent]) -> None:
    """Replace the events table's rows with `events`, with sqlite3."""
    names = [name for name in StoredEvent.__struct_fields__]
    marks = ", ".join("?" * len(names))
    with closing(sqlite3.connect(state / "events.db")) as db, db:
        db.execute("DELETE FROM events")
        db.executemany(
            f"INSERT INTO events ({', '.join(names)}) VALUES ({marks})",
            [tuple(getattr(e, name) for name in names) for e in events],
        )


def test_the_orchestrator_anchors_the_log_in_private_files(recorded: tuple[Path, str]) -> None:
    state, _ = recorded
    for name in ("anchor.key", "checkpoints.jsonl"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    newest = json.loads((state / "checkpoints.jsonl").read_text().splitlines()[-1])
    head = log_of(state)[-1]
    assert (newest["position"], newest["hash"]) == (head.position, head.hash), "at the run's end"


def test_an_intact_log_verifies_with_and_without_its_anchor(work: Path) -> None:
    kept = work / "checkpoints.jsonl"
    for full in (verify(work), anchored(work)):  # the state directory's, or named
        assert full.returncode == 0, full.stdout + full.stderr
        assert "hash chain: ok" in full.stdout
        assert f"anchor: ok (1 signed checkpoint(s) in {kept} by key" in full.stdout
        assert "0 newer event(s) are covered by the hash chain alone" in full.stdout
        assert "snapshots: ok (0 checked)" in full.stdout

    plain = verify(work, "--no-anchor")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "hash chain: ok" in plain.stdout
    assert "anchor: not checked (--no-anchor)" in plain.stdout
    (work / "anchor.key").unlink()  # checkpoints whose key is kept elsewhere
    keyless = verify(work)
    assert keyless.returncode == 0, keyless.stdout + keyless.stderr
    assert (
        f"anchor: not checked (no checkpoint key at {work / 'anchor.key'}; give --anchor-key KEY)"
    ) in keyless.stdout
    kept.write_bytes(b"")  # made by an orchestrator killed before it wrote a checkpoint
    for _ in ("empty", "none"):
        none = verify(work)
        assert none.returncode == 0, none.stdout + none.stderr
        assert f"anchor: not checked (no checkpoints at {kept}; give --anchor PATH)" in none.stdout
        kept.unlink(missing_ok=True)


def test_the_anchor_options(work: Path) -> None:
    public = json.loads((work / "checkpoints.jsonl").read_text().splitlines()[0])["key"]
    assert anchored(work, "--anchor-key", public).returncode == 0
    assert verify(work, "--anchor-key", public).returncode == 0
    for stranger in (
        anchored(work, "--anchor-key", "ab" * 32),
        verify(work, "--anchor-key", "ab" * 32),
    ):
        assert stranger.returncode == 1
        assert "not the trusted key" in stranger.stdout

    missing = verify(work, "--anchor", str(work / "nowhere.jsonl"))
    assert missing.returncode == 1
    assert f"anchor: BAD: no checkpoints at {work / 'nowhere.jsonl'}" in missing.stdout
    for misused in (("--anchor", str(work)), ("--no-anchor",), ("--anchor-key", "ab" * 32)):
        misuse = _baton("audit", *misused, "--state-dir", str(work))
        assert misuse.returncode == 2
        assert f"{misused[0]}: is used with `baton audit verify`" in misuse.stderr
    both = anchored(work, "--no-anchor")
    assert both.returncode == 2
    assert "--no-anchor: skips the checkpoints --anchor and --anchor-key name" in both.stderr


def test_a_cut_tail_is_caught_only_with_the_anchor(work: Path) -> None:
    head = log_of(work)[-1].position
    with closing(sqlite3.connect(work / "events.db")) as db, db:
        db.execute("DELETE FROM events WHERE position > ?", (head - 3,))

    plain = verify(work, "--no-anchor")
    assert plain.returncode == 0, "the keyless chain cannot tell a shorter log"
    assert f"hash chain: ok ({head - 3} events checked)" in plain.stdout

    for full in (verify(work), anchored(work)):  # a restored backup: the plain command says so
        assert full.returncode == 1
        assert (
            f"hash chain: BROKEN at position {head - 2}: truncated: the log ends at position "
            f"{head - 3}, but a signed checkpoint recorded position {head}"
        ) in full.stdout


def test_a_rewrite_with_recomputed_hashes_is_caught_only_with_the_anchor(work: Path) -> None:
    log = log_of(work)
    write_log(work, reseal(log, 5, b'{"forged": true}'))

    plain = verify(work, "--no-anchor")
    assert plain.returncode == 0, "every hash after the change was recomputed"

    head = log[-1].position
    for full in (verify(work), anchored(work)):
        assert full.returncode == 1
        assert (
            f"hash chain: BROKEN at position {head}: rewritten: the hash at position {head}"
        ) in full.stdout


def test_an_append_forged_after_the_newest_checkpoint_is_not_caught(
    work: Path, recorded: tuple[Path, str]
) -> None:
    _, run_id = recorded
    log = log_of(work)
    write_log(work, [*log, forged_after(log, journal.run_stream(run_id))])

    assert verify(work).returncode == 0
    full = anchored(work)
    assert full.returncode == 0, "checkpoints alone cannot tell it from a real append"
    assert "1 newer event(s) are covered by the hash chain alone" in full.stdout


def _snapshot_at(state: Path, run_id: str) -> Snapshot:
    """A snapshot of the run at its first success, saved as the orchestrator saves one."""

    async def save() -> Snapshot:
        store = await SqliteEventStore.open(state / "events.db")
        try:
            stream = journal.run_stream(run_id)
            done = next(e for e in await store.read_stream(stream) if e.type == "task.succeeded")
            past = await journal.load_run(store, run_id, until_position=done.position)
            snapshot = journal.snapshot_of(past, done.position)
            await store.save_snapshot(snapshot)
            return snapshot
        finally:
            await store.close()

    return asyncio.run(save())


def _forged(snapshot: Snapshot) -> bytes:
    state = msgspec.msgpack.decode(snapshot.data, type=RunState)
    done = next(t for t in state.tasks.values() if t.status == "succeeded")
    tasks = {**state.tasks, done.task_id: msgspec.structs.replace(done, output={"forged": 1})}
    return msgspec.msgpack.encode(msgspec.structs.replace(state, tasks=tasks))


def test_an_edited_snapshot_is_named_and_replay_rebuilds_without_it(
    work: Path, recorded: tuple[Path, str]
) -> None:
    _, run_id = recorded
    snapshot = _snapshot_at(work, run_id)
    assert "snapshots: ok (1 checked)" in verify(work).stdout
    forged = _forged(snapshot)
    with closing(sqlite3.connect(work / "events.db")) as db, db:
        db.execute("UPDATE snapshots SET data = ?", (forged,))

    named = (
        f"snapshot of {journal.run_stream(run_id)} v{snapshot.version} at position "
        f"{snapshot.position}: "
    )
    for result in (verify(work), anchored(work)):
        assert result.returncode == 1
        assert "hash chain: ok" in result.stdout
        assert "snapshots: BAD: 1 of 1 must not be used" in result.stdout
        assert f"{named}changed: its content does not match its digest" in result.stdout

    replay = _baton("replay", run_id, "--until", str(snapshot.position), "--state-dir", str(work))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "forged" not in replay.stdout, "the edited snapshot was not used"
    assert "ignored, the state is rebuilt from events" in replay.stderr

    # its digest recomputed too: still named, by replaying the run's events
    (event,) = (e for e in log_of(work) if e.position == snapshot.position)
    digest = snapshot_digest(msgspec.structs.replace(snapshot, data=forged), event.hash)
    with closing(sqlite3.connect(work / "events.db")) as db, db:
        db.execute("UPDATE snapshots SET digest = ?", (digest,))
    recomputed = verify(work)
    assert recomputed.returncode == 1
    assert f"{named}its state is not the replay of the run's events" in recomputed.stdout
