"""Everything Baton writes under its state directory is private from its creation (issue 12,
findings 3 and 8): files 0600, directories 0700, the state directory included, after a
real `baton run` in open and in governed mode (the event store with its -wal and -shm,
the embedded server's JetStream store, config and ports file, agents' logs, the person's
credentials, the checkpoint key and anchor). The server's config, which holds every
user's password, is never seen with a looser mode, not even for an instant.

Each test sets the usual umask (022) first, so a mode comes from the code, not from a
umask some earlier test or the machine happened to set.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import private
from bus.permissions import human_permissions, new_user
from bus.server import EmbeddedNats
from tests.cluster import EXAMPLE, baton
from tests.fake_openai import FakeOpenAI
from tests.test_governed_example import run as run_governed


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def not_private(root: Path) -> list[str]:
    """Every path under `root` (and `root`) whose mode is not 0700 (directory) or 0600."""
    found = []
    for path in [root, *sorted(root.rglob("*"))]:
        want = 0o700 if path.is_dir() else 0o600
        if not path.is_symlink() and mode(path) != want:
            found.append(f"{path.relative_to(root.parent)}: {mode(path):04o}")
    return found


# -- the helper ------------------------------------------------------------------------


def test_directories_are_made_0700_at_every_level(tmp_path: Path) -> None:
    made = private.make_dir(tmp_path / "a" / "b" / "c")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", made)] == [0o700] * 3
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    private.make_dir(existing / "inner")
    assert mode(existing) == 0o755, "a directory that exists keeps its mode"
    assert mode(existing / "inner") == 0o700


def test_a_state_directory_open_to_others_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    private.make_state_dir(loose)
    private.make_state_dir(read_only)
    assert mode(loose) == 0o700
    assert mode(read_only) == 0o500, "only other users' rights are taken away"
    assert mode(private.make_state_dir(tmp_path / "new" / "state")) == 0o700
    assert mode(tmp_path / "new") == 0o700


def test_a_file_given_as_the_state_directory_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    given = tmp_path / "notes.txt"
    given.write_text("mine")
    given.chmod(0o644)
    with pytest.raises(NotADirectoryError):
        private.make_state_dir(given)
    done = subprocess.run(
        baton("run", str(EXAMPLE), "--state-dir", str(given)),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr
        == f"baton run: error: state directory {given} is not writable: Not a directory\n"
    )
    assert (mode(given), given.read_text()) == (0o644, "mine")


def test_a_store_in_a_directory_that_does_not_exist_is_refused_by_name(tmp_path: Path) -> None:
    store = tmp_path / "no-such-dir" / "events.db"
    for command in ("run", "serve"):
        args = [str(EXAMPLE)] if command == "run" else []
        done = subprocess.run(
            baton(command, *args, "--store", f"sqlite:{store}", "--state-dir", str(tmp_path / "s")),
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr == (
            f"baton {command}: error: {store}: its directory {store.parent} does not exist\n"
        )
        assert not store.parent.exists()
        assert not (tmp_path / "s").exists()  # refused before the state directory is made


def test_files_are_0600_from_their_creation(tmp_path: Path) -> None:
    os.close(private.create(tmp_path / "created"))
    private.touch(tmp_path / "touched")
    private.write(tmp_path / "written", b"data")
    with private.append(tmp_path / "appended") as f:
        f.write(b"line\n")
    with private.append_text(tmp_path / "log") as t:
        t.write("line\n")
    replaced = tmp_path / "replaced"
    replaced.write_text("old")
    assert mode(replaced) == 0o644
    private.write_atomic(replaced, b"new")
    assert replaced.read_bytes() == b"new"
    assert not_private(tmp_path) == [], "(the test's own directory is 0700 too)"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "appended", "created", "log", "replaced", "touched", "written"
    ], "no temporary file is left behind"  # fmt: skip
    with pytest.raises(FileExistsError):
        private.create(tmp_path / "created")


# -- the server's config: never seen with a looser mode ---------------------------------


class ModeWatch:
    """Records the mode of every file in a directory at every moment it can look: at
    each audit event this process raises (before each file is opened, renamed, chmod-ed:
    a write-then-chmod is caught between the two, deterministically) and from a thread
    that polls meanwhile."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: dict[str, set[int]] = {}
        self.looks = 0
        self.on = False
        self._inside = threading.local()
        self._stop = threading.Event()
        sys.addaudithook(self._hook)  # hooks cannot be removed: `on` switches it
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def look(self) -> None:
        if not self.on or getattr(self._inside, "busy", False):
            return
        self._inside.busy = True  # looking raises audit events of its own
        try:
            for entry in os.scandir(self.directory):
                try:
                    seen = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    continue
                self.seen.setdefault(entry.name, set()).add(seen)
            self.looks += 1
        except FileNotFoundError:
            pass
        finally:
            self._inside.busy = False

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        self.look()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.look()

    def __enter__(self) -> ModeWatch:
        self.on = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.on = False

    def looser(self) -> dict[str, list[str]]:
        return {
            name: sorted(f"{m:04o}" for m in modes)
            for name, modes in self.seen.items()
            if name.endswith(("conf", ".tmp")) and modes != {0o600}
        }


def test_the_server_config_is_never_seen_with_a_looser_mode(tmp_path: Path) -> None:
    """Written at start and rewritten for each user added (its passwords), it is 0600 at
    every look, and so is any file beside it that is about to become it."""

    async def scenario(watch: ModeWatch) -> None:
        server = EmbeddedNats(tmp_path, users=[new_user("orchestrator", None)])
        try:
            with watch:
                await server.start()
                for n in range(5):
                    server.add_users([new_user(f"human-{n}", human_permissions(f"human:{n}"))])
        finally:
            server.stop()

    (tmp_path / "nats").mkdir(mode=0o700)
    watch = ModeWatch(tmp_path / "nats")
    asyncio.run(scenario(watch))
    assert "nats-server.conf" in watch.seen, f"the watch never saw the config ({watch.looks})"
    assert watch.looser() == {}
    assert mode(tmp_path / "nats") == 0o700


# -- a real `baton run` ------------------------------------------------------------------


def test_an_open_run_leaves_only_private_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)  # the log file is opened before the state directory is made
    env = {**os.environ, "BATON_TRACE_FILE": str(state / "spans.jsonl")}
    env["BATON_LOG_FILE"] = str(state / "baton.log")
    done = subprocess.run(
        baton("run", str(EXAMPLE), "--state-dir", str(state)),
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    made = {p.relative_to(state).as_posix() for p in state.rglob("*")}
    for expected in ("events.db", "anchor.key", "checkpoints.jsonl",
                     "nats/nats-server.conf", "nats/nats-server.log", "nats/jetstream",
                     "logs", "spans.jsonl", "baton.log"):  # fmt: skip
        assert expected in made, f"{expected} was not made: the test would miss it"
    assert any(p.startswith("nats/jetstream/") and p.endswith(".blk") for p in made)
    assert not_private(state) == []


def test_the_event_store_and_its_wal_are_0600_while_open(tmp_path: Path) -> None:
    """SQLite makes -wal and -shm itself, with the mode of the database file, which Baton
    made 0600 before SQLite opened it (the run above checks the files after they closed)."""
    from eventstore import NewEvent, SqliteEventStore

    async def scenario() -> list[str]:
        store = await SqliteEventStore.open(tmp_path / "state" / "events.db")
        try:
            await store.append("s", [NewEvent(event_id="e1", type="t", data=b"x")], 0)
            names = sorted(p.name for p in (tmp_path / "state").iterdir())
            assert names == ["events.db", "events.db-shm", "events.db-wal"]
            return not_private(tmp_path / "state")
        finally:
            await store.close()

    assert asyncio.run(scenario()) == []


def test_a_governed_run_leaves_only_private_files(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        run_governed(tmp_path, fake)
    state = tmp_path / "state"
    made = {p.relative_to(state).as_posix() for p in state.rglob("*")}
    assert "nats/person.json" in made, "the person's credentials are there to check"
    assert not_private(state) == []


def test_a_state_directory_left_open_by_an_older_baton_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    done = subprocess.run(
        baton("run", str(EXAMPLE), "--state-dir", str(state)),
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert mode(state) == 0o700
    assert not_private(state) == []
