"""Recovery: the shell keeps nothing that is not in the event store, so on start it
rebuilds every unfinished run from its log, resumes it (moving its times onto this
boot's clock when it was recorded on another), and performs the effects still owed.

Only unfinished runs are read: the store names them (`open_streams`) without reading the
finished ones, so startup does not grow with the finished history; a finished run is
read from the log when someone asks for it."""

from __future__ import annotations

from eventstore import EventStore
from orchestrator.core.commands import Resume
from orchestrator.core.effects import pending_effects
from orchestrator.service import journal
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.pipeline import Act, Pipeline
from orchestrator.service.registry import Registry


async def recover(store: EventStore, pipeline: Pipeline, registry: Registry, act: Act) -> None:
    """Serve again every run the log holds that has not ended."""
    for stream in await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS):
        run_id = journal.run_id_of(stream)
        state = await journal.load_run(store, run_id)
        pipeline.runs[run_id] = state
        registry.set_inflight(run_id, journal.running_agents(state))
        # on another boot its times are moved onto this clock first (ClockRebased)
        await pipeline.execute(run_id, [(Resume(), Cause(f"resume:{run_id}", ORCHESTRATOR))])
        act(pipeline.runs[run_id], pending_effects(pipeline.runs[run_id]))
