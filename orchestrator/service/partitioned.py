"""The orchestrator's side of sharing the runs: what it does when it gains a partition,
loses one, or finds a run's log moved on under it.

    gained  → take over the partition's open runs from the log (`recovery.take_over`),
              one `run.taken_over` each, appended with the expected version; one log line
    lost    → drop the partition's runs from memory at once: decide nothing more for them
    reload  → after an append of its own failed, the core's verdict on the reloaded run:
              serve on, take it over again (a newer lease), or step down (a stale one)

`Sharing` keeps the leases; this wires what they mean into the pipeline, the reports,
the requests; `Orchestrator.start` builds both when several orchestrators share a bus.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from bus.connection import Bus
from eventstore import EventStore, EventStoreError
from orchestrator.core import partitions
from orchestrator.core.commands import Resume
from orchestrator.core.effects import pending_effects
from orchestrator.core.errors import UnknownRun
from orchestrator.core.state import RunState
from orchestrator.service import journal
from orchestrator.service.background import Spawn
from orchestrator.service.blobs import BlobService
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.memory import MemoryService
from orchestrator.service.pipeline import Act, Pipeline
from orchestrator.service.recovery import TakeOver, recover, take_over
from orchestrator.service.registry import Registry
from orchestrator.service.reports import Reports
from orchestrator.service.run_requests import RunRequests
from orchestrator.service.sharing import Sharing
from orchestrator.service.tool_prompts import ToolPrompts

log = logging.getLogger("baton.orchestrator.sharing")


class Partitioned:
    """Binds an orchestrator's pipeline, reports and requests to its share of the runs."""

    def __init__(
        self,
        store: EventStore,
        pipeline: Pipeline,
        registry: Registry,
        act: Act,
        spawn: Spawn,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._registry = registry
        self._act = act
        self._spawn = spawn
        self._clock = clock
        self.sharing: Sharing | None = None
        self.takeovers: list[float] = []
        """Seconds each takeover of partitions took, from claim to serving (newest last)."""

    async def start(
        self,
        bus: Bus,
        me: str,
        replicas: int,
        reports: Reports,
        requests: RunRequests,
        prompts: ToolPrompts,
        memory: MemoryService,
        blobs: BlobService,
    ) -> Sharing:
        """Open the lease bucket, bind the hooks, and do the first round (returns with
        this orchestrator's first partitions served); run `sharing.loop` and
        `sharing.bucket.watch` supervised."""
        bucket = await bus.lease_bucket(replicas)
        sharing = self.sharing = Sharing(
            bucket,
            me,
            clock=self._clock,
            gained=self._gained,
            lost=self._lost,
            rescan=self._rescan,
            spawn=self._spawn,
        )
        reports.elsewhere = prompts.elsewhere = memory.elsewhere = sharing.elsewhere
        blobs.elsewhere = sharing.elsewhere
        reports.unserved = self._unserved
        requests.sharing = sharing
        self._pipeline.after_reload = self._after_reload
        return sharing

    async def _gained(self, leases: dict[int, int]) -> None:
        assert self.sharing is not None
        began = time.perf_counter()
        sharing = self.sharing
        taking = take_over(sharing.me, leases, sharing.partitions, sharing.holds)
        runs = await self._recover(taking)
        took = time.perf_counter() - began
        self.takeovers.append(took)
        log.warning(
            "orchestrator %s took over partition%s %s: %d open run%s carried on from the "
            "log in %.2fs",
            sharing.me, "s" if len(leases) > 1 else "", ",".join(map(str, sorted(leases))),
            len(runs), "" if len(runs) == 1 else "s", took,
        )  # fmt: skip

    async def _rescan(self, leases: dict[int, int]) -> None:
        """Open runs of held partitions this one does not serve (started by a stale holder
        after the claim): taken over like the rest."""
        assert self.sharing is not None
        sharing = self.sharing
        runs = await self._recover(take_over(sharing.me, leases, sharing.partitions, sharing.holds))
        if runs:
            log.warning("orchestrator %s took over runs %s", self.sharing.me, ", ".join(runs))

    async def _recover(self, taking: TakeOver) -> list[str]:
        return await recover(
            self._store, self._pipeline, self._registry, self._act, taking.resume, taking.wanted
        )

    async def _unserved(self, run_id: str) -> bool:
        """Whether a run of a partition this one serves, not in memory, is open in the log
        (then it is looked for at the next round: `Sharing.look_soon`)."""
        assert self.sharing is not None
        stream = journal.run_stream(run_id)
        try:
            if not await self._store.stream_version(stream) or await journal.has_ended(
                self._store, stream
            ):
                return False
        except EventStoreError:
            return True  # not known either way: kept (redelivered), not refused
        self.sharing.look_soon()
        return run_id not in self._pipeline.runs

    async def others(self) -> list[RunState]:
        """The unfinished runs this one does not serve, as the log has them now."""
        found = []
        for stream in await self._store.open_streams(journal.RUN_PREFIX, journal.ENDINGS):
            run_id = journal.run_id_of(stream)
            if run_id not in self._pipeline.runs:
                with contextlib.suppress(UnknownRun):  # gone meanwhile (not in v1)
                    found.append(await journal.load_run(self._store, run_id))
        return found

    def _lost(self, lost: set[int]) -> None:
        assert self.sharing is not None
        for run_id in list(self._pipeline.runs):
            if self.sharing.partition(run_id) in lost:
                self._pipeline.drop(run_id)

    async def _after_reload(self, state: RunState) -> None:
        """An append of this one's failed, the run reloaded: the core's verdict."""
        assert self.sharing is not None
        if state.status != "running":
            return
        me, run_id = self.sharing.me, state.run_id
        lease = self.sharing.lease_of(run_id)
        match partitions.verdict(state.owner, state.owner_lease, me, lease):
            case "serve":
                return
            case "take over":
                assert lease is not None
                partition = self.sharing.partition(run_id)
                self._spawn(self._take_again(run_id, Resume(me, partition, lease)))
            case "step down":
                log.warning(
                    "orchestrator %s stepped down from run %s: %s decides for it now",
                    me, run_id, state.owner or "its starter",
                )  # fmt: skip
                self._pipeline.drop(run_id)
                if lease is None:  # its own lease lapsed (no renewal): looked for once back
                    self.sharing.look_soon()

    async def _take_again(self, run_id: str, command: Resume) -> None:
        cause = Cause(f"resume:{run_id}:{command.lease}", ORCHESTRATOR)
        if await self._pipeline.execute(run_id, [(command, cause)]):
            state = self._pipeline.runs.get(run_id)
            if state is not None:
                self._act(state, pending_effects(state))
