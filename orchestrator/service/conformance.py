"""The conformance kit: it plays the orchestrator's side of the wire protocol against one
agent on a real bus, case by case, and says of each whether the agent did what
docs/protocol.md asks, and if not, what it did instead.

It expects what the orchestrator does: it answers heartbeats (`agent.heartbeat.ack`,
verdict `owner`), sends assignments and batches as requests on the agent's subject (in
msgpack, and once in JSON), takes outcomes on the direct report subject (answering
`task.report.ack`, or a refusal for a stale lease) and on the durable inbox, serves the
blob an input refers to (`baton.blob.<agent_id>.get`), and sends cancel and drain as
`agent.control`. Run it on a bus where no orchestrator serves: it
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from bus import blobs
from bus.codec import MAX_MESSAGE_BYTES, Decoder
from bus.connection import Bus
from bus.contracts import Contracts
from bus.errors import BusError, RequestFailed
from bus.permissions import inbox_prefix
from bus.protocol import (
    BLOB_CHUNK_BYTES,
    AssignAck,
    AssignBatch,
    BlobGet,
    BlobRef,
    Control,
    ReportVerdict,
    TaskFailure,
    TaskResult,
)
from orchestrator.service.conformance_wire import (
    AgentWatch,
    CaseFailed,
    Driver,
    accepted,
    key_of,
    serve_blobs,
)
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S

Status = Literal["pass", "fail", "skip"]
_blob_get: Decoder[BlobGet] = Decoder(BlobGet)

CASES = (
    "join",
    "heartbeat",
    "single",
    "batch",
    "json",
    "blobs",
    "cancel",
    "lease-expiry",
    "refused-report",
    "credentials",
    "reply-size",
    "drain",
)
"""Every case, in the order they are reported (drain runs last: it ends the agent)."""


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
    reply_timeout: float = 5.0
    """For the answer to an assignment (as long as the orchestrator waits)."""
    result_timeout: float = 5.0
    heartbeat_s: float = HEARTBEAT_S
    ttl_s: float = AGENT_TTL
    hold_s: float = 2.0
    """How long the attempts of the cancel case are asked to take (`params.seconds`)."""


class Kit:
    """Drives one agent through the cases of `Settings` over `bus`."""

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.settings = settings
        self.watch = AgentWatch(
            bus, settings.role, settings.agent_id, settings.heartbeat_s, settings.ttl_s
        )
        self.send = Driver(
            self.watch, reply_timeout=settings.reply_timeout,
            result_timeout=settings.result_timeout,
        )  # fmt: skip

    # -- the cases --------------------------------------------------------------------

    async def _join(self) -> str:
        """The first heartbeat: on its own subject, of the role, able to work (and the digest)."""
        w = self.watch
        whom = self.settings.agent_id or f"an agent of role {self.settings.role}"
        if await self.watch.until(lambda: w.first, self.settings.join_timeout) is None:
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
        """No silence longer than the TTL, all along the kit's run."""
        w = self.watch
        await self.watch.until(lambda: True if len(w.beats) >= 4 else None, 4 * self.settings.ttl_s)
        times = [at for at, _ in w.beats]
        if len(times) < 2:
            raise CaseFailed(f"{len(times)} heartbeat(s) in all: it stopped heartbeating")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        gaps.append(self.watch.clock() - times[-1])  # the silence since the last one counts too
        longest = max(gaps)
        if longest > self.settings.ttl_s:
            raise CaseFailed(f"silent for {longest:.2f}s, over the {self.settings.ttl_s:g}s TTL: "
                             "the orchestrator would take it for lost")  # fmt: skip
        if (others := w.acks_seen - w.acks_sent) > 0:
            raise CaseFailed(f"someone else answered {others} of its heartbeats: an "
                             "orchestrator serves this bus; use one where none does")  # fmt: skip
        typical = sorted(gaps)[len(gaps) // 2]
        return (f"{len(times)} heartbeats, about every {typical:.2f}s (longest silence "
                f"{longest:.2f}s; TTL {self.settings.ttl_s:g}s)")  # fmt: skip

    async def _single(self) -> str:
        """One assignment: acked, its result echoes the attempt; a re-send is not run again."""
        a = self.send.assignment("single")
        accepted(await self.send.ask(a), 1)
        seen = await self.send.result(a)
        accepted(await self.send.ask(a), 1)  # a re-send: taken already, not run again
        await asyncio.sleep(0.3)
        if sum(isinstance(c.outcome, TaskResult) for c in self.watch.copies(key_of(a))) > 1:
            raise CaseFailed("a re-sent assignment (same task and attempt) was run again")
        return f"acked, result through the {seen.via}; a re-send was acked and not run again"

    async def _batch(self) -> str:
        """A batch of three: one acks message, three results."""
        batch = [self.send.assignment("batch") for _ in range(3)]
        accepted(await self.send.ask(AssignBatch(batch)), len(batch))
        vias = {(await self.send.result(a)).via for a in batch}
        return f"3 acks in order, 3 results through the {' and '.join(sorted(vias))}"

    async def _json(self) -> str:
        """A JSON assignment: a JSON ack (with the header), then a result."""
        a = self.send.assignment("json")
        accepted(await self.send.ask(a, "json"), 1)
        seen = await self.send.result(a)
        return f"a JSON assignment got a JSON ack; result through the {seen.via}"

    async def _blobs(self) -> str:
        """An input that refers to a blob: fetched whole (in chunks), and a result; one
        whose served bytes do not match its digest: a failure, never a result."""
        good = secrets.token_bytes(BLOB_CHUNK_BYTES + BLOB_CHUNK_BYTES // 2)
        forged = BlobRef(blobs.digest_of(b"promised" * 99), len(good), blobs.BINARY)
        served: dict[str, bytes] = {blobs.digest_of(good): good, forged.digest: good}
        asked: list[tuple[str, int]] = []
        sub = await serve_blobs(self.watch.bus, self.watch.agent_id, served, asked)
        try:
            ref = BlobRef(blobs.digest_of(good), len(good), blobs.BINARY)
            a = self.send.assignment("blobs", extra={"document": blobs.ref_value(ref)})
            accepted(await self.send.ask(a), 1)
            await self.send.result(a)
            offsets = sorted(o for d, o in asked if d == ref.digest)
            if offsets[:2] != [0, BLOB_CHUNK_BYTES]:
                raise CaseFailed(f"it reported a result but fetched {offsets} of the blob its "
                                 f"input refers to, not all {len(good)} bytes")  # fmt: skip
            bad = self.send.assignment("blobs", extra={"document": blobs.ref_value(forged)})
            accepted(await self.send.ask(bad), 1)
            seen = await self.send.outcome(bad, self.settings.result_timeout)
            if isinstance(seen.outcome, TaskResult):
                raise CaseFailed("it reported a result for an input whose blob does not hash "
                                 "to its digest (check the SHA-256 of what you fetch)")  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return (
            f"fetched the {len(good)}-byte blob in {len(offsets)} chunks and reported a "
            "result; a blob that did not match its digest gave a failure"
        )

    async def _cancel(self) -> str:
        """A cancelled attempt is let go of, and reports no result."""
        hold = self.settings.hold_s
        a = self.send.assignment("cancel", seconds=hold)
        started = self.watch.clock()
        accepted(await self.send.ask(a), 1)
        key = key_of(a)
        await self.watch.until(
            lambda: True if self.watch.holds(key, started) else None, 3 * self.settings.heartbeat_s
        )
        if self.watch.copies(key):
            raise CaseFailed(f"it reported before the cancel, though asked to take {hold:g}s "
                             "(run it with a handler that waits params.seconds)")  # fmt: skip
        sent = self.watch.clock()
        self.watch.refuse[key] = ReportVerdict(False, "attempt_ended", "the attempt was cancelled")
        await self.send.control(
            Control("cancel", a.run_id, a.task_id, a.attempt, self.watch.instance)
        )
        dropped = await self.watch.until(
            lambda: True if self.watch.holds(key, sent) is False else None, self.settings.ttl_s
        )
        if dropped is None:
            raise CaseFailed(f"its heartbeats still list the cancelled attempt after "
                             f"{self.settings.ttl_s:g}s")  # fmt: skip
        await asyncio.sleep(max(0.0, started + hold + 0.5 - self.watch.clock()))
        results = [s for s in self.watch.copies(key) if isinstance(s.outcome, TaskResult)]
        if results:
            raise CaseFailed("the cancelled attempt went on and reported a result")
        self.send.not_again(key)
        said = "a failure (refused: the attempt is over)" if self.watch.copies(key) else "nothing"
        return f"stopped the attempt (no longer held) and reported {said}"

    async def _lease_expiry(self) -> str:
        """An attempt past its `timeout_s` is let go of; what it sends is refused, once."""
        timeout_s = 0.5
        hold = timeout_s + 1.0
        a = self.send.assignment("lease", seconds=hold, timeout_s=timeout_s)
        key = key_of(a)
        self.watch.refuse[key] = ReportVerdict(
            False, "stale_attempt", "the attempt timed out (its timeout_s passed)"
        )
        started = self.watch.clock()
        accepted(await self.send.ask(a), 1)
        tick = 0.2  # the orchestrator sees a timeout up to one tick late
        await asyncio.sleep(max(0.0, started + timeout_s + tick - self.watch.clock()))
        by_itself = bool(self.watch.copies(key))  # it stopped at timeout_s and said so
        # as the orchestrator does once the timeout has passed: a cancel (at most once)
        await self.send.control(
            Control("cancel", a.run_id, a.task_id, a.attempt, self.watch.instance)
        )
        await asyncio.sleep(max(0.0, started + hold + 1.0 - self.watch.clock()))
        if self.watch.holds(key, started + timeout_s + 3 * self.settings.heartbeat_s):
            raise CaseFailed(f"it still holds the attempt {hold + 1.0:g}s after its "
                             f"timeout_s of {timeout_s:g}s and a cancel")  # fmt: skip
        self.send.not_again(key)
        copies = self.watch.copies(key)
        if not copies:
            return "let the attempt go (at timeout_s or on the cancel) and reported nothing"
        kind = "failure" if isinstance(copies[0].outcome, TaskFailure) else "late result"
        when = "stopped at timeout_s by itself; its" if by_itself else "its"
        return f"{when} {kind} was refused (stale_attempt) and not sent again"

    async def _refused_report(self) -> str:
        """A result refused in its ack is not sent again, not even durably."""
        a = self.send.assignment("refused")
        key = key_of(a)
        self.watch.refuse[key] = ReportVerdict(False, "run_ended", "the conformance kit ended it")
        accepted(await self.send.ask(a), 1)
        seen = await self.send.outcome(a, self.settings.result_timeout)
        await asyncio.sleep(1.0)
        self.send.not_again(key)
        if seen.via == "inbox":
            return "sent durably (the inbox has no refusal to give) and not again"
        return "the refusal (run_ended) was taken: the report was not sent again"

    async def _credentials(self) -> str:
        """Only logins get in, and the agent asks for answers under its own inbox prefix."""
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
        prefix = inbox_prefix(self.watch.agent_id)
        asked = {s.reply_to.split(".", 1)[0] for s in self.watch.outcomes if s.reply_to}
        wrong = sorted(p for p in asked if p != prefix)
        if wrong:
            raise CaseFailed(f"its requests want answers under {wrong[0]}, not {prefix}: "
                             "a governed server drops those answers")  # fmt: skip
        return (
            f"the server refuses anonymous clients, and the agent joined with its {kind} "
            f"as {self.watch.agent_id}" + (f", replies under {prefix}" if asked else "")
        )

    async def _reply_size(self) -> str:
        """Nothing it sent was over the size limit."""
        if self.watch.oversized:
            raise CaseFailed(f"over the {MAX_MESSAGE_BYTES}-byte limit: "
                             + "; ".join(self.watch.oversized[:3]))  # fmt: skip
        return f"every message it sent was within {MAX_MESSAGE_BYTES} bytes"

    async def _drain(self) -> str:
        """Draining, it finishes what it holds and takes nothing new."""
        a = self.send.assignment("drain", seconds=0.5)
        accepted(await self.send.ask(a), 1)
        await self.send.control(Control("drain", instance=self.watch.instance))
        await self.send.result(a)
        after = self.send.assignment("drain")
        try:
            reply = await self.send.ask(after)
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
        subs = await self.watch.subscribe()
        await self.watch.bus.ensure_inbox()
        steps: dict[str, Callable[[], Awaitable[str]]] = {
            "join": self._join, "single": self._single, "batch": self._batch,
            "json": self._json, "blobs": self._blobs, "cancel": self._cancel,
            "lease-expiry": self._lease_expiry,
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
                if case != "join" and done["join"].status != "pass" and not self.watch.agent_id:
                    done[case] = CaseResult(case, "fail", "no agent joined", 0.0)
                    continue
                done[case] = await self._case(case, steps[case])
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await self.send.forget()
        return [done[c] for c in CASES if c in done and (c in s.cases or c == "join")]

    async def _case(self, case: str, step: Callable[[], Awaitable[str]]) -> CaseResult:
        started = self.watch.clock()
        try:
            reason = await step()
            status: Status = "pass"
        except CaseFailed as exc:
            reason, status = str(exc), "fail"
        except RequestFailed as exc:
            reason, status = f"no answer: {exc}", "fail"
        except BusError as exc:
            reason, status = f"{type(exc).__name__}: {exc}", "fail"
        return CaseResult(case, status, reason, self.watch.clock() - started)


def _login_kind(path: str) -> str:
    """What kind of login file `path` is (`CaseFailed` if none or unreadable)."""
    try:
        with open(path, "rb") as f:
            text = f.read(64 * 1024)
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
