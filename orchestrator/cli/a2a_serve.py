"""`baton a2a serve`: Baton's workflows offered to the agent ecosystem as one A2A agent.

Its Agent Card (at `/.well-known/agent-card.json`, the one path open to anyone) has one
skill per workflow offered, JSON-RPC (at `/`) and HTTP+JSON (at `/rest`) interfaces, and a
bearer-token security scheme; every other request needs
`Authorization: Bearer <token>`. A `SendMessage` starts a run of the skill's workflow on
the orchestrator serving the bus, as the person whose credentials this command has
(`baton submit`'s path), with the message id as the request id: the same message sent
again is the same run, never a second one. The A2A task follows the run's progress
(`baton.events.<run>`, streamed as `working` status updates with each line) and ends with
the run, its state, outputs (one artifact per task that produced the result) and reason
read from the event log, not from the stream. A task of the run that waits for a person
(escalated) makes the A2A task `input-required`; the client's answer on that task is the
person's decision (`baton approve`, with the output it gives; `reject`; `retry`), and the
task follows the run again. Cancelling the A2A task cancels the run (`baton cancel`).
`GetTask` knows the tasks this process served, and takes a Baton run id as a task id
too, answered from the log.

This module is the only one of the orchestrator that imports the A2A SDK (and uvicorn):
`baton a2a` loads it only when asked (the `interop` extra).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from a2a.helpers import get_data_parts, get_text_parts, new_data_part, new_text_part
from a2a.helpers.proto_helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    HTTPAuthSecurityScheme,
    Message,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskNotCancelableError,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.errors import BusError
from bus.permissions import inbox_prefix
from bus.protocol import ErrorReply, Progress, ProgressBatch
from eventstore import EventStore
from orchestrator.cli.reach import Reach
from orchestrator.cli.render import progress_line
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.run_state import TERMINAL_RUN, RunState
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service import journal, serve
from orchestrator.service.api import ControlAccepted, RunControlRequest
from orchestrator.service.run_requests import request_run_id

log = logging.getLogger("baton.a2a")
_batch: Decoder[ProgressBatch | Progress] = Decoder(ProgressBatch | Progress)
_control: Decoder[ControlAccepted | ErrorReply] = Decoder(ControlAccepted | ErrorReply)
ENDS = frozenset(("run.completed", "run.failed", "run.stopped"))
Begin = Callable[[], Awaitable[str]]
"""Starts what a message asks for (a run, a decision); '' once done, else why not."""
REST = "/rest"
"""Where the HTTP+JSON binding is served (JSON-RPC is at the root)."""
KEPT = 10_000
"""Task ids remembered, newest first: a long-lived server must not grow without bound."""
CHECK_LOG_S = 1.0
"""How often a followed run is looked up in the log too: progress is core NATS, at most
once, so a lost `run.completed` line must not leave the A2A task working forever."""


class Offered:
    """The workflows offered, by skill id (the workflow's name), and where runs go."""

    def __init__(self, workflows: list[WorkflowSpec], where: Reach, store: EventStore) -> None:
        self.workflows = {w.name: w for w in workflows}
        self.where = where
        self.store = store
        self.runs: OrderedDict[str, str] = OrderedDict()
        """A2A task id → the Baton run it follows (the newest `KEPT`; an older task's
        run is found by its run id, from the log)."""
        self.waiting: OrderedDict[str, str] = OrderedDict()
        """A2A task id → the escalated Baton task its `input-required` waits on."""

    @staticmethod
    def remember(links: OrderedDict[str, str], key: str, value: str) -> None:
        links[key] = value
        while len(links) > KEPT:
            links.popitem(last=False)

    def card(self, url: str) -> AgentCard:
        bearer = SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer"))
        return AgentCard(
            name="Baton",
            description="Baton workflows: supervised multi-agent runs with an audit log",
            version="1.0",
            supported_interfaces=[
                AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
                AgentInterface(
                    url=url.rstrip("/") + REST, protocol_binding="HTTP+JSON", protocol_version="1.0"
                ),
            ],
            capabilities=AgentCapabilities(streaming=True),
            security_schemes={"bearer": bearer},
            security_requirements=[SecurityRequirement(schemes={"bearer": StringList()})],
            default_input_modes=["application/json", "text/plain"],
            default_output_modes=["application/json"],
            skills=[
                AgentSkill(
                    id=name,
                    name=name,
                    description=w.description or f"the {name} workflow",
                    tags=["baton-workflow"],
                    input_modes=["application/json"],
                )
                for name, w in sorted(self.workflows.items())
            ],
        )

    def request(self, message: Message) -> tuple[WorkflowSpec, dict[str, Any]] | str:
        """The workflow and input a message asks for (a data part `{"skill": name,
        "input": {...}}`, the skill defaulting to the only one offered), or why not."""
        data = [d for d in get_data_parts(message.parts) if isinstance(d, dict)]
        asked = data[0] if data else {}
        skill = asked.get("skill") or (
            next(iter(self.workflows)) if len(self.workflows) == 1 else ""
        )
        workflow = self.workflows.get(str(skill))
        if workflow is None:
            return f"no skill {skill!r}: offered {', '.join(sorted(self.workflows))}"
        run_input = asked.get("input", {k: v for k, v in asked.items() if k != "skill"})
        if not isinstance(run_input, dict):
            return "the input must be a JSON object"
        text = "\n".join(get_text_parts(message.parts))
        if text and not run_input:
            run_input = {"text": text}
        return workflow, _whole(run_input)


class RunExecutor(AgentExecutor):
    """An A2A task is one Baton run: started, followed and cancelled on the bus. A task of
    the run that waits for a person makes the A2A task `input-required`; the client's
    answer (a message on that task) is the person's decision."""

    def __init__(self, offered: Offered, bus: Bus, identity: str) -> None:
        self.offered = offered
        self.bus = bus
        self.identity = identity

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        answering = task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        waiting = self.offered.waiting.get(task.id, "")
        if answering:
            begun = self._answer(task.id, context.message)
        else:
            begun = self._start(task.id, context.message)
        if isinstance(begun, str):
            said = updater.new_agent_message([new_text_part(begun)])
            if answering and waiting:
                await updater.requires_input(said)  # an answer it cannot take: ask again
            else:
                await updater.reject(said)
            return
        run_id, begin = begun
        lines: asyncio.Queue[Progress] = asyncio.Queue()

        async def on_progress(msg: Incoming) -> None:
            try:
                got = _batch.decode(msg.data)
            except BusError:
                return
            for line in got.lines if isinstance(got, ProgressBatch) else [got]:
                lines.put_nowait(line)

        watching = await self.bus.subscribe(subjects.progress(run_id), on_progress, inline=True)
        try:
            refused = await begin()
            over = False
            if refused:
                state = await self._logged(run_id) if answering else None
                said = updater.new_agent_message([new_text_part(refused)])
                if state is None:
                    await updater.failed(said)  # the run could not start (or is not known)
                    return
                over = state.status in TERMINAL_RUN
                if not over and _escalated(state, waiting):
                    await updater.requires_input(said)  # still waiting: say why not
                    return
                # else it ended, or someone decided elsewhere (`baton approve`): go on
            if not over:
                meta = {"baton_run": run_id}
                said = updater.new_agent_message([new_text_part(run_id)], meta)
                await updater.start_work(said)
            ended = over or await self._follow(task.id, run_id, lines, updater)
        finally:
            await watching.unsubscribe()
        if ended:
            await _finish(updater, await journal.load_run(self.offered.store, run_id))

    async def _logged(self, run_id: str) -> RunState | None:
        """The run as the log has it, or None if the log does not know it."""
        try:
            return await journal.load_run(self.offered.store, run_id)
        except OrchestratorError:
            return None

    def _start(self, task_id: str, message: Message) -> tuple[str, Begin] | str:
        """The run a first message asks for, and how to start it (idempotent on the
        message id: the request id, and so the run id, derive from it)."""
        asked = self.offered.request(message)
        if isinstance(asked, str):
            return asked
        workflow, run_input = asked
        request_id = hashlib.sha256(message.message_id.encode()).hexdigest()[:32]
        run_id = request_run_id(self.identity, request_id)
        self.offered.remember(self.offered.runs, task_id, run_id)
        where = self.offered.where

        async def begin() -> str:
            try:
                await serve.submit(
                    where.url, workflow, run_input, requested_by=self.identity,
                    request_id=request_id,
                    inbox_prefix=inbox_prefix(self.identity) if where.identity else "",
                )  # fmt: skip
            except (OrchestratorError, BusError) as exc:  # refused, or nobody answered
                return str(exc)
            return ""

        return run_id, begin

    def _answer(self, task_id: str, message: Message) -> tuple[str, Begin] | str:
        """A message on an `input-required` task: the decision on the escalated Baton task
        (a data part `{"decision": "approve"|"reject"|"retry", "output": {...}, "note"}`;
        approve by default, a text part is the note)."""
        run_id = self.offered.runs.get(task_id, "")
        waiting = self.offered.waiting.get(task_id, "")
        if not run_id or not waiting:
            return f"task {task_id} waits for nothing this server knows of"
        data = [d for d in get_data_parts(message.parts) if isinstance(d, dict)]
        said = data[0] if data else {}
        decision = said.get("decision", "approve")
        output = said.get("output", {})
        if decision not in ("approve", "reject", "retry") or not isinstance(output, dict):
            return 'answer with {"decision": "approve"|"reject"|"retry", "output": {...}}'
        note = str(said.get("note", "")) or "\n".join(get_text_parts(message.parts))
        request = RunControlRequest(run_id, decision, waiting, note, _whole(output))

        async def begin() -> str:
            try:
                data = await self.bus.request(
                    subjects.run_control(self.identity), encode(request), 10
                )
                reply = _control.decode(data)
            except BusError as exc:
                return str(exc)
            if isinstance(reply, ErrorReply):
                return f"{reply.error}: {reply.detail}"
            self.offered.waiting.pop(task_id, None)
            return ""

        return run_id, begin

    async def _follow(
        self, task_id: str, run_id: str, lines: asyncio.Queue[Progress], updater: TaskUpdater
    ) -> bool:
        """Stream the run's progress lines until it ends (by its lines, or by the log):
        True; or until a task of it waits for a person: `input-required`, and False."""
        stream = journal.run_stream(run_id)
        while True:
            try:
                async with asyncio.timeout(CHECK_LOG_S):
                    line = await lines.get()
            except TimeoutError:
                if await journal.has_ended(self.offered.store, stream):
                    return True
                continue
            text = progress_line(line, line.elapsed_s).strip()
            meta = {"baton_run": run_id, "event": line.event, "task": line.task_id}
            said = updater.new_agent_message([new_text_part(text)])
            if line.event == "task.escalated":
                self.offered.remember(self.offered.waiting, task_id, line.task_id)
                asks = f"{text}; answer with approve (and its output), reject or retry"
                said = updater.new_agent_message([new_text_part(asks)], meta)
                await updater.requires_input(said)
                return False
            await updater.update_status(TaskState.TASK_STATE_WORKING, said, metadata=meta)
            if line.event in ENDS:
                return True

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        run_id = self.offered.runs.get(task_id, task_id)
        request = RunControlRequest(run_id, "cancel", note="cancelled over A2A")
        try:
            reply = _control.decode(
                await self.bus.request(subjects.run_control(self.identity), encode(request), 10)
            )
        except BusError as exc:
            raise TaskNotCancelableError(f"run {run_id}: {exc}") from exc
        if isinstance(reply, ErrorReply):
            raise TaskNotCancelableError(f"run {run_id}: {reply.detail}")
        updater = TaskUpdater(event_queue, task_id, context.context_id or task_id)
        said = updater.new_agent_message([new_text_part(f"run {run_id} cancelled")])
        await updater.cancel(said)


class LogTaskStore(InMemoryTaskStore):
    """The tasks this process served; a Baton run id asked for as a task id is answered
    from the event log (its state, outputs and reason)."""

    def __init__(self, store: EventStore) -> None:
        super().__init__()
        self._log = store

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        found = await super().get(task_id, context)
        if found is not None:
            return found
        try:
            state = await journal.load_run(self._log, subjects.token(task_id))
        except (OrchestratorError, BusError):
            return None
        return _task_of(task_id, state)


async def _finish(updater: TaskUpdater, state: RunState) -> None:
    for artifact in _artifacts(state):
        await updater.add_artifact(list(artifact.parts), name=artifact.name)
    meta = {"baton_run": state.run_id}
    said = updater.new_agent_message([new_text_part(_summary(state))], meta)
    if state.status == "completed":
        await updater.complete(said)
    elif state.status == "stopped" and state.limit == "cancelled":
        await updater.cancel(said)
    else:
        await updater.failed(said)


def _escalated(state: RunState, task_id: str) -> bool:
    task = state.tasks.get(task_id)
    return task is not None and task.status == "escalated"


def _artifacts(state: RunState) -> list[Artifact]:
    return [
        Artifact(artifact_id=f"{state.run_id}-{task}", name=task, parts=[new_data_part(output)])
        for task, output in sorted((state.result or {}).items())
    ]


def _summary(state: RunState) -> str:
    return f"run {state.run_id} {state.status}" + (f": {state.reason}" if state.reason else "")


def _task_of(task_id: str, state: RunState) -> Task:
    states = {
        "completed": TaskState.TASK_STATE_COMPLETED,
        "failed": TaskState.TASK_STATE_FAILED,
        "stopped": TaskState.TASK_STATE_CANCELED
        if state.limit == "cancelled"
        else TaskState.TASK_STATE_FAILED,
    }
    status = TaskStatus(
        state=states.get(state.status, TaskState.TASK_STATE_WORKING),
        message=Message(message_id=f"{task_id}-status", role="ROLE_AGENT",
                        parts=[new_text_part(_summary(state))]),
    )  # fmt: skip
    return Task(
        id=task_id,
        context_id=task_id,
        status=status,
        artifacts=_artifacts(state),
        metadata={"baton_run": state.run_id},
    )


def _whole(value: Any) -> Any:
    """JSON from protobuf's Value, whose numbers are all doubles: whole ones back to int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def bearer_only(
    token: str,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Starlette middleware: the card is public, everything else needs the bearer token."""
    expected = f"Bearer {token}".encode()

    async def check(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path == AGENT_CARD_WELL_KNOWN_PATH:
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse({"error": "a bearer token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return await call_next(request)

    return check


async def run_server(
    workflows: list[WorkflowSpec],
    where: Reach,
    store: EventStore,
    *,
    token: str,
    host: str,
    port: int,
    public_url: str = "",
    ready: Callable[[str], None] = lambda url: None,
) -> None:
    """Serve until cancelled (SIGTERM/SIGINT through uvicorn)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    shown_host = f"[{host}]" if ":" in host else host
    url = public_url or f"http://{shown_host}:{sock.getsockname()[1]}/"
    offered = Offered(workflows, where, store)
    identity = where.identity or "a2a"
    prefix = inbox_prefix(where.identity) if where.identity else ""
    bus = await Bus.connect(where.url, name="baton-a2a", inbox_prefix=prefix)
    try:
        card = offered.card(url)
        handler = DefaultRequestHandler(
            RunExecutor(offered, bus, identity), LogTaskStore(store), card
        )
        app = Starlette(
            routes=[
                *create_agent_card_routes(card),
                *create_jsonrpc_routes(handler, "/"),
                *create_rest_routes(handler, path_prefix=REST),  # last: it mounts /{tenant}
            ]
        )
        app.add_middleware(BaseHTTPMiddleware, dispatch=bearer_only(token))
        server = uvicorn.Server(  # a client waiting on a run must not hold up SIGTERM
            uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            ready(url)
        await serving
    finally:
        await bus.close()
        sock.close()
