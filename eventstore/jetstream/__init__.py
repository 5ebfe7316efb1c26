"""The distributed event store: one NATS JetStream stream holds the whole log.

Layout
    * One JetStream stream (default `BATON_EVENTS`, file storage, `replicas` copies, no
      deletes, no purges, atomic batches and direct gets allowed) with one subject per
      event-store stream: `<prefix>.log.<token>`, where `<token>` is the stream name
      percent-encoded so that `.`, `*`, `>`, `%`, whitespace and every non-ASCII character
      become `%XX` (UTF-8 bytes): a stream name is always exactly one subject token.
    * The global position of an event is its JetStream stream sequence; the per-stream
      version is the `Baton-Version` header; the rest of the envelope (with the hash
      chain's `prev_hash` and `hash`, computed by `chain.seal` exactly as the other
      backends do) is the msgpack payload.
    * Snapshots live in a second stream, `<name>_SNAPSHOTS`, one subject per stream and
      version (`<prefix>.snap.<token>.<version>`, one message kept per subject), each
      bound to the hash chain like the other backends' (`chain.seal_snapshot`).

Appends
    Every append names two expectations in its (first) message: `Nats-Expected-Last-
    Sequence` (the log's tail, because the next event's `prev_hash` is the tail's hash)
    and `Nats-Expected-Last-Subject-Sequence` (the sequence of the stream's last event,
    0 for a new stream: the per-stream optimistic-concurrency check). A batch of more than
    one event is a JetStream atomic batch (`Nats-Batch-Id`, `Nats-Batch-Sequence`,
    `Nats-Batch-Commit`; nats-server >= 2.12): the server stores all of it or none of it.
    When the server answers "wrong last sequence", this store catches up with the log
    and decides again: a changed stream is a `ConcurrencyError`, a moved tail (another
    stream was appended to) is retried with the fresh tail.

    JetStream deduplicates `Nats-Msg-Id` only within its duplicate window (two minutes
    by default), so idempotency is the store's own: it keeps an index of every stored
    `event_id` (built by reading the log at open and kept current by catching up before
    deciding), and because each append also expects the exact tail it checked against,
    the check and the write are one atomic step even across processes.

Durability
    JetStream does not fsync per message by default (`sync_interval` is about two
    minutes). Run every nats-server that holds this stream with

        jetstream { sync_interval: always }

    (Baton's `EmbeddedNats` does), or an acknowledged append can be lost on an OS crash
    or power loss. In a cluster, `replicas=3` makes the log survive the loss of a node.

Limits (see also the notes on `JetStreamEventStore`)
    * One atomic batch holds at most 1000 messages (a server limit), so an append of more
      than `MAX_BATCH` events is refused with `InvalidEventError`.
    * The event-id index and the position lists (per stream, correlation id, actor and
      type) are held in memory (a few dozen bytes per event). Opening adopts the index
      saved beside the log (`saved_index`, bucket `<name>_INDEX`) if it still fits the
      log, and reads only the events after it; without one it reads the whole log once.
      A query naming a correlation id, an actor or a type catches the index up and reads
      only the positions it allows (`lookup`); one with only text, time or
      position filters (or only a stream: read by its subject) reads the log in order.
    * Reads use direct gets; with replicas > 1 a follower may answer and lag behind the
      leader, so a read is guaranteed to include this store's own acknowledged appends
      (it waits for them) but may miss another process's newest ones for a moment.
    * Anyone allowed to publish on `<prefix>.log.>` can put a message in the log that
      this store did not write; `verify()` names it unless it links correctly onto the
      tail, which neither the chain nor a checkpoint can tell from a real append (see
      docs/security.md). Restrict those subjects to the store's credentials.

The modules, one job each
    * `store`: `JetStreamEventStore`, the public face, composing the parts below.
    * `schema`: the streams' names and configuration, subjects, the messages' format.
    * `log`: the connection to the log: creating its stream, direct gets, NATS errors.
    * `index`: what this store knows of the log (tail, event ids, positions per stream,
      correlation id, actor and type).
    * `saved_index`: that index saved beside the log, so that an open need not read it all.
    * `lookup`: which positions a query can match, from the index alone.
    * `writer`: the append path (atomic batch publish with expected sequences), which
      rides out a leader failover (tries again for up to 20 s).
    * `failover`: one log line per leader failover of the log's stream (the server's
      election announcements) or pause of the appends.
    * `reader`: reads, queries, subscriptions and the chain audit.
    * `snapshots`: the snapshot stream.
    * `blobs`: the blob port, an Object Store bucket (`BATON_BLOBS`) with the log's replicas.
"""

from eventstore.jetstream.schema import decode_stream_token, encode_stream_token
from eventstore.jetstream.store import JetStreamEventStore
from eventstore.jetstream.writer import MAX_BATCH

__all__ = ["MAX_BATCH", "JetStreamEventStore", "decode_stream_token", "encode_stream_token"]
