"""Signed checkpoints on their own: the key is private from its creation, the anchor file
names every checkpoint that is not what the trusted key signed, and the checkpointer
signs the head by count, by time, when asked and when closed, off the append path."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from eventstore import AnchorError, MemoryEventStore, NewEvent
from eventstore.anchor import (
    FILE_NAME,
    Checkpointer,
    anchor_file,
    append_checkpoint,
    load_signing_key,
    read_checkpoints,
    read_verify_key,
    sign_checkpoint,
)

HASH = "ab" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_is_made_once_private_from_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spying_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    def no_chmod(*args: object, **kw: object) -> None:
        raise AssertionError("the key is created with its mode, never chmod-ed afterwards")

    monkeypatch.setattr(os, "open", spying_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    old_umask = os.umask(0)  # a careless umask must not widen it
    try:
        key = load_signing_key(tmp_path / "state" / "anchor.key")
    finally:
        os.umask(old_umask)
    path = tmp_path / "state" / "anchor.key"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    created = [(flags, m) for _, flags, m in opened if flags & os.O_CREAT]
    assert created, "the key file is created through os.open"
    assert all(m == 0o600 and flags & os.O_EXCL for flags, m in created)
    assert load_signing_key(path).verify_key == key.verify_key, "made once, then reused"
    assert sorted(p.name for p in path.parent.iterdir()) == ["anchor.key"], "no temporary left"


def test_a_missing_or_malformed_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AnchorError, match="no checkpoint key"):
        load_signing_key(tmp_path / "none.key", create=False)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(AnchorError, match="does not hold an Ed25519 key"):
        load_signing_key(bad)
    public = SigningKey.generate().verify_key
    assert read_verify_key(public.encode().hex()) == public
    (tmp_path / "key.pub").write_text(public.encode().hex() + "\n")
    assert read_verify_key(str(tmp_path / "key.pub")) == public
    with pytest.raises(AnchorError):
        read_verify_key(str(tmp_path / "nowhere.pub"))
    with pytest.raises(AnchorError, match="not an Ed25519 public key"):
        read_verify_key("zz" * 32)


def test_checkpoints_are_appended_to_a_private_file_or_directory(tmp_path: Path) -> None:
    key = SigningKey.generate()
    as_file = tmp_path / "elsewhere" / "anchor.jsonl"
    append_checkpoint(as_file, sign_checkpoint(key, 1, HASH, 1.0))
    append_checkpoint(as_file, sign_checkpoint(key, 2, HASH, 2.0))
    assert mode(as_file) == 0o600
    assert mode(as_file.parent) == 0o700
    assert len(as_file.read_text().splitlines()) == 2
    directory = tmp_path / "dir"
    directory.mkdir()
    append_checkpoint(directory, sign_checkpoint(key, 1, HASH, 1.0))
    assert anchor_file(directory) == directory / FILE_NAME
    assert read_checkpoints(directory, key.verify_key).count == 1


def test_every_checkpoint_the_key_did_not_sign_is_named(tmp_path: Path) -> None:
    key = SigningKey.generate()
    anchor = tmp_path / "checkpoints.jsonl"
    append_checkpoint(anchor, sign_checkpoint(key, 3, HASH, 1.0))
    append_checkpoint(anchor, sign_checkpoint(SigningKey.generate(), 4, HASH, 2.0))
    edited = sign_checkpoint(key, 5, HASH, 3.0)
    line = anchor.read_bytes()
    with anchor.open("ab") as f:
        f.write(line.splitlines()[0].replace(b'"position":3', b'"position":9') + b"\n")
        f.write(b"{not json}\n")
    append_checkpoint(anchor, edited)
    append_checkpoint(anchor, sign_checkpoint(key, 5, "cd" * 32, 4.0))
    with anchor.open("ab") as f:
        f.write(b'{"format": "baton-checkpoint/1", "posi')  # a write cut short: skipped

    found = read_checkpoints(anchor, key.verify_key)
    assert (found.count, found.hashes, found.newest) == (3, {3: HASH, 5: HASH}, 5)
    assert [p.split(": ", 1)[0] for p in found.problems] == [
        f"line 2 of {anchor}",
        f"line 3 of {anchor}",
        f"line 4 of {anchor} is not a checkpoint",
        f"line 6 of {anchor}",
    ]
    assert "not the trusted key" in found.problems[0]
    assert "signature does not verify: the checkpoint was forged or edited" in found.problems[1]
    assert "two signed checkpoints disagree about position 5" in found.problems[3]

    assert read_checkpoints(tmp_path / "none", key.verify_key).problems == [
        f"no checkpoints at {tmp_path / 'none'}"
    ]
    (tmp_path / "empty").write_text("")
    assert read_checkpoints(tmp_path / "empty", key.verify_key).problems == [
        f"no signed checkpoints in {tmp_path / 'empty'}"
    ]


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def append(store: MemoryEventStore, count: int) -> None:
    for _ in range(count):
        version = await store.stream_version("s")
        event = NewEvent(event_id=f"s@{version + 1}", type="t", data=b"")
        await store.append("s", [event], version)


def test_the_checkpointer_signs_by_count_by_time_on_request_and_at_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = MemoryEventStore()
        anchor = tmp_path / "checkpoints.jsonl"
        now = [0.0]
        key = SigningKey.generate()
        checkpoints = Checkpointer(
            store, anchor, key, every_events=5, every_s=60.0, poll_s=0.005, clock=lambda: now[0]
        )
        await checkpoints.start()
        await append(store, 4)
        await asyncio.sleep(0.05)
        assert lines(anchor) == 0, "neither 5 events nor 60 s yet"
        await append(store, 1)
        await wait_for(lambda: lines(anchor) == 1)  # by count
        await append(store, 1)
        now[0] = 61.0
        await wait_for(lambda: lines(anchor) == 2)  # by time
        await append(store, 1)
        checkpoints.request()
        await wait_for(lambda: lines(anchor) == 3)  # asked, e.g. at a run's end
        await asyncio.sleep(0.05)
        assert lines(anchor) == 3, "nothing new, nothing signed"
        await append(store, 2)
        await checkpoints.close()
        assert lines(anchor) == 4
        found = read_checkpoints(anchor, key.verify_key)
        assert sorted(found.hashes) == [5, 6, 7, 9]
        assert not found.problems
        assert checkpoints.public_key == key.verify_key.encode().hex()

    asyncio.run(scenario())


def test_asks_that_come_close_together_share_one_checkpoint(tmp_path: Path) -> None:
    """Fifty runs ending within a moment ask for fifty checkpoints, each an fsync: those
    asked within `asked_gap_s` of the last one are signed together, covering the head."""

    async def scenario() -> None:
        store = MemoryEventStore()
        anchor = tmp_path / "checkpoints.jsonl"
        key = SigningKey.generate()
        checkpoints = Checkpointer(store, anchor, key, poll_s=0.005, asked_gap_s=2.0)
        await checkpoints.start()
        await append(store, 1)
        checkpoints.request()
        await wait_for(lambda: lines(anchor) == 1)
        for _ in range(5):  # within the gap
            await append(store, 1)
            checkpoints.request()
            await asyncio.sleep(0.01)
        await wait_for(lambda: lines(anchor) >= 2)
        await asyncio.sleep(0.1)
        assert lines(anchor) == 2, "the asks within the gap got one checkpoint"
        await checkpoints.close()
        assert sorted(read_checkpoints(anchor, key.verify_key).hashes) == [1, 6]

    asyncio.run(scenario())


def test_a_failing_checkpoint_is_logged_counted_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        store = MemoryEventStore()
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        anchor = blocker / "checkpoints.jsonl"  # its parent is a file: every write fails
        checkpoints = Checkpointer(store, anchor, SigningKey.generate(), poll_s=0.005)
        await checkpoints.start()
        await append(store, 1)
        checkpoints.request()
        await wait_for(lambda: checkpoints.failures >= 1)
        checkpoints.request()
        await wait_for(lambda: checkpoints.failures >= 2)  # still alive
        await checkpoints.close()
        assert checkpoints.failures >= 3, "the last one failed too, and said so"

    asyncio.run(scenario())
    assert "a checkpoint of the event log" in caplog.text
