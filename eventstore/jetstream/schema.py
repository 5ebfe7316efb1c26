"""Where and how the log lives in JetStream: the two streams' names and configuration, the
subject of each event-store stream and snapshot, and the messages' format (the package's
docs describe the layout)."""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, unquote

import msgspec
from nats.aio.msg import Msg
from nats.js import api

from eventstore.errors import StorageError
from eventstore.model import StoredEvent

VERSION_HEADER: Final = "Baton-Version"
# Characters kept as they are in a subject token; everything else is %XX-encoded.
_SAFE: Final = "-_~/:=@+,!$&'()[]{}|^;?#"


def encode_stream_token(stream: str) -> str:
    """One subject token for `stream`: `.`, `*`, `>`, `%`, whitespace and non-ASCII
    characters are percent-encoded (UTF-8), so no name can change the subject's shape."""
    return quote(stream, safe=_SAFE).replace(".", "%2E")


def decode_stream_token(token: str) -> str:
    """The stream name `encode_stream_token` turned into `token`."""
    return unquote(token, errors="strict")


class Layout:
    """The names of one log: the JetStream stream `name` holds the events, on subjects
    under `<prefix>.log.`; `<name>_SNAPSHOTS` holds the snapshots, under `<prefix>.snap.`."""

    __slots__ = ("log_prefix", "name", "prefix", "snap_prefix", "snapshot_name")

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix
        self.snapshot_name = f"{name}_SNAPSHOTS"
        self.log_prefix = f"{prefix}.log."
        self.snap_prefix = f"{prefix}.snap."

    def subject(self, stream: str) -> str:
        """The subject of every event of `stream`."""
        return self.log_prefix + encode_stream_token(stream)

    def snapshot_prefix(self, stream: str) -> str:
        """What the subjects of `stream`'s snapshots start with (the version follows)."""
        return f"{self.snap_prefix}{encode_stream_token(stream)}."

    def log_config(self, replicas: int) -> api.StreamConfig:
        """The log stream: file storage, no deletes, no purges, atomic batches and direct
        gets allowed."""
        return api.StreamConfig(
            name=self.name,
            subjects=[f"{self.log_prefix}>"],
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            allow_atomic=True,
        )

    def snapshot_config(self, replicas: int) -> api.StreamConfig:
        """The snapshot stream: one message kept per subject (stream and version)."""
        return api.StreamConfig(
            name=self.snapshot_name,
            subjects=[f"{self.snap_prefix}>"],
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            max_msgs_per_subject=1,
            allow_direct=True,
        )


class _Body(msgspec.Struct, array_like=True, frozen=True):
    """The payload of one log message: the envelope except position and version."""

    stream: str
    event_id: str
    type: str
    data: bytes
    schema: int
    recorded_at: float
    correlation_id: str
    causation_id: str
    actor: str
    trace_id: str
    span_id: str
    prev_hash: str
    hash: str


class SnapshotBody(msgspec.Struct, array_like=True, frozen=True):
    """The payload of one snapshot message, with its binding to the chain (empty in a
    message written before snapshots were bound: such a snapshot is never used)."""

    stream: str
    version: int
    position: int
    data: bytes
    schema: int
    event_hash: str = ""
    digest: str = ""


BODY_ENCODER: Final = msgspec.msgpack.Encoder()
_BODY_DECODER: Final = msgspec.msgpack.Decoder(_Body)
SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(SnapshotBody)


def body_of(event: StoredEvent) -> bytes:
    """The payload of the log message that stores `event`."""
    return BODY_ENCODER.encode(
        _Body(
            stream=event.stream,
            event_id=event.event_id,
            type=event.type,
            data=event.data,
            schema=event.schema,
            recorded_at=event.recorded_at,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            actor=event.actor,
            trace_id=event.trace_id,
            span_id=event.span_id,
            prev_hash=event.prev_hash,
            hash=event.hash,
        )
    )


def decode_event(msg: Msg, log_name: str) -> StoredEvent:
    """The event a message of the log stream `log_name` holds; `StorageError` if it is
    not one this store wrote."""
    headers = msg.headers or {}
    try:
        position = int(headers["Nats-Sequence"])
        version = int(headers[VERSION_HEADER])
        body = _BODY_DECODER.decode(msg.data)
    except (KeyError, ValueError, msgspec.DecodeError) as error:
        where = headers.get("Nats-Sequence", "?")
        raise StorageError(
            f"message {where} of JetStream stream {log_name} is not a Baton event: {error}"
        ) from error
    return StoredEvent(
        position=position,
        stream=body.stream,
        version=version,
        event_id=body.event_id,
        type=body.type,
        data=body.data,
        schema=body.schema,
        recorded_at=body.recorded_at,
        correlation_id=body.correlation_id,
        causation_id=body.causation_id,
        actor=body.actor,
        trace_id=body.trace_id,
        span_id=body.span_id,
        prev_hash=body.prev_hash,
        hash=body.hash,
    )
