"""Golden logs recorded by earlier code must replay, with today's code, to the state and
pending effects recorded beside them; a shape change needs an upcaster, never a rewrite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventstore import MemoryEventStore, NewEvent, StoredEvent
from orchestrator.cli import history
from orchestrator.core import upcasting
from orchestrator.core.effects import pending_effects
from orchestrator.core.errors import UnknownEvent
from orchestrator.core.state import RunState
from orchestrator.service import journal

GOLDEN = Path(__file__).parent / "golden"
LOGS = sorted(GOLDEN.glob("*.jsonl"))


def summary(state: RunState) -> dict[str, Any]:
    """What a golden file pins: the whole state and the effects a restart would owe."""
    owed = [msgspec.to_builtins(e) for e in pending_effects(state)]
    pinned: dict[str, Any] = json.loads(
        json.dumps({"state": msgspec.to_builtins(state), "pending": owed})
    )
    return pinned


async def _imported(log: Path) -> tuple[MemoryEventStore, str]:
    store = MemoryEventStore()
    run_id = await history.import_lines(store, log.read_text().splitlines())
    return store, run_id


def test_there_are_golden_logs_of_each_ending() -> None:
    assert {p.stem for p in LOGS} >= {"research-brief-completed", "worker-failed"}


PATTERNS = {
    "branch-skipped": {"branch.taken", "task.skipped"},
    "loop-approved": {"tasks.added", "branch.taken"},
    "chat-max-turns": {"tasks.added", "tokens.reserved"},
    "budget-stopped": {"usage.charged", "limit.reached", "run.stopped"},
    "subtasks-handoff": {"task.delegated", "tasks.added", "task.handed_off"},
    "replan-adopted": {"replan.requested", "plan.adopted", "task.skipped"},
    "contract-net": {"proposals.called", "bid.received"},
    "escalated-retried-approved": {"task.escalated", "human.decided"},
    "cancelled": {"cancel.requested", "run.stopped"},
}


def test_there_is_a_golden_log_of_each_pattern() -> None:
    for name, types in PATTERNS.items():
        lines = (GOLDEN / f"{name}.jsonl").read_text().splitlines()[1:]  # after the header
        assert types <= {json.loads(line)["type"] for line in lines}, name


def test_people_are_the_actors_of_their_decisions_in_the_golden_logs() -> None:
    for name in ("escalated-retried-approved", "cancelled"):
        lines = (GOLDEN / f"{name}.jsonl").read_text().splitlines()[1:]
        events = [json.loads(line) for line in lines]
        by_people = [e for e in events if e["type"] in ("human.decided", "cancel.requested")]
        assert by_people
        assert {e["actor"] for e in by_people} == {"human:golden"}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_every_point_of_a_pattern_log_replays_to_the_same_state_and_effects(name: str) -> None:
    """Time travel through a pattern's log: at each version, two replays agree, and what a
    restart would owe is exactly the attempts running at that point."""

    async def scenario() -> list[tuple[RunState, RunState]]:
        store, run_id = await _imported(GOLDEN / f"{name}.jsonl")
        stored = await store.read_stream(journal.run_stream(run_id))
        return [
            (
                await journal.load_run(store, run_id, s.position, snapshots=False),
                await journal.load_run(store, run_id, s.position, snapshots=False),
            )
            for s in stored
        ]

    for once, twice in asyncio.run(scenario()):
        assert once == twice
        assert pending_effects(once) == pending_effects(twice)
        owed = {(e.assignment.task_id, e.assignment.attempt) for e in pending_effects(once)}
        running = {(t.task_id, t.attempt) for t in once.tasks.values() if t.status == "running"}
        assert owed == (set() if once.terminal else running)


@pytest.mark.parametrize("log", LOGS, ids=[p.stem for p in LOGS])
def test_golden_log_replays_to_its_recorded_state(log: Path) -> None:
    async def scenario() -> RunState:
        store, run_id = await _imported(log)
        return await journal.load_run(store, run_id)

    state = asyncio.run(scenario())
    assert summary(state) == recorded(log)


def recorded(log: Path) -> dict[str, Any]:
    """The summary pinned beside `log`, read by today's code: a field added since it was
    recorded takes its default (its old log has no event that could set it), and a field
    the file has must still exist with the same value."""
    pinned = json.loads(log.with_suffix(".state.json").read_text())
    today = summary(msgspec.convert(pinned["state"], RunState))
    missing = set(pinned["state"]) - set(today["state"])
    assert not missing, f"fields recorded in {log.name} no longer exist: {missing}"
    return {"state": today["state"], "pending": pinned["pending"]}


def _old_shape(stored: StoredEvent) -> NewEvent:
    """`task.assigned` as an imagined v1 that called the agent `agent` and had no `mono`."""
    fields = msgspec.msgpack.decode(stored.data)
    if stored.type == "task.assigned":
        fields["agent"] = fields.pop("agent_id")
        del fields["mono"]
    return NewEvent(
        event_id=stored.event_id, type=stored.type, data=msgspec.msgpack.encode(fields),
        schema=1, correlation_id=stored.correlation_id, causation_id=stored.causation_id,
        actor=stored.actor, trace_id=stored.trace_id, span_id=stored.span_id,
    )  # fmt: skip


def _to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    fields = dict(fields)
    fields["agent_id"] = fields.pop("agent")
    fields["mono"] = 0.0
    return fields


def test_old_shapes_are_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    log = GOLDEN / "research-brief-completed.jsonl"

    async def scenario() -> tuple[RunState, RunState]:
        store, run_id = await _imported(log)
        today = await journal.load_run(store, run_id)
        stored = await store.read_stream(journal.run_stream(run_id))
        old = MemoryEventStore()
        await old.append(journal.run_stream(run_id), [_old_shape(s) for s in stored], 0)
        monkeypatch.setattr(upcasting, "CURRENT", {"task.assigned": 2})
        with pytest.raises(UnknownEvent, match=r"no upcaster for task\.assigned from v1"):
            await journal.load_run(old, run_id)
        monkeypatch.setattr(upcasting, "UPCASTERS", {("task.assigned", 1): _to_v2})
        upcast = await journal.load_run(old, run_id)
        return today, upcast

    today, upcast = asyncio.run(scenario())
    assert upcast.tasks.keys() == today.tasks.keys()
    for task_id, task in today.tasks.items():
        assert upcast.tasks[task_id].agent_id == task.agent_id
        assert upcast.tasks[task_id].output == task.output
    assert upcast.result == today.result


def test_an_event_newer_than_the_code_is_refused() -> None:
    with pytest.raises(UnknownEvent, match="newer than this code"):
        upcasting.upcast("task.assigned", 2, msgspec.msgpack.encode({}))
