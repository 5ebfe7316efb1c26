"""Requests decided one at a time, as they come: a person's start and control requests
(`baton.api.run.start`, `baton.api.run.control`, or the same calls in process), and an
agent's contract-net bid. Each is checked before anything is decided (a refusal changes
nothing and is answered, or audited), then goes through the pipeline like any command.

A start request may carry a client-chosen request id, which makes it idempotent: a
request that timed out on the client may still have started the run, so its retry is
answered with that run instead of starting another. The request id names the run (see
`request_run_id`), so the log itself says whether it was started: the answer is the same
after a restart, and after the run ended and left memory."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from bus import blobs, subjects
from bus.codec import Decoder, encode
from bus.connection import Incoming
from bus.errors import BusError, MalformedMessage
from bus.protocol import BLOB_THRESHOLD, Bid, BlobRef, ErrorReply
from bus.tracecontext import new_trace_id
from eventstore import EventStore, EventStoreError
from orchestrator.core import contract_net, human
from orchestrator.core.commands import CancelRun, HumanDecision, StartRun, SubmitBid
from orchestrator.core.decide import on_run_clock
from orchestrator.core.errors import (
    ControlRefused,
    OrchestratorError,
    RunNotRecorded,
    WorkflowError,
)
from orchestrator.core.state import RunState
from orchestrator.core.workflow import WorkflowSpec, validate
from orchestrator.service import journal
from orchestrator.service.api import (
    ControlAccepted,
    RunAccepted,
    RunControlRequest,
    StartRunRequest,
)
from orchestrator.service.journal import Cause
from orchestrator.service.pipeline import Pipeline
from orchestrator.service.sharing import READY_WAIT_S, RunElsewhere, Sharing
from orchestrator.service.system_journal import SystemJournal

_start_decoder: Decoder[StartRunRequest] = Decoder(StartRunRequest)
_control_decoder: Decoder[RunControlRequest] = Decoder(RunControlRequest)
_bid_decoder: Decoder[Bid] = Decoder(Bid)
MAX_REQUEST_ID = 200
"""Longest request id taken (it is recorded as the start's cause)."""


def request_run_id(requested_by: str, request_id: str) -> str:
    """The run id a start request with this request id gets: the same for each retry of
    it, different for another requester's request of the same id."""
    digest = hashlib.sha256(f"{requested_by}\0{request_id}".encode()).hexdigest()
    return f"req-{digest[:24]}"


class RunRequests:
    """Starts runs, applies people's decisions to them, and takes agents' bids."""

    def __init__(
        self,
        store: EventStore,
        pipeline: Pipeline,
        system: SystemJournal,
        new_run_id: Callable[[], str],
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._system = system
        self._new_run_id = new_run_id
        self._starting: dict[str, asyncio.Future[None]] = {}
        """Run ids a request with a request id is starting now (its retries wait)."""
        self.sharing: Sharing | None = None
        """Set when several orchestrators share the runs: each request is answered by the
        orchestrator that serves the run it names (or, for one that names none yet, that
        its reply subject falls to); the others leave it."""

    async def start_run(
        self,
        workflow: WorkflowSpec,
        input: dict[str, Any] | None = None,
        *,
        run_id: str = "",
        requested_by: str = "cli",
        request_id: str = "",
    ) -> str:
        """Validate and record a new run; returns its id once `RunStarted` is durable.
        With a `request_id`, a retry of the same request returns the run it started."""
        started, _ = await self.start(
            workflow, input, run_id=run_id, requested_by=requested_by, request_id=request_id
        )
        return started

    async def _by_reference(self, values: dict[str, Any]) -> dict[str, Any]:
        """A run's input with each value over the blob threshold stored in the blob store
        and replaced by its reference (`bus.blobs`), as an agent's output would be: the
        log and the assignments then carry the reference, and the agents' SDK the value.
        The same input gives the same references, so a retried start still matches."""

        async def put(data: bytes, media_type: str) -> BlobRef:
            info = await self._store.blobs.put(data, media_type)
            return BlobRef(info.digest, info.size, media_type)

        shrunk: dict[str, Any] = await blobs.externalize(values, put, BLOB_THRESHOLD)
        return shrunk

    async def start(
        self,
        workflow: WorkflowSpec,
        input: dict[str, Any] | None = None,
        *,
        run_id: str = "",
        requested_by: str = "cli",
        request_id: str = "",
    ) -> tuple[str, bool]:
        """`start_run`, and whether the run is an earlier request's (not started now)."""
        validate(workflow)
        if len(request_id) > MAX_REQUEST_ID:
            raise WorkflowError("request_id", f"longer than {MAX_REQUEST_ID} characters")
        if request_id and not run_id:
            run_id = request_run_id(requested_by, request_id)
        chosen = bool(run_id)
        if self.sharing is not None:
            run_id = await self._here(run_id)
        run_id = subjects.token(run_id or self._new_run_id())
        merged = await self._by_reference({**workflow.input, **(input or {})})
        if not request_id:
            await self._record(run_id, chosen, workflow, merged, requested_by, "")
            return run_id, False
        while (pending := self._starting.get(run_id)) is not None:
            await asyncio.shield(pending)  # the same request, tried again meanwhile
        claim = self._starting[run_id] = asyncio.get_running_loop().create_future()
        try:
            if await self._earlier(run_id, workflow, merged, request_id):
                return run_id, True
            await self._record(run_id, chosen, workflow, merged, requested_by, request_id)
            return run_id, False
        finally:
            del self._starting[run_id]
            claim.set_result(None)

    async def _here(self, run_id: str) -> str:
        """Sharing the runs: `run_id` if this orchestrator serves its partition (else
        `RunElsewhere`), or, for none, a new id of a partition it serves."""
        assert self.sharing is not None
        if run_id:
            if not self.sharing.serves(run_id):
                partition = self.sharing.partition(run_id)
                raise RunElsewhere(
                    f"run {run_id} is in partition {partition}, which another orchestrator "
                    "serves: submit it on the bus (baton submit), where that one takes it"
                )
            return run_id
        try:
            async with asyncio.timeout(READY_WAIT_S):
                await self.sharing.serving.wait()
        except TimeoutError:
            raise RunElsewhere(f"no partition served here within {READY_WAIT_S:g}s") from None
        for _ in range(100 * self.sharing.partitions):  # about 1 in partitions/share fits
            if self.sharing.serves(run_id := self._new_run_id()):
                return run_id
        raise RunElsewhere("no partition served here now (its leases could not be renewed)")

    def _leaves(self, msg: Incoming, run_id: str) -> bool:
        """Sharing the runs: whether another orchestrator answers this request (the one
        that serves `run_id`, or if none is known, the one its reply subject falls to)."""
        return self.sharing is not None and not self.sharing.serves(run_id or msg.reply_to)

    async def _earlier(
        self, run_id: str, workflow: WorkflowSpec, input: dict[str, Any], request_id: str
    ) -> bool:
        """Whether an earlier try of this request started the run (served or in the log);
        a run of that id with another workflow or input is refused (`WorkflowError`)."""
        state = self._pipeline.runs.get(run_id)
        if state is None:
            if not await self._store.stream_version(journal.run_stream(run_id)):
                return False
            state = await journal.load_run(self._store, run_id)
        if state.workflow != workflow or state.input != input:
            raise WorkflowError(
                "request_id",
                f"request {request_id!r} already started run {run_id} with another workflow "
                "or input",
            )
        return True

    async def _record(
        self,
        run_id: str,
        chosen: bool,
        workflow: WorkflowSpec,
        input: dict[str, Any],
        requested_by: str,
        request_id: str,
    ) -> None:
        command = StartRun(run_id, workflow, input, new_trace_id(), requested_by)
        # A generated id needs no look-up: the append expects an empty stream anyway.
        exists = chosen and await self._store.stream_version(journal.run_stream(run_id))
        runs = self._pipeline.runs
        if run_id in runs or exists:
            raise WorkflowError("run_id", f"run {run_id} already exists")
        runs[run_id] = RunState(run_id)
        cause = Cause(f"request:{request_id}" if request_id else f"start:{run_id}", requested_by)
        if not await self._pipeline.execute(run_id, [(command, cause)]):
            del runs[run_id]
            raise RunNotRecorded(run_id)

    async def control(self, request: RunControlRequest, actor: str) -> RunState:
        """Record a person's decision (approve/reject/retry/cancel); `ControlRefused` says
        why one cannot apply, and then nothing changed."""
        command: HumanDecision | CancelRun
        if request.action == "cancel":
            command = CancelRun(request.task_id, actor, request.note)
        else:  # an approval's output is recorded like an agent's: large values by reference
            output = await self._by_reference(request.output) if request.output else {}
            command = HumanDecision(request.task_id, request.action, actor, request.note, output)
        if request.run_id not in self._pipeline.runs:
            # a run that ended and is no longer in memory is refused for what the log says
            # it is; a run with no log at all is `UnknownRun`
            ended = await journal.load_run(self._store, request.run_id)
            raise ControlRefused(
                human.refusal(ended, command) or f"run {ended.run_id} is not served here"
            )
        cause = Cause(f"api:{request.action}:{request.run_id}:{request.task_id}", actor)
        await self._pipeline.unblocked(request.run_id)
        # checked and decided with no await between, against the newest state (appends
        # still in flight included), so what is refused is exactly what the core refuses
        state = self._pipeline.newest(request.run_id)
        refused = human.refusal(state, command)
        decision = None if refused else self._pipeline.decide(request.run_id, [(command, cause)])
        if decision is None:
            raise ControlRefused(refused or "nothing to change")
        if not await self._pipeline.commit(decision):
            raise RunNotRecorded(request.run_id)
        return self._pipeline.run(request.run_id)

    async def on_start(self, msg: Incoming) -> None:
        try:
            requester = subjects.run_starter(msg.subject)  # the sender, as the server knows
            request = _start_decoder.decode(msg.data)
        except BusError as exc:
            if not self._leaves(msg, ""):
                await self._system.reject(msg.subject, str(exc), len(msg.data))
                await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        run_id = request.run_id
        if self.sharing is not None and not run_id:  # the same id for each orchestrator
            run_id = request_run_id(requester, request.request_id or f"reply:{msg.reply_to}")
        if self._leaves(msg, run_id):
            return
        try:
            run_id, earlier = await self.start(
                request.workflow,
                request.input,
                run_id=run_id,
                requested_by=requester,
                request_id=request.request_id,
            )
        except (BusError, WorkflowError) as exc:
            await self._system.reject(msg.subject, str(exc), len(msg.data))
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        except RunElsewhere:
            return  # its partition moved meanwhile: its new owner answers the retry
        except RunNotRecorded as exc:  # the store refused: the client may retry
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        await msg.reply(encode(RunAccepted(run_id, earlier)))

    async def on_control(self, msg: Incoming) -> None:
        try:
            actor = subjects.run_controller(msg.subject)  # the sender, as the server knows
            request = _control_decoder.decode(msg.data)
        except BusError as exc:
            if not self._leaves(msg, ""):
                await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        if self._leaves(msg, request.run_id):
            return
        try:
            state = await self.control(request, actor)
        except (BusError, OrchestratorError, EventStoreError) as exc:
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        await msg.reply(encode(ControlAccepted(state.run_id, state.status, actor)))

    async def on_bid(self, msg: Incoming) -> None:
        """A contract-net bid: handed to the core, or refused and audited."""
        runs = self._pipeline.runs
        try:
            run_id, sender = subjects.bid_sender(msg.subject)
            if self._leaves(msg, run_id):
                return
            bid = _bid_decoder.decode(msg.data)
            if bid.run_id != run_id or run_id not in runs:
                raise MalformedMessage(f"bid for run {bid.run_id} sent on {msg.subject}")
        except BusError as exc:
            await self._system.reject(msg.subject, str(exc), len(msg.data))
            return
        command = SubmitBid(bid, sender)
        state = runs[run_id]
        context = on_run_clock(state, self._pipeline.context())
        refused = contract_net.refusal(state, command, context)
        if refused:
            await self._system.reject(msg.subject, f"bid refused: {refused}", len(msg.data))
            return
        cause = Cause(f"{bid.task_id}:{bid.attempt}:bid:{sender}", sender)
        await self._pipeline.execute(run_id, [(command, cause)])
