"""Property-based tests of the coordination patterns in the pure core (DESIGN §7).

A hypothesis state machine drives random workflows of every pattern (joins any/quorum,
conditional branches, bounded loops, group chats with each selector, subtasks, handoffs,
escalation, retry constraints) under random hard limits (token budgets, deadline, max
steps, max handoffs, subtask depth), with agents joining and vanishing, results that ask
for subtasks or handoffs and report usage, failures, stale and duplicate reports, time
passing, people's decisions and cancellations, and crash-and-replay steps. After every
decision it checks the invariants event by event, after every step the whole state, and
at the end that the run terminates.

Each run has a `Temper` for its plain answers: agents that disagree, reviews that never
approve, planners that propose cyclic plans or unknown roles, handoffs relayed until
max_handoffs, tasks that give up so a replan is asked for; so the bounds are reached in
many examples, not only by luck. The bounds each run reached are `hypothesis.event`s:
`pytest tests/test_pattern_properties.py --hypothesis-show-statistics` counts them.

The example count comes from the hypothesis profile (`tests/conftest.py`): a few
thousand in CI, fewer with `HYPOTHESIS_PROFILE=dev`.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    precondition,
    rule,
)

from bus.protocol import Bid, SubtaskRequest, TaskFailure, TaskResult, Usage
from orchestrator.core import contract_net, human, patterns
from orchestrator.core.commands import (
    AgentView,
    CancelRun,
    Command,
    Context,
    HumanDecision,
    ReportFailure,
    ReportResult,
    Resume,
    StartRun,
    SubmitBid,
    Tick,
)
from orchestrator.core.decide import decide_and_fold, decide_into, load_delta, on_run_clock
from orchestrator.core.effects import SendAssignment, pending_effects
from orchestrator.core.events import (
    BidReceived,
    BranchTaken,
    LimitReached,
    PlanAdopted,
    PlanRejected,
    ReplanRequested,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStopped,
    TaskAssigned,
    TaskCancelled,
    TaskHandedOff,
    TasksAdded,
    TaskSucceeded,
    TokensReserved,
    encode,
    run_event_decoder,
)
from orchestrator.core.state import TERMINAL_TASK, Folding, RunState, TaskState, fold, replay
from orchestrator.core.workflow import (
    PLANNER,
    Chat,
    Condition,
    Limits,
    Loop,
    Retry,
    Selector,
    StepSpec,
    TaskSpec,
    WorkflowSpec,
    known_roles,
    validate,
)
from orchestrator.service import journal

RUN = "pattern-run"
ROLES = ("a", "b", "c")
POOL = (*(f"{r}-{i}" for r in ROLES for i in range(2)), "planner-0")
ENDS = (RunCompleted, RunFailed, RunStopped)
Draw = Callable[[st.SearchStrategy[Any]], Any]


# -- strategies ----------------------------------------------------------------------------


@st.composite
def steps(draw: st.DrawFn, i: int, earlier: list[StepSpec]) -> StepSpec:
    sid = f"s{i}"
    pick = [s.id for s in earlier]
    needs = sorted(set(draw(st.lists(st.sampled_from(pick), max_size=2)))) if pick else []
    width = sum(s.fan_out for s in earlier if s.id in needs)
    join, quorum = "all", 0
    if needs:
        join = draw(st.sampled_from(("all", "all", "any", "quorum")))
        quorum = draw(st.integers(1, width)) if join == "quorum" else 0
    when = unless = None
    conditional: bool = draw(st.booleans())
    if needs and conditional:
        cond = Condition(step=draw(st.sampled_from(needs)), key="ok", equals=draw(st.booleans()))
        when, unless = (cond, None) if draw(st.booleans()) else (None, cond)
    common: dict[str, Any] = {
        "id": sid, "needs": needs, "join": join, "quorum": quorum, "when": when,
        "unless": unless, "timeout_s": draw(st.sampled_from((1.0, 3.0))),
        "max_attempts": draw(st.integers(1, 3)), "params": {"step": i},
        "tokens": draw(st.sampled_from((0, 10, 30))),
    }  # fmt: skip
    if draw(st.integers(0, 4)) == 0:
        participants = draw(st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True))
        selector: Selector = draw(st.sampled_from(("round_robin", "rule", "agent")))
        rules = {}
        if selector == "rule":
            rules = {p: draw(st.sampled_from(participants)) for p in participants}
        chat = Chat(
            participants=participants, max_turns=draw(st.integers(1, 4)), selector=selector,
            rules=rules, selector_role=draw(st.sampled_from(ROLES)) if selector == "agent" else "",
            until="agree",
        )  # fmt: skip
        return StepSpec(chat=chat, **common)
    role = draw(st.sampled_from(ROLES))
    fan_out = draw(st.integers(1, 3))
    loop = None
    if fan_out == 1 and draw(st.booleans()):
        loop = Loop(back_to=sid, until="approved", max_rounds=draw(st.integers(1, 3)))
    retry = None
    if draw(st.integers(0, 3)) == 0:
        retry = Retry(role=draw(st.sampled_from(ROLES)), tokens=draw(st.sampled_from((0, 5))))
    return StepSpec(
        role=role, fan_out=fan_out, loop=loop, retry=retry,
        max_subtasks=draw(st.integers(0, 2)),
        handoff_to=draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True)),
        on_exhausted=draw(st.sampled_from(("fail", "escalate", "replan"))),
        routing=draw(st.sampled_from(("plain", "plain", "contract_net"))), bid_window_s=1.0,
        **common,
    )  # fmt: skip


@st.composite
def workflows(draw: st.DrawFn) -> WorkflowSpec:
    made: list[StepSpec] = []
    for i in range(draw(st.integers(1, 5))):
        made.append(draw(steps(i, made)))
    tokens = draw(st.sampled_from((0, 0, 60, 150, 400)))
    limits = Limits(
        tokens=tokens, task_tokens=20 if tokens else draw(st.sampled_from((0, 40))),
        deadline_s=draw(st.sampled_from((0.0, 0.0, 0.0, 12.0, 40.0))),
        max_steps=draw(st.sampled_from((0, 0, 6, 20))),
        max_handoffs=draw(st.integers(0, 3)), max_subtask_depth=draw(st.integers(0, 2)),
    )  # fmt: skip
    return validate(WorkflowSpec(name="props", steps=made, limits=limits))


PLANS = ("valid", "chain", "no steps", "unknown role", "self cycle", "cycle", "over budget")


def plan(kind: str, new: str, roles: list[str]) -> dict[str, Any]:
    """A planner's proposal of `kind`, adding steps with ids starting with `new`, for
    `roles` (the workflow's own, but for "unknown role")."""
    a, b = roles[0], roles[-1]
    proposals: dict[str, dict[str, Any]] = {
        "valid": {"steps": [{"id": new, "role": a}]},
        "chain": {"steps": [{"id": new, "role": b},
                            {"id": new + "x", "role": a, "needs": [new]}]},
        "no steps": {"steps": []},
        "unknown role": {"steps": [{"id": new, "role": "ghost"}]},
        "self cycle": {"steps": [{"id": new, "role": a, "needs": [new]}]},
        "cycle": {"steps": [{"id": new, "role": a, "needs": [new + "x"]},
                            {"id": new + "x", "role": b, "needs": [new]}]},
        "over budget": {"steps": [{"id": new, "role": a, "tokens": 100_000}]},
    }  # fmt: skip
    return proposals[kind]


class Temper(msgspec.Struct, frozen=True):
    """How a run's agents answer when they answer plainly (as in `drive_to_end`): so the
    bounds that only a stubborn run reaches (chat max_turns, loop max_rounds, rejected
    plans, repeated handoffs up to max_handoffs) are reached in many examples."""

    agree: bool = True
    approve: bool = True
    planner: str = "valid"
    relay: bool = False
    """Hand every task on to a role its step allows, as long as the run lets it."""
    give_up: bool = False
    """Fail for good every workflow task whose step has a fallback (escalate or replan),
    so the fallback acts: a planner is asked, and its proposal adopted or rejected."""


tempers = st.builds(
    Temper,
    agree=st.booleans(),
    approve=st.booleans(),
    planner=st.sampled_from(PLANS),
    relay=st.integers(0, 2).map(lambda n: n == 0),
    give_up=st.integers(0, 3).map(lambda n: n == 0),
)

outputs = st.fixed_dictionaries(
    {"ok": st.booleans(), "approved": st.booleans(), "agree": st.booleans(),
     "next": st.sampled_from((*ROLES, "nobody"))}
)  # fmt: skip


# -- the harness -----------------------------------------------------------------------------


@contextmanager
def returns_within(seconds: float) -> Iterator[None]:
    """A decision that never returns (a loop over a cyclic plan, say) fails the example
    instead of hanging the suite until its timeout."""

    def hang(signum: int, frame: object) -> None:
        raise AssertionError(f"a decision did not return within {seconds}s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Harness:
    """One run through the pure core, as the shell would drive it, checking every event."""

    def __init__(
        self, workflow: WorkflowSpec, capacity: dict[str, int], seed: int, temper: Temper
    ) -> None:
        self.workflow = workflow
        self.temper = temper
        self.capacity = capacity
        self.live: set[str] = set()
        self.state = RunState(RUN)
        self.log: list[RunEvent] = []
        self.now = 100.0
        """The host's monotonic clock; the wall clock is `wall_offset + now`."""
        self.wall_offset = 1.7e9
        self.boot = "boot-0"
        self.issued = 0
        self.rng = random.Random(seed)
        self.applied: list[Command] = []
        self.leases: list[tuple[str, int, str, str]] = []
        self.batch = Folding(self.state)
        """The same decisions folded as the shell folds a batch: into one long-lived draft."""
        self.started_wall: float | None = None
        self.applied_last: Command | None = None

    def wall(self) -> float:
        return self.wall_offset + self.now

    def count(self, kind: type[RunEvent], pending: list[RunEvent] | None = None) -> int:
        """Events of `kind` in the log (and `pending`, decided but not yet in it)."""
        return sum(isinstance(e, kind) for e in (*self.log, *(pending or ())))

    def past_deadline(self) -> bool:
        """The run's deadline has passed on the harness's own wall clock (which goes on
        across reboots), not on the run's clock the core keeps."""
        deadline = self.workflow.limits.deadline_s
        if not deadline or self.started_wall is None:
            return False
        return self.wall() - self.started_wall > deadline + 1e-6

    def declared_need(self, spec: TaskSpec, pending: list[RunEvent]) -> int:
        """How many of a task's deps must have succeeded, from its step's join as the
        workflow (or an adopted plan) declares it, never from the graph the core built."""
        if spec.parent or spec.kind not in ("task", "chat"):
            return len(spec.deps)  # turns, selections, subtasks and plans wait for all
        declared = {s.id: s for s in self.workflow.steps}
        planned = {
            s.id: s for e in (*self.log, *pending) if isinstance(e, PlanAdopted) for s in e.steps
        }  # fmt: skip
        step = declared.get(spec.step) or planned[spec.step]
        width = len(spec.deps)
        if spec.step in declared:
            width = sum(declared[n].fan_out for n in step.needs)
            looped_back = any(s.loop and s.loop.back_to == spec.step for s in declared.values())
            width += spec.round > 1 and looped_back  # a later round waits for the one before
            assert len(spec.deps) == width, (spec, "a dep for each task of each needed step")
        return {"all": width, "any": 1, "quorum": step.quorum}[step.join]

    def check_context(self) -> None:
        """DESIGN §7.6: a task carries everything said before each of its handoffs, in
        order, and so does the assignment its next owner gets (taken from the log)."""
        said: dict[str, list[dict[str, Any]]] = {}
        for e in self.log:
            if isinstance(e, TaskHandedOff):
                said.setdefault(e.task_id, []).append(e.output)
        for t in self.state.tasks.values():
            assert [c["output"] for c in t.context] == said.get(t.task_id, []), "context lost"
        for effect in pending_effects(self.state):
            if isinstance(effect, SendAssignment) and effect.assignment.task_id in said:
                given = effect.assignment.input.get("context", [])
                assert [c["output"] for c in given] == said[effect.assignment.task_id]

    def token(self) -> str:
        self.issued += 1
        return f"lease-{self.issued}"

    def views(self) -> list[AgentView]:
        load = Counter(t.agent_id for t in self.state.tasks.values() if t.status == "running")
        return [
            AgentView(a, a.rsplit("-", 1)[0], self.capacity[a], load[a]) for a in sorted(self.live)
        ]

    def apply(self, command: Command) -> list[RunEvent]:
        with returns_within(5.0):
            return self._apply(command)

    def _apply(self, command: Command) -> list[RunEvent]:
        views, rng, issued = self.views(), self.rng.getstate(), self.issued
        wall = self.wall_offset + self.now
        ctx = Context(self.now, wall, views, self.token, self.rng.random, self.boot)
        before = self.state
        self.applied_last = command
        events, folded = decide_and_fold(before, command, ctx)
        if before.status == "new" and events:
            self.started_wall = wall
        self.check_events(before, command, events)
        self.state = fold(before, events)
        assert folded == self.state, "the state decide_and_fold returns is its events folded"
        running = journal.running_agents(self.state)
        kept = journal.running_agents(before)
        kept.update(journal.load_change(before, self.state, events))  # keeps negative counts
        assert {a: n for a, n in kept.items() if n} == running, "loads kept by load_change"
        routed = load_delta(events, dict(journal.running_agents(before)))
        assert all(routed.get(a, 0) == running[a] for a in self.live), (
            "a batch routes by load_delta: exact for every live agent"
        )
        same_rng = random.Random()
        same_rng.setstate(rng)
        tokens = (f"lease-{n}" for n in itertools.count(issued + 1))
        same = Context(self.now, wall, views, tokens.__next__, same_rng.random, self.boot)
        assert decide_into(self.batch, command, same) == events, "batched: the same decision"
        assert self.batch.state == self.state, "batched: the same state"
        self.log += events
        self.leases += [
            (e.task_id, e.attempt, e.lease_token, e.agent_id)
            for e in events
            if isinstance(e, TaskAssigned)
        ]
        return events

    def result(self, task: TaskState, draw: Draw | None, plain: bool = False) -> ReportResult:
        temper = self.temper
        output: dict[str, Any] = {
            "ok": True, "approved": temper.approve, "agree": temper.agree, "next": "a"
        }  # fmt: skip
        tokens, subtasks, handoff = 0, [], ""
        spec = self.state.graph[task.task_id]
        if draw is None and temper.relay and not spec.parent:
            handoff = next(iter(self.state.step(spec.step).handoff_to), "")
        if draw is not None:
            output = draw(outputs)
            tokens = draw(st.sampled_from((0, 0, 5, 15, 35)))
            if not plain and draw(st.integers(0, 2)) == 0:
                subtasks = [
                    SubtaskRequest(draw(st.sampled_from(ROLES)), {"n": n})
                    for n in range(draw(st.integers(1, 3)))
                ]
            elif not plain and draw(st.integers(0, 1)) == 0:
                allowed = [] if spec.parent else self.state.step(spec.step).handoff_to
                valid: bool = draw(st.booleans())
                handoff = draw(st.sampled_from(allowed if allowed and valid else ROLES))
        if spec.kind == "plan":
            kind = temper.planner if draw is None else draw(st.sampled_from(PLANS))
            roles = sorted(known_roles(self.workflow) - {PLANNER})
            output, subtasks, handoff = plan(kind, f"re{self.issued}", roles), [], ""
        r = TaskResult(
            RUN, task.task_id, task.attempt, task.lease_token, task.agent_id, output, 0.1,
            Usage(tokens) if tokens else None, subtasks, handoff,
        )  # fmt: skip
        return ReportResult(r, task.agent_id)

    def plain_answer(self, task: TaskState) -> ReportResult | ReportFailure:
        """What an agent of this run's temper answers without being drawn."""
        spec = self.state.graph[task.task_id]
        gives_up = self.temper.give_up and spec.kind == "task" and not spec.parent
        if gives_up and self.state.step(spec.step).on_exhausted != "fail":
            f = TaskFailure(
                RUN, task.task_id, task.attempt, task.lease_token, task.agent_id, "no", False
            )
            return ReportFailure(f, task.agent_id)
        return self.result(task, None)

    # -- per-event checks (§7.5, §7.6) ----------------------------------------------------

    def check_events(self, before: RunState, command: Command, events: list[RunEvent]) -> None:
        limits = self.workflow.limits
        live = {v.agent_id: v for v in self.views()}
        s = before
        for i, e in enumerate(events):
            if s.terminal:
                assert isinstance(e, ResultRejected), (e, "after the run ended")
            match e:
                case TaskAssigned():
                    t, spec = s.tasks[e.task_id], s.graph[e.task_id]
                    assert t.status == "pending", (e, t)
                    assert e.task_id not in s.gated
                    assert e.task_id not in s.blocked
                    done = sum(s.tasks[d].status == "succeeded" for d in spec.deps)
                    assert done >= self.declared_need(spec, events[:i]), "started before its deps"
                    if not spec.parent:
                        step = s.step(spec.step)
                        if step.when is not None or step.unless is not None:
                            assert any(
                                isinstance(x, BranchTaken) and x.task_id == e.task_id
                                for x in self.log + events[:i]
                            ), "a conditional task started without its branch taken"
                    assert e.agent_id in live
                    assert live[e.agent_id].role == s.role_of(e.task_id)
                    load = sum(
                        x.agent_id == e.agent_id and x.status == "running" for x in s.tasks.values()
                    )
                    assert load < self.capacity[e.agent_id]
                    dispatched = self.count(TaskAssigned, events[:i])
                    assert not limits.max_steps or dispatched < limits.max_steps, "max_steps"
                    assert not self.past_deadline(), "assigned after the run's deadline"
                    run_now = self.now - s.clock_shift  # every time the run holds is on it
                    assert e.mono == run_now
                    assert t.not_before <= run_now
                    if spec.bid_window_s:  # tendered first, awarded after the window
                        assert t.cfp_until, "a contract-net task assigned without a tender"
                        assert run_now >= t.cfp_until
                        if e.reason.startswith("contract net: best"):
                            running = Counter(
                                x.agent_id for x in s.tasks.values() if x.status == "running"
                            )
                            free = {
                                a for a, v in live.items()
                                if v.role == s.role_of(e.task_id) and running[a] < v.capacity
                            }  # fmt: skip
                            pool = (free - set(t.excluded)) or free
                            offers = {b.agent_id: (b.cost, b.time_s, -b.confidence, b.agent_id)
                                      for b in t.bids if b.agent_id in pool}  # fmt: skip
                            assert e.agent_id in offers, "awarded to an agent that did not bid"
                            assert offers[e.agent_id] == min(offers.values()), "not the best bid"
                case TasksAdded():
                    parent = s.graph.get(e.parent)
                    assert parent is not None
                    if parent.kind == "chat":
                        chat = s.step(parent.step).chat
                        assert chat is not None
                        turns = [t for t in e.tasks if t.kind in ("turn", "select")]
                        assert all(t.round <= chat.max_turns for t in turns), "chat over max"
                    elif [t.kind for t in e.tasks] == ["plan"]:
                        assert s.replans <= limits.max_replans, "a replan beyond the bound"
                    elif e.rewire:
                        loop = s.step(parent.step).loop
                        assert loop is not None
                        assert all(t.round <= loop.max_rounds for t in e.tasks), "loop over max"
                    else:
                        step = s.step(parent.step)
                        assert len(e.tasks) <= step.max_subtasks
                        assert all(t.round <= limits.max_subtask_depth for t in e.tasks)
                case TaskHandedOff():
                    assert self.count(TaskHandedOff, events[:i]) < limits.max_handoffs
                    assert e.to_role in s.step(s.graph[e.task_id].step).handoff_to
                case PlanAdopted():
                    assert s.replans <= limits.max_replans
                    known = known_roles(self.workflow)
                    assert all(step.role in known for step in e.steps)
                    new = {t.task_id for t in e.tasks}
                    for added in e.tasks:
                        assert all(d in new or s.tasks[d].status == "succeeded" for d in added.deps)
                case TaskCancelled():
                    t = s.tasks[e.task_id]
                    assert t.status not in TERMINAL_TASK
                    assert e.agent_id == (t.agent_id if t.status == "running" else ""), (e, t)
                case BranchTaken():
                    step = s.step(s.graph[e.task_id].step)
                    assert step.when is None or patterns.holds(s, step.when)
                    assert step.unless is None or not patterns.holds(s, step.unless)
            after = fold(s, [e])
            if isinstance(e, TokensReserved):
                assert after.tokens_spent + after.tokens_reserved <= limits.tokens, "overbooked"
            if isinstance(e, TaskHandedOff):
                said = after.tasks[e.task_id].context
                assert said[:-1] == s.tasks[e.task_id].context, "handoff lost context"
                assert said[-1]["output"] == e.output
            s = after

    # -- whole-state invariants -----------------------------------------------------------

    def check_state(self) -> None:
        s = self.state
        assert s.version == len(self.log)
        assert fold(RunState(RUN), self.log) == s, "fold(log) == live state"
        if s.status == "new":
            return
        limits = self.workflow.limits
        assert s.tokens_reserved == sum(t.reserved for t in s.tasks.values())
        assert all(t.status == "running" for t in s.tasks.values() if t.reserved)
        load = Counter(t.agent_id for t in s.tasks.values() if t.status == "running")
        assert all(n <= self.capacity[a] for a, n in load.items())
        assert self.count(TaskHandedOff) <= limits.max_handoffs
        assert not limits.max_steps or self.count(TaskAssigned) <= limits.max_steps
        turns = Counter(
            e.parent for e in self.log if isinstance(e, TasksAdded)
            for t in e.tasks if t.kind == "turn"
        )  # fmt: skip
        for chat_id, n in turns.items():
            chat = s.step(s.graph[chat_id].step).chat
            assert chat is not None
            assert n <= chat.max_turns, "a chat beyond its max turns"
        if self.past_deadline() and isinstance(self.applied_last, Tick):
            assert s.terminal, "the run goes on after its deadline passed"
        self.check_context()
        for t in s.tasks.values():
            if t.status == "running":
                assert t.agent_id
                assert t.lease_token
            spec = s.graph[t.task_id]
            if spec.kind == "task" and not spec.parent:
                loop = s.step(spec.step).loop
                assert spec.round <= (loop.max_rounds if loop else 1)
        ends = [e for e in self.log if isinstance(e, ENDS)]
        assert len(ends) <= 1
        if s.terminal:
            assert ends
            assert all(t.status in TERMINAL_TASK for t in s.tasks.values())
            assert pending_effects(s) == []
        else:
            running = {t.task_id for t in s.tasks.values() if t.status == "running"}
            owed = pending_effects(s)
            assert {x.assignment.task_id for x in owed if isinstance(x, SendAssignment)} == running

    def reached(self) -> set[str]:
        """The bounds and refusals this run reached, named for `hypothesis.event`."""
        t = self.temper
        seen = {
            "answers disagree" if not t.agree else "answers agree",
            "reviews never approve" if not t.approve else "reviews approve",
            f"planner proposes: {t.planner}",
        }
        if t.give_up:
            seen.add("tasks give up")
        if any(isinstance(e, ReplanRequested) for e in self.log):
            seen.add("replan requested")
        handed = Counter(e.task_id for e in self.log if isinstance(e, TaskHandedOff))
        if handed:
            seen.add("handed off: twice or more" if max(handed.values()) > 1 else "handed off")
        for e in self.log:
            if isinstance(e, TaskAssigned) and not self.state.graph[e.task_id].parent:
                join = self.state.step(self.state.graph[e.task_id].step).join
                if join != "all":
                    seen.add(f"join {join}: a task started")
            if isinstance(e, LimitReached):
                seen.add(f"limit reached: {e.limit}")
            elif isinstance(e, PlanRejected):
                kinds = {"cycle": "cycle", "unknown role": "unknown role", "tokens": "budget"}
                why = next((k for word, k in kinds.items() if word in e.reason), "other")
                seen.add(f"plan rejected: {why}")
            elif isinstance(e, PlanAdopted):
                seen.add("plan adopted")
            elif isinstance(e, TaskSucceeded) and self.state.graph[e.task_id].kind == "chat":
                seen.add(f"chat ended by {(e.output or {}).get('ended_by')}")
        return seen

    def crash(self) -> None:
        stored = [run_event_decoder.decode(encode(e)) for e in self.log]
        rebuilt = replay(RUN, enumerate(stored, start=1))
        assert rebuilt == self.state
        snapshot = msgspec.msgpack.encode(self.state)  # what journal.snapshot_of stores
        assert msgspec.msgpack.encode(rebuilt) == snapshot
        assert msgspec.msgpack.decode(snapshot, type=RunState) == self.state, "snapshot loses"
        assert pending_effects(rebuilt) == pending_effects(self.state)
        self.state, self.log = rebuilt, stored
        self.batch = Folding(rebuilt)

    def drive_to_end(self) -> None:
        """Healthy agents of every role answer plainly, people approve, time passes: the
        run must end (every pattern is bounded)."""
        if self.state.status == "new":
            self.apply(StartRun(RUN, self.workflow, {}, "0" * 32, "t"))
        for a in POOL:
            self.live.add(a)
        for _ in range(400):
            if self.state.terminal:
                return
            # Tasks started by an answer are answered before time moves on (a planner
            # asked mid-way would otherwise time out); each attempt once per pass.
            answered: set[tuple[str, int, str]] = set()
            while not self.state.terminal:
                todo = [
                    t for t in self.state.tasks.values()
                    if t.status in ("running", "escalated")
                    and (t.task_id, t.attempt, t.status) not in answered
                ]  # fmt: skip
                if not todo:
                    break
                current = todo[0]
                answered.add((current.task_id, current.attempt, current.status))
                if current.status == "running":
                    self.apply(self.plain_answer(current))
                else:
                    self.apply(HumanDecision(current.task_id, "approve", "human:prop"))
            self.now += 6.0
            self.apply(Tick())
        raise AssertionError(f"run still {self.state.status}: {self.state.tasks}")


# -- the machine -------------------------------------------------------------------------------


class PatternMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h: Harness | None = None

    @property
    def run(self) -> Harness:
        assert self.h is not None
        return self.h

    def running(self) -> list[TaskState]:
        return [t for t in self.run.state.tasks.values() if t.status == "running"]

    def has_running(self) -> bool:
        return self.h is not None and any(
            t.status == "running" for t in self.h.state.tasks.values()
        )

    @initialize(
        workflow=workflows(),
        caps=st.lists(st.integers(1, 3), min_size=len(POOL), max_size=len(POOL)),
        live=st.sets(st.sampled_from(POOL)),
        seed=st.integers(0, 2**32 - 1),
        temper=tempers,
    )
    def setup(
        self, workflow: WorkflowSpec, caps: list[int], live: set[str], seed: int, temper: Temper
    ) -> None:
        self.h = Harness(workflow, dict(zip(POOL, caps, strict=True)), seed, temper)
        self.h.live = set(live)
        self.h.apply(StartRun(RUN, workflow, {}, "0" * 32, "t"))

    @rule(agent=st.sampled_from(POOL))
    def agent_joins(self, agent: str) -> None:
        self.run.live.add(agent)
        self.run.apply(Tick(check_leases=False))

    @precondition(lambda self: self.h is not None and bool(self.h.live))
    @rule(data=st.data())
    def agent_vanishes(self, data: st.DataObject) -> None:
        self.run.live.discard(data.draw(st.sampled_from(sorted(self.run.live))))

    @precondition(has_running)
    @rule(data=st.data(), plain=st.booleans())
    def result(self, data: st.DataObject, plain: bool) -> None:
        task = data.draw(st.sampled_from(self.running()))
        command = self.run.result(task, data.draw, plain)
        self.run.apply(command)
        self.run.applied.append(command)

    @precondition(has_running)
    @rule(data=st.data(), retryable=st.booleans())
    def failure(self, data: st.DataObject, retryable: bool) -> None:
        t = data.draw(st.sampled_from(self.running()))
        f = TaskFailure(RUN, t.task_id, t.attempt, t.lease_token, t.agent_id, "boom", retryable)
        self.run.apply(ReportFailure(f, t.agent_id))

    @precondition(lambda self: self.h is not None and bool(self.h.applied))
    @rule(data=st.data())
    def duplicate_or_late(self, data: st.DataObject) -> None:
        """A re-delivered report, or one whose attempt has since ended: changes nothing."""
        before = self.run.state
        events = self.run.apply(data.draw(st.sampled_from(self.run.applied)))
        assert all(isinstance(e, ResultRejected) for e in events)
        assert self.run.state.tasks == before.tasks

    @precondition(lambda self: self.h is not None and bool(self.h.leases))
    @rule(data=st.data())
    def stale_report(self, data: st.DataObject) -> None:
        task_id, attempt, lease, agent = data.draw(st.sampled_from(self.run.leases))
        current = self.run.state.tasks[task_id]
        if (current.attempt, current.status) == (attempt, "running"):
            return
        r = TaskResult(RUN, task_id, attempt, lease, agent, {"late": True}, 0.1)
        before = self.run.state
        events = self.run.apply(ReportResult(r, agent))
        assert all(isinstance(e, ResultRejected) for e in events)
        assert self.run.state.tasks == before.tasks

    @rule(dt=st.sampled_from((0.1, 0.5, 1.5, 4.0, 10.0)), leases=st.booleans())
    def tick(self, dt: float, leases: bool) -> None:
        self.run.now += dt
        self.run.apply(Tick(check_leases=leases))

    @rule(data=st.data(), decision=st.sampled_from(("approve", "reject", "retry")))
    def person_decides(self, data: st.DataObject, decision: str) -> None:
        """Mostly on escalated tasks; sometimes on any task, which must be refused."""
        tasks = sorted(self.run.state.tasks)
        waiting = [t for t in tasks if self.run.state.tasks[t].status == "escalated"]
        mostly: bool = data.draw(st.booleans())
        task_id = data.draw(st.sampled_from(waiting if waiting and mostly else tasks))
        command = HumanDecision(task_id, decision, "human:prop")  # type: ignore[arg-type]
        refused = human.refusal(self.run.state, command)
        before = self.run.state
        events = self.run.apply(command)
        if refused:
            assert events == []
            assert self.run.state is before, "a refused decision changed state"
        else:
            assert events

    @rule(data=st.data(), which=st.integers(0, 11))
    def person_cancels(self, data: st.DataObject, which: int) -> None:
        """Rarely the whole run, sometimes one task (a no-op draw otherwise)."""
        if which > 3:
            return
        task_id = "" if which == 0 else data.draw(st.sampled_from(sorted(self.run.state.tasks)))
        command = CancelRun(task_id, "human:prop")
        refused = human.refusal(self.run.state, command)
        events = self.run.apply(command)
        assert bool(events) != bool(refused)
        if not refused and not task_id:
            assert self.run.state.status == "stopped"

    @rule(data=st.data(), honest=st.integers(0, 3), spoof=st.integers(0, 5))
    def agent_bids(self, data: st.DataObject, honest: int, spoof: int) -> None:
        """A bid, mostly by a live agent of the role for a tendered task, sometimes not."""
        state = self.run.state
        tasks = sorted(state.tasks)
        tendered = [t for t in tasks if state.tasks[t].cfp_until]
        task_id = data.draw(st.sampled_from(tendered if tendered and honest else tasks))
        task = state.tasks[task_id]
        fits = sorted(a for a in self.run.live if a.rsplit("-", 1)[0] == state.role_of(task_id))
        agent = data.draw(st.sampled_from(fits if fits and honest else [*POOL, "intruder"]))
        cost = data.draw(st.sampled_from((0.0, 1.0, 2.5, -1.0)))
        offer = Bid(RUN, task_id, task.attempt + 1, agent, cost, 1.0, 0.5)
        command = SubmitBid(offer, "a-0" if spoof == 0 else agent)
        ctx = Context(self.run.now, 0.0, self.run.views(), self.run.token, self.run.rng.random)
        refused = contract_net.refusal(self.run.state, command, on_run_clock(self.run.state, ctx))
        before = self.run.state
        events = self.run.apply(command)
        if refused:
            assert events == []
            assert self.run.state is before
        else:
            assert [type(e) for e in events] == [BidReceived]

    @rule()
    def crash_and_recover(self) -> None:
        self.run.crash()

    @rule(new_now=st.sampled_from((0.5, 3.0, 40.0)), down_s=st.sampled_from((0.2, 1.0, 30.0)))
    def host_reboots(self, new_now: float, down_s: float) -> None:
        """The host restarts: the monotonic clock starts again, the wall clock goes on;
        the orchestrator rebuilds the run and moves its times onto the new clock."""
        run = self.run
        run.crash()
        run.wall_offset += run.now + down_s - new_now
        run.now, run.boot = new_now, f"{run.boot}+"
        run.apply(Resume())
        state = run.state
        if state.status != "running":
            return
        assert state.boot == run.boot, "a live run is read on this boot's clock"
        wall_now = run.wall_offset + run.now
        run_now = run.now - state.clock_shift
        assert abs(run_now - (wall_now - (state.started_at - state.started_mono))) < 1e-6, (
            "the run's clock goes on in step with the wall clock across the reboot"
        )

    @invariant()
    def pattern_invariants(self) -> None:
        if self.h is not None:
            self.h.check_state()

    def teardown(self) -> None:
        if self.h is not None and sys.exc_info()[1] is None:
            self.h.drive_to_end()
            self.h.check_state()
            for reached in sorted(self.h.reached()):
                event(reached)


# A test made by `get_state_machine_test` is a `@given` test, so pytest's
# `--hypothesis-show-statistics` reports the bounds each run reached (see `reached`).
test_pattern_state_machine = get_state_machine_test(
    PatternMachine,
    settings=settings(
        settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")),
        stateful_step_count=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ),
)
