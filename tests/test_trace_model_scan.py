"""`trace_model` looks only at the task an attempt-level event names (`OWN_TASK_ONLY`)
instead of every open attempt, which made a page of a 1,000-task run cost O(events x
open attempts): on every golden log, the timeline must be the one the full scan draws."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from eventstore import MemoryEventStore, StoredEvent
from orchestrator.cli import history, trace_model
from orchestrator.service import journal

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.jsonl"))


@pytest.mark.parametrize("log", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_the_narrow_scan_draws_what_the_full_scan_draws(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stored() -> tuple[str, list[StoredEvent]]:
        store = MemoryEventStore()
        run_id = await history.import_lines(store, log.read_text().splitlines())
        return run_id, list(await store.read_stream(journal.run_stream(run_id)))

    run_id, events = asyncio.run(stored())
    narrow = msgspec.to_builtins(trace_model.build(run_id, events))
    monkeypatch.setattr(trace_model, "OWN_TASK_ONLY", ())
    full = msgspec.to_builtins(trace_model.build(run_id, events))
    assert narrow == full
    assert narrow["tasks"], "the log has tasks to draw"
