"""What only the durable backend can get wrong: tampering, reopening, corrupt or read-only
files, a full disk and kill -9 in the middle of a write."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventstore import (
    GENESIS,
    ConcurrencyError,
    EventStoreError,
    NewEvent,
    SqliteEventStore,
    StorageError,
    StoredEvent,
    VerifyReport,
)
from eventstore.chain import event_hash, hash_of

ROOT = Path(__file__).resolve().parents[1]


def ev(event_id: str, data: bytes = b"{}", type: str = "thing.happened") -> NewEvent:
    return NewEvent(event_id=event_id, type=type, data=data, actor="tester")


async def fill(path: Path, count: int, batch: int = 1) -> list[StoredEvent]:
    """Append `count` events over streams a, b, c and close the store."""
    store = await SqliteEventStore.open(path)
    try:
        for start in range(0, count, batch):
            stream = "abc"[(start // batch) % 3]
            events = [ev(f"e{n}", data=n.to_bytes(4, "big")) for n in range(start, start + batch)]
            await store.append(stream, events, await store.stream_version(stream))
        return await store.read_all()
    finally:
        await store.close()


async def reopen_and(path: Path, action: str) -> Any:
    store = await SqliteEventStore.open(path)
    try:
        if action == "verify":
            return await store.verify()
        return await store.read_all()
    finally:
        await store.close()


def verify(path: Path) -> VerifyReport:
    report = asyncio.run(reopen_and(path, "verify"))
    assert isinstance(report, VerifyReport)
    return report


def read_all(path: Path) -> list[StoredEvent]:
    events = asyncio.run(reopen_and(path, "read"))
    assert isinstance(events, list)
    return events


def tamper(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
    conn.close()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# -- tamper evidence -----------------------------------------------------------------------


def test_changed_data_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 10))
    tamper(path, "UPDATE events SET data = x'00' WHERE position = 4")
    report = verify(path)
    assert (report.ok, report.first_bad_position, report.checked) == (False, 4, 3)
    assert report.reason.startswith("changed")


def test_changed_hash_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 10))
    tamper(path, "UPDATE events SET hash = ? WHERE position = 9", params=("f" * 64,))
    report = verify(path)
    assert (report.ok, report.first_bad_position) == (False, 9)
    assert report.reason.startswith("changed")


def test_rewritten_row_with_recomputed_hash_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    original = asyncio.run(fill(path, 10))[4]
    forged = hash_of(msgspec.structs.replace(original, data=b"forged"))
    tamper(path, "UPDATE events SET data = x'00', hash = ? WHERE position = 5", params=(forged,))
    report = verify(path)
    assert (report.ok, report.first_bad_position) == (False, 5)
    assert report.reason.startswith("changed")
    # Also with the forged hash consistent with the forged data: the next link breaks.
    tamper(path, "UPDATE events SET data = ? WHERE position = 5", params=(b"forged",))
    report = verify(path)
    assert (report.ok, report.first_bad_position, report.checked) == (False, 5, 4)
    assert report.reason.startswith("changed")


def test_deleted_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 10))
    tamper(path, "DELETE FROM events WHERE position = 6")
    report = verify(path)
    assert (report.ok, report.first_bad_position, report.checked) == (False, 6, 5)
    assert report.reason.startswith("deleted or inserted")


def test_deleted_and_renumbered_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 10))
    tamper(
        path,
        "DELETE FROM events WHERE position = 4",
        "UPDATE events SET position = position - 1 WHERE position > 4",
    )
    report = verify(path)
    assert (report.ok, report.first_bad_position) == (False, 4)
    assert report.reason.startswith("deleted or inserted")


def test_inserted_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 10))
    tamper(
        path,
        "INSERT INTO events SELECT 11, 'z', 1, 'forged', type, data, recorded_at,"
        " correlation_id, causation_id, actor, trace_id, span_id, ?, hash, schema"
        " FROM events WHERE position = 10",
        params=(GENESIS,),
    )
    report = verify(path)
    assert (report.ok, report.first_bad_position, report.checked) == (False, 11, 10)
    assert report.reason.startswith("deleted or inserted")


def test_swapped_rows_are_named(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 10))
    tamper(
        path,
        "UPDATE events SET position = -1 WHERE position = 3",
        "UPDATE events SET position = 3 WHERE position = 7",
        "UPDATE events SET position = 7 WHERE position = -1",
    )
    report = verify(path)
    assert (report.ok, report.first_bad_position, report.checked) == (False, 3, 2)
    assert report.reason.startswith("reordered")


def test_verify_walks_a_large_log_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    events = asyncio.run(fill(path, 12_000, batch=500))
    assert len(events) == 12_000
    assert verify(path) == VerifyReport(ok=True, checked=12_000)
    # A swap across chunk boundaries is still recognised as a reordering.
    tamper(
        path,
        "UPDATE events SET position = -1 WHERE position = 5001",
        "UPDATE events SET position = 5001 WHERE position = 11000",
        "UPDATE events SET position = 11000 WHERE position = -1",
    )
    report = verify(path)
    assert (report.ok, report.first_bad_position, report.checked) == (False, 5001, 5000)
    assert report.reason.startswith("reordered")


# -- reopening -----------------------------------------------------------------------------


def test_reopening_keeps_everything_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "events.db"

    async def scenario() -> None:
        store = await SqliteEventStore.open(path)
        first = await store.append("run-1", [ev("1"), ev("2")], 0)
        await store.append("run-2", [ev("3")], 0)
        before = await store.read_all()
        await store.close()

        store = await SqliteEventStore.open(str(path))
        try:
            assert await store.read_all() == before
            assert await store.stream_version("run-1") == 2
            assert await store.streams() == ["run-1", "run-2"]
            assert await store.append("run-1", [ev("1"), ev("2")], 0) == first  # retry
            with pytest.raises(ConcurrencyError):
                await store.append("run-1", [ev("4")], 0)
            more = await store.append("run-1", [ev("4")], 2)
            assert (more[0].position, more[0].version) == (4, 3)
            assert more[0].prev_hash == before[-1].hash
            assert await store.verify() == VerifyReport(ok=True, checked=4)
        finally:
            await store.close()

    asyncio.run(scenario())
    assert integrity(path) == "ok"


def test_two_stores_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def writer(store: SqliteEventStore, stream: str) -> None:
        for version in range(30):
            await store.append(stream, [ev(f"{stream}-{version}")], version)

    async def scenario() -> None:
        one = await SqliteEventStore.open(path)
        two = await SqliteEventStore.open(path)
        try:
            await asyncio.gather(writer(one, "x"), writer(two, "y"))
            log = await one.read_all()
            assert [e.position for e in log] == list(range(1, 61))
            assert await two.verify() == VerifyReport(ok=True, checked=60)
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


FORGETFUL_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from eventstore import NewEvent, SqliteEventStore

    async def main(path):
        store = await SqliteEventStore.open(path)
        await store.append("s", [NewEvent(event_id="kept", type="t", data=b"")], 0)
        raise RuntimeError("crashed without closing the store")

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_store_never_closed_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    script = tmp_path / "forgetful_child.py"
    script.write_text(FORGETFUL_CHILD)
    path = tmp_path / "events.db"
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 1
    assert "crashed without closing the store" in done.stderr
    assert [e.event_id for e in read_all(path)] == ["kept"]


# -- bad files -----------------------------------------------------------------------------


def open_then_use(path: Path) -> None:
    """Open the store and use it; every failure must be a typed store error."""

    async def scenario() -> None:
        store = await SqliteEventStore.open(path)
        try:
            await store.read_all()
            await store.verify()
            await store.streams()
            await store.append("new", [ev("new")], 0)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_garbage_over_the_header_gives_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    asyncio.run(fill(path, 20))
    with path.open("r+b") as f:
        f.write(random.Random(1).randbytes(100))
    with pytest.raises(StorageError) as caught:
        open_then_use(path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_a_file_that_is_not_a_database_gives_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not a database\n" * 500)
    with pytest.raises(StorageError):
        open_then_use(path)
    assert path.read_bytes() == b"this is not a database\n" * 500


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StorageError, match="not a Baton event store"):
        open_then_use(path)


def test_a_directory_in_place_of_the_file_gives_storage_error(tmp_path: Path) -> None:
    (tmp_path / "events.db").mkdir()
    with pytest.raises(StorageError):
        open_then_use(tmp_path / "events.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError):
        open_then_use(tmp_path / "file" / "events.db")


def test_corrupted_pages_give_typed_errors_never_a_crash(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine.db"
    asyncio.run(fill(pristine, 400, batch=4))
    size = pristine.stat().st_size
    outcomes: Counter[str] = Counter()
    for seed in range(20):
        rng = random.Random(seed)
        path = tmp_path / f"corrupt-{seed}.db"
        shutil.copyfile(pristine, path)
        with path.open("r+b") as f:
            for _ in range(rng.randint(1, 4)):
                f.seek(rng.randrange(100, size))
                f.write(rng.randbytes(rng.randint(1, 512)))
        try:
            open_then_use(path)
            outcomes["no error"] += 1
        except EventStoreError as e:
            outcomes[type(e).__name__] += 1
    assert sum(outcomes.values()) == 20
    assert outcomes["StorageError"] > 0


# -- read-only storage ---------------------------------------------------------------------

# Root ignores file permissions, so when the tests run as root the child gives up the
# capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) first.
READ_ONLY_CHILD = textwrap.dedent(
    """
    import asyncio, ctypes, json, os, sys

    def drop_file_capabilities():
        libc = ctypes.CDLL(None, use_errno=True)

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

        header, data = Header(0x20080522, 0), (Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        mask = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
        data[0].effective &= mask
        data[0].permitted &= mask
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()

    if os.geteuid() == 0:
        drop_file_capabilities()

    from eventstore import NewEvent, SqliteEventStore, StorageError

    async def main(path):
        phase, count = "open", None
        try:
            store = await SqliteEventStore.open(path)
            try:
                phase = "read"
                count = len(await store.read_all())
                phase = "append"
                version = await store.stream_version("a")
                await store.append("a", [NewEvent(event_id="late", type="t", data=b"")], version)
                phase = "none"
            finally:
                await store.close()
            return {"phase": phase, "count": count}
        except StorageError as e:
            return {"phase": phase, "count": count, "error": str(e), "cause": repr(e.__cause__)}

    print(json.dumps(asyncio.run(main(sys.argv[1]))))
    """
)


def run_read_only_child(tmp_path: Path, path: Path) -> dict[str, Any]:
    script = tmp_path / "read_only_child.py"
    script.write_text(READ_ONLY_CHILD)
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_read_only_file_reads_but_refuses_appends(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    path = directory / "events.db"
    before = asyncio.run(fill(path, 5))
    path.chmod(0o444)
    try:
        result = run_read_only_child(tmp_path, path)
    finally:
        path.chmod(0o644)
    assert result["phase"] == "append", result
    assert result["count"] == 5
    assert "readonly" in result["cause"]
    assert read_all(path) == before
    assert verify(path).ok
    assert integrity(path) == "ok"


def test_read_only_directory_gives_storage_error(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    path = directory / "events.db"
    before = asyncio.run(fill(path, 5))
    path.chmod(0o444)
    directory.chmod(0o555)
    try:
        existing = run_read_only_child(tmp_path, path)
        new = run_read_only_child(tmp_path, directory / "sub" / "events.db")
    finally:
        directory.chmod(0o755)
        path.chmod(0o644)
    assert existing["phase"] in ("open", "append"), existing
    assert "error" in existing
    assert new["phase"] == "open", new
    assert "error" in new
    assert not (directory / "sub").exists()
    assert read_all(path) == before
    assert verify(path).ok


# -- a full disk ---------------------------------------------------------------------------


def test_full_database_fails_appends_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "events.db"

    async def scenario() -> None:
        store = await SqliteEventStore.open(path, max_size_bytes=96 * 1024)
        acked: list[list[StoredEvent]] = []

        async def append_until_full() -> StorageError:
            for n in range(10_000):
                try:
                    acked.append(await store.append("s", [ev(f"e{n}", data=bytes(700))], n))
                except StorageError as e:
                    return e
            raise AssertionError("the capped database never filled up")

        try:
            full = await append_until_full()
            assert isinstance(full.__cause__, sqlite3.OperationalError)
            assert "full" in str(full)
            assert len(acked) > 10
            stored = [e for batch in acked for e in batch]
            assert await store.read_all() == stored
            # A large batch fails whole: not one of its events is stored.
            with pytest.raises(StorageError):
                await store.append("s", [ev(f"big{k}", bytes(4000)) for k in range(10)], len(acked))
            assert await store.stream_version("s") == len(acked)
            assert await store.read_all() == stored
            # The writer is still alive: retries are answered, conflicts still typed.
            assert await store.append("s", [ev("e0", data=bytes(700))], 0) == acked[0]
            with pytest.raises(ConcurrencyError):
                await store.append("s", [ev("late")], 0)
            assert await store.verify() == VerifyReport(ok=True, checked=len(stored))
        finally:
            await store.close()

        store = await SqliteEventStore.open(path)  # room again: the chain goes on
        try:
            after = await store.append("s", [ev("after")], len(acked))
            assert after[0].position == len(acked) + 1
            assert (await store.verify()).ok
        finally:
            await store.close()

    asyncio.run(scenario())
    assert integrity(path) == "ok"


# -- kill -9 -------------------------------------------------------------------------------

CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from eventstore import ConcurrencyError, NewEvent, SqliteEventStore

    def acknowledge(events):
        sys.stdout.write("".join(e.event_id + "\\n" for e in events))
        sys.stdout.flush()

    async def own_stream(store, stream, rng):
        version = await store.stream_version(stream)
        while True:
            batch = [
                NewEvent(event_id=f"{stream}:{version + k}", type="crash.test",
                         data=rng.randbytes(rng.randint(0, 400)))
                for k in range(1, rng.randint(1, 3) + 1)
            ]
            stored = await store.append(stream, batch, version)
            version = stored[-1].version
            acknowledge(stored)

    async def shared_stream(store, name, rng):
        n = 0
        while True:
            n += 1
            batch = [NewEvent(event_id=f"{name}:{n}", type="crash.shared", data=b"x")]
            while True:
                try:
                    version = await store.stream_version("shared")
                    stored = await store.append("shared", batch, version)
                    break
                except ConcurrencyError:
                    pass
            acknowledge(stored)

    async def main(path, cycle):
        store = await SqliteEventStore.open(path)
        rng = random.Random(cycle)
        await asyncio.gather(
            *(own_stream(store, f"c{cycle}-{k}", random.Random(rng.random())) for k in range(4)),
            *(shared_stream(store, f"c{cycle}-shared{k}", rng) for k in range(2)),
        )

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def kill_while_appending(
    script: Path,
    path: Path,
    cycle: int,
    rng: random.Random,
    window_s: float = 0.15,
    after: bytes | None = None,
) -> list[str]:
    """Run the child until it has acknowledged something (or written the line `after`),
    then SIGKILL it at a random moment within `window_s`; return every line it wrote
    (what it acknowledged)."""
    errors = path.parent / f"child-{cycle}.err"
    with errors.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), str(cycle)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert child.stdout is not None
    out = child.stdout
    lines: list[bytes] = []
    first = threading.Event()

    def pump() -> None:
        for line in iter(out.readline, b""):
            lines.append(line)
            if after is None or line == after:
                first.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert first.wait(timeout=30), errors.read_text()
        time.sleep(rng.uniform(0.0, window_s))  # the fault: where in the write loop it lands
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join(timeout=30)
        out.close()
    assert child.returncode == -signal.SIGKILL, errors.read_text()
    return [line[:-1].decode() for line in lines if line.endswith(b"\n")]


def test_no_acknowledged_event_is_lost_across_kill_9(tmp_path: Path) -> None:
    script = tmp_path / "crash_child.py"
    script.write_text(CRASH_CHILD)
    path = tmp_path / "events.db"
    rng = random.Random(20261125)
    acknowledged: list[str] = []
    for cycle in range(30):  # the bar: at least 30 kills on the same file
        acked_now = kill_while_appending(script, path, cycle, rng)
        assert acked_now
        acknowledged.extend(acked_now)
        assert integrity(path) == "ok"
        log = read_all(path)
        counts = Counter(e.event_id for e in log)
        assert all(n == 1 for n in counts.values())
        missing = set(acknowledged) - counts.keys()
        assert not missing, f"cycle {cycle}: lost {len(missing)} acknowledged events"
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        assert verify(path) == VerifyReport(ok=True, checked=len(log))


PROJECTOR_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from eventstore import Projector, SqliteEventStore

    class Counting:
        name = "counter"

        async def apply(self, event, view):
            count = int(await view.get("count") or b"0")
            view.put("count", str(count + 1).encode())
            view.put(f"seen/{event.position:06d}", event.event_id.encode())

    class Reporting:
        # Says each committed checkpoint, so the parent knows the child is mid-work.
        def __init__(self, port):
            self.port = port

        async def commit(self, name, expected, position, upserts, deletes=()):
            await self.port.commit(name, expected, position, upserts, deletes)
            sys.stdout.write(f"{position}\\n")
            sys.stdout.flush()

        def __getattr__(self, attribute):
            return getattr(self.port, attribute)

    async def main(path):
        store = await SqliteEventStore.open(path)
        total = await store.last_position()
        await Projector(store, Reporting(store.projections), Counting(), batch_size=7).run(
            until_position=total
        )
        sys.stdout.write("done\\n")
        sys.stdout.flush()
        await asyncio.sleep(3600)  # wait for the kill like the other cycles

    asyncio.run(main(sys.argv[1]))
    """
)


def projection_state(path: Path) -> tuple[int, int, list[str]]:
    """The counter projection's checkpoint, count and seen keys, read straight from SQL."""
    with sqlite3.connect(path) as conn:
        checkpoint = conn.execute(
            "SELECT COALESCE(MAX(position), 0) FROM projection_checkpoints WHERE name = 'counter'"
        ).fetchone()[0]
        count = conn.execute(
            "SELECT value FROM projection_rows WHERE name = 'counter' AND key = 'count'"
        ).fetchone()
        seen = [
            row[0]
            for row in conn.execute(
                "SELECT key FROM projection_rows WHERE name = 'counter' AND key LIKE 'seen/%' "
                "ORDER BY key"
            )
        ]
    return int(checkpoint), int(count[0]) if count else 0, seen


def test_projection_output_and_checkpoint_survive_kill_9_together(tmp_path: Path) -> None:
    """A projector SIGKILLed mid-run never leaves output without its checkpoint (or the
    reverse): after each kill, the rows are exactly those of the events up to it."""
    script = tmp_path / "projector_child.py"
    script.write_text(PROJECTOR_CHILD)
    path = tmp_path / "events.db"
    total = len(asyncio.run(fill(path, 8_000, batch=100)))
    rng = random.Random(20261126)
    checkpoint = 0
    for kill in range(13):  # 12 kills mid-run, then one after the projector said done
        last = kill == 12
        lines = kill_while_appending(
            script, path, kill, rng, window_s=0.04, after=b"done\n" if last else None
        )
        assert integrity(path) == "ok"
        checkpoint, count, seen = projection_state(path)
        reported = [int(line) for line in lines if line != "done"]
        assert checkpoint >= max(reported, default=0), "a reported commit was lost"
        assert count == checkpoint
        assert seen == [f"seen/{p:06d}" for p in range(1, checkpoint + 1)]
        assert last or checkpoint < total, f"kill {kill} came after the end: not mid-run"
    assert checkpoint == total


# -- upgrading a file of schema 1 ----------------------------------------------------------


def test_a_schema_1_file_is_upgraded_and_its_chain_still_verifies(tmp_path: Path) -> None:
    from eventstore.sqlite.schema import SCHEMA_V1

    path = tmp_path / "events.db"
    conn = sqlite3.connect(path)
    for statement in SCHEMA_V1:
        conn.execute(statement)
    conn.execute("PRAGMA application_id = 1111577678")
    conn.execute("PRAGMA user_version = 1")
    prev = GENESIS
    for n in range(1, 4):  # rows exactly as the schema-1 store wrote them (no schema column)
        digest = event_hash(prev, n, "s", n, f"e{n}", "t", b"x", 1.5, "", "", "", "", "")
        conn.execute(
            "INSERT INTO events VALUES (?, 's', ?, ?, 't', x'78', 1.5, '', '', '', '', '', ?, ?)",
            (n, n, f"e{n}", prev, digest),
        )
        prev = digest
    conn.commit()
    conn.close()

    async def scenario() -> None:
        store = await SqliteEventStore.open(path)
        try:
            old = await store.read_all()
            assert [(e.event_id, e.schema) for e in old] == [("e1", 1), ("e2", 1), ("e3", 1)]
            new = await store.append(
                "s", [NewEvent(event_id="e4", type="t", data=b"", schema=2)], 3
            )
            assert new[0].prev_hash == old[-1].hash
            assert await store.verify() == VerifyReport(ok=True, checked=4)
        finally:
            await store.close()

    asyncio.run(scenario())
    assert integrity(path) == "ok"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()
