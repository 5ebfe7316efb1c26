"""Large payloads by reference, end to end: agents exchange a 20 MB output and a 5 MB
transcript through the SDK, on the embedded server with each agent's own login, over the
SQLite log and over the JetStream log; the run completes, replays, verifies, exports and
imports with its blobs. And what must be refused: a forged upload, a blob read by an
agent with no work in the run, a blob damaged at rest, an export whose blob was changed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents import AgentRuntime, Reply, TaskContext
from agents.blobs import AgentBlobs, BlobError
from bus import blobs, subjects
from bus.codec import Decoder, encode
from bus.config import Config
from bus.connection import Bus
from bus.errors import BusError
from bus.permissions import inbox_prefix
from bus.protocol import BlobPut, BlobPutAck, BlobRef, ErrorReply, Payload, SubtaskRequest
from eventstore import EventStore, JetStreamEventStore, SqliteEventStore, digest_of
from orchestrator.cli import history
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import blob_gc, journal
from orchestrator.service.api import RunControlRequest
from orchestrator.service.bootstrap import Stack, bootstrap

REPORT_BYTES = 20 * 1024 * 1024
TRANSCRIPT_BYTES = 5 * 1024 * 1024
WORKFLOW = WorkflowSpec(
    "large-values",
    [
        StepSpec("produce", role="producer"),
        StepSpec("consume", role="consumer", needs=["produce"]),
    ],
)
_put_reply: Decoder[BlobPutAck | ErrorReply] = Decoder(BlobPutAck | ErrorReply)


@functools.cache
def large_values() -> tuple[str, list[dict[str, Any]]]:
    """A 20 MB report (one string) and a 5 MB transcript (many small turns)."""
    report = os.urandom(REPORT_BYTES // 2).hex()
    turn = os.urandom(500).hex()
    transcript = [
        {"turn": n, "role": "assistant" if n % 2 else "user", "text": turn}
        for n in range(TRANSCRIPT_BYTES // 1000)
    ]
    return report, transcript


def report() -> str:
    return large_values()[0]


def transcript() -> list[dict[str, Any]]:
    return large_values()[1]


def report_sha() -> str:
    return hashlib.sha256(report().encode()).hexdigest()


DOCUMENT = "the run's own input, large too. " * 40_000


async def produce(task: TaskContext) -> Payload:
    assert task.input["input"]["document"] == DOCUMENT  # the run's input, whole
    return {"report": report(), "transcript": transcript(), "note": "small values stay inline"}


async def lie(task: TaskContext) -> Payload:
    """An output that refers to a blob it never uploaded."""
    return {"report": {"$blob": digest_of(b"never uploaded"), "size": 14, "media_type": "t/x"}}


LYING = WorkflowSpec("lying", [StepSpec("lie", role="liar", max_attempts=1)])
ESCALATING = WorkflowSpec(
    "escalating", [StepSpec("lie", role="liar", max_attempts=1, on_exhausted="escalate")]
)


async def delegate(task: TaskContext) -> Payload | Reply:
    """Asks for a subtask whose params hold a large value; the subtask measures it."""
    if task.input.get("parent"):
        return {"doc_len": len(task.params["doc"])}
    return Reply({"asked": 1}, subtasks=[SubtaskRequest("lead", {"doc": DOCUMENT})])


DELEGATING = WorkflowSpec("delegating", [StepSpec("lead", role="lead", max_subtasks=1)])


async def consume(task: TaskContext) -> Payload:
    given = task.deps["produce"]
    # the handler sees the values themselves, never a reference
    assert isinstance(given["report"], str)
    assert given["transcript"] == transcript()
    return {
        "report_sha": hashlib.sha256(given["report"].encode()).hexdigest(),
        "turns": len(given["transcript"]),
        "note": given["note"],
        "transcript": given["transcript"],  # passed on: the same blob, stored once
    }


@contextlib.asynccontextmanager
async def agents(stack: Stack) -> AsyncIterator[list[Bus]]:
    """One producer and one consumer in this process, each on its own login."""
    buses: list[Bus] = []
    runtimes: list[AgentRuntime] = []
    for agent_id, role, handler in (("producer-1", "producer", produce),
                                    ("consumer-1", "consumer", consume),
                                    ("liar-1", "liar", lie),
                                    ("lead-1", "lead", delegate)):  # fmt: skip
        url = stack.agent_url(agent_id, role)
        bus = await Bus.connect(url, name=agent_id, inbox_prefix=inbox_prefix(agent_id))
        buses.append(bus)
        runtimes.append(AgentRuntime(bus, agent_id=agent_id, role=role, handler=handler,
                                     heartbeat_s=0.2))  # fmt: skip
    serving = [asyncio.create_task(r.run()) for r in runtimes]
    try:
        await stack.orchestrator.wait_for_agents(
            Counter(producer=1, consumer=1, liar=1), timeout=30
        )
        yield buses
    finally:
        for runtime in runtimes:
            runtime.stop()
        await asyncio.wait(serving, timeout=10)
        for bus in buses:
            await bus.close()


async def run_and_check(
    stack: Stack, store: EventStore, elsewhere: EventStore, scratch: Path
) -> str:
    orchestrator = stack.orchestrator
    async with agents(stack) as buses:
        run_id = await orchestrator.start_run(WORKFLOW, {"document": DOCUMENT})
        live = await orchestrator.wait(run_id, timeout=120)
        assert live.status == "completed", live
        await refusals(stack, buses, run_id)

    # the values came through whole
    assert live.result is not None
    consumed = live.result["consume"]
    # ... and the log holds references: the run's events are small
    stored = await store.read_stream(journal.run_stream(run_id))
    log_bytes = sum(len(s.data) for s in stored)
    assert log_bytes < 64 * 1024, log_bytes
    refs = [r for s in stored for r in blob_gc.refs_of(s.data)]
    assert refs, "the outputs are recorded as references"
    stored_blobs = {b.digest: b for b in await store.blobs.list()}
    assert {r.digest for r in refs} <= set(stored_blobs)
    report_ref = blobs.digest_of(report().encode())
    assert stored_blobs[report_ref].size == len(report())
    # the input document, the report, the transcript (passed on: the same blob, stored
    # once), the JSON put
    assert len(stored_blobs) == 4, sorted(stored_blobs)
    assert consumed["report_sha"] == report_sha()
    assert consumed["turns"] == len(transcript())
    assert consumed["note"] == "small values stay inline"
    assert blobs.as_ref(consumed["transcript"]) is not None

    # replay and the hash chain (which covers each digest)
    assert await journal.load_run(store, run_id) == live
    assert (await store.verify()).ok

    # export with its blobs, import elsewhere: the blobs come along, checked
    lines = await history.export_run(store, run_id)
    header = json.loads(lines[0])
    assert header["blobs"] == 3
    assert await history.import_lines(elsewhere, lines) == run_id
    assert await journal.load_run(elsewhere, run_id) == live
    assert await elsewhere.blobs.get(report_ref) == report().encode()
    # an export whose blob was changed is refused, and nothing of it is stored
    changed = list(lines)
    for n, line in enumerate(changed):
        record = json.loads(line)
        if record.get("blob") == report_ref:
            record["data_b64"] = record["data_b64"][:-8] + "AAAAAAA="
            changed[n] = json.dumps(record)
    fresh = await SqliteEventStore.open(scratch / "refused" / "events.db")
    try:
        with pytest.raises(history.BadExport, match="blob"):
            await history.import_lines(fresh, changed)
        assert await fresh.last_position() == 0
        assert await fresh.blobs.list() == []
    finally:
        await fresh.close()
    return run_id


async def refusals(stack: Stack, buses: list[Bus], run_id: str) -> None:
    """What the orchestrator refuses while the run is live."""
    producer, consumer, *_ = buses
    # a subtask's params travel by reference too
    delegated = await stack.orchestrator.wait(await stack.orchestrator.start_run(DELEGATING), 30)
    assert delegated.status == "completed", delegated
    measured = [t.output for t in delegated.tasks.values() if t.output and "doc_len" in t.output]
    assert measured == [{"doc_len": len(DOCUMENT)}]
    # a result that refers to a blob never stored is not recorded as a result
    lying = await stack.orchestrator.wait(await stack.orchestrator.start_run(LYING), 30)
    assert lying.status == "failed", lying
    assert "never stored" in lying.tasks["lie"].error, lying.tasks["lie"]
    # a person's approval with a large output: recorded by reference too
    escalated = await stack.orchestrator.start_run(ESCALATING)
    async with asyncio.timeout(30):
        while stack.orchestrator.run(escalated).tasks["lie"].status != "escalated":
            await asyncio.sleep(0.02)
    approval = RunControlRequest(escalated, "approve", "lie", output={"doc": DOCUMENT})
    await stack.orchestrator.control(approval, "human:tester")
    approved = await stack.orchestrator.wait(escalated, 30)
    assert approved.status == "completed", approved
    assert blobs.as_ref((approved.tasks["lie"].output or {})["doc"]) is not None
    # an upload whose content does not hash to its digest: refused, typed, nothing stored
    claimed = digest_of(b"what was promised")
    forged = BlobPut(run_id, "u1", 0, b"something else", 14, claimed, "text/plain")
    reply = _put_reply.decode(await producer.request(subjects.blob_put("producer-1"),
                                                     encode(forged), 10))  # fmt: skip
    assert isinstance(reply, ErrorReply), reply
    assert reply.error == "BlobMismatch", reply
    assert await stack.store.blobs.info(claimed) is None
    assert await stack.store.blobs.info(digest_of(b"something else")) is None
    # an agent speaking JSON sends the bytes as base64 and gets base64 back
    text = b"a value put by an agent that speaks JSON"
    put = {"kind": "blob.put", "run_id": run_id, "upload_id": "j1", "offset": 0,
           "data": base64.b64encode(text).decode(), "size": len(text),
           "digest": digest_of(text), "media_type": "text/plain"}  # fmt: skip
    answer, encoding, _ = await producer.request_as(
        subjects.blob_put("producer-1"), json.dumps(put).encode(), 10, "json"
    )
    acked = _put_reply.decode(answer)
    assert encoding == "json"
    assert isinstance(acked, BlobPutAck), acked
    assert acked.ref == BlobRef(digest_of(text), len(text), "text/plain")
    assert await stack.store.blobs.get(digest_of(text)) == text
    # a blob no run of the agent's refers to is not its to read, even by its digest
    guessed = blobs.digest_of(report().encode())
    other = AgentBlobs(consumer, "consumer-1", "some-other-run")
    with pytest.raises(BlobError, match="BlobRefused"):
        await other.get(BlobRef(guessed, len(report()), blobs.TEXT))
    if stack.logins is None:
        return  # an outside server without logins: anyone may publish anywhere
    # on the embedded server an agent may upload only as itself
    with pytest.raises(BusError):  # the server drops it: no reply, a permissions error
        await consumer.request(subjects.blob_put("producer-1"), encode(forged), 1)


def test_large_values_travel_by_reference_on_sqlite(tmp_path: Path) -> None:
    """... and a fork taken between the two steps, carried on by a restarted
    orchestrator: its consumer reads the references the fork copied."""

    async def scenario() -> None:
        stack = await bootstrap(tmp_path / "state", tick_s=0.05)
        elsewhere = await SqliteEventStore.open(tmp_path / "other" / "events.db")
        try:
            run_id = await run_and_check(stack, stack.store, elsewhere, tmp_path)
            stored = await stack.store.read_stream(journal.run_stream(run_id))
            produced = next(s for s in stored if s.type == "task.succeeded")
            forked = await history.fork(stack.store, run_id, produced.position, "fork-1", "cli")
            assert forked.tasks["consume"].status != "succeeded"
        finally:
            await elsewhere.close()
            await stack.close()
        stack = await bootstrap(tmp_path / "state", tick_s=0.05)  # as `baton resume` does
        try:
            async with agents(stack):
                resumed = await stack.orchestrator.wait("fork-1", timeout=60)
            assert resumed.status == "completed", resumed
            assert resumed.result is not None
            assert resumed.result["consume"]["report_sha"] == report_sha()
        finally:
            await stack.close()

    asyncio.run(scenario())


def test_large_values_travel_by_reference_on_jetstream(tmp_path: Path, nats_url: str) -> None:
    """The log in a JetStream stream, the blobs in its Object Store; imported into another
    log and bucket on the same server."""

    async def scenario() -> None:
        config = Config(store="jetstream", nats=(nats_url,))
        stack = await bootstrap(tmp_path / "state", nats_url, tick_s=0.05, config=config)
        elsewhere = await JetStreamEventStore.open(
            nats_url, "IMPORTED", subject_prefix="imported", blob_bucket="IMPORTED_BLOBS"
        )
        try:
            assert isinstance(stack.store, JetStreamEventStore)
            await run_and_check(stack, stack.store, elsewhere, tmp_path)
            assert stack.store.blobs.bucket == "BATON_BLOBS"
        finally:
            await elsewhere.close()
            await stack.close()

    asyncio.run(scenario())
