"""Recovery: the shell keeps nothing that is not in the event store, so on start it
rebuilds every unfinished run from its log, resumes it (moving its times onto this
boot's clock when it was recorded on another), and performs the effects still owed.

Only unfinished runs are read: the store names them (`open_streams`) without reading the
finished ones, so startup does not grow with the finished history; a finished run is
read from the log when someone asks for it.

The one orchestrator of a SQLite log looks again every ten seconds for open runs it does
not serve (a fork or an import made beside it), and serves them the same way.

Orchestrators that share the runs take over the open runs of each partition they claim
the same way (`take_over`): each run is resumed with `RunTakenOver` unless the core's
verdict says this one is stale, appended with the expected version."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple

from eventstore import EventStore
from orchestrator.core import partitions
from orchestrator.core.commands import Resume
from orchestrator.core.effects import pending_effects
from orchestrator.core.state import RunState
from orchestrator.service import journal
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.pipeline import Act, Pipeline
from orchestrator.service.registry import Registry

log = logging.getLogger("baton.orchestrator")


async def recover(
    store: EventStore,
    pipeline: Pipeline,
    registry: Registry,
    act: Act,
    resume: Callable[[str, RunState], Resume | None] = lambda run_id, state: Resume(),
    wanted: Callable[[str], bool] = lambda run_id: True,
) -> list[str]:
    """Serve again every run the log holds that has not ended, that is `wanted` (asked
    before it is read) and that `resume` gives a command for (None skips the run); the
    ids of the runs served."""
    served: list[str] = []
    for stream in await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS):
        run_id = journal.run_id_of(stream)
        if run_id in pipeline.runs or not wanted(run_id):
            continue  # served already (started or taken over meanwhile), or not ours
        state = await journal.load_run(store, run_id)
        command = resume(run_id, state)
        if command is None or run_id in pipeline.runs:
            continue
        pipeline.runs[run_id] = state
        registry.set_inflight(run_id, journal.running_agents(state))
        # on another boot its times are moved onto this clock first (ClockRebased)
        lease = f":{command.lease}" if command.lease else ""
        cause = Cause(f"resume:{run_id}{lease}", ORCHESTRATOR)
        await pipeline.execute(run_id, [(command, cause)])
        if run_id in pipeline.runs:
            act(pipeline.runs[run_id], pending_effects(pipeline.runs[run_id]))
            served.append(run_id)
    return served


LOOK_AGAIN_S = 10.0
"""How often the one orchestrator of a SQLite log looks for open runs it does not serve."""


async def look_again(store: EventStore, pipeline: Pipeline, registry: Registry, act: Act) -> None:
    """For ever (run it supervised), every `LOOK_AGAIN_S`: serve the open runs that a
    command appended to the log beside this orchestrator, the one a SQLite log takes
    (`baton fork`, `baton import`; `baton resume` is refused while it serves), as a
    start would have; one log line names them."""
    while True:
        await asyncio.sleep(LOOK_AGAIN_S)
        if served := await recover(store, pipeline, registry, act):
            log.warning("carrying on run(s) %s, found open in the log", ", ".join(served))


def resend_held(pipeline: Pipeline, act: Act, agent_id: str) -> None:
    """An agent joined: send it again what the log says it holds, in case it never got it
    (this orchestrator restarted, or it did, between the append and the send; see
    `outbound.Outbound`); it takes an attempt once, so one it holds already costs
    nothing."""
    for state in pipeline.runs.values():
        if held := pending_effects(state, agent_id):
            act(state, held)


class TakeOver(NamedTuple):
    """For `recover`: which runs to read (`wanted`) and how to resume each (`resume`)."""

    wanted: Callable[[str], bool]
    resume: Callable[[str, RunState], Resume | None]


def take_over(
    me: str, leases: dict[int, int], count: int, holds: Callable[[int, int], bool]
) -> TakeOver:
    """The runs of the partitions `me` claimed (partition → lease revision, of `count`
    partitions) and `holds` still, each resumed as the core's verdict says. The runs of
    other partitions are not read at all."""

    def wanted(run_id: str) -> bool:
        partition = partitions.partition_of(run_id, count)
        lease = leases.get(partition)
        return lease is not None and holds(partition, lease)

    def resume(run_id: str, state: RunState) -> Resume | None:
        if not wanted(run_id):  # lost since it was read
            return None
        partition = partitions.partition_of(run_id, count)
        match partitions.verdict(state.owner, state.owner_lease, me, leases[partition]):
            case "serve":
                return Resume()
            case "take over":
                return Resume(me, partition, leases[partition])
        return None

    return TakeOver(wanted, resume)
