"""Collecting blobs no event refers to (`baton blobs gc`).

The log is append-only, so a blob an event refers to stays referred to for good: a run's
blobs live as long as its log, whatever became of the run (forks share them). What can
be left without a reference is an upload whose event never came: an attempt whose result
was refused, timed out, was lost with its agent, or was never sent. Those are collected.

A put (first or again) marks a blob as stored now, and comes before the event that refers
to it is appended; so a blob stored within the last `grace_s` seconds is always kept,
however the scan of the log and the puts interleave. Blobs that a referred-to msgpack
blob refers to are referred to as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

import msgspec

from bus import blobs
from bus.protocol import BlobRef
from eventstore import BlobInfo, EventStore

GRACE_S: Final = 3600.0
"""Blobs stored within this many seconds are kept whether referred to or not."""
_CHUNK: Final = 5_000


def refs_of(data: bytes) -> list[BlobRef]:
    """The blob references in one event's (or one msgpack blob's) encoded data."""
    if not blobs.may_hold_refs(data):
        return []
    try:
        return blobs.refs_in(msgspec.msgpack.decode(data))
    except msgspec.DecodeError:
        return []


@dataclass
class Collected:
    """What one collection found and did."""

    referenced: int = 0
    """Blobs the log refers to (directly or through another blob), stored or not."""
    kept_young: int = 0
    """Unreferenced blobs kept because they were stored within the grace period."""
    removed: list[str] = field(default_factory=list)
    """Digests of the blobs removed (or, dry, that would be)."""
    freed_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    """Digests the log refers to that the store does not hold."""


async def referenced(store: EventStore, stored: dict[str, BlobInfo] | None = None) -> set[str]:
    """Every digest the log refers to (reading the whole log in chunks), and every digest
    the msgpack blobs among them refer to in turn; `stored` is what the store holds (it
    is listed when not given)."""
    found: set[str] = set()
    position = 1
    while chunk := await store.read_all(position, _CHUNK):
        for event in chunk:
            found.update(ref.digest for ref in refs_of(event.data))
        position = chunk[-1].position + 1
    if stored is None:
        stored = {info.digest: info for info in await store.blobs.list()}
    pending = [d for d in found if d in stored and stored[d].media_type == blobs.MSGPACK]
    while pending:
        for ref in refs_of(await store.blobs.get(pending.pop())):
            if ref.digest not in found:
                found.add(ref.digest)
                if ref.digest in stored and stored[ref.digest].media_type == blobs.MSGPACK:
                    pending.append(ref.digest)
    return found


async def collect(
    store: EventStore, *, grace_s: float = GRACE_S, dry_run: bool = False, now: float | None = None
) -> Collected:
    """Remove the blobs nothing in the log refers to and that were stored more than
    `grace_s` seconds ago (with `dry_run`, only say which)."""
    cutoff = (time.time() if now is None else now) - grace_s
    stored = {info.digest: info for info in await store.blobs.list()}
    wanted = await referenced(store, stored)
    result = Collected(referenced=len(wanted), missing=sorted(wanted - set(stored)))
    for digest, info in sorted(stored.items()):
        if digest in wanted:
            continue
        if info.stored_at >= cutoff:
            result.kept_young += 1
        elif dry_run or await store.blobs.delete(digest, stored_before=cutoff):
            result.removed.append(digest)
            result.freed_bytes += info.size
    return result
