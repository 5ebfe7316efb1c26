"""A remote A2A agent as a Baton agent: the bridge is the handler of an ordinary agent
process (`baton agent --role R --a2a URL`), so leases, heartbeats, retries, timeouts,
budgets, cancellation and the audit log apply to the remote agent's work exactly as to a
native agent's, and the log records the bridge as the actor.

At start the bridge fetches the Agent Card and checks it against the role: every
capability the role has must be one of the card's skills (by id or tag), else the
process does not start. Each assignment goes to the remote agent as one A2A message (its
id is the attempt's, so a resent assignment is the same message); the bridge follows the
task (over the stream when the card offers streaming, else by polling) and maps its end:

- completed: the attempt's result, with the artifacts (and the token usage the task's or
  its last status's metadata reports as `usage = {input_tokens, output_tokens}`);
- input-required or auth-required: the task is escalated to a person (`baton approve`
  gives it the output, `reject` fails it, `retry` sends it again);
- failed, rejected, canceled (by the remote): a failed attempt, with the reason, retried
  (on another agent where there is one) as the step allows;
- Baton cancels the attempt (a person, a lease or a timeout): the remote task is
  cancelled over A2A.

A card or a reply that is not A2A is a typed error (`A2ABridgeError` at start, a failed
attempt later), never a hang: every request is bounded by `request_timeout_s` (a stream's
reads excepted), and the whole attempt, stream included, by its lease.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from a2a.client import A2ACardResolver, A2AClientError, Client, ClientConfig, ClientFactory
from a2a.helpers import get_data_parts, get_text_parts, new_data_part
from a2a.types import (
    AgentCard,
    Artifact,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from agents.errors import AgentError
from agents.sdk import Reply, TaskContext, TaskError

log = logging.getLogger("baton.a2a")

_DONE = {TaskState.TASK_STATE_COMPLETED}
_FAILED = {
    TaskState.TASK_STATE_FAILED: "failed",
    TaskState.TASK_STATE_REJECTED: "rejected",
    TaskState.TASK_STATE_CANCELED: "canceled",
}
_PERSON = {
    TaskState.TASK_STATE_INPUT_REQUIRED: "input-required",
    TaskState.TASK_STATE_AUTH_REQUIRED: "auth-required",
}
_ENDED = _DONE | set(_FAILED) | set(_PERSON)
BINDINGS = ("JSONRPC", "HTTP+JSON")
"""The A2A transports the bridge speaks (gRPC is not among them)."""


class A2ABridgeError(AgentError):
    """The remote A2A agent cannot serve the role: its card could not be fetched or read,
    it offers no skill for one of the role's capabilities, or no transport the bridge
    speaks (`BINDINGS`)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"A2A agent {url}: {reason}")
        self.url = url
        self.reason = reason


def skills_missing(card: AgentCard, capabilities: list[str]) -> list[str]:
    """The capabilities no skill of the card offers (a skill offers its id and its tags)."""
    offered = {s.id for s in card.skills} | {t for s in card.skills for t in s.tags}
    return [c for c in capabilities if c not in offered]


@dataclass
class Followed:
    """What the bridge knows of one remote task, folded from the stream or a poll."""

    task_id: str = ""
    state: TaskState = TaskState.TASK_STATE_UNSPECIFIED
    said: str = ""
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def fold(self, event: StreamResponse) -> None:
        kind = event.WhichOneof("payload")
        if kind == "task":
            self.task(event.task)
        elif kind == "message":  # an answer without a task: done
            self.state = TaskState.TASK_STATE_COMPLETED
            self.said = "\n".join(get_text_parts(event.message.parts))
            self.artifacts["message"] = _artifact("message", event.message.parts)
        elif kind == "status_update":
            update = event.status_update
            self.task_id = self.task_id or update.task_id
            self.state = update.status.state
            self.said = "\n".join(get_text_parts(update.status.message.parts))
            if update.HasField("metadata"):
                self.metadata.update(_plain(MessageToDict(update.metadata)))
        elif kind == "artifact_update":
            artifact = event.artifact_update.artifact
            old = self.artifacts.get(artifact.artifact_id)
            new = _artifact(artifact.name, artifact.parts)
            if event.artifact_update.append and old is not None:
                old["text"] += new["text"]
                old["data"] += new["data"]
            else:
                self.artifacts[artifact.artifact_id] = new

    def task(self, task: Task) -> None:
        self.task_id = task.id
        self.state = task.status.state
        self.said = "\n".join(get_text_parts(task.status.message.parts))
        for artifact in task.artifacts:
            self.artifacts[artifact.artifact_id] = _from(artifact)
        if task.HasField("metadata"):
            self.metadata.update(_plain(MessageToDict(task.metadata)))

    @property
    def ended(self) -> bool:
        return self.state in _ENDED


@dataclass
class A2ABridge:
    """The handler that forwards each assignment to the A2A agent at `url`. `token` is a
    bearer token sent with every request (from the environment, never a command line)."""

    url: str
    token: str = ""
    poll_s: float = 0.5
    request_timeout_s: float = 30.0
    card: AgentCard | None = field(default=None, init=False)
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)
    _client: Client | None = field(default=None, init=False, repr=False)

    async def start(self, capabilities: list[str]) -> AgentCard:
        """Fetch the card and check it against the role's capabilities."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx.Timeout(self.request_timeout_s, read=None)  # streams: the lease bounds
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout)
        try:
            async with asyncio.timeout(self.request_timeout_s):
                card = await A2ACardResolver(self._http, self.url).get_agent_card()
        except (A2AClientError, TimeoutError, httpx.HTTPError, ValueError) as exc:
            await self.close()
            raise A2ABridgeError(self.url, f"no usable Agent Card: {_why(exc)}") from exc
        missing = skills_missing(card, capabilities)
        if missing:
            await self.close()
            skills = sorted({s.id for s in card.skills}) or ["none"]
            raise A2ABridgeError(
                self.url,
                f"offers no skill for {', '.join(missing)} (its skills: {', '.join(skills)})",
            )
        streaming = card.capabilities.streaming
        config = ClientConfig(
            streaming=streaming,
            polling=not streaming,
            httpx_client=self._http,
            supported_protocol_bindings=list(BINDINGS),  # the card's preference among them
        )
        try:
            self._client = ClientFactory(config).create(card)
        except ValueError as exc:
            await self.close()
            raise A2ABridgeError(self.url, str(exc)) from exc
        self.card = card
        return card

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __call__(self, task: TaskContext) -> Reply:
        client = self._client
        if client is None:
            raise TaskError(f"A2A agent {self.url}: the bridge is not started", retryable=True)
        message = Message(
            message_id=f"baton-{task.run_id}-{task.task_id}-{task.attempt}",
            role=Role.ROLE_USER,
            parts=[new_data_part({"step": task.step, "input": task.input})],
            metadata={"baton_run": task.run_id, "baton_task": task.task_id},
        )
        followed = Followed()
        try:
            async for event in client.send_message(SendMessageRequest(message=message)):
                followed.fold(event)
                if followed.ended:
                    break
            while not followed.ended:
                if not followed.task_id:
                    raise TaskError(f"A2A agent {self.url}: a reply without a task")
                await asyncio.sleep(self.poll_s)
                async with asyncio.timeout(self.request_timeout_s):
                    followed.task(await client.get_task(GetTaskRequest(id=followed.task_id)))
        except asyncio.CancelledError:
            if followed.task_id and not followed.ended:
                await asyncio.shield(self._cancel(client, followed.task_id))
            raise
        except TaskError:
            raise
        except Exception as exc:  # the SDK's, httpx's, protobuf's: a reply that is not A2A
            raise TaskError(f"A2A agent {self.url}: {_why(exc)}", retryable=True) from exc
        return self._outcome(task, followed)

    def _outcome(self, task: TaskContext, followed: Followed) -> Reply:
        state = TaskState.Name(followed.state)
        why = f": {followed.said}" if followed.said else ""
        if followed.state in _PERSON:
            raise TaskError(
                f"A2A task {followed.task_id} is {_PERSON[followed.state]}{why}", escalate=True
            )
        if followed.state in _FAILED:
            raise TaskError(f"A2A task {followed.task_id} {_FAILED[followed.state]}{why}")
        if followed.state not in _DONE:
            raise TaskError(f"A2A agent {self.url}: task ended in {state}")
        usage = followed.metadata.get("usage")
        if isinstance(usage, dict):
            tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
            if isinstance(tokens_in, int) and isinstance(tokens_out, int):
                task.usage.add(tokens_in, tokens_out)
        output = {
            "a2a_task": followed.task_id,
            "artifacts": list(followed.artifacts.values()),
            "message": followed.said,
        }
        return Reply(output)

    async def _cancel(self, client: Client, task_id: str) -> None:
        """Baton took the attempt back: tell the remote agent to stop (bounded)."""
        try:
            async with asyncio.timeout(self.request_timeout_s):
                await client.cancel_task(CancelTaskRequest(id=task_id))
            log.info("A2A task %s cancelled at %s", task_id, self.url)
        except Exception as exc:
            log.warning("A2A task %s: cancel not confirmed: %s", task_id, _why(exc))


def _artifact(name: str, parts: Any) -> dict[str, Any]:
    return {
        "name": name,
        "text": "\n".join(get_text_parts(parts)),
        "data": [_plain(d) for d in get_data_parts(parts)],
    }


def _from(artifact: Artifact) -> dict[str, Any]:
    return _artifact(artifact.name, artifact.parts)


def _plain(value: Any) -> Any:
    """JSON from protobuf's Value, whose numbers are all doubles: whole ones back to int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"
