"""The distributed event store on NATS JetStream."""

from eventstore.jetstream.store import (
    MAX_BATCH,
    JetStreamEventStore,
    decode_stream_token,
    encode_stream_token,
)

__all__ = ["MAX_BATCH", "JetStreamEventStore", "decode_stream_token", "encode_stream_token"]
