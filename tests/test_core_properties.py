"""Property-based tests of the pure orchestrator core (DESIGN §2 and §7).

A hypothesis state machine plays the shell: it feeds `decide` commands in the context the
real shell would build (live agents with the load this run has out to them, a monotonic
clock, a token source, seeded jitter), folds the returned events with `evolve`, keeps the
log, crashes and rebuilds from the encoded log, and after every step checks the §7
invariants that concern the core. A few plain `@given` properties pin down the happy
path, retry budgets and backoff, and the graph compiler. Two regression tests at the end
pin down core bugs these properties found (a refused report that dispatched work, and a
late result of a timed-out attempt that was dropped without an audit event).

Everything here is pure: no I/O, no sleeps, no mocks of the core.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Literal, NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from msgspec.structs import replace

from bus.protocol import TaskFailure, TaskResult
from orchestrator.core.commands import (
    AgentView,
    Command,
    Context,
    DeliveryFailed,
    ReportFailure,
    ReportResult,
    StartRun,
    Tick,
)
from orchestrator.core.decide import BACKOFF_BASE_S, BACKOFF_CAP_S, decide, decide_and_fold
from orchestrator.core.effects import (
    PublishProgress,
    SendAssignment,
    SendControl,
    effects,
    pending_effects,
)
from orchestrator.core.errors import VersionGap
from orchestrator.core.events import (
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
    encode,
    run_event_decoder,
)
from orchestrator.core.state import TERMINAL_TASK, RunState, TaskState, evolve, fold, replay
from orchestrator.core.workflow import StepSpec, WorkflowSpec, compile_graph, validate

RUN_ID = "prop-run"
ROLES = ("planner", "worker", "critic")
POOL = tuple(f"{role}-{i}" for role in ROLES for i in range(3))
"""Agent identities that come and go; each keeps one role and one capacity for a test."""
UNKNOWN_TASKS = ("ghost", "s9", "s0[7]")
"""Task ids no generated workflow has (at most 6 steps, fan-out at most 4)."""
EPS = 1e-9

ReportKind = Literal["result", "failure"]


# -- strategies ----------------------------------------------------------------------------


@st.composite
def workflows(draw: st.DrawFn) -> WorkflowSpec:
    """A valid DAG of 1-6 steps; `needs` only on earlier steps (repeats allowed), then the
    steps are listed in a random order so the compiler has to sort them."""
    steps: list[StepSpec] = []
    for i in range(draw(st.integers(1, 6))):
        earlier = [s.id for s in steps]
        needs = draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []
        steps.append(
            StepSpec(
                id=f"s{i}",
                role=draw(st.sampled_from(ROLES)),
                needs=needs,
                params={"step": i},
                fan_out=draw(st.integers(1, 4)),
                timeout_s=draw(st.sampled_from((0.5, 1.0, 2.5, 4.0))),
                max_attempts=draw(st.integers(1, 3)),
            )
        )
    listed = draw(st.permutations(steps))
    return validate(WorkflowSpec(name="prop", steps=list(listed), input={"topic": "props"}))


def role_of(agent_id: str) -> str:
    return agent_id.rsplit("-", 1)[0]


# -- the harness: what the shell does, plus every check ------------------------------------


class Lease(NamedTuple):
    task_id: str
    attempt: int
    lease_token: str
    agent_id: str


class Tokens:
    """A deterministic lease-token source that never repeats a token within a test."""

    def __init__(self, issued: int) -> None:
        self.issued = issued

    def __call__(self) -> str:
        self.issued += 1
        return f"lease-{self.issued:05d}"


def running(state: RunState) -> list[TaskState]:
    return [t for t in state.tasks.values() if t.status == "running"]


def running_by_agent(state: RunState) -> Counter[str]:
    """The load the shell passes in: this run's running attempts per agent."""
    return Counter(t.agent_id for t in running(state))


def deps_succeeded(state: RunState, task_id: str) -> bool:
    return all(state.tasks[d].status == "succeeded" for d in state.graph[task_id].deps)


def neutral(state: RunState) -> RunState:
    """The state with the two fields a refused report may change blanked out."""
    return replace(state, version=0, rejected=0)


def assignment_key(e: TaskAssigned) -> Lease:
    return Lease(e.task_id, e.attempt, e.lease_token, e.agent_id)


class Harness:
    """One run driven through the pure core the way the shell drives it."""

    def __init__(self, workflow: WorkflowSpec, capacity: dict[str, int], seed: int) -> None:
        self.workflow = workflow
        self.capacity = dict(capacity)
        self.live: set[str] = set()
        self.state = RunState(RUN_ID)
        self.log: list[RunEvent] = []
        self.now = 1000.0
        self.wall = 1.7e9
        self.tokens = 0
        self.rng = random.Random(seed)
        self.leases: list[Lease] = []
        self.applied: list[ReportResult | ReportFailure] = []

    # -- the outside world ----------------------------------------------------------------

    def views(self) -> list[AgentView]:
        load = running_by_agent(self.state)
        return [AgentView(a, role_of(a), self.capacity[a], load[a]) for a in sorted(self.live)]

    def advance(self, dt: float) -> None:
        self.advance_to(self.now + dt)

    def advance_to(self, now: float) -> None:
        """Monotonic time moves to `now` exactly (never back); wall time follows."""
        assert now >= self.now
        self.wall += now - self.now
        self.now = now

    def role_agent(self, role: str, capacity: int) -> str:
        """A healthy agent serving `role`, with an id no other agent has."""
        agent_id = f"{role}-healthy"
        self.capacity.setdefault(agent_id, capacity)
        self.live.add(agent_id)
        return agent_id

    # -- commands ---------------------------------------------------------------------------

    def start(self) -> list[RunEvent]:
        wf = self.workflow
        return self.apply(StartRun(RUN_ID, wf, dict(wf.input), "0" * 32, "tester"))

    def report(
        self, lease: Lease, kind: ReportKind, *, sender: str | None = None, retryable: bool = True
    ) -> ReportResult | ReportFailure:
        task_id, attempt, token, agent_id = lease
        if kind == "result":
            output = {"task": task_id, "attempt": attempt, "by": agent_id}
            result = TaskResult(RUN_ID, task_id, attempt, token, agent_id, output, 0.25)
            return ReportResult(result, agent_id if sender is None else sender)
        failure = TaskFailure(RUN_ID, task_id, attempt, token, agent_id, "boom", retryable)
        return ReportFailure(failure, agent_id if sender is None else sender)

    def current(self, task: TaskState) -> Lease:
        return Lease(task.task_id, task.attempt, task.lease_token, task.agent_id)

    def stale_leases(self) -> list[Lease]:
        """Every lease ever handed out that no longer fences a running attempt."""
        live = {self.current(t) for t in running(self.state)}
        return [lease for lease in self.leases if lease not in live]

    def succeed(self, task: TaskState) -> list[RunEvent]:
        command = self.report(self.current(task), "result")
        events = self.apply(command)
        assert isinstance(events[0], TaskSucceeded), events
        assert self.state.tasks[task.task_id].status == "succeeded"
        self.applied.append(command)
        return events

    def refused(self, command: ReportResult | ReportFailure) -> list[RunEvent]:
        """Deliver a report that must not count: nothing changes but version and rejected."""
        before = self.state
        events = self.apply(command)
        assert events == [] or isinstance(events[0], ResultRejected), events
        audit = events[:1]
        assert events == audit, "a refused report is audited and changes nothing else"
        assert neutral(self.state) == neutral(before)
        assert self.state.rejected == before.rejected + len(audit)
        assert self.state.version == before.version + len(events)
        return audit

    def crash(self, seed: int) -> None:
        """A new orchestrator process: rebuild from the encoded log, fresh jitter source."""
        stored = [run_event_decoder.decode(encode(e)) for e in self.log]
        assert stored == self.log, "the codec loses nothing"
        rebuilt = replay(RUN_ID, enumerate(stored, start=1))
        assert rebuilt == self.state
        assert pending_effects(rebuilt) == pending_effects(self.state)
        self.state, self.log = rebuilt, stored
        self.rng = random.Random(seed)

    # -- the one way state changes ----------------------------------------------------------

    def apply(self, command: Command) -> list[RunEvent]:
        before = self.state
        snapshot = msgspec.msgpack.encode(before)
        agents = self.views()

        probe_rng = random.Random()
        probe_rng.setstate(self.rng.getstate())
        probe_ctx = Context(
            self.now, self.wall, agents[::-1], Tokens(self.tokens), probe_rng.random
        )
        probe = decide(before, command, probe_ctx)

        tokens = Tokens(self.tokens)
        events, folded = decide_and_fold(
            before, command, Context(self.now, self.wall, agents, tokens, self.rng.random)
        )
        assert events == probe, "a decision depends on (state, command, context) alone"
        self.tokens = tokens.issued

        self.check_decision(before, command, events, agents)
        after = fold(before, events)
        assert folded == after, "the state decide_and_fold returns is its events folded"
        assert msgspec.msgpack.encode(before) == snapshot, "decide/evolve mutated their input"
        self.check_effects(after, events)
        if all(isinstance(e, ResultRejected) for e in events):
            assert neutral(after) == neutral(before)
        settled = isinstance(command, Tick) or any(
            not isinstance(e, ResultRejected) for e in events
        )
        if after.status == "running" and settled:
            self.check_work_conserving(after)

        self.state = after
        self.log.extend(events)
        self.leases += [assignment_key(e) for e in events if isinstance(e, TaskAssigned)]
        return events

    # -- checks on one decision -------------------------------------------------------------

    def check_decision(
        self,
        before: RunState,
        command: Command,
        events: Sequence[RunEvent],
        agents: Sequence[AgentView],
    ) -> None:
        live = {a.agent_id: a for a in agents}
        if before.terminal or (before.status == "new" and not isinstance(command, StartRun)):
            # (5) a finished (or unstarted) run only ever audits refused reports
            assert all(isinstance(e, ResultRejected) for e in events), events
        issued = {lease.lease_token for lease in self.leases}
        s = before
        for i, e in enumerate(events):
            rest = events[i + 1 :]
            match e:
                case RunStarted():
                    assert i == 0
                    assert s.status == "new"
                case TaskAssigned():
                    # (3) attempt = previous + 1, only once every dependency succeeded
                    t, spec = s.tasks[e.task_id], s.graph[e.task_id]
                    assert s.status == "running"
                    assert t.status == "pending", (e, t)
                    assert e.attempt == t.attempt + 1, (e, t)
                    assert deps_succeeded(s, e.task_id), e
                    assert t.not_before <= self.now, "dispatched before its retry backoff"
                    assert e.agent_id in live, e
                    assert live[e.agent_id].role == spec.role, e
                    # (4) never beyond capacity, counting this run only
                    load = running_by_agent(s)
                    assert load[e.agent_id] < self.capacity[e.agent_id], e
                    # routing (§5): least loaded free agent, avoiding ones that failed it
                    free = [
                        a
                        for a in live.values()
                        if a.role == spec.role and load[a.agent_id] < self.capacity[a.agent_id]
                    ]
                    fresh = [a for a in free if a.agent_id not in t.excluded]
                    if fresh:
                        assert e.agent_id not in t.excluded, e
                    assert load[e.agent_id] == min(load[a.agent_id] for a in fresh or free), e
                    assert e.mono == self.now
                    assert e.lease_token, e
                    assert e.lease_token not in issued, "lease reused"
                    issued.add(e.lease_token)
                case TaskSucceeded():
                    t = s.tasks[e.task_id]
                    assert t.status == "running"
                    assert (e.attempt, e.agent_id) == (t.attempt, t.agent_id)
                    assert isinstance(command, ReportResult)
                case TaskAttemptFailed():
                    t, spec = s.tasks[e.task_id], s.graph[e.task_id]
                    assert t.status == "running"
                    assert (e.attempt, e.agent_id) == (t.attempt, t.agent_id)
                    if e.reason == "timeout":
                        assert isinstance(command, Tick)
                        assert command.check_leases
                        assert self.now > t.assigned_mono + spec.timeout_s
                        assert e.agent_id in live
                    elif e.reason == "agent_lost":
                        assert isinstance(command, Tick)
                        assert command.check_leases
                        assert e.agent_id not in live
                    elif e.reason == "undeliverable":
                        assert isinstance(command, DeliveryFailed)
                    else:
                        assert isinstance(command, ReportFailure)
                    if e.retry_at is None:
                        assert rest
                        assert isinstance(rest[0], TaskFailed)
                        assert rest[0].task_id == e.task_id
                        not_retryable = (
                            isinstance(command, ReportFailure) and not command.failure.retryable
                        )
                        assert e.attempt >= spec.max_attempts or not_retryable
                    else:
                        assert e.attempt < spec.max_attempts
                        base = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (e.attempt - 1))
                        assert self.now < e.retry_at
                        assert self.now + 0.5 * base - EPS <= e.retry_at
                        assert e.retry_at <= self.now + 1.5 * base + EPS
                case TaskFailed():
                    prev = events[i - 1] if i else None
                    assert isinstance(prev, TaskAttemptFailed)
                    assert prev.retry_at is None
                    assert prev.task_id == e.task_id
                case TaskCancelled():
                    t = s.tasks[e.task_id]
                    assert t.status not in TERMINAL_TASK, (e, t)
                    assert e.agent_id == (t.agent_id if t.status == "running" else "")
                    assert any(x.status == "failed" for x in s.tasks.values())
                case ResultRejected():
                    assert isinstance(command, ReportResult | ReportFailure)
                    assert i == 0
                    assert len(events) == 1, events
                case RunCompleted():
                    assert not rest
                    assert s.status == "running"
                    assert all(t.status == "succeeded" for t in s.tasks.values())
                    sinks = {t for t, d in s.dependents.items() if not d}
                    assert e.result == {t: s.tasks[t].output for t in sinks}
                case RunFailed():
                    assert not rest
                    assert s.status == "running"
                    assert all(t.status in TERMINAL_TASK for t in s.tasks.values())
                    assert any(t.status == "failed" for t in s.tasks.values())
            s = evolve(s, e)
        if s.status == "running":
            assert not any(t.status == "failed" for t in s.tasks.values()), "failure not settled"

    def check_effects(self, after: RunState, events: Sequence[RunEvent]) -> None:
        out = effects(after, events)
        sent = {
            Lease(x.assignment.task_id, x.assignment.attempt, x.assignment.lease_token, x.agent_id)
            for x in out
            if isinstance(x, SendAssignment)
        }
        assert sent == {assignment_key(e) for e in events if isinstance(e, TaskAssigned)}
        cancels = [
            (x.agent_id, x.control.task_id, x.control.attempt)
            for x in out
            if isinstance(x, SendControl)
        ]
        owed = []  # a cancel for each attempt the orchestrator ended that its agent may hold
        for e in events:
            if isinstance(e, TaskCancelled) and e.agent_id:
                owed.append((e.agent_id, e.task_id, after.tasks[e.task_id].attempt))
            elif isinstance(e, TaskAttemptFailed) and e.reason != "error":
                owed.append((e.agent_id, e.task_id, e.attempt))
        assert cancels == owed
        assert sum(isinstance(x, PublishProgress) for x in out) == len(events)

    def check_work_conserving(self, state: RunState) -> None:
        """After a dispatch, a ready task waits only if no live agent of its role is free."""
        load = running_by_agent(state)
        for task in state.tasks.values():
            if task.status != "pending" or not deps_succeeded(state, task.task_id):
                continue
            if task.not_before > self.now:
                continue
            role = state.graph[task.task_id].role
            free = [a for a in self.live if role_of(a) == role and load[a] < self.capacity[a]]
            assert not free, f"{task.task_id} is ready but {free} sit idle"

    # -- invariants over the whole run (§7) -------------------------------------------------

    def check_invariants(self) -> None:
        self.check_log_rebuilds_state()
        self.check_one_owner()
        self.check_capacity()
        self.check_indexes()
        self.check_terminal()
        self.check_pending_effects()

    def check_log_rebuilds_state(self) -> None:
        # (1) fold(log) == live state; replaying twice gives the same state
        assert self.state.version == len(self.log)
        assert fold(RunState(RUN_ID), self.log) == self.state
        versioned = list(enumerate(self.log, start=1))
        assert replay(RUN_ID, versioned) == replay(RUN_ID, versioned) == self.state

    def check_one_owner(self) -> None:
        # (2) at most one attempt open per task; attempts count up within the budget
        open_attempts: Counter[str] = Counter()
        attempts: dict[str, list[int]] = {}
        for e in self.log:
            if isinstance(e, TaskAssigned):
                open_attempts[e.task_id] += 1
                attempts.setdefault(e.task_id, []).append(e.attempt)
            elif isinstance(e, TaskSucceeded | TaskAttemptFailed) or (
                isinstance(e, TaskCancelled) and e.agent_id
            ):
                open_attempts[e.task_id] -= 1
            if isinstance(e, TaskAssigned | TaskSucceeded | TaskAttemptFailed | TaskCancelled):
                assert open_attempts[e.task_id] in (0, 1), e
        for task_id, numbers in attempts.items():
            assert numbers == list(range(1, len(numbers) + 1))
            assert len(numbers) <= self.state.graph[task_id].max_attempts, "budget exceeded"
        for t in self.state.tasks.values():
            assert (t.status == "running") == (open_attempts[t.task_id] == 1), t
            if t.status == "running":
                assert t.attempt >= 1
                assert t.lease_token
                assert t.agent_id

    def check_capacity(self) -> None:
        # (4) the load this run puts on an agent never exceeds its capacity
        for agent_id, n in running_by_agent(self.state).items():
            assert n <= self.capacity[agent_id], (agent_id, n)

    def check_indexes(self) -> None:
        s = self.state
        if s.status == "new":
            return
        blocked = {
            t: sum(s.tasks[d].status != "succeeded" for d in g.deps) for t, g in s.graph.items()
        }
        assert s.waiting == {t: n for t, n in blocked.items() if n}
        listed = [(role, t) for role, ts in s.ready.items() for t in ts]
        assert all(s.graph[t].role == role for role, t in listed)
        ready = {t for _, t in listed}
        assert len(ready) == len(listed)
        if s.status == "running":
            assert ready == {
                t for t, task in s.tasks.items() if task.status == "pending" and not blocked[t]
            }
        else:
            assert ready == set()

    def check_terminal(self) -> None:
        # (5) a finished run has every task in exactly one terminal state, and ended once
        ends = [i for i, e in enumerate(self.log) if isinstance(e, RunCompleted | RunFailed)]
        assert len(ends) <= 1
        s = self.state
        if not s.terminal:
            assert not ends
            return
        assert all(isinstance(e, ResultRejected) for e in self.log[ends[0] + 1 :])
        assert all(t.status in TERMINAL_TASK for t in s.tasks.values())
        if s.status == "completed":
            assert isinstance(self.log[ends[0]], RunCompleted)
            assert all(t.status == "succeeded" for t in s.tasks.values())
        else:
            assert isinstance(self.log[ends[0]], RunFailed)
            assert any(t.status == "failed" for t in s.tasks.values())

    def check_pending_effects(self) -> None:
        # (6) after a restart exactly the running attempts are re-sent, with full inputs
        owed = pending_effects(self.state)
        if self.state.terminal:
            assert owed == []
            return
        assert all(isinstance(x, SendAssignment) for x in owed)
        sent = [x for x in owed if isinstance(x, SendAssignment)]
        keys = [
            Lease(x.assignment.task_id, x.assignment.attempt, x.assignment.lease_token, x.agent_id)
            for x in sent
        ]
        assert sorted(keys) == sorted(self.current(t) for t in running(self.state))
        for x in sent:
            a = x.assignment
            spec = self.state.graph[a.task_id]
            assert (a.run_id, a.role, a.step, a.timeout_s) == (
                RUN_ID,
                spec.role,
                spec.step,
                spec.timeout_s,
            )
            assert a.input["deps"] == {d: self.state.tasks[d].output for d in spec.deps}
            assert all(v is not None for v in a.input["deps"].values())

    # -- liveness -----------------------------------------------------------------------------

    def drive_to_end(self) -> int:
        """Healthy agents join, every assignment is answered, time passes: the run must end.

        A round answers what live agents hold, then moves time past every lease and backoff
        and ticks. Each round finishes a task, spends an attempt of a task held by a dead
        agent, or (when nothing runs) dispatches what is ready for the next round to finish,
        so `budget` is a proven bound, not a guess. Returns the rounds it took."""
        if self.state.status == "new":
            self.start()
        for role in ROLES:
            self.role_agent(role, 2)
        longest = max(s.timeout_s for s in self.workflow.steps)
        budget = 2 * sum(t.max_attempts + 1 for t in self.state.graph.values()) + 2
        for n in range(budget):
            if self.state.terminal:
                return n
            for task in running(self.state):
                if task.agent_id in self.live and not self.state.terminal:
                    self.succeed(task)
            self.check_invariants()
            self.advance(longest + BACKOFF_CAP_S * 1.5 + 1.0)
            self.apply(Tick(check_leases=True))
            self.check_invariants()
        assert self.state.terminal, f"run still {self.state.status} after {budget} rounds"
        return budget


# -- the state machine ---------------------------------------------------------------------


class CoreMachine(RuleBasedStateMachine):
    """Random workflows, agents that come and go, honest and dishonest reports, time,
    crashes; the §7 invariants after every step and termination at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None

    @property
    def run(self) -> Harness:
        assert self.h is not None
        return self.h

    def has_running(self) -> bool:
        return self.h is not None and bool(running(self.h.state))

    def has_stale(self) -> bool:
        return self.h is not None and bool(self.h.stale_leases())

    def has_holder(self) -> bool:
        return self.h is not None and any(t.agent_id in self.h.live for t in running(self.h.state))

    @initialize(
        workflow=workflows(),
        capacities=st.lists(st.integers(1, 3), min_size=len(POOL), max_size=len(POOL)),
        live=st.sets(st.sampled_from(POOL)),
        seed=st.integers(0, 2**32 - 1),
        started=st.booleans(),
    )
    def setup(
        self,
        workflow: WorkflowSpec,
        capacities: list[int],
        live: set[str],
        seed: int,
        started: bool,
    ) -> None:
        self.h = Harness(workflow, dict(zip(POOL, capacities, strict=True)), seed)
        self.h.live = set(live)
        if started:
            self.start_run()

    @precondition(lambda self: self.h is not None and self.h.state.status == "new")
    @rule()
    def start_run(self) -> None:
        events = self.run.start()
        assert isinstance(events[0], RunStarted)
        assert self.run.state.status == "running"

    @rule(agent=st.sampled_from(POOL))
    def agent_joins(self, agent: str) -> None:
        self.run.live.add(agent)

    @precondition(lambda self: self.h is not None and bool(self.h.live))
    @rule(data=st.data())
    def agent_vanishes(self, data: st.DataObject) -> None:
        self.run.live.discard(data.draw(st.sampled_from(sorted(self.run.live))))

    @precondition(has_holder)
    @rule(data=st.data())
    def agent_vanishes_holding_work(self, data: st.DataObject) -> None:
        holders = sorted({t.agent_id for t in running(self.run.state)} & self.run.live)
        self.run.live.discard(data.draw(st.sampled_from(holders)))

    @precondition(has_running)
    @rule(data=st.data())
    def valid_result(self, data: st.DataObject) -> None:
        self.run.succeed(data.draw(st.sampled_from(running(self.run.state))))

    @precondition(has_running)
    @rule(data=st.data())
    def agent_answers_everything(self, data: st.DataObject) -> None:
        holders = sorted({t.agent_id for t in running(self.run.state)})
        agent = data.draw(st.sampled_from(holders))
        for task in running(self.run.state):
            if task.agent_id == agent:
                self.run.succeed(task)

    @precondition(has_running)
    @rule(data=st.data(), how=st.sampled_from(("error", "error", "fatal", "undeliverable")))
    def attempt_fails(self, data: st.DataObject, how: str) -> None:
        """The owner reports a (non-)retryable error, or the assignment never arrived."""
        task = data.draw(st.sampled_from(running(self.run.state)))
        command: Command
        if how == "undeliverable":
            command = DeliveryFailed(task.task_id, task.attempt, "no responders")
        else:
            command = self.run.report(self.run.current(task), "failure", retryable=how == "error")
        events = self.run.apply(command)
        first = events[0]
        assert isinstance(first, TaskAttemptFailed)
        assert first.reason == ("undeliverable" if how == "undeliverable" else "error")
        if how == "fatal" or task.attempt >= self.run.state.graph[task.task_id].max_attempts:
            assert self.run.state.status == "failed"
            assert self.run.state.tasks[task.task_id].status == "failed"
        else:
            assert self.run.state.tasks[task.task_id].status == "pending"
        if isinstance(command, ReportFailure):
            self.run.applied.append(command)

    @precondition(has_stale)
    @rule(data=st.data(), kind=st.sampled_from(("result", "failure")))
    def stale_report(self, data: st.DataObject, kind: ReportKind) -> None:
        lease = data.draw(st.sampled_from(self.run.stale_leases()))
        self.run.refused(self.run.report(lease, kind))

    @precondition(has_running)
    @rule(
        data=st.data(),
        kind=st.sampled_from(("result", "failure")),
        how=st.sampled_from(("sender", "token", "claim", "attempt")),
    )
    def forged_report(self, data: st.DataObject, kind: ReportKind, how: str) -> None:
        task = data.draw(st.sampled_from(running(self.run.state)))
        lease = self.run.current(task)
        other = data.draw(st.sampled_from([a for a in (*POOL, "intruder") if a != task.agent_id]))
        if how == "sender":  # the payload names the owner, the subject says otherwise
            command = self.run.report(lease, kind, sender=other)
        elif how == "token":  # the owner, with a lease it was never given
            command = self.run.report(lease._replace(lease_token="forged"), kind)
        elif how == "claim":  # another agent holding a leaked lease token
            command = self.run.report(lease._replace(agent_id=other), kind)
        else:  # an attempt that was never handed out
            command = self.run.report(lease._replace(attempt=lease.attempt + 1), kind)
        events = self.run.refused(command)
        assert len(events) == 1, "a forged report is audited"

    @precondition(lambda self: self.h is not None and bool(self.h.applied))
    @rule(data=st.data())
    def duplicate_report(self, data: st.DataObject) -> None:
        self.run.refused(data.draw(st.sampled_from(self.run.applied)))

    @rule(
        task_id=st.sampled_from(UNKNOWN_TASKS),
        kind=st.sampled_from(("result", "failure")),
        agent=st.sampled_from(POOL),
    )
    def unknown_task_report(self, task_id: str, kind: ReportKind, agent: str) -> None:
        events = self.run.refused(self.run.report(Lease(task_id, 1, "lease-x", agent), kind))
        assert len(events) == 1, "a report for no task of this run is audited"

    @precondition(has_stale)
    @rule(data=st.data())
    def stale_delivery_failed(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.run.stale_leases()))
        before = self.run.state
        assert self.run.apply(DeliveryFailed(lease.task_id, lease.attempt, "late")) == []
        assert self.run.state is before

    @rule(
        data=st.data(),
        check_leases=st.booleans(),
        how=st.sampled_from(("none", "small", "small", "small", "deadline", "past", "far")),
        wall_jump=st.sampled_from((0.0, 0.0, -3600.0, 0.5)),
    )
    def tick(self, data: st.DataObject, check_leases: bool, how: str, wall_jump: float) -> None:
        h = self.run
        h.wall += wall_jump  # wall time is recorded, never compared: NTP may step it back
        s = h.state
        deadlines = sorted(
            [t.assigned_mono + s.graph[t.task_id].timeout_s for t in running(s)]
            + [t.not_before for t in s.tasks.values() if t.status == "pending" and t.not_before]
        )
        ahead = [d for d in deadlines if d >= h.now]
        if how == "small":
            h.advance(data.draw(st.floats(0.0, 0.5)))
        elif how in ("deadline", "past") and ahead:
            # exactly on a lease/backoff boundary, or just beyond it
            target = data.draw(st.sampled_from(ahead))
            h.advance_to(target if how == "deadline" else target + 1e-6)
        elif how == "far":
            h.advance(data.draw(st.floats(0.0, 20.0)))
        h.apply(Tick(check_leases=check_leases))
        if check_leases and h.state.status == "running":
            for t in running(h.state):  # nothing waits forever on a dead or late agent
                assert t.agent_id in h.live
                assert h.now <= t.assigned_mono + h.state.graph[t.task_id].timeout_s

    @rule(seed=st.integers(0, 2**32 - 1))
    def crash_and_recover(self, seed: int) -> None:
        self.run.crash(seed)
        if self.run.state.status != "new":  # a client retrying its start request
            before = self.run.state
            assert self.run.start() == []
            assert self.run.state is before

    @invariant()
    def core_invariants(self) -> None:
        if self.h is not None:
            self.h.check_invariants()

    def teardown(self) -> None:
        # Skip when a step already failed: that failure is the one to report.
        if self.h is not None and sys.exc_info()[1] is None:
            self.h.drive_to_end()


def test_core_state_machine() -> None:
    run_state_machine_as_test(
        CoreMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- plain properties ------------------------------------------------------------------------

plain = settings(max_examples=100, deadline=None, database=None)


@plain
@given(workflows())
def test_compiled_graph_is_topological_and_complete(workflow: WorkflowSpec) -> None:
    graph = compile_graph(workflow)
    assert len(graph) == sum(s.fan_out for s in workflow.steps)
    seen: set[str] = set()
    by_id = {s.id: s for s in workflow.steps}
    for task_id, spec in graph.items():
        assert set(spec.deps) <= seen, f"{task_id} listed before a dependency"
        step = by_id[spec.step]
        assert (spec.role, spec.max_attempts, spec.timeout_s) == (
            step.role,
            step.max_attempts,
            step.timeout_s,
        )
        assert len(spec.deps) == sum(by_id[n].fan_out for n in step.needs)
        seen.add(task_id)
    assert compile_graph(workflow) == graph, "compilation is deterministic"


@plain
@given(
    workflows(),
    st.lists(st.integers(1, 3), min_size=len(POOL), max_size=len(POOL)),
    st.sets(st.sampled_from(POOL)),
    st.integers(0, 2**32 - 1),
)
def test_happy_path_completes_with_one_attempt_per_task(
    workflow: WorkflowSpec, capacities: list[int], extra: set[str], seed: int
) -> None:
    h = Harness(workflow, dict(zip(POOL, capacities, strict=True)), seed)
    h.live = {f"{role}-0" for role in ROLES} | extra
    h.start()
    h.check_invariants()
    for _ in range(len(h.state.graph) + 1):
        if h.state.terminal:
            break
        for task in running(h.state):
            h.succeed(task)
            h.check_invariants()
    assert h.state.status == "completed"
    assigned = Counter(e.task_id for e in h.log if isinstance(e, TaskAssigned))
    assert assigned == dict.fromkeys(h.state.graph, 1)
    done_at = {e.task_id: i for i, e in enumerate(h.log) if isinstance(e, TaskSucceeded)}
    for i, e in enumerate(h.log):
        if isinstance(e, TaskAssigned):
            assert all(done_at[d] < i for d in h.state.graph[e.task_id].deps)


AttemptEnding = Literal["error", "timeout", "undeliverable", "agent_lost"]


@plain
@given(
    st.integers(1, 3),
    st.lists(st.sampled_from(("error", "timeout", "undeliverable", "agent_lost")), min_size=3),
    st.integers(0, 2**32 - 1),
)
def test_retryable_failures_spend_exactly_the_attempt_budget(
    max_attempts: int, endings: list[AttemptEnding], seed: int
) -> None:
    step = StepSpec(id="only", role="worker", max_attempts=max_attempts, timeout_s=1.0)
    h = Harness(validate(WorkflowSpec(name="retry", steps=[step])), {"worker-0": 1}, seed)
    h.live = {"worker-0"}
    h.start()
    for ending in endings[:max_attempts]:
        (task,) = running(h.state)
        if ending == "error":
            h.apply(h.report(h.current(task), "failure"))
        elif ending == "timeout":
            h.advance(1.0 + 1e-3)
            h.apply(Tick())
        elif ending == "undeliverable":
            h.apply(DeliveryFailed(task.task_id, task.attempt, "no responders"))
        else:
            h.live.clear()
            h.apply(Tick())
            h.live.add("worker-0")
        h.check_invariants()
        if h.state.terminal:
            break
        pending = h.state.tasks["only"]
        assert pending.status == "pending"
        h.advance_to(pending.not_before - 1e-6)
        assert h.apply(Tick()) == [], "no retry before its backoff"
        h.advance_to(pending.not_before)
        (assigned,) = h.apply(Tick())
        assert isinstance(assigned, TaskAssigned)
        assert assigned.attempt == task.attempt + 1
    assert h.state.status == "failed"
    assert h.state.tasks["only"].attempt == max_attempts
    assert sum(isinstance(e, TaskAssigned) for e in h.log) == max_attempts


@plain
@given(workflows(), st.data())
def test_replay_refuses_a_log_with_a_gap(workflow: WorkflowSpec, data: st.DataObject) -> None:
    h = Harness(workflow, dict.fromkeys(POOL, 3), 0)
    h.live = set(POOL)
    h.drive_to_end()
    assert len(h.log) >= 2
    gap = data.draw(st.integers(0, len(h.log) - 1))
    versioned = [(v, e) for v, e in enumerate(h.log, start=1) if v != gap + 1]
    if gap == len(h.log) - 1:  # dropping the last event is a shorter log, not a gap
        assert replay(RUN_ID, versioned) == fold(RunState(RUN_ID), h.log[:-1])
        return
    with pytest.raises(VersionGap):
        replay(RUN_ID, versioned)


# -- regressions: minimal reproductions of core bugs these properties found ------------------


def _ctx(now: float, *agents: AgentView) -> Context:
    return Context(now, now, agents, lambda: "tok", lambda: 0.5)


def test_refused_report_changes_nothing_but_the_audit_count() -> None:
    """§7.1: a forged report must not change state, but `decide` runs `_settle` after any
    non-empty event list, ResultRejected included, so it also hands out ready work."""
    wf = validate(WorkflowSpec(name="w", steps=[StepSpec(id="s", role="r", fan_out=2)]))
    state = RunState("run")
    start = StartRun("run", wf, {}, "t", "me")
    state = fold(state, decide(state, start, _ctx(0.0, AgentView("a", "r", 1, 0))))
    # "b" joins; before any tick, an intruder replays a's lease under its own subject
    forged = ReportResult(TaskResult("run", "s[0]", 1, "tok", "a", {}, 0.0), sender="intruder")
    events = decide(state, forged, _ctx(0.0, AgentView("a", "r", 1, 1), AgentView("b", "r", 1, 0)))
    assert [type(e) for e in events] == [ResultRejected]


def test_late_result_for_a_timed_out_attempt_is_audited() -> None:
    """§5: a result for a stale attempt is rejected *and audited*. After a lease timeout the
    task is pending with the same (attempt, lease), so `report_check.refusal` calls the late
    result a duplicate re-delivery and `decide` drops it without a ResultRejected."""
    wf = validate(WorkflowSpec(name="w", steps=[StepSpec(id="s", role="r", timeout_s=1.0)]))
    state = RunState("run")
    start = StartRun("run", wf, {}, "t", "me")
    state = fold(state, decide(state, start, _ctx(0.0, AgentView("a", "r", 1, 0))))
    state = fold(state, decide(state, Tick(), _ctx(2.0, AgentView("a", "r", 1, 1))))
    assert state.tasks["s"].status == "pending"  # attempt 1 timed out, retry backing off
    late = ReportResult(TaskResult("run", "s", 1, "tok", "a", {"x": 1}, 2.0), sender="a")
    events = decide(state, late, _ctx(2.01, AgentView("a", "r", 1, 0)))
    assert [type(e) for e in events] == [ResultRejected]
    assert isinstance(events[0], ResultRejected)
    assert "already ended (timeout)" in events[0].reason
