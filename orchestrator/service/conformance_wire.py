"""The conformance kit's side of the wire: what it sees of the agent under test
(`AgentWatch`, which answers its heartbeats and reports as the orchestrator would) and
what it sends the agent (`Driver`: assignments, batches and controls, and the checks of
what comes back). The cases themselves are `orchestrator.service.conformance`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import msgspec

from bus import blobs, subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.errors import BusError, MalformedMessage
from bus.protocol import (
    BLOB_CHUNK_BYTES,
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
    BlobChunk,
    BlobGet,
    Control,
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    InboxMessage,
    ReportAck,
    ReportBatch,
    ReportVerdict,
    TaskFailure,
    TaskResult,
)

T = TypeVar("T")
Key = tuple[str, str, int]
"""(run, task, attempt): one attempt."""
Outcome = TaskResult | TaskFailure
Via = Literal["report", "inbox"]

MAX_COPIES = 2
"""Copies of one outcome an agent may send at most: a direct report and, unanswered or
answered with an error, its durable copy. More is a retry loop (and after a refusal in a
`task.report.ack`, any copy is one too many)."""

_heartbeat: Decoder[Heartbeat] = Decoder(Heartbeat)
_heartbeat_ack: Decoder[HeartbeatAck] = Decoder(HeartbeatAck)
_reports: Decoder[InboxMessage] = Decoder(InboxMessage)
_assign_reply: Decoder[AssignReply] = Decoder(AssignReply, max_bytes=2**31)
"""The size is checked by the kit itself (see `reply-size`), so it can name it."""


class CaseFailed(Exception):
    """A case's check did not hold; the message says what the agent did instead."""


@dataclass
class Seen:
    """One outcome as it arrived, and what the kit answered."""

    outcome: Outcome
    via: Via
    reply_to: str
    at: float
    verdict: ReportVerdict | None = None
    """The kit's answer to a direct report (None for the inbox, which answers nothing)."""


def key_of(o: Outcome | Assignment) -> Key:
    return (o.run_id, o.task_id, o.attempt)


def answer(verdicts: list[ReportVerdict], batch: bool) -> ReportAck:
    """The orchestrator's `task.report.ack` for reports with these verdicts: a lone
    report's verdict in the ack itself; a batch's, one per report, with `accepted` false
    (and the first refusal's code and reason) if any was refused."""
    refused = next((v for v in verdicts if not v.accepted), None)
    if not batch:
        v = verdicts[0]
        return ReportAck(v.accepted, v.code, v.reason)
    if refused is None:
        return ReportAck(verdicts=verdicts)
    return ReportAck(False, refused.code, refused.reason, verdicts)


@dataclass
class AgentWatch:
    """Everything the kit has seen of the agent under test, kept as it arrives: the
    first agent of `role` to heartbeat (or the one named `wanted`), its heartbeats, its
    outcomes, and what was oversized or malformed."""

    bus: Bus
    role: str
    wanted: str
    heartbeat_s: float
    ttl_s: float
    agent_id: str = ""
    instance: str = ""
    first: Heartbeat | None = None
    subject_id: str = ""
    beats: list[tuple[float, Heartbeat]] = field(default_factory=list)
    outcomes: list[Seen] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    refuse: dict[Key, ReportVerdict] = field(default_factory=dict)
    """Attempts whose reports are refused with this verdict (the cases set them)."""
    leases: dict[Key, str] = field(default_factory=dict)
    """The lease token of every attempt the kit handed out."""
    acks_sent: int = 0
    acks_seen: int = 0
    """`agent.heartbeat.ack`s for the agent's instance on the bus, the kit's own included:
    more than it sent means an orchestrator serves this bus too."""
    clock: Callable[[], float] = time.monotonic
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def subscribe(self) -> list[Subscription]:
        """Start listening: heartbeats, direct reports, the durable inbox."""
        beats = subjects.heartbeat(self.wanted) if self.wanted else subjects.HEARTBEAT_ALL
        return [
            await self.bus.subscribe(beats, self._on_heartbeat, inline=True),
            await self.bus.subscribe(subjects.REPORT_ALL, self._on_report),
            await self.bus.subscribe(subjects.INBOX_ALL, self._on_inbox, inline=True),
            await self.bus.subscribe("baton.agent.*.registry", self._on_ack, inline=True),
        ]

    async def _on_ack(self, msg: Incoming) -> None:
        with contextlib.suppress(BusError):
            ack = _heartbeat_ack.decode(msg.data)
            if self.instance and ack.instance == self.instance:
                self.acks_seen += 1

    async def _on_heartbeat(self, msg: Incoming) -> None:
        subject_id = msg.subject.rsplit(".", 1)[-1]
        if len(msg.data) > MAX_MESSAGE_BYTES:
            self.oversized.append(f"heartbeat on {msg.subject}: {len(msg.data)} bytes")
        try:
            beat = _heartbeat.decode(msg.data)
        except BusError as exc:
            if subject_id == (self.agent_id or self.wanted):
                self.malformed.append(f"heartbeat on {msg.subject}: {exc}")
                self.changed.set()
            return
        if not self.agent_id:
            if (self.wanted and subject_id != self.wanted) or (
                not self.wanted and beat.role != self.role
            ):
                return
            self.agent_id, self.subject_id = subject_id, subject_id
            self.instance, self.first = beat.instance, beat
        if subject_id != self.agent_id or beat.instance != self.instance:
            return
        self.beats.append((self.clock(), beat))
        ack = HeartbeatAck(beat.instance, "owner", self.heartbeat_s, self.ttl_s)
        with contextlib.suppress(BusError):
            await self.bus.publish(subjects.registry(subject_id), encode(ack))
            self.acks_sent += 1
        self.changed.set()

    async def _on_report(self, msg: Incoming) -> None:
        await self._take(msg, "report")

    async def _on_inbox(self, msg: Incoming) -> None:
        await self._take(msg, "inbox")

    async def _take(self, msg: Incoming, via: Via) -> None:
        """Note the outcomes of one message; answer a direct report as the orchestrator
        would (an inbox message's answer is the stream's)."""
        if msg.subject.rsplit(".", 1)[-1] != self.agent_id:
            return
        if len(msg.data) > MAX_MESSAGE_BYTES:
            self.oversized.append(f"{via} message on {msg.subject}: {len(msg.data)} bytes")
        try:
            decoded = _reports.decode(msg.data)
        except BusError as exc:
            self.malformed.append(f"{via} message on {msg.subject}: {exc}")
            self.changed.set()
            if via == "report":
                await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        items = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
        verdicts: list[ReportVerdict] = []
        for item in items:
            if not isinstance(item, TaskResult | TaskFailure):
                continue
            verdict = self.verdict(item) if via == "report" else None
            self.outcomes.append(Seen(item, via, msg.reply_to, self.clock(), verdict))
            verdicts += [verdict] if verdict else []
        self.changed.set()
        if via == "report" and verdicts:
            await msg.reply(encode(answer(verdicts, isinstance(decoded, ReportBatch))))

    def verdict(self, item: Outcome) -> ReportVerdict:
        """What the orchestrator would answer (`bus.protocol.REPORT_CODES`)."""
        key = key_of(item)
        if item.agent_id != self.agent_id:
            return ReportVerdict(False, "forged", f"claims to be from {item.agent_id}")
        if key in self.refuse:
            return self.refuse[key]
        lease = self.leases.get(key)
        if lease is None:
            return ReportVerdict(False, "unknown_task", f"no task {item.task_id!r} in this run")
        if lease != item.lease_token:
            return ReportVerdict(
                False, "lease_mismatch", "lease token does not match the attempt's"
            )
        if any(s.verdict and s.verdict.accepted for s in self.copies(key)):
            return ReportVerdict(True, "duplicate", "duplicate: already recorded")
        return ReportVerdict()

    async def until(self, check: Callable[[], T | None], timeout: float) -> T | None:
        """What `check` finds once it finds something, or None after `timeout` seconds
        (it looks again whenever the agent sent something)."""
        deadline = self.clock() + timeout
        while True:
            self.changed.clear()
            found = check()
            if found is not None:
                return found
            left = deadline - self.clock()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def copies(self, key: Key) -> list[Seen]:
        """Every copy of the outcomes of one attempt, in the order they came."""
        return [s for s in self.outcomes if key_of(s.outcome) == key]

    def after_refusal(self, key: Key) -> list[Seen]:
        """Copies of an outcome that came after a refusal of it (each is one too many)."""
        copies = self.copies(key)
        first = next(
            (n for n, s in enumerate(copies) if s.verdict and not s.verdict.accepted), None
        )
        return [] if first is None else copies[first + 1 :]

    def holds(self, key: Key, since: float) -> bool | None:
        """Whether the heartbeats after `since` list `key` as held (the last one says);
        None before one came."""
        after = [b for at, b in self.beats if at > since]
        if not after:
            return None
        return any((h.run_id, h.task_id, h.attempt) == key for h in after[-1].held)


def accepted(reply: AssignReply, count: int) -> None:
    """`CaseFailed` unless `reply` takes all `count` assignments, in the right shape."""
    if isinstance(reply, ErrorReply):
        raise CaseFailed(f"answered with an error: {reply.error} {reply.detail}")
    acks = reply.acks if isinstance(reply, AssignAcks) else [reply]
    if count > 1 and not isinstance(reply, AssignAcks):
        raise CaseFailed(f"answered a batch with {reply.__struct_config__.tag}, not "
                         "task.assign.acks")  # fmt: skip
    if len(acks) != count:
        raise CaseFailed(f"{len(acks)} acks for {count} assignments")
    for n, ack in enumerate(acks):
        if not ack.accepted:
            raise CaseFailed(f"assignment {n + 1} of {count} not taken: {ack.reason!r}")


class Driver:
    """What the kit sends the agent, as the orchestrator would, and the first checks of
    what comes back. Every run id it makes starts with its own `session`."""

    def __init__(self, watch: AgentWatch, *, reply_timeout: float, result_timeout: float) -> None:
        self.watch = watch
        self.session = f"conf-{secrets.token_hex(4)}"
        self.runs: list[str] = []
        self._tasks = 0
        self._reply_timeout = reply_timeout
        self._result_timeout = result_timeout

    def assignment(
        self,
        case: str,
        seconds: float = 0.0,
        timeout_s: float = 30.0,
        extra: dict[str, object] | None = None,
    ) -> Assignment:
        """A new attempt for the agent's current instance, asked to take `seconds` (with
        `extra` params besides)."""
        run_id = f"{self.session}-{case}"
        if run_id not in self.runs:
            self.runs.append(run_id)
        self._tasks += 1
        params: dict[str, object] = {"seconds": seconds} if seconds else {}
        params.update(extra or {})
        a = Assignment(
            run_id=run_id,
            task_id=f"t{self._tasks}",
            attempt=1,
            lease_token=secrets.token_hex(16),
            step=case,
            role=self.watch.role,
            input={"input": {}, "params": params, "index": 0, "deps": {}},
            timeout_s=timeout_s,
            instance=self.watch.instance,
        )
        self.watch.leases[key_of(a)] = a.lease_token
        return a

    async def ask(
        self, message: Assignment | AssignBatch, encoding: str = "msgpack"
    ) -> AssignReply:
        """Send an assignment (or batch) and decode the agent's answer, checking its size
        and (for JSON) that it came back in JSON."""
        subject = subjects.assign(self.watch.agent_id)
        data = msgspec.json.encode(message) if encoding == "json" else encode(message)
        reply, answered_in, size = await self.watch.bus.request_as(
            subject, data, self._reply_timeout, encoding
        )
        if size > MAX_MESSAGE_BYTES:
            self.watch.oversized.append(f"answer to an assignment: {size} bytes")
            raise CaseFailed(f"its answer is {size} bytes, over the {MAX_MESSAGE_BYTES} limit")
        if encoding == "json" and answered_in != "json":
            raise CaseFailed(f"answered a JSON assignment with Baton-Encoding {answered_in!r}, "
                             "not 'json'")  # fmt: skip
        try:
            return _assign_reply.decode(reply)
        except MalformedMessage as exc:
            raise CaseFailed(f"its answer does not decode: {exc}") from exc

    async def outcome(self, a: Assignment, timeout: float) -> Seen:
        """The first outcome of `a`, checked against it, or `CaseFailed`."""
        w = self.watch
        seen = await w.until(lambda: next(iter(w.copies(key_of(a))), None), timeout)
        if seen is None:
            malformed = f" (refused: {w.malformed[-1]})" if w.malformed else ""
            raise CaseFailed(f"no outcome of {a.task_id} within {timeout:g}s{malformed}")
        o = seen.outcome
        if o.lease_token != a.lease_token:
            raise CaseFailed(f"{a.task_id}: lease_token {o.lease_token[:12]!r} is not the "
                             f"assignment's {a.lease_token[:12]!r}")  # fmt: skip
        if o.agent_id != w.agent_id:
            raise CaseFailed(f"{a.task_id}: agent_id {o.agent_id!r} is not the sender's")
        return seen

    async def result(self, a: Assignment) -> Seen:
        """The result of `a` (`CaseFailed` for a failure, or none in time)."""
        seen = await self.outcome(a, self._result_timeout)
        if isinstance(seen.outcome, TaskFailure):
            raise CaseFailed(f"{a.task_id} failed: {seen.outcome.error}")
        return seen

    def not_again(self, key: Key) -> None:
        """`CaseFailed` if an outcome was sent again after its refusal, or too often."""
        again = self.watch.after_refusal(key)
        if again:
            raise CaseFailed(f"it sent the refused report again ({len(again)} more time(s), "
                             f"through the {again[0].via})")  # fmt: skip
        if len(self.watch.copies(key)) > MAX_COPIES:
            raise CaseFailed(f"it sent one report {len(self.watch.copies(key))} times")

    async def control(self, control: Control) -> None:
        await self.watch.bus.publish(subjects.control(self.watch.agent_id), encode(control))

    async def forget(self) -> None:
        """Purge what the kit's runs left in the durable inbox."""
        for run_id in self.runs:
            with contextlib.suppress(BusError):
                await self.watch.bus.purge_inbox(run_id)


_blob_get: Decoder[BlobGet] = Decoder(BlobGet)


async def serve_blobs(
    bus: Bus, agent_id: str, served: dict[str, bytes], asked: list[tuple[str, int]]
) -> Subscription:
    """Answer the agent's `blob.get`s as the orchestrator would, from `served` (digest ->
    the bytes to hand out, which need not hash to it), noting each (digest, offset)."""

    async def on_get(msg: Incoming) -> None:
        try:
            get = _blob_get.decode(msg.data)
        except BusError as exc:
            await msg.reply(encode(ErrorReply("MalformedMessage", str(exc))))
            return
        data = served.get(get.digest)
        if data is None:
            await msg.reply(encode(ErrorReply("BlobNotFound", get.digest)))
            return
        asked.append((get.digest, get.offset))
        part = data[get.offset : get.offset + (get.length or BLOB_CHUNK_BYTES)]
        await msg.reply(encode(BlobChunk(get.digest, get.offset, len(data), blobs.BINARY, part)))

    return await bus.subscribe(subjects.blob_get(agent_id), on_get)
