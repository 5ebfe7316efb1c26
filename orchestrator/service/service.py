"""The orchestrator's imperative shell, composed: each part has one job, and this module
wires them together behind the methods the CLI and the tests call.

    intake ─► reports ─┐
    run_requests ──────┼─► pipeline (decide, append, act) ─► outbound (effects on the bus)
    liveness (ticks) ──┘         ▲
    recovery (on start) ─────────┘
    tool_prompts: agents' requests for a tool call's approval, checked, to the run's watchers

It keeps nothing that is not in the event store: on start it replays every unfinished
run, re-derives the effects still owed, and consumes whatever agents left in the durable
inbox meanwhile. Of the runs that end, it keeps only the newest few in memory
(`keep_finished`); any other is read from the log when asked for (`load`, `wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bus import discovery, subjects
from bus.connection import Bus, Subscription
from bus.contracts import Contracts
from bus.errors import BusError
from bus.protocol import Heartbeat
from bus.supervise import Supervisor
from bus.telemetry import Telemetry
from eventstore import EventStore
from eventstore.anchor import Checkpointer
from orchestrator.core.errors import UnknownRun
from orchestrator.core.events import SystemEvent
from orchestrator.core.state import RunState
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service import journal, live_api, tool_prompts
from orchestrator.service.agentlog import AgentLog
from orchestrator.service.api import HealthIssue, RunControlRequest
from orchestrator.service.background import Background
from orchestrator.service.blobs import MAX_BLOB_BYTES, BlobService
from orchestrator.service.finished import KEEP_FINISHED
from orchestrator.service.health import STUCK_AFTER_S, Health
from orchestrator.service.intake import Intake
from orchestrator.service.liveness import Liveness
from orchestrator.service.memory import Embedder, MemoryService
from orchestrator.service.offers import Offers
from orchestrator.service.outbound import Outbound
from orchestrator.service.partitioned import Partitioned
from orchestrator.service.pipeline import Pipeline
from orchestrator.service.recovery import look_again, recover, resend_held
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S, Registry
from orchestrator.service.reports import Reports
from orchestrator.service.run_requests import RunRequests
from orchestrator.service.system_journal import SystemJournal
from orchestrator.service.telemetry import OrchestratorTelemetry


def host_boot() -> str:
    """This boot of the host (Linux's boot id), which the monotonic clock counts from;
    '' where it cannot be read (then recorded times are taken to be on this clock)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Orchestrator:
    """One orchestrator service over one bus connection and one event store."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        *,
        agent_ttl: float = AGENT_TTL,
        heartbeat_s: float = HEARTBEAT_S,
        tick_s: float = 0.2,
        fetch_batch: int = 512,
        durable: str = "orchestrator",
        assign_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        contracts: Contracts | None = None,
        boot: str | None = None,
        keep_finished: int = KEEP_FINISHED,
        stuck_after_s: float = STUCK_AFTER_S,
        checkpoints: Checkpointer | None = None,
        replicas: int = 1,
        shared: bool = False,
        max_blob_bytes: int = MAX_BLOB_BYTES,
    ) -> None:
        self._bus = bus
        self._shared = shared
        self.id = secrets.token_hex(8)
        """This orchestrator among those of one bus (its discovery id, its lease holder name)."""
        self._replicas = replicas
        self._store = store
        self._fetch_batch = fetch_batch
        self._durable = durable
        self._clock = clock
        self._wall = wall
        self._runs: dict[str, RunState] = {}
        self._registry = Registry(agent_ttl, heartbeat_s)
        self.memory = MemoryService(
            store,
            bus,
            contracts=contracts,
            role_of=self._registry.role_of,
            works_in=self._works_in,
            embedder=Embedder.from_env(),
        )
        self.blobs = BlobService(store, bus, works_in=self._works_in, max_bytes=max_blob_bytes)
        """Agents' blob uploads and downloads (large values by reference)."""
        telemetry = telemetry or Telemetry("baton-orchestrator", enabled=False)
        obs = OrchestratorTelemetry(telemetry, self._registry, self._runs, clock)
        self.loops = Supervisor(telemetry.meter)
        """The long-running loops (inbox, reports, tick), each restarted after a crash."""
        self._background = Background()
        spawn = self._background.spawn
        self._health = Health(
            connected=lambda: bus.connected,
            wall=wall,
            clock=clock,
            stuck_after_s=stuck_after_s,
            supervised=self.loops.health,
        )
        self._system = SystemJournal(store, obs, wall, self._health)
        self._outbound = Outbound(
            bus,
            obs,
            spawn=spawn,
            undeliverable=lambda run_id, failed: self._pipeline.execute(run_id, failed),
            assign_timeout=assign_timeout,
            instance_of=self._registry.instance_of,
            heard=self._registry.heard,
            by_reference=self.blobs.by_reference,
        )
        self._pipeline = Pipeline(
            store,
            self._registry,
            obs,
            self._runs,
            spawn=spawn,
            act=self._outbound.perform,
            clock=clock,
            wall=wall,
            boot=host_boot() if boot is None else boot,
            health=self._health,
            keep_finished=keep_finished,
            checkpoints=checkpoints,
        )
        Offers(self._pipeline, self._registry, spawn)
        agentlog = AgentLog(store, self._works_in)
        self._reports = Reports(self._pipeline, self._system, self.memory, agentlog, spawn)
        self._reports.unstored = self.blobs.unstored
        self._pipeline.on_forget += [
            self._reports.forget,
            agentlog.forget,
            self.memory.forget_run,
            self.blobs.forget_run,
            self._health.forget,
        ]
        self._requests = RunRequests(store, self._pipeline, self._system, new_run_id)
        self._prompts = tool_prompts.ToolPrompts(
            bus, partial(tool_prompts.refusal, self._runs), self._system.reject
        )
        self._liveness = Liveness(
            self._registry,
            self._pipeline,
            self._system,
            contracts,
            clock=clock,
            wall=wall,
            tick_s=tick_s,
            send=self._outbound.send,
            connected=lambda: bus.connected,
            joined=partial(resend_held, self._pipeline, self._outbound.perform),
        )
        self.partitioned = Partitioned(
            store, self._pipeline, self._registry, self._outbound.perform, spawn, clock
        )
        """With `shared`: this orchestrator's share of the runs of a bus several serve."""
        self._intake: Intake | None = None
        self._subscriptions: list[Subscription] = []
        self.discovery = discovery.Service(
            discovery.ORCHESTRATOR,
            self.id,
            self._described,
            description="Baton orchestrator",
        )
        """This process as a NATS micro service (`nats micro ls`): its endpoints count the
        reports, heartbeats and API requests it handles."""

    def _described(self) -> dict[str, str]:
        """Discovery metadata: what this orchestrator serves now."""
        now = self._clock()
        return {
            "role": "orchestrator",
            "runs": str(sum(not state.terminal for state in self._runs.values())),
            "agents": str(len(self._registry.live(now))),
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Recover every run from the store, then serve the inbox, heartbeats and the API."""
        self._liveness.look_at_connection()
        await self._system.open()
        await self._bus.ensure_inbox(self._replicas)
        self._intake = Intake(await self._bus.inbox_consumer(self._durable), self._fetch_batch)
        serve = partial(self.discovery.serve, self._bus)
        self._subscriptions = [
            await serve("report", subjects.REPORT_ALL, self._intake.offer_fast, inline=True),
            await serve("heartbeat", subjects.HEARTBEAT_ALL, self._liveness.on_heartbeat),
            await serve("run-start", subjects.API_START_RUN_ALL, self._requests.on_start),
            await serve("run-control", subjects.API_RUN_CONTROL_ALL, self._requests.on_control),
            await serve("bids", subjects.BIDS_ALL, self._requests.on_bid),
            await serve("tool-approval", subjects.TOOL_APPROVALS_ALL, self._prompts.on_request),
        ]
        others = self.partitioned.others if self._shared else None
        self._subscriptions += await live_api.serve(
            self._bus, self, self._wall, self.discovery, others
        )
        await self.discovery.start(self._bus)
        spawn, run, watch = self._background.spawn, self.loops.run, self._health.watch
        if self._shared:  # the runs of the partitions it claims, as it claims them
            sharing = await self.partitioned.start(
                self._bus,
                self.id,
                self._replicas,
                self._reports,
                self._requests,
                self._prompts,
                self.memory,
                self.blobs,
            )
            watch("lease-watch", spawn(run("lease-watch", sharing.bucket.watch)))
            await sharing.start()
            watch("leases", spawn(run("leases", sharing.loop)))
        else:
            mine = (self._store, self._pipeline, self._registry, self._outbound.perform)
            await recover(*mine)
            watch("look-again", spawn(run("look-again", partial(look_again, *mine))))
        await self.memory.start()
        await self.blobs.start()
        intake, reports, liveness = self._intake, self._reports, self._liveness
        watch("intake", spawn(run("inbox", intake.fetch_durable)))
        watch("reports", spawn(run("reports", lambda: reports.serve(intake))))
        watch("ticks", spawn(run("tick", liveness.tick_loop)))
        watch("link", spawn(run("link", liveness.look_loop)))
        watch("health", spawn(self._health.watch_conditions()))

    async def stop(self) -> None:
        """Stop serving: no more inbox, heartbeats, API or timers; the log keeps the rest."""
        self._health.stopping()
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
        await self.discovery.stop()
        if self.partitioned.sharing is not None:  # its runs dropped, the others take them
            with contextlib.suppress(BusError):  # else the leases expire
                await self.partitioned.sharing.release_all()
        await self.memory.stop()
        await self.blobs.stop()
        if self._intake is not None:
            await self._intake.close()
        await self._background.stop()

    # -- queries ---------------------------------------------------------------------

    def run(self, run_id: str) -> RunState:
        """A run this orchestrator is serving, or one of the newest it finished (`load`
        reads any other from the log)."""
        return self._pipeline.run(run_id)

    def runs(self) -> list[RunState]:
        """Every run this orchestrator serves, and the newest it finished."""
        return list(self._runs.values())

    async def load(self, run_id: str) -> RunState:
        """A run's newest state: as served, else as the log records it (`UnknownRun` if
        it has no log)."""
        state = self._runs.get(run_id)
        return state if state is not None else await journal.load_run(self._store, run_id)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunState:
        """The run's final state, once it is completed, failed or stopped; a run that
        ended before (even before this orchestrator started) is read from the log."""
        state = self._runs.get(run_id)
        if state is None:
            state = await journal.load_run(self._store, run_id)
            if not state.terminal and not self._shared:
                raise UnknownRun(run_id)  # not served here: nobody would end it
        if state.terminal:
            return state
        async with asyncio.timeout(timeout):
            if not self._shared:
                return await self._pipeline.finished.until(run_id)
            # ended here (at once), or by another orchestrator: the log says when
            ways = [
                asyncio.ensure_future(self._pipeline.finished.until(run_id)),
                asyncio.ensure_future(journal.until_ended(self._store, run_id, self._runs)),
            ]
            try:
                done, _ = await asyncio.wait(ways, return_when=asyncio.FIRST_COMPLETED)
                return done.pop().result()
            finally:
                for way in ways:
                    way.cancel()

    def health(self) -> list[HealthIssue]:
        """What is wrong now (storage, bus, loops, stuck runs), with since-when; and what
        was, until recently."""
        return self._health.issues(self._runs.values(), self._registry.live(self._clock()))

    def agents(self) -> list[Heartbeat]:
        return self._liveness.agents()

    def agent_status(self) -> list[tuple[Heartbeat, int, float]]:
        """Each known agent's last heartbeat, the load routing counts for it, and the
        heartbeat's age in seconds."""
        return self._liveness.agent_status()

    async def wait_for_agents(self, roles: Counter[str], timeout: float) -> None:
        """Until at least `roles[r]` live agents serve each role r (or TimeoutError)."""
        await self._liveness.wait_for_agents(roles, timeout)

    # -- commands --------------------------------------------------------------------

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
        return await self._requests.start_run(
            workflow, input, run_id=run_id, requested_by=requested_by, request_id=request_id
        )

    async def control(self, request: RunControlRequest, actor: str) -> RunState:
        """Record a person's decision (approve/reject/retry/cancel) as `actor`'s (who sent
        it, as the server knows); `ControlRefused` says why one cannot apply, and then
        nothing changed."""
        return await self._requests.control(request, actor)

    async def audit(self, event: SystemEvent, actor: str) -> bool:
        """Record `event` in the `system` stream as done by `actor`; True once it is
        durable (a failure is logged, and False)."""
        return await self._system.record(event, actor)

    def _works_in(self, run_id: str, agent_id: str) -> bool:
        """Whether the agent holds (or held last) an attempt of a task of this live run."""
        state = self._runs.get(run_id)
        return state is not None and any(t.agent_id == agent_id for t in state.tasks.values())
