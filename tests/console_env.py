"""A real stack for the console's tests: the embedded nats-server, the orchestrator and
its SQLite log (`tests.cluster`), and `baton ui`'s server on a free loopback port with
its own store opened the way the command opens it, all in one event loop on a thread of
its own, so a test drives it over real HTTP (and a real browser) from the main thread."""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from collections import Counter
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Self, TypeVar
from urllib.parse import urlencode

from msgspec.structs import replace

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus.config import Config
from bus.connection import Bus
from bus.server import EmbeddedNats
from orchestrator.cli.console.command import Running, serving
from orchestrator.cli.reach import Reach, reach
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service.bootstrap import open_store, store_name
from orchestrator.service.service import Orchestrator
from orchestrator.service.workflow_files import load
from tests.cluster import REPO, Cluster, cluster

T = TypeVar("T")
RESEARCH = REPO / "examples" / "research"
ESCALATION = REPO / "examples" / "escalation"


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    text: str


def fetch(
    port: int,
    method: str,
    path: str,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    cookie: str = "",
) -> Reply:
    """One request to the console on `port`, on a new connection."""
    sent = {"Host": f"127.0.0.1:{port}"}
    if cookie:
        sent["Cookie"] = f"baton_console={cookie}"
    body = None
    if form is not None:
        body = urlencode(form)
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    sent.update(headers or {})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        got = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, got, response.read().decode())
    finally:
        connection.close()


def login(port: int, url: str) -> str:
    """The session cookie a login URL gives (AssertionError if it gives none)."""
    reply = fetch(port, "GET", url.partition(f":{port}")[2])
    assert reply.status == 303, reply
    match = re.match(r"baton_console=([^;]+);", reply.headers.get("set-cookie", ""))
    assert match, reply.headers
    return match.group(1)


class ConsoleEnv:
    """The stack and the console, started on `start()`, stopped on `close()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._main: asyncio.Future[None] | None = None
        self.cluster: Cluster
        self.running: Running
        self.cookie = ""
        self.csrf = ""

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `work` in the stack's loop and wait for its result (bounded)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._ready(), self.loop).result(60)
        self.cookie = self.login(self.running.login_url)
        self.csrf = self.csrf_of(self.get("/").text)
        return self

    async def _ready(self) -> None:
        started = asyncio.Event()
        self._stop = asyncio.Event()
        self._main = asyncio.ensure_future(self._serve(started))
        waiting = asyncio.ensure_future(started.wait())
        await asyncio.wait({self._main, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if self._main.done():
            self._main.result()

    async def _serve(self, started: asyncio.Event) -> None:
        assert self._stop is not None
        async with cluster(self.directory) as c:
            store = await open_store(self.directory)
            try:
                where = reach("", self.directory)
                assert where is not None, "the embedded server runs"
                assert where.identity, "the person's credentials"
                async with serving(
                    store,
                    where,
                    where.identity,
                    shown_store=store_name(self.directory),
                    directory=self.directory,
                ) as running:
                    self.cluster, self.running = c, running
                    started.set()
                    await self._stop.wait()
            finally:
                await store.close()

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            if self._main is not None:
                asyncio.run_coroutine_threadsafe(asyncio.wait({self._main}), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    # -- HTTP ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        cookie: str | None = None,
    ) -> Reply:
        """One request on a new connection; the session's cookie unless told another."""
        jar = self.cookie if cookie is None else cookie
        return fetch(self.running.port, method, path, form, headers, cookie=jar)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: Mapping[str, str], **kwargs: Any) -> Reply:
        return self.request("POST", path, {"csrf": self.csrf, **form}, **kwargs)

    def login(self, url: str) -> str:
        return login(self.running.port, url)

    @staticmethod
    def csrf_of(page: str) -> str:
        match = re.search(r'<meta name="csrf" content="([^"]+)">', page)
        assert match, page[:500]
        return match.group(1)

    # -- runs ------------------------------------------------------------------------

    def example(self, folder: Path) -> WorkflowSpec:
        return load(folder / "workflow.toml")

    def start_agents(self, folder: Path) -> None:
        """The example's agents, one process per role (with the capacity of all of the
        role's), so the suite starts fewer processes."""
        specs = [
            replace(a, count=1, capacity=a.count * a.capacity) for a in self.example(folder).agents
        ]
        self.call(self.cluster.add_agents(specs, base=folder))

    def start_run(self, folder: Path) -> str:
        workflow = self.example(folder)
        return self.call(self.cluster.orchestrator.start_run(workflow, workflow.input))


class JetStreamConsoleEnv(ConsoleEnv):
    """The console on a JetStream log: its own nats-server (JetStream on, no accounts),
    one orchestrator keeping its log there, agents of role `worker` served in this
    process (`start_worker`), and `baton ui`'s server on that store and bus."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.orchestrator: Orchestrator
        self.url = ""
        self._workers: list[tuple[Bus, AgentRuntime, asyncio.Task[None]]] = []

    async def _serve(self, started: asyncio.Event) -> None:
        assert self._stop is not None
        server = EmbeddedNats(self.directory / "nats")
        self.url = await server.start()
        try:
            store = await open_store(self.directory, Config(store="jetstream", nats=(self.url,)))
            bus = await Bus.connect(self.url, name="baton-orchestrator")
            self.orchestrator = Orchestrator(bus, store, tick_s=0.05, agent_ttl=2.0)
            await self.orchestrator.start()
            try:
                where = Reach(self.url, "human:tester")
                async with serving(store, where, where.identity, shown_store="jetstream") as r:
                    self.running = r
                    started.set()
                    await self._stop.wait()
            finally:
                for worker_bus, agent, served in self._workers:
                    agent.stop()  # it drains (holds nothing by now) and ends
                    await asyncio.wait_for(served, 30)
                    await worker_bus.close()
                await self.orchestrator.stop()
                await bus.close()
                await store.close()
        finally:
            server.stop()

    def start_worker(self, step_s: float) -> None:
        """One agent of role `worker` whose every task takes `step_s` seconds."""

        async def handler(ctx: TaskContext) -> dict[str, str]:
            await asyncio.sleep(step_s)
            return {"done": ctx.task_id}

        async def start() -> None:
            bus = await Bus.connect(self.url, name="worker")
            agent = AgentRuntime(
                bus, agent_id=f"worker-{len(self._workers)}", role="worker", handler=handler,
                capacity=4, heartbeat_s=0.2,
            )  # fmt: skip
            self._workers.append((bus, agent, asyncio.create_task(agent.run())))
            await self.orchestrator.wait_for_agents(Counter({"worker": 1}), timeout=30)

        self.call(start())

    def start_workflow(self, workflow: WorkflowSpec) -> str:
        return self.call(self.orchestrator.start_run(workflow))
