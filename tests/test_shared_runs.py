"""Several orchestrators share the runs of one bus: three on one real nats-server with
the JetStream store, each on its own connections, runs submitted on the bus (any of them
may be asked; the owner of the run's partition answers), agents unchanged. One of them
is killed (its connection cut, its loops left running as a stale owner would) or
stopped, again and again, while runs are under way: every run completes, each task
succeeded exactly once, and the others take over its partitions within a few seconds,
which is measured."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus import subjects
from bus.codec import Decoder, encode
from bus.config import Config
from bus.connection import Bus
from bus.errors import BusError
from bus.leases import LEASES_BUCKET, LeaseBucket, LeaseLost
from bus.protocol import ErrorReply
from bus.server import EmbeddedNats
from eventstore import EventStore
from orchestrator.core import partitions
from orchestrator.core.events import TaskSucceeded
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.api import StatusReply, StatusRequest
from orchestrator.service.bootstrap import open_store
from orchestrator.service.serve import submit
from orchestrator.service.service import Orchestrator
from orchestrator.service.sharing import Sharing

WORKFLOW = WorkflowSpec(
    "shared",
    [
        StepSpec("split", role="worker"),
        StepSpec("work", role="worker", needs=["split"], fan_out=3),
        StepSpec("join", role="worker", needs=["work"]),
    ],
)
TASKS = 5
_status: Decoder[StatusReply | ErrorReply] = Decoder(StatusReply | ErrorReply)
RUNS_PER_KILL = 4
KILLS = 4


class Node:
    """One orchestrator with its own bus connection and its own store client."""

    def __init__(self, orchestrator: Orchestrator, bus: Bus, store: EventStore) -> None:
        self.orchestrator = orchestrator
        self.bus = bus
        self.store = store

    @classmethod
    async def start(cls, url: str, state: Path) -> Node:
        config = Config(store="jetstream", nats=(url,))
        store = await open_store(state, config)
        bus = await Bus.connect(url, name="baton-orchestrator")
        orchestrator = Orchestrator(bus, store, tick_s=0.05, agent_ttl=2.0, shared=True)
        await orchestrator.start()
        return cls(orchestrator, bus, store)

    def open_runs(self) -> int:
        return sum(not state.terminal for state in self.orchestrator.runs())

    def owned(self) -> set[int]:
        sharing = self.orchestrator.partitioned.sharing
        return set(sharing.owned()) if sharing is not None else set()

    async def kill(self) -> None:
        """As a crash looks from outside: the connection is gone at once, nothing is
        released; its loops and its store client go on a moment (a stale owner)."""
        await self.bus.close()

    async def stop(self) -> None:
        await self.orchestrator.stop()
        await self.bus.close()
        await self.store.close()


def _taken_over(lost: set[int], nodes: list[Node]) -> bool:
    """Whether the live `nodes` own every partition in `lost` between them."""
    return lost <= {p for n in nodes for p in n.owned()}


async def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


def store_of(nodes: list[Node]) -> EventStore:
    return nodes[0].store


async def _every_open_run_in_status(url: str, store: EventStore, run_ids: list[str]) -> None:
    """`baton status` asks whichever orchestrator answers first: it lists every run that
    was open, whoever serves it."""
    bus = await Bus.connect(url, name="status")
    try:
        reply = _status.decode(await bus.request(subjects.API_STATUS, encode(StatusRequest()), 10))
    finally:
        await bus.close()
    assert isinstance(reply, StatusReply), reply
    listed = {run.run_id for run in reply.runs}
    for run_id in run_ids:
        if run_id not in listed:
            assert await journal.has_ended(store, journal.run_stream(run_id)), run_id


def test_three_orchestrators_share_the_runs_and_take_over_each_others(tmp_path: Path) -> None:
    ran: Counter[tuple[str, str]] = Counter()

    async def handler(ctx: TaskContext) -> dict[str, str]:
        ran[(ctx.run_id, ctx.task_id)] += 1
        await asyncio.sleep(0.3)  # work that is under way when an orchestrator dies
        return {"done": ctx.task_id}

    async def scenario() -> tuple[list[float], dict[str, Counter[str]], int]:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        nodes = [await Node.start(url, tmp_path / f"o{n}") for n in range(3)]
        agents: list[tuple[Bus, AgentRuntime, asyncio.Task[None]]] = []
        dead: list[Node] = []
        try:
            await _until(
                lambda: (
                    all(n.owned() for n in nodes)
                    and sorted(p for n in nodes for p in n.owned()) == list(range(16))
                ),
                "the three share the 16 partitions",
            )
            for n in range(2):
                bus = await Bus.connect(url, name=f"agent-{n}")
                agent = AgentRuntime(
                    bus, agent_id=f"worker-{n}", role="worker", handler=handler, capacity=8,
                    heartbeat_s=0.2,
                )  # fmt: skip
                agents.append((bus, agent, asyncio.create_task(agent.run())))
            rng = random.Random(14)
            run_ids: list[str] = []
            takeovers: list[float] = []
            busy = 0
            for kill in range(KILLS):
                for n in range(RUNS_PER_KILL):  # on whichever orchestrators own them now
                    request = f"shared-{kill}-{n}"
                    run_ids.append((await submit(url, WORKFLOW, request_id=request)).run_id)
                if kill == 0:
                    await _every_open_run_in_status(url, store_of(nodes), run_ids)
                await asyncio.sleep(rng.uniform(0.1, 0.6))  # a random moment of the runs
                victim = max(nodes, key=lambda n: (n.open_runs(), len(n.owned())))
                busy += victim.open_runs() > 0
                lost = victim.owned()
                nodes.remove(victim)
                began = time.monotonic()
                if kill % 2 == 0:
                    await victim.kill()
                    dead.append(victim)
                else:
                    await victim.stop()
                await _until(
                    partial(_taken_over, lost, nodes),
                    f"the partitions {sorted(lost)} taken over",
                )
                takeovers.append(time.monotonic() - began)
                for gone in dead:  # the stale one's process ends too
                    await gone.stop()
                dead.clear()
                nodes.append(await Node.start(url, tmp_path / f"new{kill}"))
            store = nodes[0].store

            async def ended() -> bool:
                return all([await journal.has_ended(store, journal.run_stream(r)) for r in run_ids])

            deadline = time.monotonic() + 60
            while not await ended():
                assert time.monotonic() < deadline, "some runs never ended"
                await asyncio.sleep(0.1)
            succeeded: dict[str, Counter[str]] = {}
            taken = 0
            for run_id in run_ids:
                state = await journal.load_run(store, run_id)
                assert state.status == "completed", (run_id, state.status, state.reason)
                events = await store.read_stream(journal.run_stream(run_id))
                succeeded[run_id] = Counter(
                    event.task_id
                    for event in map(journal.decode_run_event, events)
                    if isinstance(event, TaskSucceeded)
                )
                taken += sum(e.type == "run.taken_over" for e in events)
            assert busy >= KILLS // 2, "few kills found runs under way: the test proved little"
            return takeovers, succeeded, taken
        finally:
            for bus, agent, task in agents:
                agent.stop()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await task
                await bus.close()
            for node in nodes + dead:
                with contextlib.suppress(Exception):
                    await node.stop()
            server.stop()

    takeovers, succeeded, taken = asyncio.run(scenario())
    assert len(succeeded) == RUNS_PER_KILL * KILLS
    for run_id, tasks in succeeded.items():
        assert len(tasks) == TASKS, (run_id, tasks)
        assert set(tasks.values()) == {1}, f"{run_id}: a task succeeded more than once: {tasks}"
    assert taken > 0, "no run under way was taken over: the test proved nothing"
    ordered = sorted(takeovers)
    shown = [round(t, 2) for t in takeovers]
    print(f"takeovers {shown}: median {ordered[len(ordered) // 2]:.2f}s, worst {ordered[-1]:.2f}s")
    assert ordered[-1] < partitions.LEASE_TTL_S + 4.0, takeovers


def test_the_lease_bucket_writes_only_at_the_revision_expected(tmp_path: Path) -> None:
    """Compare-and-set on a real server: a claim of a held key, a renewal at a stale
    revision and a release of another's holding all change nothing; a key let go can be
    claimed again; the watcher's copy follows every write."""

    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        a, b = await Bus.connect(url, name="a"), await Bus.connect(url, name="b")
        try:
            mine, theirs = await a.lease_bucket(), await b.lease_bucket()
            watching = asyncio.create_task(theirs.watch())
            async with asyncio.timeout(5):
                await theirs.ready.wait()
            first = await mine.write("p.1", "a", None)
            with pytest.raises(LeaseLost):
                await theirs.write("p.1", "b", None)  # held: a claim of it fails
            renewed = await mine.write("p.1", "a", first)
            with pytest.raises(LeaseLost):
                await theirs.write("p.1", "b", first)  # a stale revision
            await theirs.release("p.1", first)  # not theirs to let go: nothing happens
            await _until(lambda: theirs.entries.get("p.1") == ("a", renewed), "the watcher")
            await mine.release("p.1", renewed)
            await _until(lambda: "p.1" not in theirs.entries, "the watcher sees it go")
            claimed = await theirs.write("p.1", "b", None)
            assert claimed > renewed, "revisions of a key only grow"
            watching.cancel()
        finally:
            await a.close()
            await b.close()
            server.stop()

    asyncio.run(scenario())


class _ReplyLost(LeaseBucket):
    """The real lease bucket, whose write of the key `lose` (once) lands but reports what
    a lost reply does: no revision, a `BusError` (a stream leader stepping down in an
    orderly stop never answers what it had in flight)."""

    lose = ""

    async def write(self, key: str, value: str, expected: int | None) -> int:
        before = self.entries.get(key)
        revision = await super().write(key, value, expected)
        if key != self.lose:
            return revision
        self.lose = ""
        if before is not None:  # only the watcher may tell of the write
            self.entries[key] = before
        raise BusError(f"cannot write {key} in {LEASES_BUCKET}: nats: timeout")


def test_a_renewal_that_landed_without_a_reply_keeps_the_partition(tmp_path: Path) -> None:
    """A renewal whose reply was lost but which was stored shows in the bucket as a newer
    revision in this orchestrator's own name: that is its renewal, not a claim by
    another, so it keeps serving the partition instead of stepping down from it."""

    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        bus = await Bus.connect(url, name="o")
        lost: list[set[int]] = []
        try:
            bucket = _ReplyLost((await bus.lease_bucket())._kv)
            watching = asyncio.create_task(bucket.watch())

            async def nothing(_: dict[int, int]) -> None:
                return None

            sharing = Sharing(
                bucket, "o1", clock=time.monotonic, gained=nothing, lost=lost.append,
                rescan=nothing, spawn=asyncio.ensure_future, partitions=2,
            )  # fmt: skip
            await sharing.start()
            assert set(sharing.held) == {0, 1}
            before = sharing.held[0]
            bucket.lose = "p.0"
            await sharing.round()  # the renewal of p.0 lands; its reply does not come
            assert not bucket.lose, "the renewal was not tried"
            assert sharing.held[0] == before
            await _until(lambda: bucket.entries["p.0"][1] > before, "the watcher sees it")
            landed = bucket.entries["p.0"][1]
            await sharing.round()
            assert lost == []
            assert sharing.held[0] > landed  # adopted, then renewed from it
            assert sharing.owned() == [0, 1]
            watching.cancel()
        finally:
            await bus.close()
            server.stop()

    asyncio.run(scenario())
