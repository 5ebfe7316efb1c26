"""The pure core, scenario by scenario: routing, leases, retries, fencing, endings."""

from __future__ import annotations

import itertools
import random
from typing import Any, get_args

import pytest
from msgspec.structs import replace

from bus.protocol import Control, TaskFailure, TaskResult
from orchestrator.core import evolve_attempts, evolve_graph, evolve_run
from orchestrator.core.commands import (
    AgentView,
    Command,
    Context,
    DeliveryFailed,
    ReportFailure,
    ReportResult,
    Resume,
    StartRun,
    Tick,
)
from orchestrator.core.decide import decide
from orchestrator.core.effects import SendAssignment, SendControl, effects, pending_effects
from orchestrator.core.errors import UnknownEvent, VersionGap
from orchestrator.core.events import (
    ClockRebased,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    TaskAssigned,
    TaskAttemptFailed,
    TaskFailed,
)
from orchestrator.core.state import RULES, RunState, evolve, fold, replay
from orchestrator.core.workflow import StepSpec, WorkflowSpec

FAN = WorkflowSpec(
    name="fan",
    steps=[
        StepSpec(id="a", role="r", max_attempts=2, timeout_s=10),
        StepSpec(id="b", role="r", needs=["a"], fan_out=3, max_attempts=2, timeout_s=10),
        StepSpec(id="c", role="w", needs=["b"]),
    ],
)


class Run:
    """Drives one run through `decide`/`evolve`, keeping the log as the shell would."""

    def __init__(self, workflow: WorkflowSpec = FAN, agents: list[AgentView] | None = None):
        self.now = 100.0
        self.wall_offset = 1e9
        self.boot = "boot-1"
        self.agents = agents if agents is not None else [AgentView("x", "r", 2, 0)]
        self.state = RunState("run1")
        self.log: list[RunEvent] = []
        self._tokens = itertools.count()
        self._rng = random.Random(7)
        self.do(StartRun("run1", workflow, {"q": 1}, "a" * 32, "test"))

    def ctx(self) -> Context:
        loads = {a.agent_id: 0 for a in self.agents}
        for t in self.state.tasks.values():
            if t.status == "running" and t.agent_id in loads:
                loads[t.agent_id] += 1
        agents = [replace(a, load=loads[a.agent_id]) for a in self.agents]
        return Context(
            self.now,
            self.wall_offset + self.now,
            agents,
            lambda: f"L{next(self._tokens)}",
            self._rng.random,
            self.boot,
        )

    def do(self, command: Command) -> list[RunEvent]:
        events = decide(self.state, command, self.ctx())
        self.state = fold(self.state, events)
        self.log += events
        return events

    def succeed(self, task_id: str, output: dict[str, Any] | None = None) -> list[RunEvent]:
        t = self.state.tasks[task_id]
        result = TaskResult(
            "run1", task_id, t.attempt, t.lease_token, t.agent_id, output or {}, 0.1
        )
        return self.do(ReportResult(result, t.agent_id))

    def fail(self, task_id: str, retryable: bool = True) -> list[RunEvent]:
        t = self.state.tasks[task_id]
        failure = TaskFailure(
            "run1", task_id, t.attempt, t.lease_token, t.agent_id, "boom", retryable
        )
        return self.do(ReportFailure(failure, t.agent_id))


def kinds(events: list[RunEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_start_assigns_roots_to_a_live_agent_with_the_reason() -> None:
    run = Run()
    [assigned] = [e for e in run.log if isinstance(e, TaskAssigned)]
    assert (assigned.task_id, assigned.attempt, assigned.agent_id) == ("a", 1, "x")
    assert "least loaded" in assigned.reason
    assert assigned.lease_token == "L0"


def test_routing_prefers_least_load_and_respects_capacity_and_role() -> None:
    agents = [AgentView("x", "r", 1, 0), AgentView("y", "r", 2, 0), AgentView("w1", "w", 1, 0)]
    run = Run(agents=agents)
    events = run.succeed("a")
    owners = {e.task_id: e.agent_id for e in events if isinstance(e, TaskAssigned)}
    assert owners == {"b[0]": "x", "b[1]": "y", "b[2]": "y"}
    assert run.state.tasks["a"].agent_id == "x"


def test_tasks_wait_for_capacity_then_dispatch_when_a_slot_frees() -> None:
    run = Run(agents=[AgentView("x", "r", 1, 0), AgentView("w1", "w", 1, 0)])
    run.succeed("a")
    assert [t.status for t in run.state.tasks.values()][1:4] == ["running", "pending", "pending"]
    events = run.succeed("b[0]")
    assert kinds(events) == ["TaskSucceeded", "TaskAssigned"]


def test_join_starts_only_after_every_fanned_out_task_succeeded() -> None:
    run = Run(agents=[AgentView("x", "r", 5, 0), AgentView("w1", "w", 1, 0)])
    run.succeed("a")
    run.succeed("b[0]", {"n": 0})
    run.succeed("b[2]", {"n": 2})
    assert run.state.tasks["c"].status == "pending"
    events = run.succeed("b[1]", {"n": 1})
    assert kinds(events)[-1] == "TaskAssigned"
    assert run.state.tasks["c"].agent_id == "w1"
    [send] = [e for e in effects(run.state, events) if isinstance(e, SendAssignment)]
    assert send.assignment.input["deps"] == {"b[0]": {"n": 0}, "b[1]": {"n": 1}, "b[2]": {"n": 2}}
    assert send.assignment.input["input"] == {"q": 1}
    run.succeed("c", {"done": True})
    assert run.state.status == "completed"
    assert run.state.result == {"c": {"done": True}}


def test_no_live_agent_means_no_assignment_until_one_joins() -> None:
    run = Run(agents=[])
    assert run.state.tasks["a"].status == "pending"
    assert run.do(Tick()) == []
    run.agents = [AgentView("late", "r", 1, 0)]
    assert kinds(run.do(Tick())) == ["TaskAssigned"]


def test_lost_agent_ends_the_attempt_and_the_retry_avoids_it_after_backoff() -> None:
    run = Run(agents=[AgentView("x", "r", 1, 0)])
    run.agents = [AgentView("y", "r", 1, 0)]
    assert run.do(Tick(check_leases=False)) == []
    [lost] = run.do(Tick())
    assert isinstance(lost, TaskAttemptFailed)
    assert lost.reason == "agent_lost"
    assert lost.retry_at is not None
    assert 100.125 <= lost.retry_at <= 100.375
    assert run.state.tasks["a"].status == "pending"
    assert run.do(Tick()) == []  # still backing off
    run.now = lost.retry_at + 0.001
    [again] = run.do(Tick())
    assert isinstance(again, TaskAssigned)
    assert (again.attempt, again.agent_id) == (2, "y")
    assert "avoided x" in again.reason


def test_a_silent_attempt_times_out() -> None:
    run = Run()
    run.now += 10.5
    events = run.do(Tick())
    assert isinstance(events[0], TaskAttemptFailed)
    assert events[0].reason == "timeout"


def _cancels(state: RunState, events: list[RunEvent]) -> list[tuple[str, Control]]:
    return [(e.agent_id, e.control) for e in effects(state, events) if isinstance(e, SendControl)]


def test_a_timed_out_attempt_is_cancelled_at_its_agent_and_replay_owes_the_same() -> None:
    """The agent may still be working on an attempt the orchestrator ended: it is told to
    drop it (that attempt only), and the effect is derived from state, so a replayed log
    gives the same cancel."""
    run = Run(agents=[AgentView("x", "r", 1, 0), AgentView("y", "r", 1, 0)])
    run.now += 10.5
    events = run.do(Tick())
    [timed_out] = events
    assert isinstance(timed_out, TaskAttemptFailed)
    assert timed_out.reason == "timeout"
    assert _cancels(run.state, events) == [("x", Control("cancel", "run1", "a", 1))]
    replayed = replay("run1", enumerate(run.log, start=1))
    assert effects(replayed, events) == effects(run.state, events)

    run.now = (timed_out.retry_at or 0) + 0.001
    [again] = run.do(Tick())
    assert isinstance(again, TaskAssigned)
    assert (again.attempt, again.agent_id) == (2, "y")
    assert _cancels(run.state, [again]) == [], "a new attempt is not cancelled"
    run.now += 10.5
    again_timed_out = run.do(Tick())
    assert _cancels(run.state, again_timed_out) == [("y", Control("cancel", "run1", "a", 2))]


def test_a_lost_agent_and_an_undelivered_assignment_are_cancelled_too() -> None:
    run = Run(agents=[AgentView("x", "r", 2, 0), AgentView("w1", "w", 1, 0)])
    run.succeed("a")
    undelivered = run.do(DeliveryFailed("b[0]", 1, "no ack in time"))
    assert _cancels(run.state, undelivered) == [("x", Control("cancel", "run1", "b[0]", 1))]
    run.agents = [AgentView("w1", "w", 1, 0)]  # x stops sending heartbeats
    lost = run.do(Tick())
    ended = [(e.reason, e.task_id) for e in lost if isinstance(e, TaskAttemptFailed)]
    assert ended == [("agent_lost", "b[1]"), ("agent_lost", "b[2]")]  # b[2] took b[0]'s slot
    assert _cancels(run.state, lost) == [
        ("x", Control("cancel", "run1", "b[1]", 1)),
        ("x", Control("cancel", "run1", "b[2]", 1)),
    ]


def test_an_attempt_its_agent_failed_is_not_cancelled() -> None:
    run = Run()
    events = run.fail("a")
    assert kinds(events) == ["TaskAttemptFailed"]
    assert _cancels(run.state, events) == []


def test_exhausted_retries_fail_the_task_cancel_the_rest_and_end_the_run() -> None:
    run = Run(agents=[AgentView("x", "r", 3, 0)])
    run.succeed("a")
    run.fail("b[0]")
    run.now += 1
    run.do(Tick())
    assert run.state.tasks["b[0]"].attempt == 2
    events = run.fail("b[0]")
    assert kinds(events) == [
        "TaskAttemptFailed", "TaskFailed", "TaskCancelled", "TaskCancelled", "TaskCancelled",
        "RunFailed",
    ]  # fmt: skip
    assert run.state.status == "failed"
    assert "b[0]" in run.state.reason
    statuses = {t: s.status for t, s in run.state.tasks.items()}
    assert statuses == {
        "a": "succeeded", "b[0]": "failed", "b[1]": "cancelled", "b[2]": "cancelled",
        "c": "cancelled",
    }  # fmt: skip
    controls = [e for e in effects(run.state, events) if isinstance(e, SendControl)]
    assert {(c.agent_id, c.control.task_id) for c in controls} == {("x", "b[1]"), ("x", "b[2]")}
    assert run.do(Tick()) == []


def test_a_non_retryable_failure_ends_the_task_at_once() -> None:
    run = Run()
    events = run.fail("a", retryable=False)
    assert isinstance(events[1], TaskFailed)
    assert isinstance(events[-1], RunFailed)


def test_a_failure_that_needs_a_person_escalates_at_once_whatever_the_step_says() -> None:
    """A bridged A2A agent asking for input: attempts were left and the step's policy is
    `fail`, yet the task waits for a person, and nothing else runs or fails."""
    run = Run()
    t = run.state.tasks["a"]
    asks = TaskFailure("run1", "a", t.attempt, t.lease_token, t.agent_id, "input-required: "
                       "which year?", True, escalate=True)  # fmt: skip
    events = run.do(ReportFailure(asks, t.agent_id))
    assert kinds(events) == ["TaskAttemptFailed", "TaskEscalated"]
    assert run.state.tasks["a"].status == "escalated"
    assert run.state.tasks["a"].error == "input-required: which year?"
    assert run.state.status == "running"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"attempt": 0}, "stale attempt 0"),
        ({"lease_token": "forged"}, "lease token does not match"),
        ({"task_id": "zzz"}, "no task 'zzz'"),
    ],
)
def test_reports_that_do_not_own_the_attempt_are_audited_and_change_nothing(
    change: dict[str, Any], reason: str
) -> None:
    run = Run()
    before = run.state
    t = before.tasks["a"]
    good = TaskResult("run1", "a", t.attempt, t.lease_token, t.agent_id, {}, 0.1)
    [rejected] = run.do(ReportResult(replace(good, **change), t.agent_id))
    assert isinstance(rejected, ResultRejected)
    assert reason in rejected.reason
    assert run.state == replace(before, version=before.version + 1, rejected=1)


def test_a_sender_claiming_to_be_another_agent_is_refused() -> None:
    run = Run()
    t = run.state.tasks["a"]
    forged = TaskResult("run1", "a", t.attempt, t.lease_token, t.agent_id, {}, 0.1)
    [rejected] = run.do(ReportResult(forged, "mallory"))
    assert isinstance(rejected, ResultRejected)
    assert "sent by mallory" in rejected.reason


def test_a_redelivered_result_is_a_no_op() -> None:
    run = Run()
    t = run.state.tasks["a"]
    result = TaskResult("run1", "a", t.attempt, t.lease_token, t.agent_id, {}, 0.1)
    assert run.do(ReportResult(result, "x"))
    assert run.do(ReportResult(result, "x")) == []


def test_delivery_failure_only_ends_the_current_attempt() -> None:
    run = Run()
    assert run.do(DeliveryFailed("a", 7, "no responders")) == []
    [failed] = run.do(DeliveryFailed("a", 1, "no responders"))
    assert isinstance(failed, TaskAttemptFailed)
    assert failed.reason == "undeliverable"


def test_pending_effects_resend_exactly_the_running_attempts() -> None:
    run = Run(agents=[AgentView("x", "r", 3, 0)])
    run.succeed("a")
    sends = pending_effects(run.state)
    resent = {(s.assignment.task_id, s.assignment.attempt) for s in sends}
    assert resent == {("b[0]", 1), ("b[1]", 1), ("b[2]", 1)}


def test_replay_rebuilds_the_live_state_and_checks_versions() -> None:
    run = Run(agents=[AgentView("x", "r", 3, 0), AgentView("w", "w", 1, 0)])
    for task in ("a", "b[0]", "b[1]", "b[2]", "c"):
        run.succeed(task)
    assert isinstance(run.log[-1], RunCompleted)
    assert replay("run1", enumerate(run.log, start=1)) == run.state
    with pytest.raises(VersionGap):
        replay("run1", [(1, run.log[0]), (3, run.log[1])])


def test_evolve_refuses_what_it_does_not_know() -> None:
    with pytest.raises(UnknownEvent):
        evolve(RunState("r"), object())  # type: ignore[arg-type]


def test_evolve_has_one_rule_for_each_run_event() -> None:
    tables = [evolve_run.RULES, evolve_attempts.RULES, evolve_graph.RULES]
    assert sum(len(t) for t in tables) == len(RULES) == len(get_args(RunEvent))
    assert set(RULES) == set(get_args(RunEvent))


def test_a_run_taken_over_on_another_boot_keeps_its_times_in_wall_clock_terms() -> None:
    """After a reboot the monotonic clock starts again near 0: the times the run recorded
    (a retry's backoff, the run's start) are moved onto the new clock by the wall clock,
    so the backoff, which ran out during the downtime, does not wait for the old uptime."""
    run = Run(WorkflowSpec(name="one", steps=[StepSpec(id="a", role="r", max_attempts=3)]))
    assert run.state.boot == "boot-1"
    run.fail("a")
    waiting = run.state.tasks["a"]
    assert waiting.status == "pending"
    assert waiting.not_before > run.now
    assert run.do(Resume()) == [], "the same boot: nothing to move"

    down_s, old_now, started = 60.0, run.now, run.state.started_mono
    run.wall_offset += old_now + down_s - 5.0  # the wall clock went on 60 s ...
    run.now, run.boot = 5.0, "boot-2"  # ... while the new boot's clock is at 5 s
    events = run.do(Resume())
    assert kinds(events) == ["ClockRebased", "TaskAssigned"], "the backoff passed meanwhile"
    rebased = events[0]
    assert isinstance(rebased, ClockRebased)
    assert rebased.boot == "boot-2"
    assert rebased.clock_shift == pytest.approx(5.0 - (old_now + down_s))
    run_now = run.now - rebased.clock_shift
    assert run_now == pytest.approx(old_now + down_s), "the run's clock went on with the wall"
    assert run.state.started_mono == started, "recorded times stay as they were"
    assert run.state.tasks["a"].assigned_mono == pytest.approx(run_now)
    assert replay("run1", enumerate(run.log, start=1)) == run.state
    assert run.do(Resume()) == [], "rebased once: the run is on this boot now"

    run.now += run.state.graph["a"].timeout_s - 1.0  # its lease counts on the run's clock
    assert run.do(Tick()) == []
    run.now += 2.0
    assert kinds(run.do(Tick()))[0] == "TaskAttemptFailed", "the lease lapsed"
