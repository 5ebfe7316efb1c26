"""Snapshots in a second JetStream stream, `<name>_SNAPSHOTS`, created on first use: one
subject per stream and version, one message kept per subject."""

from __future__ import annotations

from collections.abc import Callable

import nats.js.errors

from eventstore._common import check_open, check_snapshot, check_stream
from eventstore.jetstream.log import NATS_ERRORS, JetStreamLog, storage_error
from eventstore.jetstream.schema import BODY_ENCODER, SNAPSHOT_DECODER, SnapshotBody
from eventstore.model import Snapshot


class Snapshots:
    """`save_snapshot` and `load_snapshot` of the store, beside `log`, with `replicas`
    copies."""

    def __init__(self, log: JetStreamLog, replicas: int, is_closed: Callable[[], bool]) -> None:
        self._log = log
        self._replicas = replicas
        self._is_closed = is_closed
        self._ready = False

    async def _ensure_stream(self) -> None:
        if self._ready:
            return
        layout = self._log.layout
        try:
            await self._log.js.stream_info(layout.snapshot_name)
        except nats.js.errors.NotFoundError:
            await self._log.js.add_stream(layout.snapshot_config(self._replicas))
        self._ready = True

    async def save(self, snapshot: Snapshot) -> None:
        check_snapshot(snapshot)
        check_open(self._is_closed())
        layout = self._log.layout
        subject = f"{layout.snapshot_prefix(snapshot.stream)}{snapshot.version}"
        body = SnapshotBody(
            stream=snapshot.stream,
            version=snapshot.version,
            position=snapshot.position,
            data=snapshot.data,
            schema=snapshot.schema,
        )
        try:
            await self._ensure_stream()
            await self._log.js.publish(
                subject, BODY_ENCODER.encode(body), stream=layout.snapshot_name
            )
        except NATS_ERRORS as error:
            raise storage_error("saving a snapshot", error) from error

    async def load(self, stream: str, until_position: int | None = None) -> Snapshot | None:
        check_open(self._is_closed())
        check_stream(stream)
        layout = self._log.layout
        prefix = layout.snapshot_prefix(stream)
        try:
            info = await self._log.js.stream_info(
                layout.snapshot_name, subjects_filter=f"{prefix}*"
            )
        except nats.js.errors.NotFoundError:
            return None
        except NATS_ERRORS as error:
            raise storage_error("listing snapshots", error) from error
        versions = sorted(
            (int(s[len(prefix) :]) for s in (info.state.subjects or {})), reverse=True
        )
        for version in versions:
            msg = await self._log.last_by_subject(layout.snapshot_name, f"{prefix}{version}")
            if msg is None:
                continue
            body = SNAPSHOT_DECODER.decode(msg.data)
            if until_position is None or body.position <= until_position:
                return Snapshot(
                    stream=body.stream,
                    version=body.version,
                    position=body.position,
                    data=body.data,
                    schema=body.schema,
                )
        return None
