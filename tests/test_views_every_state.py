"""Every view draws every state the core can produce: its status vocabularies come from
the core's (`TaskStatus`, `RunStatus`), so a status added there can never make a view
fail. Checked without processes, at every point of every golden log (a log cut after any
of its events is a run in that state) and on states built to hold each status at once:
`baton status` (the table and its JSON), `trace` (text and HTML) and `replay`'s table."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from eventstore import MemoryEventStore, StoredEvent
from orchestrator.cli import history, live_render, render, trace_html, trace_view
from orchestrator.cli.trace_model import PASSED_ON, Timeline, build
from orchestrator.core.run_state import RunStatus, TaskStatus
from orchestrator.core.state import RunState, TaskState
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.live_api import progress

GOLDEN = Path(__file__).parent / "golden"
LOGS = sorted(GOLDEN.glob("*.jsonl"))


def _points() -> list[tuple[str, list[StoredEvent], RunState]]:
    """(log name, its first k events, the core's state after them) for every k of every
    golden log."""

    async def read() -> list[tuple[str, list[StoredEvent], RunState]]:
        out = []
        for log in LOGS:
            store = MemoryEventStore()
            run_id = await history.import_lines(store, log.read_text().splitlines())
            stored = await store.read_stream(journal.run_stream(run_id))
            for k, event in enumerate(stored, start=1):
                state = await journal.load_run(store, run_id, event.position, snapshots=False)
                out.append((log.stem, stored[:k], state))
        return out

    return asyncio.run(read())


POINTS = _points()


def test_the_golden_logs_hold_every_status_but_a_run_not_yet_started() -> None:
    """The points below cover the core's whole vocabulary: when it grows, a golden log of
    the new status is owed here (`tests/golden/record.py`)."""
    tasks = {t.status for _, _, s in POINTS for t in s.tasks.values()}
    runs = {s.status for _, _, s in POINTS}
    assert tasks == set(get_args(TaskStatus))
    assert runs == set(get_args(RunStatus)) - {"new"}, "a logged run has started"


def _every_status_at_once(run_status: str) -> RunState:
    steps = [StepSpec(id=s, role="r") for s in get_args(TaskStatus)]
    tasks = {s: TaskState(s, status=s, attempt=1) for s in get_args(TaskStatus)}
    ended = run_status in ("completed", "failed", "stopped")
    workflow = WorkflowSpec(name="all", steps=steps)
    return RunState(
        "r1", 3, run_status, workflow, tasks=tasks,  # type: ignore[arg-type]
        started_at=100.0, finished_at=104.0 if ended else 0.0,
    )  # fmt: skip


@pytest.mark.parametrize("run_status", get_args(RunStatus))
def test_status_counts_and_shows_every_task_status(run_status: str) -> None:
    state = _every_status_at_once(run_status)
    shown = progress(state, now=102.0)
    assert shown.by_status == dict.fromkeys(get_args(TaskStatus), 1)
    assert (shown.succeeded, shown.running, shown.pending, shown.tasks) == (1, 1, 1, 8)
    table = live_render.status_table([shown], "test").splitlines()
    head, row = table[0].split(), table[1].split()
    assert row[:3] == ["r1", "all", run_status]
    for status in get_args(TaskStatus):
        if status != "succeeded":
            assert live_render.SHORT.get(status, status[:4]) in head, status
    assert row[head.index("done")] == "1/8"
    msgspec.json.decode(msgspec.json.encode(shown))  # --json
    assert render.run_table(state).count("\n") > 8


def _timeline_agrees_with_the_core(timeline: Timeline, state: RunState) -> None:
    assert timeline.status == state.status
    assert [t.task_id for t in timeline.tasks] == list(state.tasks)
    for row in timeline.tasks:
        task = state.tasks[row.task_id]
        assert row.status == task.status, row.task_id
        still = [a for a in row.attempts if a.outcome == "running"]
        if task.status == "running":
            assert [a.attempt for a in still] == [task.attempt], row.task_id
        else:
            assert not still, f"{row.task_id} is {task.status}, yet an attempt is drawn running"
        for a in row.attempts:
            assert (a.end is None) == (a.outcome == "running")


@pytest.mark.parametrize("name", [p.stem for p in LOGS])
def test_trace_shows_at_every_point_what_the_core_folds(name: str) -> None:
    for log, stored, state in POINTS:
        if log != name:
            continue
        timeline = build(state.run_id, stored)
        _timeline_agrees_with_the_core(timeline, state)
        text = trace_view.render(timeline)
        assert text.startswith(f"run {state.run_id}  workflow {timeline.workflow}  {state.status}")
        for row in timeline.tasks:
            if not row.attempts:
                assert re.search(rf"^  {re.escape(row.task_id)}\s+-\s+{row.status}$", text, re.M)
        page = trace_html.render(timeline)
        data = json.loads(page.split('id="baton-data" type="application/json">')[1].split("<")[0])
        assert [t["status"] for t in data["tasks"]] == [t.status for t in timeline.tasks]


def test_a_handoff_ends_its_attempt_and_a_delegation_passes_work_on() -> None:
    *_, (_, stored, state) = [p for p in POINTS if p[0] == "subtasks-handoff"]
    timeline = build(state.run_id, stored)
    desk = next(t for t in timeline.tasks if t.task_id == "desk")
    first, second = desk.attempts
    assert (first.outcome, first.error) == ("handed_off", "to specialist")
    assert first.end is not None
    assert first.end <= second.start
    assert second.outcome == "succeeded"
    lead = next(t for t in timeline.tasks if t.task_id == "lead")
    assert [a.outcome for a in lead.attempts] == ["delegated"]
    text = trace_view.render(timeline)
    assert "→ handed off to specialist" in text
    assert set(PASSED_ON) == {"handed_off", "delegated"}


def test_marks_are_readable_sentences_never_python_dicts_cut_mid_value() -> None:
    for _, stored, state in POINTS:
        if len(stored) < 3 or state.version != len(stored):
            continue
        for mark in build(state.run_id, stored).marks:
            assert "{'" not in mark.text, mark
            assert "':" not in mark.text, mark
            assert len(mark.text) <= 200, mark
    *_, (_, stored, state) = [p for p in POINTS if p[0] == "subtasks-handoff"]
    marks = {m.kind: m for m in build(state.run_id, stored).marks}
    assert marks["task.handed_off"].text == "triage -> specialist"
    assert marks["task.handed_off"].task_id == "desk"


def test_a_stopped_run_is_shown_stopped_with_its_limit() -> None:
    *_, (_, stored, state) = [p for p in POINTS if p[0] == "budget-stopped"]
    assert state.status == "stopped"
    timeline = build(state.run_id, stored)
    assert timeline.status == "stopped"
    assert timeline.finished == state.finished_at
    text = trace_view.render(timeline)
    assert "  stopped in " in text.splitlines()[0]
    assert f"stopped: {state.reason}" in text


def test_replay_names_a_stopped_run_stopped_and_a_fork_born_ended_says_so() -> None:
    *_, (_, _, state) = [p for p in POINTS if p[0] == "budget-stopped"]
    table = render.run_table(state)
    assert f"\nstopped: {state.reason}" in table
    assert "failed:" not in table
    assert f", finished after {state.finished_at - state.started_at:.3f}s" in table
    # forked after its origin's end: the fork starts later than the end it copied
    fork = msgspec.structs.replace(
        state, started_at=state.finished_at + 5.0, forked_from=f"{state.run_id}@17"
    )
    header = render.run_table(fork).splitlines()[1]
    assert header.endswith(f"UTC, ended in {state.run_id}@17 before it was forked"), header


def test_the_html_page_has_a_legend_and_styles_every_status() -> None:
    *_, (_, stored, state) = [p for p in POINTS if p[0] == "branch-skipped"]
    page = trace_html.render(build(state.run_id, stored))
    assert 'id="legend"' in page
    for status in get_args(TaskStatus):
        assert f"svg .node.{status} rect{{" in page, status
        assert f"task {status}<" in page, status
    for status in get_args(RunStatus):
        assert f".status-{status}{{" in page, status
    for kind in ("succeeded", "passed", "failed", "cancelled", "running"):
        assert f'class="swatch {kind}"' in page, kind
