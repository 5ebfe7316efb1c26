"""Snapshots in a second JetStream stream, `<name>_SNAPSHOTS`, created on first use: one
subject per stream and version, one message kept per subject, each carrying its binding
to the hash chain (the hash of the event at its position and the digest over both)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import nats.js.errors

from eventstore._common import (
    check_open,
    check_snapshot,
    check_stream,
    log,
    snapshot_check,
    snapshot_usable,
)
from eventstore.chain import SnapshotSeal, seal_snapshot
from eventstore.jetstream.log import (
    NATS_ERRORS,
    STREAM_WAIT_S,
    JetStreamLog,
    create_stream,
    storage_error,
)
from eventstore.jetstream.schema import (
    BODY_ENCODER,
    SNAPSHOT_DECODER,
    SnapshotBody,
    decode_stream_token,
)
from eventstore.model import Snapshot, SnapshotCheck, StoredEvent

EventAt = Callable[[int], Awaitable[StoredEvent | None]]
"""Reads the event stored at a global position, `None` if there is none."""


class Snapshots:
    """`save_snapshot`, `load_snapshot` and `verify_snapshots` of the store, beside `log`,
    with `replicas` copies; `event_at` reads the log for the binding."""

    def __init__(
        self,
        log: JetStreamLog,
        replicas: int,
        is_closed: Callable[[], bool],
        event_at: EventAt,
    ) -> None:
        self._log = log
        self._replicas = replicas
        self._is_closed = is_closed
        self._event_at = event_at
        self._ready = False

    async def _ensure_stream(self) -> None:
        if self._ready:
            return
        layout = self._log.layout
        try:
            await self._log.js.stream_info(layout.snapshot_name)
        except nats.js.errors.NotFoundError:
            await create_stream(self._log.js, layout.snapshot_config(self._replicas), STREAM_WAIT_S)
        self._ready = True

    async def save(self, snapshot: Snapshot) -> None:
        check_snapshot(snapshot)
        check_open(self._is_closed())
        sealed = seal_snapshot(snapshot, await self._event_at(snapshot.position))
        layout = self._log.layout
        subject = f"{layout.snapshot_prefix(snapshot.stream)}{snapshot.version}"
        body = SnapshotBody(
            stream=snapshot.stream,
            version=snapshot.version,
            position=snapshot.position,
            data=snapshot.data,
            schema=snapshot.schema,
            event_hash=sealed.event_hash,
            digest=sealed.digest,
        )
        try:
            await self._ensure_stream()
            await self._log.js.publish(
                subject, BODY_ENCODER.encode(body), stream=layout.snapshot_name
            )
        except NATS_ERRORS as error:
            raise storage_error("saving a snapshot", error) from error

    async def _subjects(self, pattern: str) -> list[str]:
        """The snapshot stream's subjects matching `pattern`, [] if it does not exist."""
        try:
            info = await self._log.js.stream_info(
                self._log.layout.snapshot_name, subjects_filter=pattern
            )
        except nats.js.errors.NotFoundError:
            return []
        except NATS_ERRORS as error:
            raise storage_error("listing snapshots", error) from error
        return list(info.state.subjects or {})

    async def _read(
        self, subject: str, stream: str, version: int
    ) -> tuple[Snapshot, SnapshotSeal] | str | None:
        """The snapshot of `stream` at `version`, kept on `subject`, with its seal; why not,
        if its message is not that snapshot; `None` if there is none."""
        msg = await self._log.last_by_subject(self._log.layout.snapshot_name, subject)
        if msg is None:
            return None
        try:
            body = SNAPSHOT_DECODER.decode(msg.data)
        except msgspec.DecodeError as error:
            return f"not a snapshot this store wrote: {error}"
        if (body.stream, body.version) != (stream, version):
            return f"its message says {body.stream!r} v{body.version}"
        snapshot = Snapshot(
            stream=body.stream,
            version=body.version,
            position=body.position,
            data=body.data,
            schema=body.schema,
        )
        return snapshot, SnapshotSeal(body.event_hash, body.digest)

    async def load(self, stream: str, until_position: int | None = None) -> Snapshot | None:
        check_open(self._is_closed())
        check_stream(stream)
        prefix = self._log.layout.snapshot_prefix(stream)
        subjects = await self._subjects(f"{prefix}*")
        versions = sorted((int(s[len(prefix) :]) for s in subjects), reverse=True)
        for version in versions:
            found = await self._read(f"{prefix}{version}", stream, version)
            if isinstance(found, str):
                log.warning("snapshot of %s v%d ignored: %s", stream, version, found)
                continue
            if found is None:
                continue
            snapshot, sealed = found
            if until_position is not None and snapshot.position > until_position:
                continue
            if snapshot_usable(snapshot, sealed, await self._event_at(snapshot.position)):
                return snapshot
        return None

    async def verify(self) -> list[SnapshotCheck]:
        check_open(self._is_closed())
        snap_prefix = self._log.layout.snap_prefix
        keyed: list[tuple[str, int, str]] = []
        for subject in await self._subjects(f"{snap_prefix}>"):
            token, _, number = subject[len(snap_prefix) :].rpartition(".")
            keyed.append((decode_stream_token(token), int(number), subject))
        checks = []
        for stream, version, subject in sorted(keyed):
            found = await self._read(subject, stream, version)
            if isinstance(found, str):
                checks.append(
                    SnapshotCheck(stream=stream, version=version, position=0, problem=found)
                )
            elif found is not None:
                snapshot, sealed = found
                event = await self._event_at(snapshot.position)
                checks.append(snapshot_check(snapshot, sealed, event))
        return checks
