"""Capacity an agent gives back is offered at once to the runs waiting for it.

A run's tasks go out when the run decides: on its own reports, and on the liveness tick.
When a run's decision leaves an agent it freed with room (its last tasks ended, or it
has nothing ready for that agent), other runs with tasks ready for that agent would wait
for the next tick (0.2 s) to be given it: fifty runs of 100 no-op tasks on eight agents
reached 0.67-0.71 of the tasks/s of one run of 5,000, and 0.76-0.79 with `Offers`
(`bench.bench_many_runs`). `Offers` keeps the runs with ready tasks, in the order they
began waiting, and once a decision frees room, lets each of them decide again (the
liveness tick's own command, leases left to the tick), in one pass per turn of the event
loop, however many decisions freed room in it. A run whose ready tasks are all for roles
with no room left is passed over (its tick decides for it as before): once the first few
runs have taken the freed room, deciding for the others would give out nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from orchestrator.core.commands import Tick
from orchestrator.core.state import RunState
from orchestrator.service.background import Spawn
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.pipeline import Pipeline
from orchestrator.service.registry import Registry

log = logging.getLogger("baton.orchestrator")

_OFFER = (Tick(check_leases=False), Cause("capacity", ORCHESTRATOR))


class Offers:
    """The runs waiting for agents, and the pass that offers them freed capacity."""

    def __init__(self, pipeline: Pipeline, registry: Registry, spawn: Spawn) -> None:
        self._pipeline = pipeline
        self._registry = registry
        self._spawn = spawn
        self._waiting: dict[str, set[str]] = {}
        """Runs left with ready tasks by their newest decision, longest waiting first, and
        the roles of those tasks."""
        self._due = False
        pipeline.on_decided = self.decided
        pipeline.on_forget.append(self.forget)

    def decided(self, run_id: str, state: RunState, load: Counter[str]) -> None:
        """A decision took `run_id` to `state`, changing agents' load by `load`."""
        roles = {role for role, tasks in state.ready.items() if tasks}
        if state.status == "running" and roles:
            self._waiting[run_id] = roles  # a run waiting already keeps its place
        else:
            self._waiting.pop(run_id, None)
        freed = any(n < 0 and self._registry.has_room(agent) for agent, n in load.items())
        if freed and not self._due and any(other != run_id for other in self._waiting):
            self._due = True
            asyncio.get_running_loop().call_soon(self._offer)

    def forget(self, run_id: str) -> None:
        self._waiting.pop(run_id, None)

    def _offer(self) -> None:
        self._due = False
        roomy = self._registry.roles_with_room()
        for run_id, roles in list(self._waiting.items()):
            if not roomy:
                return  # all given out: the rest wait for the next freed room
            if run_id not in self._pipeline.runs:  # handed to another orchestrator
                del self._waiting[run_id]
                continue
            if self._pipeline.reloading(run_id) or roomy.isdisjoint(roles):
                continue  # decided again once reloaded; no room for its roles
            try:
                decision = self._pipeline.decide(run_id, [_OFFER])
            except Exception:  # the run's own next decision will meet it too; others go on
                log.exception("offering freed capacity to run %s failed", run_id)
                continue
            if decision is not None:
                self._spawn(self._pipeline.commit(decision))
                roomy = self._registry.roles_with_room()
