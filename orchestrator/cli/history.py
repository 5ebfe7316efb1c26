"""What people do with recorded runs: look at one at any point, ask why an event
happened, fork a run from its past, and carry a run's log to another machine."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from itertools import groupby, takewhile
from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from bus import blobs
from eventstore import BlobInfo, EventQuery, EventStore, NewEvent, StoredEvent, digest_of
from eventstore.chain import hash_of
from orchestrator.core.errors import OrchestratorError, UnknownEvent, UnknownRun
from orchestrator.core.events import RunEvent, RunForked, RunStarted, TaskAssigned, TaskHandedOff
from orchestrator.core.state import RunState
from orchestrator.service import agentlog, journal, memory
from orchestrator.service.blob_gc import refs_of
from orchestrator.service.journal import Cause

EXPORT_FORMAT = "baton-run-export/3"
"""An export holds every stream's events that concern the run (`run_events`), then every
blob they refer to (`run_blobs`)."""
FORMATS = ("baton-run-export/1", "baton-run-export/2", EXPORT_FORMAT)
"""What `import` reads: /1 held the run's own stream only, /2 no blobs."""


class BadPoint(OrchestratorError):
    """A point in history that is neither a position nor a time, or precedes the run."""


class BadExport(OrchestratorError):
    """An export file that is malformed, tampered with, or does not fit the store."""


def parse_time(text: str) -> float:
    """Unix seconds from a number or an ISO-8601 time (UTC when no zone is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadPoint(f"{text!r} is neither a position, Unix seconds nor an ISO time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.now().astimezone().tzinfo).astimezone()
    return moment.timestamp()


async def position_at(store: EventStore, run_id: str, point: str) -> int:
    """The global position a `--until`/`--at` argument names for this run: an integer is a
    position; anything else is a time, meaning the run's last event recorded before it.
    A point before the run's first event is `BadPoint` (the run had not started then)."""
    first = await store.query(EventQuery(stream=journal.run_stream(run_id), limit=1))
    if not first:
        raise UnknownRun(run_id)
    if point.isdigit():
        if int(point) < first[0].position:
            raise BadPoint(
                f"run {run_id} had not started yet at position {point}: its first event is "
                f"at position {first[0].position}"
            )
        return int(point)
    moment = parse_time(point)
    before = await store.query(EventQuery(stream=journal.run_stream(run_id), until=moment))
    if not before:
        raise BadPoint(f"run {run_id} had not started yet: it recorded nothing before {point}")
    return before[-1].position


async def why(store: EventStore, event_ref: str, limit: int = 1000) -> list[StoredEvent]:
    """The causation chain of an event (an event id or a global position), newest first,
    back to the first event whose cause is not itself an event (a request, a timer).

    An agent's record (a tool call, a memory write) is caused by its attempt
    (`<task>:<attempt>`): the chain goes on from the assignment that started it."""
    chain: list[StoredEvent] = []
    current = await _event(store, event_ref)
    while current is not None and len(chain) < limit:
        chain.append(current)
        cause = current.causation_id
        current = await _event(store, cause, quiet=True) or await _assignment(store, current)
    return chain


async def _event(store: EventStore, ref: str, quiet: bool = False) -> StoredEvent | None:
    found: list[StoredEvent] = []
    recorded = agentlog.record_stream(ref)
    if ref.isdigit():
        found = await store.read_all(from_position=int(ref), limit=1)
        found = [e for e in found if e.position == int(ref)]
    elif "@" in ref:
        stream, _, version = ref.rpartition("@")
        if version.isdigit() and int(version) > 0:
            found = await store.read_stream(stream, from_version=int(version))
            found = [e for e in found[:1] if e.event_id == ref]
    elif recorded is not None:  # a tool call's or a memory write's id
        stream, run_id = recorded
        found = await store.query(EventQuery(stream=stream, correlation_id=run_id))
        found = [e for e in found if e.event_id == ref]
    if found:
        return found[0]
    if quiet:
        return None
    raise BadPoint(
        f"no event {ref!r} (give a global position, or an event id as audit --json shows "
        "it, like run-x@3)"
    )


async def _assignment(store: EventStore, record: StoredEvent) -> StoredEvent | None:
    """The `task.assigned` of the attempt an agent's record names as its cause
    (`<task>:<attempt>`, in the record's run), if there is one."""
    if not agentlog.holds_records(record.stream):
        return None
    task_id, sep, attempt = record.causation_id.rpartition(":")
    if not sep or not attempt.isdigit() or not record.correlation_id:
        return None
    stream = journal.run_stream(record.correlation_id)
    for stored in await store.query(EventQuery(stream=stream, type_glob="task.assigned")):
        event = journal.decode_run_event(stored)
        if isinstance(event, TaskAssigned) and (event.task_id, event.attempt) == (
            task_id,
            int(attempt),
        ):
            return stored
    return None


async def fork(
    store: EventStore,
    run_id: str,
    at: int,
    new_run_id: str,
    actor: str,
    now: float | None = None,
) -> RunState:
    """A new run whose log starts as a copy of `run_id`'s events up to global position `at`,
    each caused by its original, with a `RunForked` event linking the two; its `run`
    memory starts as the origin's was at `at` (copied as events, see `copy_run_memory`).

    The new run starts `now` (wall clock, default the time of the call): its elapsed time
    and its deadline count from the fork. Its start on the run's own clock moves by as
    much, so that clock still reads in step with the wall clock and every time copied from
    the origin keeps its meaning."""
    origin = await store.read_stream(journal.run_stream(run_id), until_position=at)
    if not origin:
        raise UnknownRun(run_id)
    origin += await rest_of_decision(store, run_id, origin)
    at = origin[-1].position
    events = [journal.decode_run_event(s) for s in origin]
    if await store.stream_version(journal.run_stream(new_run_id)):
        raise OrchestratorError(f"run {new_run_id} already exists")
    # memory first: its copies then precede the fork's events, so a fork of the fork
    # at any of its positions carries them too
    copies = await memory.copy_run_memory(store, run_id, at, new_run_id)
    first = events[0]
    assert isinstance(first, RunStarted)
    now = time.time() if now is None else now
    moved = (first.mono + now - first.at) if first.mono else 0.0
    started = replace(first, run_id=new_run_id, requested_by=actor, at=now, mono=moved)
    linked = RunForked(run_id, at, now)
    copied = [started, linked, *(_passing_copies(e, copies) for e in events[1:])]
    causes = [Cause(origin[0].event_id, actor), Cause(origin[-1].event_id, actor)]
    causes += [Cause(s.event_id, s.actor, s.trace_id) for s in origin[1:]]
    spans = [origin[0].span_id, origin[0].span_id] + [s.span_id for s in origin[1:]]
    envelopes = journal.run_envelopes(new_run_id, 1, copied, causes, spans)
    envelopes = [
        replace(env, actor=cause.actor) if i > 1 else env
        for i, (env, cause) in enumerate(zip(envelopes, causes, strict=True))
    ]
    await store.append(journal.run_stream(new_run_id), envelopes, 0)
    return await journal.load_run(store, new_run_id)


SERVED_FORKS = "a baton serve on this log carries it on by itself within 10 s"
"""What `baton fork` and the console add to "carry it on with baton resume": an open run
in a served log is found and served (`recovery.look_again`; shared: `sharing.RESCAN_S`)."""


def forked_at(fork: RunState, asked: int) -> str:
    """Where a fork starts, as `fork` made it from the position `asked` for, said if it is
    not the position itself: the run's last event before it (`asked` is another run's
    event, or after the run's end), or the end of the decision `asked` falls inside."""
    at = int(fork.forked_from.rpartition("@")[2])
    if at == asked:
        return str(at)
    if at < asked:
        return f"{at} (the run's last event up to position {asked})"
    return f"{at} (position {asked} falls inside one decision, recorded whole up to {at})"


def _passing_copies(event: RunEvent, copies: dict[str, str]) -> RunEvent:
    """A handoff of the origin as the fork records it: passing the fork's copies of the
    memory it passed (the origin's own belong to the origin run, which the fork's agents
    may not read)."""
    if not isinstance(event, TaskHandedOff) or not event.memory_refs:
        return event
    return replace(event, memory_refs=[copies.get(ref, ref) for ref in event.memory_refs])


async def rest_of_decision(
    store: EventStore, run_id: str, origin: list[StoredEvent]
) -> list[StoredEvent]:
    """The events after `origin` (a run's events up to a point) that one decision appended
    together with its last event. The log never held part of a decision, so a point inside
    one means the whole of it: a fork from the middle would decide its rest again (a loop
    round added once more, say). A decision's events share one span id
    (`journal.run_envelopes`; traced, each command's events have one of their own)."""
    span = origin[-1].span_id
    rest = await store.read_stream(journal.run_stream(run_id), from_version=origin[-1].version + 1)
    return list(takewhile(lambda stored: stored.span_id == span, rest)) if span else []


async def run_events(store: EventStore, run_id: str) -> list[StoredEvent]:
    """Everything that happened in a run, in global order: its own stream, and every
    other stream's events that concern it (its agents' tool calls in `agents-<run>`, its
    memory writes); `UnknownRun` if it has no stream of its own."""
    if not await store.stream_version(journal.run_stream(run_id)):
        raise UnknownRun(run_id)
    return await store.query(EventQuery(correlation_id=run_id))


async def run_blobs(
    store: EventStore, stored: Sequence[StoredEvent]
) -> list[tuple[BlobInfo, bytes]]:
    """Every blob the events refer to, and those they refer to in turn, by digest; a
    blob the store lacks is `BadExport` (the export would not replay elsewhere)."""
    wanted = [ref for s in stored for ref in refs_of(s.data)]
    found: dict[str, tuple[BlobInfo, bytes]] = {}
    while wanted:
        ref = wanted.pop()
        if ref.digest in found:
            continue
        info = await store.blobs.info(ref.digest)
        if info is None:
            raise BadExport(f"the log refers to blob {ref.digest}, which the store lacks")
        data = await store.blobs.get(ref.digest)
        found[ref.digest] = (info, data)
        if info.media_type == blobs.MSGPACK:
            wanted += refs_of(data)
    return [found[digest] for digest in sorted(found)]


def export_lines(
    run_id: str,
    stored: Sequence[StoredEvent],
    stored_blobs: Sequence[tuple[BlobInfo, bytes]] = (),
) -> Iterator[str]:
    """A run's events (`run_events`) as JSON lines: a header, then each envelope with its
    exact bytes (`data_b64`) and, for people, the decoded event (`event`); then each blob
    they refer to (`run_blobs`): its digest (`blob`), `size`, `media_type` and bytes."""
    streams = sorted({s.stream for s in stored})
    yield json.dumps(
        {
            "format": EXPORT_FORMAT,
            "run_id": run_id,
            "events": len(stored),
            "streams": streams,
            "blobs": len(stored_blobs),
        }
    )
    for s in stored:
        record: dict[str, Any] = msgspec.to_builtins(replace(s, data=b""))
        del record["data"]
        record["data_b64"] = base64.b64encode(s.data).decode()
        record["event"] = msgspec.to_builtins(journal.decode_any(s))
        yield json.dumps(record, separators=(",", ":"))
    for info, data in stored_blobs:
        yield json.dumps(
            {
                "blob": info.digest,
                "size": info.size,
                "media_type": info.media_type,
                "data_b64": base64.b64encode(data).decode(),
            },
            separators=(",", ":"),
        )


async def export_run(store: EventStore, run_id: str) -> list[str]:
    """The JSON lines of a run's export, its blobs included (see `export_lines`)."""
    stored = await run_events(store, run_id)
    return list(export_lines(run_id, stored, await run_blobs(store, stored)))


class _Blob(NamedTuple):
    digest: str
    media_type: str
    data: bytes


def _blob(text: str) -> _Blob:
    """One exported blob back, checked: its bytes must hash to its digest."""
    fields = json.loads(text)
    if not isinstance(fields, dict) or set(fields) != {"blob", "size", "media_type", "data_b64"}:
        raise BadExport("a blob line must hold exactly blob, size, media_type and data_b64")
    digest, media_type = fields["blob"], fields["media_type"]
    if not blobs.is_digest(digest) or not isinstance(media_type, str):
        raise BadExport(f"a blob line names no digest or media type: {digest!r}")
    try:
        data = base64.b64decode(fields["data_b64"], validate=True)
    except (ValueError, TypeError) as exc:
        raise BadExport(f"blob {digest}: its bytes are not base64: {exc}") from exc
    actual = digest_of(data)
    if actual != digest or fields["size"] != len(data):
        raise BadExport(f"blob {digest} was changed: its bytes hash to {actual}")
    return _Blob(digest, media_type, data)


class _Line(NamedTuple):
    stored: StoredEvent
    readable: Any
    """The line's `event`: the decoded copy for people (None if it has none)."""


def _line(text: str) -> _Line:
    """One exported event back as the envelope it was, strictly (exact bytes from base64)."""
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("an event line must be a JSON object")
    readable = fields.pop("event", None)
    data = base64.b64decode(fields.pop("data_b64", ""), validate=True)
    return _Line(msgspec.convert({**fields, "data": data}, StoredEvent), readable)


def _reads_as_its_data(line: _Line) -> bool:
    """Whether the readable `event` says what the authoritative bytes say (a field it
    lacks reads as that field's default, as in an export from before the field existed)."""
    if line.readable is None:
        return True
    try:
        decoded = journal.decode_any(line.stored)
        return bool(msgspec.convert(line.readable, type(decoded)) == decoded)
    except (UnknownEvent, msgspec.ValidationError):
        return False


def _checked(header: dict[str, Any], lines: list[_Line]) -> str:
    """The run id of an export whose every event is as it was exported and in its place,
    else `BadExport` naming the first that is not."""
    fmt = header.get("format")
    if fmt not in FORMATS or len(lines) != header.get("events"):
        raise BadExport(f"expected a {EXPORT_FORMAT} header and {header.get('events')} events")
    whole = fmt != FORMATS[0]  # /2 and later: every stream's events that concern the run
    named = header.get("run_id") if whole else header.get("stream")
    if not isinstance(named, str) or not named:
        raise BadExport("the header names no run")
    run_id = named if whole else journal.run_id_of(named)
    own = journal.run_stream(run_id)
    versions: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        r, said = line.stored, f"event {n} ({line.stored.event_id})"
        if hash_of(r) != r.hash:
            raise BadExport(f"{said} was changed: its hash no longer matches it")
        if not _reads_as_its_data(line):
            raise BadExport(f"{said} was changed: its readable `event` differs from its data")
        ours = r.stream == own or (whole and r.correlation_id == run_id)
        before = versions.get(r.stream, 0)
        # the memory stream is shared by every run: an export holds the run's part of it
        follows = (
            r.version > before if r.stream == agentlog.MEMORY_STREAM else r.version == before + 1
        )
        if not (ours and follows):
            raise BadExport(f"{said} was changed or is out of place")
        versions[r.stream] = r.version
    if own not in versions:
        raise BadExport(f"the export holds no event of run {run_id}'s own stream")
    return run_id


def _new(r: StoredEvent) -> NewEvent:
    return NewEvent(
        event_id=r.event_id,
        type=r.type,
        data=r.data,
        schema=r.schema,
        correlation_id=r.correlation_id,
        causation_id=r.causation_id,
        actor=r.actor,
        trace_id=r.trace_id,
        span_id=r.span_id,
    )


class Export(NamedTuple):
    """An exported run, read and checked (`read_export`), ready to import."""

    run_id: str
    records: list[StoredEvent]
    carried: dict[str, _Blob]
    """The blobs it carries, by digest."""


def read_export(lines: Iterable[str]) -> Export:
    """An export's lines read and checked, touching no store: every event's hash must
    still match its content and its readable copy its bytes, and every blob must hash to
    its digest, so an export edited anywhere is refused (`BadExport`)."""
    rows = [line for line in lines if line.strip()]
    try:
        header = json.loads(rows[0]) if rows else {}
        if not isinstance(header, dict):
            raise BadExport("not a Baton run export: the first line is not a header object")
        count = header.get("blobs", 0) if header.get("format") == EXPORT_FORMAT else 0
        if not isinstance(count, int) or not 0 <= count < len(rows):
            raise BadExport(f"not a Baton run export: {count!r} blobs")
        split = len(rows) - count
        parsed = [_line(r) for r in rows[1:split]]
        carried = {blob.digest: blob for blob in map(_blob, rows[split:])}
    except (ValueError, msgspec.ValidationError) as exc:
        raise BadExport(f"not a Baton run export: {exc}") from exc
    run_id = _checked(header, parsed)
    return Export(run_id, [line.stored for line in parsed], carried)


async def import_lines(store: EventStore, lines: Iterable[str]) -> str:
    """Append an exported run to `store` and return its run id (see `import_export`)."""
    return await import_export(store, read_export(lines))


async def import_export(store: EventStore, export: Export) -> str:
    """Append a checked export to `store` and return its run id. The blobs are stored
    first, then the streams are appended in the export's order (the run's own and its
    agents' from version 1, its memory writes after whatever memory the store holds);
    importing the same export again changes nothing.
    """
    run_id, records, carried = export
    wanted = [ref for r in records for ref in refs_of(r.data)]
    wanted += [ref for b in carried.values() if b.media_type == blobs.MSGPACK
               for ref in refs_of(b.data)]  # fmt: skip
    missing = sorted({ref.digest for ref in wanted} - set(carried))
    for digest in missing:
        if await store.blobs.info(digest) is None:
            raise BadExport(f"the export refers to blob {digest} but does not hold it")
    for blob in carried.values():  # the blobs first: no event refers to one not stored
        await store.blobs.put(blob.data, blob.media_type, digest=blob.digest)
    for _, chunk in groupby(records, key=lambda r: r.stream):
        batch = list(chunk)
        stream = batch[0].stream
        if stream == agentlog.MEMORY_STREAM:
            expected = await store.stream_version(stream)
        else:
            expected = batch[0].version - 1
        await store.append(stream, [_new(r) for r in batch], expected)
    await journal.load_run(store, run_id)  # it must replay here too
    return run_id
