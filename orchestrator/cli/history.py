"""What people do with recorded runs: look at one at any point, ask why an event
happened, fork a run from its past, and carry a run's log to another machine."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from eventstore import EventQuery, EventStore, NewEvent, StoredEvent
from eventstore.chain import hash_of
from orchestrator.core.errors import OrchestratorError, UnknownRun
from orchestrator.core.events import RunForked, RunStarted
from orchestrator.core.state import RunState
from orchestrator.service import journal, memory
from orchestrator.service.journal import Cause

EXPORT_FORMAT = "baton-run-export/1"


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
    position; anything else is a time, meaning the run's last event recorded before it."""
    if point.isdigit():
        return int(point)
    moment = parse_time(point)
    before = await store.query(EventQuery(stream=journal.run_stream(run_id), until=moment))
    if not before:
        raise BadPoint(f"run {run_id} had recorded nothing before {point}")
    return before[-1].position


async def why(store: EventStore, event_ref: str, limit: int = 1000) -> list[StoredEvent]:
    """The causation chain of an event (an event id or a global position), newest first,
    back to the first event whose cause is not itself an event (a request, a timer)."""
    chain: list[StoredEvent] = []
    current = await _event(store, event_ref)
    while current is not None and len(chain) < limit:
        chain.append(current)
        current = await _event(store, current.causation_id, quiet=True)
    return chain


async def _event(store: EventStore, ref: str, quiet: bool = False) -> StoredEvent | None:
    found: list[StoredEvent] = []
    if ref.isdigit():
        found = await store.read_all(from_position=int(ref), limit=1)
        found = [e for e in found if e.position == int(ref)]
    elif "@" in ref:
        stream, _, version = ref.rpartition("@")
        if version.isdigit() and int(version) > 0:
            found = await store.read_stream(stream, from_version=int(version))
            found = [e for e in found[:1] if e.event_id == ref]
    if found:
        return found[0]
    if quiet:
        return None
    raise BadPoint(f"no event {ref!r} (give a global position or an event id like run-x@3)")


async def fork(store: EventStore, run_id: str, at: int, new_run_id: str, actor: str) -> RunState:
    """A new run whose log starts as a copy of `run_id`'s events up to global position `at`,
    each caused by its original, with a `RunForked` event linking the two; its `run`
    memory starts as the origin's was at `at` (copied as events, see `copy_run_memory`)."""
    origin = await store.read_stream(journal.run_stream(run_id), until_position=at)
    if not origin:
        raise UnknownRun(run_id)
    events = [journal.decode_run_event(s) for s in origin]
    if await store.stream_version(journal.run_stream(new_run_id)):
        raise OrchestratorError(f"run {new_run_id} already exists")
    # memory first: its copies then precede the fork's events, so a fork of the fork
    # at any of its positions carries them too
    await memory.copy_run_memory(store, run_id, at, new_run_id)
    first = events[0]
    assert isinstance(first, RunStarted)
    started = replace(first, run_id=new_run_id, requested_by=actor)
    linked = RunForked(run_id, at, started.at)
    copied = [started, linked, *events[1:]]
    causes = [Cause(origin[0].event_id, actor), Cause(origin[-1].event_id, actor)]
    causes += [Cause(s.event_id, s.actor, s.trace_id) for s in origin[1:]]
    envelopes = journal.run_envelopes(new_run_id, 1, copied, causes)
    envelopes = [
        replace(env, actor=cause.actor) if i > 1 else env
        for i, (env, cause) in enumerate(zip(envelopes, causes, strict=True))
    ]
    await store.append(journal.run_stream(new_run_id), envelopes, 0)
    return await journal.load_run(store, new_run_id)


def export_lines(stored: Iterable[StoredEvent]) -> Iterator[str]:
    """A run's log as JSON lines: a header, then each envelope with its exact bytes
    (`data_b64`) and, for people, the decoded event."""
    events = list(stored)
    yield json.dumps({"format": EXPORT_FORMAT, "stream": events[0].stream, "events": len(events)})
    for s in events:
        record: dict[str, Any] = msgspec.to_builtins(replace(s, data=b""))
        del record["data"]
        record["data_b64"] = base64.b64encode(s.data).decode()
        record["event"] = msgspec.to_builtins(journal.decode_run_event(s))
        yield json.dumps(record, separators=(",", ":"))


def _stored(line: str) -> StoredEvent:
    """One exported event back as the envelope it was, strictly (exact bytes from base64)."""
    fields = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError("an event line must be a JSON object")
    fields.pop("event", None)  # the decoded copy, for people; the bytes are authoritative
    data = base64.b64decode(fields.pop("data_b64", ""), validate=True)
    return msgspec.convert({**fields, "data": data}, StoredEvent)


async def import_lines(store: EventStore, lines: Iterable[str]) -> str:
    """Append an exported run to `store` (all or nothing) and return its run id.

    Every event's hash must still match its content, so an edited export is refused;
    importing the same export twice changes nothing.
    """
    rows = [line for line in lines if line.strip()]
    try:
        header = json.loads(rows[0]) if rows else {}
        records = [_stored(r) for r in rows[1:]]
    except (ValueError, msgspec.ValidationError) as exc:
        raise BadExport(f"not a Baton run export: {exc}") from exc
    if header.get("format") != EXPORT_FORMAT or len(records) != header.get("events"):
        raise BadExport(f"expected a {EXPORT_FORMAT} header and {header.get('events')} events")
    stream = header["stream"]
    events: list[NewEvent] = []
    for n, r in enumerate(records, start=1):
        if r.stream != stream or r.version != n or hash_of(r) != r.hash:
            raise BadExport(f"event {n} ({r.event_id}) was changed or is out of place")
        events.append(
            NewEvent(
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
        )
    await store.append(stream, events, 0)
    run_id = journal.run_id_of(stream)
    await journal.load_run(store, run_id)  # it must replay here too
    return run_id
