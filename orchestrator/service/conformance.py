"""The conformance kit: it plays the orchestrator's side of the wire protocol against one
agent on a real bus, case by case, and says of each whether the agent did what
docs/protocol.md asks, and if not, what it did instead.

It expects what the orchestrator does: it answers heartbeats (`agent.heartbeat.ack`,
verdict `owner`), sends assignments and batches as requests on the agent's subject (in
msgpack, and once in JSON), takes outcomes on the direct report subject (answering
`task.report.ack`, or a refusal for a stale lease) and on the durable inbox, and sends
cancel and drain as `agent.control`. Run it on a bus where no orchestrator serves: it
would answer the same heartbeats and reports.

The agent under test must serve the role asked for, with a handler that waits
`params.seconds` (default: none) before it answers, as Baton's `agents.builtin:sleep`
does: the cancel, lease and drain cases need an attempt that is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, Incoming
from bus.contracts import Contracts
from bus.errors import BusError, MalformedMessage, RequestFailed
from bus.permissions import inbox_prefix
from bus.protocol import (
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
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
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S

T = TypeVar("T")
Status = Literal["pass", "fail", "skip"]
Key = tuple[str, str, int]
Outcome = TaskResult | TaskFailure

CASES = (
    "join",
    "heartbeat",
    "single",
    "batch",
    "json",
    "cancel",
    "lease-expiry",
    "refused-report",
    "credentials",
    "reply-size",
    "drain",
)
"""Every case, in the order they are reported (drain runs last: it ends the agent)."""

MAX_COPIES = 2
"""Copies of one outcome an agent may send at most: a direct report and, unanswered or
answered with an error, its durable copy. More is a retry loop (and after a refusal in a
`task.report.ack`, any copy is one too many)."""

_heartbeat: Decoder[Heartbeat] = Decoder(Heartbeat)
_reports: Decoder[InboxMessage] = Decoder(InboxMessage)
_assign_reply: Decoder[AssignReply] = Decoder(AssignReply, max_bytes=2**31)
"""The size is checked by the kit itself (see `reply-size`), so it can name it."""


@dataclass(frozen=True)
class CaseResult:
    """One case's verdict and why."""

    case: str
    status: Status
    reason: str
    seconds: float


@dataclass(frozen=True)
class Settings:
    """What the kit checks and how long it waits."""

    role: str
    agent_id: str = ""
    """The agent to check; '' the first that heartbeats as `role`."""
    cases: tuple[str, ...] = CASES
    contracts: Contracts | None = None
    """When given, the agent must advertise its role's contract digest."""
    login: str = ""
    """The agent's login (a `baton admit` URL file, a creds file or an nkey seed file):
    the `credentials` case checks the server makes the agent use one."""
    nats_url: str = ""
    """The URL the kit connected with (the `credentials` case tries it without a login)."""
    join_timeout: float = 10.0
    reply_timeout: float = 2.0
    """For the answer to an assignment (the orchestrator's default is 2 s too)."""
    result_timeout: float = 5.0
    heartbeat_s: float = HEARTBEAT_S
    ttl_s: float = AGENT_TTL
    hold_s: float = 2.0
    """How long the attempts of the cancel case are asked to take (`params.seconds`)."""


@dataclass
class _Seen:
    """One outcome as it arrived, and what the kit answered."""

    outcome: Outcome
    via: Literal["report", "inbox"]
    reply_to: str
    at: float
    verdict: ReportVerdict | None = None
    """The kit's answer to a direct report (None for the inbox, which answers nothing)."""


@dataclass
class _Watch:
    """Everything the kit has seen of the agent so far."""

    agent_id: str = ""
    instance: str = ""
    first: Heartbeat | None = None
    subject_id: str = ""
    joined_at: float = 0.0
    beats: list[tuple[float, Heartbeat]] = field(default_factory=list)
    outcomes: list[_Seen] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    refuse: dict[Key, ReportVerdict] = field(default_factory=dict)
    leases: dict[Key, str] = field(default_factory=dict)


class CaseFailed(Exception):
    """A case's check did not hold; the message says what the agent did instead."""


def _key(o: Outcome | Assignment) -> Key:
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


class Kit:
    """Drives one agent through the cases of `Settings` over `bus`."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self._bus = bus
        self.settings = settings
        self._watch = _Watch()
        self._changed = asyncio.Event()
        self._session = f"conf-{secrets.token_hex(4)}"
        self._runs: list[str] = []
        self._tasks = 0
        self._clock = time.monotonic

    # -- what the agent sends ---------------------------------------------------------

    async def _on_heartbeat(self, msg: Incoming) -> None:
        w = self._watch
        subject_id = msg.subject.rsplit(".", 1)[-1]
        if len(msg.data) > MAX_MESSAGE_BYTES:
            w.oversized.append(f"heartbeat on {msg.subject}: {len(msg.data)} bytes")
        try:
            beat = _heartbeat.decode(msg.data)
        except BusError as exc:
            if subject_id == (w.agent_id or self.settings.agent_id):
                w.malformed.append(f"heartbeat on {msg.subject}: {exc}")
                self._changed.set()
            return
        if not w.agent_id:
            wanted = self.settings.agent_id
            if (wanted and subject_id != wanted) or (
                not wanted and beat.role != self.settings.role
            ):
                return
            w.agent_id, w.instance, w.first = subject_id, beat.instance, beat
            w.subject_id, w.joined_at = subject_id, self._clock()
        if subject_id != w.agent_id or beat.instance != w.instance:
            return
        w.beats.append((self._clock(), beat))
        ack = HeartbeatAck(beat.instance, "owner", self.settings.heartbeat_s, self.settings.ttl_s)
        with contextlib.suppress(BusError):
            await self._bus.publish(subjects.registry(subject_id), encode(ack))
        self._changed.set()

    async def _on_report(self, msg: Incoming) -> None:
        await self._take(msg, "report")

    async def _on_inbox(self, msg: Incoming) -> None:
        await self._take(msg, "inbox")

    async def _take(self, msg: Incoming, via: Literal["report", "inbox"]) -> None:
        w = self._watch
        if msg.subject.rsplit(".", 1)[-1] != w.agent_id:
            return
        if len(msg.data) > MAX_MESSAGE_BYTES:
            w.oversized.append(f"{via} message on {msg.subject}: {len(msg.data)} bytes")
        try:
            decoded = _reports.decode(msg.data)
        except BusError as exc:
            w.malformed.append(f"{via} message on {msg.subject}: {exc}")
            self._changed.set()
            if via == "report":  # an inbox message's answer is the stream's
                await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        items = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
        verdicts: list[ReportVerdict] = []
        for item in items:
            if not isinstance(item, TaskResult | TaskFailure):
                continue
            verdict = self._verdict(item) if via == "report" else None
            w.outcomes.append(_Seen(item, via, msg.reply_to, self._clock(), verdict))
            verdicts += [verdict] if verdict else []
        self._changed.set()
        if via == "report" and verdicts:
            batch = isinstance(decoded, ReportBatch)
            await msg.reply(encode(answer(verdicts, batch)))

    def _verdict(self, item: Outcome) -> ReportVerdict:
        """What the orchestrator would answer (`bus.protocol.REPORT_CODES`)."""
        key = _key(item)
        if item.agent_id != self._watch.agent_id:
            return ReportVerdict(False, "forged", f"claims to be from {item.agent_id}")
        if key in self._watch.refuse:
            return self._watch.refuse[key]
        lease = self._watch.leases.get(key)
        if lease is None:
            return ReportVerdict(False, "unknown_task", f"no task {item.task_id!r} in this run")
        if lease != item.lease_token:
            return ReportVerdict(
                False, "lease_mismatch", "lease token does not match the attempt's"
            )
        if any(s.verdict and s.verdict.accepted for s in self._copies(key)):
            return ReportVerdict(True, "duplicate", "duplicate: already recorded")
        return ReportVerdict()

    def _after_refusal(self, key: Key) -> list[_Seen]:
        """Copies of an outcome that came after a refusal of it (each is one too many)."""
        copies = self._copies(key)
        first = next(
            (n for n, s in enumerate(copies) if s.verdict and not s.verdict.accepted), None
        )
        return [] if first is None else copies[first + 1 :]

    # -- helpers ----------------------------------------------------------------------

    async def _until(self, check: Callable[[], T | None], timeout: float) -> T | None:
        """What `check` finds once it finds something, or None after `timeout` seconds."""
        deadline = self._clock() + timeout
        while True:
            self._changed.clear()
            found = check()
            if found is not None:
                return found
            left = deadline - self._clock()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def _assignment(self, case: str, seconds: float = 0.0, timeout_s: float = 30.0) -> Assignment:
        run_id = f"{self._session}-{case}"
        if run_id not in self._runs:
            self._runs.append(run_id)
        self._tasks += 1
        params: dict[str, object] = {"seconds": seconds} if seconds else {}
        a = Assignment(
            run_id=run_id,
            task_id=f"t{self._tasks}",
            attempt=1,
            lease_token=secrets.token_hex(16),
            step=case,
            role=self.settings.role,
            input={"input": {}, "params": params, "index": 0, "deps": {}},
            timeout_s=timeout_s,
            instance=self._watch.instance,
        )
        self._watch.leases[_key(a)] = a.lease_token
        return a

    async def _ask(
        self, message: Assignment | AssignBatch, encoding: str = "msgpack"
    ) -> AssignReply:
        """Send an assignment (or batch) and decode the agent's answer, checking its size
        and (for JSON) that it came back in JSON."""
        subject = subjects.assign(self._watch.agent_id)
        data = msgspec.json.encode(message) if encoding == "json" else encode(message)
        reply, answered_in, size = await self._bus.request_as(
            subject, data, self.settings.reply_timeout, encoding
        )
        if size > MAX_MESSAGE_BYTES:
            self._watch.oversized.append(f"answer to an assignment: {size} bytes")
            raise CaseFailed(f"its answer is {size} bytes, over the {MAX_MESSAGE_BYTES} limit")
        if encoding == "json" and answered_in != "json":
            raise CaseFailed(f"answered a JSON assignment with Baton-Encoding {answered_in!r}, "
                             "not 'json'")  # fmt: skip
        try:
            return _assign_reply.decode(reply)
        except MalformedMessage as exc:
            raise CaseFailed(f"its answer does not decode: {exc}") from exc

    @staticmethod
    def _accepted(reply: AssignReply, count: int) -> None:
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

    def _copies(self, key: Key) -> list[_Seen]:
        return [s for s in self._watch.outcomes if _key(s.outcome) == key]

    async def _outcome(self, a: Assignment, timeout: float) -> _Seen:
        """The first outcome of `a`, checked against it, or `CaseFailed`."""
        seen = await self._until(lambda: next(iter(self._copies(_key(a))), None), timeout)
        if seen is None:
            malformed = f" (refused: {self._watch.malformed[-1]})" if self._watch.malformed else ""
            raise CaseFailed(f"no outcome of {a.task_id} within {timeout:g}s{malformed}")
        o = seen.outcome
        if o.lease_token != a.lease_token:
            raise CaseFailed(f"{a.task_id}: lease_token {o.lease_token[:12]!r} is not the "
                             f"assignment's {a.lease_token[:12]!r}")  # fmt: skip
        if o.agent_id != self._watch.agent_id:
            raise CaseFailed(f"{a.task_id}: agent_id {o.agent_id!r} is not the sender's")
        return seen

    async def _result(self, a: Assignment) -> _Seen:
        seen = await self._outcome(a, self.settings.result_timeout)
        if isinstance(seen.outcome, TaskFailure):
            raise CaseFailed(f"{a.task_id} failed: {seen.outcome.error}")
        return seen

    def _holds(self, key: Key, since: float) -> bool | None:
        """Whether the heartbeats after `since` list `key` as held (the last one says);
        None before one came."""
        after = [b for at, b in self._watch.beats if at > since]
        if not after:
            return None
        return any((h.run_id, h.task_id, h.attempt) == key for h in after[-1].held)

    def _not_again(self, key: Key) -> None:
        """`CaseFailed` if an outcome was sent again after its refusal, or too often."""
        again = self._after_refusal(key)
        if again:
            raise CaseFailed(f"it sent the refused report again ({len(again)} more time(s), "
                             f"through the {again[0].via})")  # fmt: skip
        if len(self._copies(key)) > MAX_COPIES:
            raise CaseFailed(f"it sent one report {len(self._copies(key))} times")

    async def _control(self, control: Control) -> None:
        await self._bus.publish(subjects.control(self._watch.agent_id), encode(control))

    # -- the cases --------------------------------------------------------------------

    async def _join(self) -> str:
        w = self._watch
        whom = self.settings.agent_id or f"an agent of role {self.settings.role}"
        if await self._until(lambda: w.first, self.settings.join_timeout) is None:
            bad = f"; refused: {w.malformed[-1]}" if w.malformed else ""
            raise CaseFailed(f"no heartbeat from {whom} within {self.settings.join_timeout:g}s"
                             + bad)  # fmt: skip
        beat = w.first
        assert beat is not None
        if beat.agent_id != w.subject_id:
            raise CaseFailed(f"heartbeat payload says agent_id {beat.agent_id!r} on the "
                             f"subject of {w.subject_id!r}")  # fmt: skip
        if beat.role != self.settings.role:
            raise CaseFailed(f"agent {beat.agent_id} serves role {beat.role!r}, not "
                             f"{self.settings.role!r}")  # fmt: skip
        if beat.capacity < 1:
            raise CaseFailed(f"capacity {beat.capacity}: it can take no work")
        if self.settings.contracts is not None:
            verdict = self.settings.contracts.verdict(beat.role, beat.contract_digest,
                                                      beat.capacity)  # fmt: skip
            if verdict:
                raise CaseFailed(verdict)
        instance = f"instance {beat.instance}" if beat.instance else "no instance"
        return f"agent {beat.agent_id} ({instance}, capacity {beat.capacity})"

    async def _heartbeat(self) -> str:
        w = self._watch
        await self._until(lambda: True if len(w.beats) >= 4 else None, 4 * self.settings.ttl_s)
        times = [at for at, _ in w.beats]
        if len(times) < 2:
            raise CaseFailed(f"{len(times)} heartbeat(s) in all: it stopped heartbeating")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        gaps.append(self._clock() - times[-1])  # the silence since the last one counts too
        longest = max(gaps)
        if longest > self.settings.ttl_s:
            raise CaseFailed(f"silent for {longest:.2f}s, over the {self.settings.ttl_s:g}s TTL: "
                             "the orchestrator would take it for lost")  # fmt: skip
        typical = sorted(gaps)[len(gaps) // 2]
        return (f"{len(times)} heartbeats, about every {typical:.2f}s (longest silence "
                f"{longest:.2f}s; TTL {self.settings.ttl_s:g}s)")  # fmt: skip

    async def _single(self) -> str:
        a = self._assignment("single")
        self._accepted(await self._ask(a), 1)
        seen = await self._result(a)
        self._accepted(await self._ask(a), 1)  # a re-send: taken already, not run again
        await asyncio.sleep(0.3)
        if sum(isinstance(c.outcome, TaskResult) for c in self._copies(_key(a))) > 1:
            raise CaseFailed("a re-sent assignment (same task and attempt) was run again")
        return f"acked, result through the {seen.via}; a re-send was acked and not run again"

    async def _batch(self) -> str:
        batch = [self._assignment("batch") for _ in range(3)]
        self._accepted(await self._ask(AssignBatch(batch)), len(batch))
        vias = {(await self._result(a)).via for a in batch}
        return f"3 acks in order, 3 results through the {' and '.join(sorted(vias))}"

    async def _json(self) -> str:
        a = self._assignment("json")
        self._accepted(await self._ask(a, "json"), 1)
        seen = await self._result(a)
        return f"a JSON assignment got a JSON ack; result through the {seen.via}"

    async def _cancel(self) -> str:
        hold = self.settings.hold_s
        a = self._assignment("cancel", seconds=hold)
        started = self._clock()
        self._accepted(await self._ask(a), 1)
        key = _key(a)
        await self._until(lambda: True if self._holds(key, started) else None,
                          3 * self.settings.heartbeat_s)  # fmt: skip
        if self._copies(key):
            raise CaseFailed(f"it reported before the cancel, though asked to take {hold:g}s "
                             "(run it with a handler that waits params.seconds)")  # fmt: skip
        sent = self._clock()
        await self._control(Control("cancel", a.run_id, a.task_id, a.attempt, self._watch.instance))
        dropped = await self._until(
            lambda: True if self._holds(key, sent) is False else None, self.settings.ttl_s
        )
        if dropped is None:
            raise CaseFailed(f"its heartbeats still list the cancelled attempt after "
                             f"{self.settings.ttl_s:g}s")  # fmt: skip
        await asyncio.sleep(max(0.0, started + hold + 0.5 - self._clock()))
        results = [s for s in self._copies(key) if isinstance(s.outcome, TaskResult)]
        if results:
            raise CaseFailed("the cancelled attempt went on and reported a result")
        said = "a failure" if self._copies(key) else "nothing"
        return f"stopped the attempt (no longer held) and reported {said}"

    async def _lease_expiry(self) -> str:
        timeout_s = 0.5
        hold = timeout_s + 1.0
        a = self._assignment("lease", seconds=hold, timeout_s=timeout_s)
        key = _key(a)
        self._watch.refuse[key] = ReportVerdict(
            False, "stale_attempt", "the attempt timed out (its timeout_s passed)"
        )
        started = self._clock()
        self._accepted(await self._ask(a), 1)
        await asyncio.sleep(hold + 1.0)
        still = self._holds(key, started + timeout_s + 3 * self.settings.heartbeat_s)
        if still:
            raise CaseFailed(f"it still holds the attempt {hold + 1.0:g}s after its "
                             f"timeout_s of {timeout_s:g}s")  # fmt: skip
        copies = self._copies(key)
        self._not_again(key)
        if not copies:
            return "stopped at timeout_s and reported nothing"
        kind = "failure" if isinstance(copies[0].outcome, TaskFailure) else "late result"
        return f"its {kind} was refused (stale_attempt) and not sent again"

    async def _refused_report(self) -> str:
        a = self._assignment("refused")
        key = _key(a)
        self._watch.refuse[key] = ReportVerdict(False, "run_ended", "the conformance kit ended it")
        self._accepted(await self._ask(a), 1)
        seen = await self._outcome(a, self.settings.result_timeout)
        await asyncio.sleep(1.0)
        self._not_again(key)
        if seen.via == "inbox":
            return "sent durably (the inbox has no refusal to give) and not again"
        return "the refusal (run_ended) was taken: the report was not sent again"

    async def _credentials(self) -> str:
        login = self.settings.login
        kind = _login_kind(login)
        anonymous = _without_login(self.settings.nats_url)
        try:
            other = await Bus.connect(anonymous, "conformance-anonymous", tries=1, login=False)
        except BusError:
            pass
        else:
            await other.close()
            raise CaseFailed(f"{anonymous} lets anyone in without a login: nothing shows the "
                             "agent used its own")  # fmt: skip
        prefix = inbox_prefix(self._watch.agent_id)
        asked = {s.reply_to.split(".", 1)[0] for s in self._watch.outcomes if s.reply_to}
        wrong = sorted(p for p in asked if p != prefix)
        if wrong:
            raise CaseFailed(f"its requests want answers under {wrong[0]}, not {prefix}: "
                             "a governed server drops those answers")  # fmt: skip
        return (
            f"the server refuses anonymous clients, and the agent joined with its {kind} "
            f"as {self._watch.agent_id}" + (f", replies under {prefix}" if asked else "")
        )

    async def _reply_size(self) -> str:
        if self._watch.oversized:
            raise CaseFailed(f"over the {MAX_MESSAGE_BYTES}-byte limit: "
                             + "; ".join(self._watch.oversized[:3]))  # fmt: skip
        return f"every message it sent was within {MAX_MESSAGE_BYTES} bytes"

    async def _drain(self) -> str:
        a = self._assignment("drain", seconds=0.5)
        self._accepted(await self._ask(a), 1)
        await self._control(Control("drain", instance=self._watch.instance))
        await self._result(a)
        after = self._assignment("drain")
        try:
            reply = await self._ask(after)
        except RequestFailed:
            return "finished the attempt it held, then took nothing new (it left the bus)"
        if isinstance(reply, AssignAck) and reply.accepted:
            raise CaseFailed("took a new assignment while draining")
        return "finished the attempt it held, then refused new work"

    # -- running them -----------------------------------------------------------------

    async def run(self) -> list[CaseResult]:
        """Run the chosen cases (join always first, drain always last); a case that
        needs a joined agent is failed as such when none joined."""
        s = self.settings
        subs = [
            await self._bus.subscribe(
                subjects.heartbeat(s.agent_id) if s.agent_id else subjects.HEARTBEAT_ALL,
                self._on_heartbeat,
                inline=True,
            ),
            await self._bus.subscribe(subjects.REPORT_ALL, self._on_report),
            await self._bus.subscribe(subjects.INBOX_ALL, self._on_inbox, inline=True),
        ]
        await self._bus.ensure_inbox()
        steps: dict[str, Callable[[], Awaitable[str]]] = {
            "join": self._join, "single": self._single, "batch": self._batch,
            "json": self._json, "cancel": self._cancel, "lease-expiry": self._lease_expiry,
            "refused-report": self._refused_report, "credentials": self._credentials,
            "heartbeat": self._heartbeat, "reply-size": self._reply_size, "drain": self._drain,
        }  # fmt: skip
        done: dict[str, CaseResult] = {}
        last = ("heartbeat", "reply-size", "drain")  # the first two see more by then
        order = ["join"] + [c for c in CASES if c in s.cases and c not in ("join", *last)]
        order += [c for c in last if c in s.cases]
        try:
            for case in order:
                if case == "credentials" and not s.login:
                    done[case] = CaseResult(case, "skip", "no --login file given", 0.0)
                    continue
                if case != "join" and done["join"].status != "pass" and not self._watch.agent_id:
                    done[case] = CaseResult(case, "fail", "no agent joined", 0.0)
                    continue
                done[case] = await self._case(case, steps[case])
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            for run_id in self._runs:
                with contextlib.suppress(BusError):
                    await self._bus.purge_inbox(run_id)
        return [done[c] for c in CASES if c in done and (c in s.cases or c == "join")]

    async def _case(self, case: str, step: Callable[[], Awaitable[str]]) -> CaseResult:
        started = self._clock()
        try:
            reason = await step()
            status: Status = "pass"
        except CaseFailed as exc:
            reason, status = str(exc), "fail"
        except RequestFailed as exc:
            reason, status = f"no answer: {exc}", "fail"
        except BusError as exc:
            reason, status = f"{type(exc).__name__}: {exc}", "fail"
        return CaseResult(case, status, reason, self._clock() - started)


def _login_kind(path: str) -> str:
    """What kind of login file `path` is (`CaseFailed` if none or unreadable)."""
    try:
        text = open(path, "rb").read(64 * 1024)  # noqa: SIM115 - one short read
    except OSError as exc:
        raise CaseFailed(f"cannot read the login file {path}: {exc.strerror}") from exc
    if b"BEGIN NATS USER JWT" in text:
        return "creds file"
    if text.strip().startswith(b"SU"):
        return "nkey seed"
    if urlsplit(text.strip().decode(errors="replace")).password:
        return "user and password"
    raise CaseFailed(f"{path} is neither a `baton admit` URL, a creds file nor an nkey seed")


def _without_login(url: str) -> str:
    """`url` without the user and password it may carry."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme or "nats", netloc, parts.path, "", ""))
