"""Real A2A agents for the tests, built with the official `a2a-sdk` and served over HTTP
(JSON-RPC, Starlette under uvicorn) on a loopback port: each behaves one way (completes,
fails, asks for input, works until cancelled) and remembers what it was sent and whether a
cancel reached it, so a test can check the bridge from the far side."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from a2a.helpers import get_data_parts, new_data_part, new_task_from_user_message, new_text_part
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from starlette.applications import Starlette

from tests.asgi import loopback

Behaviour = Literal["complete", "fail", "reject", "input", "auth", "hang"]


@dataclass
class Seen:
    """What one test agent was sent, and whether a cancel reached it."""

    inputs: list[Any] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)


class Executor(AgentExecutor):
    """One behaviour: the A2A task ends completed (a data artifact and token usage in the
    task's metadata), failed, input-required, or works until cancelled."""

    def __init__(self, behaviour: Behaviour, seen: Seen) -> None:
        self.behaviour = behaviour
        self.seen = seen

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        self.seen.message_ids.append(context.message.message_id)
        self.seen.inputs.extend(get_data_parts(context.message.parts))
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        self.seen.started.set()
        if self.behaviour == "complete":
            await updater.add_artifact(
                [new_data_part({"answer": 42, "echo": self.seen.inputs[-1]})], name="answer"
            )
            await updater.update_status(
                TaskState.TASK_STATE_COMPLETED,
                metadata={"usage": {"input_tokens": 30, "output_tokens": 12}},
            )
        elif self.behaviour == "fail":
            await updater.failed(updater.new_agent_message([new_text_part("the index is down")]))
        elif self.behaviour == "reject":
            await updater.reject(updater.new_agent_message([new_text_part("not my kind of task")]))
        elif self.behaviour == "auth":
            await updater.requires_auth(updater.new_agent_message([new_text_part("log in first")]))
        elif self.behaviour == "input":
            await updater.requires_input(
                updater.new_agent_message([new_text_part("which year do you mean?")])
            )
        else:
            await asyncio.Event().wait()  # until cancelled

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.seen.cancelled.set()
        assert context.task_id is not None
        assert context.context_id is not None
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(new_text_message("stopped as asked"))


def card(url: str, skills: list[str], streaming: bool, binding: str = "JSONRPC") -> AgentCard:
    return AgentCard(
        name="test agent",
        description="an A2A agent for Baton's tests",
        version="1.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding=binding, protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=streaming),
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[AgentSkill(id=s, name=s, description=s, tags=[s]) for s in skills],
    )


@contextlib.asynccontextmanager
async def a2a_agent(
    behaviour: Behaviour, skills: list[str], *, streaming: bool = True, binding: str = "JSONRPC"
) -> AsyncIterator[tuple[str, Seen]]:
    """An A2A agent served on a free loopback port, in this event loop, over JSON-RPC or
    HTTP+JSON (`binding`): its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    seen = Seen()
    agent_card = card(url, skills, streaming, binding)
    handler = DefaultRequestHandler(Executor(behaviour, seen), InMemoryTaskStore(), agent_card)
    served = create_rest_routes(handler) if binding == "HTTP+JSON" else None
    app = Starlette(
        routes=[
            *create_agent_card_routes(agent_card),
            *(served or create_jsonrpc_routes(handler, "/")),
        ]
    )
    async with loopback(app, sock=sock):
        yield url, seen
