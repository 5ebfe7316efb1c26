"""The coordination patterns in the pure core, scenario by scenario: joins, conditions,
loops, group chats, subtasks, handoffs, budgets and limits, escalation and cancellation,
including the bad inputs each must refuse. Every scenario also checks that replaying its
log rebuilds the live state."""

from __future__ import annotations

from typing import Any

import pytest

from bus.protocol import Bid, SubtaskRequest, TaskResult, Usage
from orchestrator.core import contract_net, human
from orchestrator.core.commands import AgentView, CancelRun, HumanDecision, SubmitBid, Tick
from orchestrator.core.effects import PublishCallForProposals, SendAssignment, SendControl, effects
from orchestrator.core.events import (
    BidReceived,
    BranchTaken,
    LimitReached,
    PlanAdopted,
    PlanRejected,
    ProposalsCalled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStopped,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskEscalated,
    TaskHandedOff,
    TasksAdded,
    TaskSkipped,
    TokensReserved,
)
from orchestrator.core.state import fold
from orchestrator.core.workflow import (
    Chat,
    Condition,
    Limits,
    Loop,
    Retry,
    StepSpec,
    WorkflowSpec,
    validate,
)
from tests.test_decide import Run, kinds

AGENTS = [
    AgentView("r1", "r", 4, 0),
    AgentView("r2", "r", 4, 0),
    AgentView("w1", "w", 4, 0),
    AgentView("p1", "p", 4, 0),
]


def run_of(
    *steps: StepSpec, limits: Limits | None = None, agents: list[AgentView] | None = None
) -> Run:
    wf = validate(WorkflowSpec(name="t", steps=list(steps), limits=limits or Limits()))
    return Run(wf, agents=agents if agents is not None else list(AGENTS))


def report(
    run: Run,
    task_id: str,
    output: dict[str, Any] | None = None,
    *,
    tokens: int = 0,
    subtasks: list[SubtaskRequest] | None = None,
    handoff_to: str = "",
) -> list[RunEvent]:
    from orchestrator.core.commands import ReportResult

    t = run.state.tasks[task_id]
    result = TaskResult(
        "run1", task_id, t.attempt, t.lease_token, t.agent_id, output or {}, 0.1,
        Usage(tokens) if tokens else None, subtasks or [], handoff_to,
    )  # fmt: skip
    return run.do(ReportResult(result, t.agent_id))


def replays(run: Run) -> None:
    assert fold(type(run.state)("run1"), run.log) == run.state


def status(run: Run, task_id: str) -> str:
    return run.state.tasks[task_id].status


def of(events: list[RunEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# -- joins -------------------------------------------------------------------------------


def test_join_any_starts_after_the_first_success_and_the_run_waits_for_the_rest() -> None:
    run = run_of(
        StepSpec(id="a", role="r", fan_out=3),
        StepSpec(id="c", role="w", needs=["a"], join="any"),
    )
    events = report(run, "a[1]", {"n": 1})
    assert [e.task_id for e in of(events, TaskAssigned)] == ["c"]
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert send.assignment.input["deps"]["a[1]"] == {"n": 1}
    report(run, "c", {"done": True})
    assert run.state.status == "running"  # a[0], a[2] still run
    report(run, "a[0]")
    events = report(run, "a[2]")
    assert isinstance(events[-1], RunCompleted)
    assert events[-1].result == {"c": {"done": True}}
    replays(run)


def test_quorum_tolerates_a_failure_it_does_not_need() -> None:
    run = run_of(
        StepSpec(id="a", role="r", fan_out=3, max_attempts=1),
        StepSpec(id="c", role="w", needs=["a"], join="quorum", quorum=2),
    )
    run.fail("a[0]")
    assert run.state.status == "running"
    report(run, "a[1]")
    assert status(run, "c") == "pending"
    report(run, "a[2]")
    assert status(run, "c") == "running"
    events = report(run, "c")
    assert isinstance(events[-1], RunCompleted)
    replays(run)


def test_a_quorum_that_can_no_longer_be_met_fails_the_run_naming_the_failed_task() -> None:
    run = run_of(
        StepSpec(id="a", role="r", fan_out=3, max_attempts=1),
        StepSpec(id="c", role="w", needs=["a"], join="quorum", quorum=3),
    )
    events = run.fail("a[1]")
    assert isinstance(events[-1], RunFailed)
    assert "task a[1] failed" in events[-1].reason
    assert run.state.tasks["c"].status == "cancelled"


# -- conditions --------------------------------------------------------------------------

BRANCHES = (
    StepSpec(id="review", role="r"),
    StepSpec(id="publish", role="w", needs=["review"],
             when=Condition(step="review", key="approved", equals=True)),
    StepSpec(id="revise", role="w", needs=["review"],
             unless=Condition(step="review", key="approved", equals=True)),
    StepSpec(id="after_publish", role="w", needs=["publish"]),
    StepSpec(id="notify", role="p", needs=["publish", "revise"], join="any"),
)  # fmt: skip


def test_a_branch_whose_condition_fails_is_skipped_and_the_skip_propagates() -> None:
    run = run_of(*BRANCHES)
    events = report(run, "review", {"approved": False})
    assert {e.task_id for e in of(events, TaskSkipped)} == {"publish", "after_publish"}
    assert [e.task_id for e in of(events, BranchTaken)] == ["revise"]
    assert run.state.tasks["publish"].status == "skipped"
    assert run.state.tasks["notify"].status == "pending"
    report(run, "revise", {"text": "better"})
    events = report(run, "notify")
    assert isinstance(events[-1], RunCompleted)
    assert set(events[-1].result) == {"notify"}  # a skipped sink gives no output
    replays(run)


def test_the_taken_branch_runs_and_the_other_is_skipped() -> None:
    run = run_of(*BRANCHES)
    events = report(run, "review", {"approved": True})
    assert [e.task_id for e in of(events, TaskSkipped)] == ["revise"]
    assert run.state.tasks["publish"].status == "running"


# -- loops -------------------------------------------------------------------------------

LOOP = (
    StepSpec(id="brief", role="p"),
    StepSpec(id="write", role="w", needs=["brief"]),
    StepSpec(id="review", role="r", needs=["write"],
             loop=Loop(back_to="write", until="approved", max_rounds=3)),
    StepSpec(id="publish", role="p", needs=["review"]),
)  # fmt: skip


def test_a_loop_runs_another_round_until_the_reviewer_approves() -> None:
    run = run_of(*LOOP)
    report(run, "brief", {"topic": "x"})
    report(run, "write", {"draft": 1})
    events = report(run, "review", {"approved": False, "notes": "more"})
    [added] = of(events, TasksAdded)
    assert [t.task_id for t in added.tasks] == ["write@2", "review@2"]
    assert added.rewire == {"review": "review@2"}
    assert run.state.graph["write@2"].deps == ("brief", "review")
    assert run.state.graph["publish"].deps == ("review@2",)
    assert run.state.tasks["publish"].status == "pending"
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert send.assignment.task_id == "write@2"
    assert send.assignment.input["deps"]["review"]["notes"] == "more"
    assert send.assignment.input["round"] == 2
    report(run, "write@2", {"draft": 2})
    events = report(run, "review@2", {"approved": True})
    assert [e.task_id for e in of(events, TaskAssigned)] == ["publish"]
    events = report(run, "publish", {"ok": 1})
    assert isinstance(events[-1], RunCompleted)
    replays(run)


def test_a_loop_that_never_converges_stops_at_max_rounds_with_a_limit_event() -> None:
    run = run_of(*LOOP)
    report(run, "brief")
    for r in ("", "@2", "@3"):
        report(run, f"write{r}")
        events = report(run, f"review{r}", {"approved": False})
    [limit] = of(events, LimitReached)
    assert limit.limit == "max_loop_iterations"
    assert isinstance(events[-1], RunFailed)
    assert "review@3" in events[-1].reason
    assert "review@4" not in run.state.tasks
    replays(run)


# -- group chat --------------------------------------------------------------------------


def chat_run(chat: Chat, **limits: Any) -> Run:
    return run_of(
        StepSpec(id="talk", chat=chat, tokens=limits.pop("tokens_per_turn", 0)),
        StepSpec(id="sum", role="p", needs=["talk"]),
        limits=Limits(**limits),
    )


def talk(run: Run, turns: int, output: dict[str, Any] | None = None, tokens: int = 0) -> None:
    for _ in range(turns):
        [turn] = [t for t in run.state.tasks.values() if t.status == "running"]
        report(run, turn.task_id, output or {"say": turn.task_id}, tokens=tokens)


def test_a_chat_that_never_agrees_ends_at_max_turns_round_robin() -> None:
    run = chat_run(Chat(participants=["r", "w"], max_turns=5, until="agree"))
    talk(run, 5, {"agree": False})
    chat = run.state.tasks["talk"]
    assert chat.status == "succeeded"
    assert chat.output is not None
    assert chat.output["ended_by"] == "max_turns"
    assert [t["role"] for t in chat.output["transcript"]] == ["r", "w", "r", "w", "r"]
    assert run.state.tasks["sum"].status == "running"
    assert len(run.state.children["talk"]) == 5
    replays(run)


def test_each_turn_carries_the_transcript_so_far() -> None:
    run = chat_run(Chat(participants=["r", "w"], max_turns=3))
    talk(run, 2)
    [turn] = [t for t in run.state.tasks.values() if t.status == "running"]
    send = next(
        e for e in effects(run.state, [e for e in run.log if isinstance(e, TaskAssigned)][-1:])
        if isinstance(e, SendAssignment)
    )  # fmt: skip
    said = send.assignment.input["transcript"]
    assert [t["output"] for t in said] == [{"say": "talk#1"}, {"say": "talk#2"}]
    assert turn.task_id == "talk#3"


def chat_output(run: Run) -> dict[str, Any]:
    """The chat task's output, which a finished chat must have."""
    output = run.state.tasks["talk"].output
    assert output is not None, "the chat has ended"
    return dict(output)


def test_a_chat_ends_when_the_termination_condition_holds() -> None:
    run = chat_run(Chat(participants=["r", "w"], max_turns=9, until="agree"))
    talk(run, 1)
    talk(run, 1, {"agree": True})
    assert chat_output(run)["ended_by"] == "condition"
    assert chat_output(run)["turns"] == 2


def test_a_rule_selector_follows_its_table() -> None:
    run = chat_run(
        Chat(participants=["r", "w", "p"], max_turns=4, selector="rule", rules={"r": "p", "p": "r"})
    )
    talk(run, 4)
    said = chat_output(run)["transcript"]
    assert [t["role"] for t in said] == ["r", "p", "r", "p"]


def test_an_agent_selector_picks_each_speaker_and_a_bad_pick_falls_back() -> None:
    run = chat_run(Chat(participants=["r", "w"], max_turns=2, selector="agent", selector_role="p"))
    report(run, "talk#1-select", {"next": "w"})
    assert run.state.graph["talk#1"].role == "w"
    talk(run, 1)
    report(run, "talk#2-select", {"next": "nobody"})
    assert run.state.graph["talk#2"].role == "w"  # round-robin for turn 2
    talk(run, 1)
    assert chat_output(run)["ended_by"] == "max_turns"
    replays(run)


def test_a_chat_ends_when_the_budget_cannot_pay_another_turn() -> None:
    run = chat_run(Chat(participants=["r", "w"], max_turns=50), tokens=100, task_tokens=30)
    talk(run, 3, tokens=30)
    chat = run.state.tasks["talk"]
    assert chat.output is not None
    assert chat.output["ended_by"] == "budget"
    assert any(isinstance(e, LimitReached) and e.limit == "tokens" for e in run.log)


# -- subtasks ----------------------------------------------------------------------------


def test_subtasks_within_bounds_run_and_the_parent_gets_their_outputs() -> None:
    run = run_of(
        StepSpec(id="lead", role="p", max_subtasks=2), StepSpec(id="z", role="w", needs=["lead"])
    )
    events = report(
        run, "lead", {"plan": 1}, subtasks=[SubtaskRequest("p", {"q": 1}), SubtaskRequest("w")]
    )
    assert run.state.tasks["lead"].status == "active"
    assert {e.task_id for e in of(events, TaskAssigned)} == {"lead/0", "lead/1"}
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert send.assignment.input["params"] == {"q": 1}
    assert send.assignment.input["parent_output"] == {"plan": 1}
    report(run, "lead/0", {"a": 0})
    assert status(run, "z") == "pending"
    report(run, "lead/1", {"a": 1})
    lead = run.state.tasks["lead"]
    assert lead.status == "succeeded"
    assert lead.output == {"plan": 1, "subtasks": {"lead/0": {"a": 0}, "lead/1": {"a": 1}}}
    assert run.state.tasks["z"].status == "running"
    replays(run)


def test_a_subtask_request_over_bounds_is_refused_and_spawns_nothing() -> None:
    run = run_of(StepSpec(id="lead", role="p", max_subtasks=1, max_attempts=2))
    events = report(run, "lead", subtasks=[SubtaskRequest("r"), SubtaskRequest("r")])
    [failed] = of(events, TaskAttemptFailed)
    assert "refused: 2 subtasks asked, step lead allows 1" in failed.error
    assert set(run.state.tasks) == {"lead"}
    run.now += 10
    run.do(Tick())
    assert run.state.tasks["lead"].attempt == 2  # retried after its backoff


def test_subtasks_deeper_than_the_run_allows_are_refused() -> None:
    run = run_of(StepSpec(id="lead", role="p", max_subtasks=1), limits=Limits(max_subtask_depth=1))
    report(run, "lead", subtasks=[SubtaskRequest("p")])
    events = report(run, "lead/0", subtasks=[SubtaskRequest("p")])
    [failed] = of(events, TaskAttemptFailed)
    assert "depth 2, the run allows 1" in failed.error


# -- handoff -----------------------------------------------------------------------------


def test_a_handoff_moves_the_task_to_an_allowed_role_with_the_whole_context() -> None:
    run = run_of(StepSpec(id="desk", role="r", handoff_to=["w"]))
    events = report(run, "desk", {"said": "over to you"}, handoff_to="w")
    [handed] = of(events, TaskHandedOff)
    assert (handed.from_role, handed.to_role) == ("r", "w")
    assert run.state.tasks["desk"].agent_id == "w1"
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert send.agent_id == "w1"
    assert send.assignment.input["context"][0]["output"] == {"said": "over to you"}
    events = report(run, "desk", {"done": 1})
    assert isinstance(events[-1], RunCompleted)
    replays(run)


def test_a_handoff_to_a_role_the_step_does_not_allow_is_refused() -> None:
    run = run_of(StepSpec(id="desk", role="r", handoff_to=["w"], max_attempts=1))
    events = report(run, "desk", handoff_to="p")
    assert not of(events, TaskHandedOff)
    assert "handoff to 'p' not allowed" in of(events, TaskAttemptFailed)[0].error


def test_handoffs_stop_at_the_run_limit() -> None:
    run = run_of(
        StepSpec(id="desk", role="r", handoff_to=["w", "r"]), limits=Limits(max_handoffs=1)
    )
    report(run, "desk", handoff_to="w")
    events = report(run, "desk", handoff_to="r")
    assert [e.limit for e in of(events, LimitReached)] == ["max_handoffs"]
    assert isinstance(events[-1], RunFailed)


# -- budgets and limits ------------------------------------------------------------------


def test_tokens_are_reserved_before_dispatch_so_parallel_tasks_cannot_overshoot() -> None:
    run = run_of(StepSpec(id="a", role="r", fan_out=4, tokens=40), limits=Limits(tokens=100))
    assert [e.task_id for e in run.log if isinstance(e, TaskAssigned)] == ["a[0]", "a[1]"]
    assert sum(e.tokens for e in run.log if isinstance(e, TokensReserved)) == 80
    assert run.state.tokens_reserved == 80
    events = report(run, "a[0]", tokens=10)
    assert run.state.tokens_spent == 10
    assert [e.task_id for e in of(events, TaskAssigned)] == ["a[2]"]
    assert run.state.tokens_spent + run.state.tokens_reserved <= 100


def test_a_run_whose_agents_overspend_stops_at_its_budget_with_partial_results() -> None:
    run = run_of(StepSpec(id="a", role="r", fan_out=3, tokens=50), limits=Limits(tokens=100))
    report(run, "a[0]", {"x": 0}, tokens=50)
    events = report(run, "a[1]", {"x": 1}, tokens=50)
    [limit] = of(events, LimitReached)
    assert limit.limit == "tokens"
    assert isinstance(events[-1], RunStopped)
    assert events[-1].result == {"a[0]": {"x": 0}, "a[1]": {"x": 1}}
    assert run.state.status == "stopped"
    assert run.state.tasks["a[2]"].status == "cancelled"
    replays(run)


def test_a_task_over_its_own_budget_fails_with_a_limit_event() -> None:
    run = run_of(StepSpec(id="a", role="r", tokens=10))
    events = report(run, "a", tokens=11)
    assert [e.limit for e in of(events, LimitReached)] == ["task_tokens"]
    assert isinstance(events[-1], RunFailed)


def test_a_retry_may_go_to_another_role_with_a_smaller_budget() -> None:
    run = run_of(
        StepSpec(id="a", role="r", tokens=50, retry=Retry(role="w", tokens=20)),
        limits=Limits(tokens=1000),
    )
    run.fail("a")
    run.now += 10
    events = run.do(Tick())
    [assigned] = of(events, TaskAssigned)
    assert assigned.agent_id == "w1"
    assert [e.tokens for e in of(events, TokensReserved)] == [20]


def test_the_deadline_stops_the_run_and_cancels_work_in_flight() -> None:
    run = run_of(
        StepSpec(id="a", role="r"), StepSpec(id="b", role="r"), limits=Limits(deadline_s=30)
    )
    report(run, "a", {"ok": 1})
    run.now += 31
    events = run.do(Tick())
    assert [e.limit for e in of(events, LimitReached)] == ["deadline"]
    assert isinstance(events[-1], RunStopped)
    assert events[-1].result == {"a": {"ok": 1}}
    controls = [e for e in effects(run.state, events) if isinstance(e, SendControl)]
    assert [c.control.task_id for c in controls] == ["b"]


def test_max_steps_stops_the_run() -> None:
    run = run_of(
        StepSpec(id="a", role="r"),
        StepSpec(id="b", role="r", needs=["a"]),
        limits=Limits(max_steps=1),
    )
    events = report(run, "a")
    assert [e.limit for e in of(events, LimitReached)] == ["max_steps"]
    assert run.state.status == "stopped"


# -- escalation and cancellation ---------------------------------------------------------


def escalating() -> Run:
    run = run_of(StepSpec(id="a", role="r", max_attempts=1, on_exhausted="escalate"),
                 StepSpec(id="b", role="w", needs=["a"]))  # fmt: skip
    events = run.fail("a")
    assert of(events, TaskEscalated)
    assert run.state.status == "running"
    assert run.state.tasks["a"].status == "escalated"
    return run


def test_an_escalated_task_approved_by_a_person_lets_the_run_go_on() -> None:
    run = escalating()
    events = run.do(HumanDecision("a", "approve", "human:ann", "fine", {"manual": 1}))
    assert kinds(events)[:3] == ["HumanDecided", "TaskSucceeded", "TaskAssigned"]
    assert run.state.tasks["a"].output == {"manual": 1}
    replays(run)


def test_an_escalated_task_rejected_fails_the_run() -> None:
    run = escalating()
    events = run.do(HumanDecision("a", "reject", "human:ann", "no"))
    assert isinstance(events[-1], RunFailed)
    assert "rejected by human:ann: no" in events[-1].reason


def test_an_escalated_task_retried_gets_a_fresh_attempt() -> None:
    run = escalating()
    events = run.do(HumanDecision("a", "retry", "human:ann"))
    [assigned] = of(events, TaskAssigned)
    assert assigned.attempt == 2


def test_decisions_on_tasks_not_waiting_for_one_are_refused_and_change_nothing() -> None:
    run = escalating()
    for bad in (HumanDecision("b", "approve", "x"), HumanDecision("zz", "retry", "x")):
        assert human.refusal(run.state, bad)
        before = run.state
        assert run.do(bad) == []
        assert run.state == before


def test_cancelling_a_run_stops_it_and_tells_the_agents_holding_work() -> None:
    run = run_of(StepSpec(id="a", role="r", fan_out=2))
    events = run.do(CancelRun("", "human:bob"))
    assert isinstance(events[-1], RunStopped)
    assert events[-1].limit == "cancelled"
    controls = [e for e in effects(run.state, events) if isinstance(e, SendControl)]
    assert sorted(c.control.task_id for c in controls) == ["a[0]", "a[1]"]
    assert human.refusal(run.state, CancelRun("", "x")) == "run run1 is already stopped"
    replays(run)


def test_cancelling_one_task_ends_it_and_the_run_fails_if_it_was_needed() -> None:
    run = run_of(StepSpec(id="a", role="r", fan_out=2), StepSpec(id="b", role="w", needs=["a"]))
    events = run.do(CancelRun("a[0]", "human:bob", "not needed"))
    assert kinds(events)[:2] == ["CancelRequested", "TaskCancelled"]
    assert isinstance(events[-1], RunFailed)
    assert "task a[0] cancelled" in events[-1].reason


@pytest.mark.parametrize("task_id", ["nope", "a[0]"])
def test_a_bad_cancel_is_refused(task_id: str) -> None:
    run = run_of(StepSpec(id="a", role="r", fan_out=2))
    report(run, "a[0]")
    assert human.refusal(run.state, CancelRun(task_id, "x"))
    assert run.do(CancelRun(task_id, "x")) == []


# -- contract net ------------------------------------------------------------------------


def tendered() -> Run:
    run = run_of(StepSpec(id="job", role="r", routing="contract_net", bid_window_s=1.0))
    [called] = of(run.log, ProposalsCalled)
    assert (called.task_id, called.attempt, called.until) == ("job", 1, run.now + 1.0)
    assert not of(run.log, TaskAssigned)
    return run


def bid(run: Run, agent: str, cost: float, *, sender: str = "", attempt: int = 1) -> list[RunEvent]:
    offer = Bid("run1", "job", attempt, agent, cost, 1.0, 0.5)
    return run.do(SubmitBid(offer, sender or agent))


def test_contract_net_awards_the_best_bid_after_the_window() -> None:
    run = tendered()
    calls = [e for e in effects(run.state, run.log) if isinstance(e, PublishCallForProposals)]
    assert [c.call.role for c in calls] == ["r"]
    assert of(bid(run, "r1", 5.0), BidReceived)
    assert of(bid(run, "r2", 2.0), BidReceived)
    assert run.do(Tick()) == []  # the window is still open
    run.now += 1.0
    [assigned] = of(run.do(Tick()), TaskAssigned)
    assert assigned.agent_id == "r2"
    assert assigned.reason.startswith("contract net: best of 2 usable bid(s) of 2: cost 2")
    replays(run)


def test_contract_net_without_bids_falls_back_to_plain_routing() -> None:
    run = tendered()
    run.now += 1.5
    [assigned] = of(run.do(Tick()), TaskAssigned)
    assert assigned.reason.startswith("contract net: no usable bid; role r: least loaded")


def test_a_bid_from_an_agent_that_vanished_is_not_awarded() -> None:
    run = tendered()
    bid(run, "r1", 1.0)
    bid(run, "r2", 9.0)
    run.agents = [a for a in run.agents if a.agent_id != "r1"]
    run.now += 1.0
    [assigned] = of(run.do(Tick()), TaskAssigned)
    assert assigned.agent_id == "r2"
    assert "best of 1 usable bid(s) of 2" in assigned.reason


@pytest.mark.parametrize(
    ("agent", "sender", "attempt", "late", "why"),
    [
        ("r1", "r2", 1, False, "sent by r2 but claims to be from r1"),
        ("w1", "", 1, False, "not a live agent of role r"),
        ("r1", "", 2, False, "not out to tender"),
        ("r1", "", 1, True, "window has closed"),
    ],
)
def test_bad_bids_are_refused_and_change_nothing(
    agent: str, sender: str, attempt: int, late: bool, why: str
) -> None:
    run = tendered()
    if late:
        run.now += 2.0
    command = SubmitBid(Bid("run1", "job", attempt, agent, 1.0, 1.0, 0.5), sender or agent)
    assert why in contract_net.refusal(run.state, command, run.ctx())
    before = run.state
    assert run.do(command) == []
    assert run.state == before


def test_a_second_bid_from_the_same_agent_is_refused() -> None:
    run = tendered()
    bid(run, "r1", 3.0)
    assert bid(run, "r1", 1.0) == []
    assert [b.cost for b in run.state.tasks["job"].bids] == [3.0]


def test_a_retry_is_put_out_to_tender_again() -> None:
    run = tendered()
    bid(run, "r1", 1.0)
    run.now += 1.0
    run.do(Tick())
    run.fail("job")
    assert run.state.tasks["job"].bids == ()
    run.now += 10
    [called] = of(run.do(Tick()), ProposalsCalled)
    assert called.attempt == 2


# -- replanning --------------------------------------------------------------------------


def replanning(limits: Limits | None = None) -> Run:
    run = run_of(
        StepSpec(id="gather", role="r"),
        StepSpec(id="fetch", role="r", needs=["gather"], max_attempts=1, on_exhausted="replan",
                 tokens=10),
        StepSpec(id="write", role="w", needs=["fetch"], tokens=10),
        limits=limits or Limits(tokens=100, task_tokens=10),
        agents=[*AGENTS, AgentView("planner-1", "planner", 1, 0)],
    )  # fmt: skip
    report(run, "gather", {"g": 1})
    events = run.fail("fetch")
    assert [type(e).__name__ for e in events][:3] == [
        "TaskAttemptFailed", "ReplanRequested", "TasksAdded",
    ]  # fmt: skip
    assert run.state.tasks["fetch~replan1"].agent_id == "planner-1"
    return run


def test_a_valid_plan_is_adopted_and_replaces_what_had_not_started() -> None:
    run = replanning()
    send = next(e for e in effects(run.state, run.log[-3:]) if isinstance(e, SendAssignment))
    assert send.assignment.input["failed"]["step"] == "fetch"
    assert send.assignment.input["done"] == {"gather": {"g": 1}}
    plan = {"steps": [
        {"id": "fetch2", "role": "w", "needs": ["gather"]},
        {"id": "write2", "role": "w", "needs": ["fetch2"]},
    ]}  # fmt: skip
    events = report(run, "fetch~replan1", plan)
    skipped = {e.task_id for e in of(events, TaskSkipped)}
    assert skipped == {"fetch", "write"}
    [adopted] = of(events, PlanAdopted)
    assert [t.task_id for t in adopted.tasks] == ["fetch2", "write2"]
    assert run.state.graph["fetch2"].deps == ("gather",)
    assert run.state.tasks["fetch2"].status == "running"
    report(run, "fetch2")
    events = report(run, "write2", {"done": 1})
    assert isinstance(events[-1], RunCompleted)
    assert events[-1].result == {"write2": {"done": 1}}
    replays(run)


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        ({"nope": []}, "needs a `steps` list"),
        ({"steps": [{"id": "x", "role": "w", "colour": 1}]}, "unknown field `colour`"),
        ({"steps": [{"id": "a", "role": "w", "needs": ["b"]},
                    {"id": "b", "role": "w", "needs": ["a"]}]}, "dependency cycle"),
        ({"steps": [{"id": "x", "role": "ghost"}]}, "unknown role 'ghost'"),
        ({"steps": [{"id": "x", "role": "w", "needs": ["write"]}]}, "neither a new step"),
        ({"steps": [{"id": "gather", "role": "w"}]}, "already taken"),
        ({"steps": [{"id": "x", "role": "w", "fan_out": 20}]}, "the plan needs 200 tokens"),
    ],
)  # fmt: skip
def test_an_invalid_plan_is_rejected_and_nothing_of_it_adopted(plan: Any, why: str) -> None:
    run = replanning()
    before = set(run.state.graph)
    events = report(run, "fetch~replan1", plan)
    [rejected] = of(events, PlanRejected)
    assert why in rejected.reason
    assert not of(events, PlanAdopted)
    assert set(run.state.graph) == before
    assert isinstance(events[-1], RunFailed)
    assert "replan rejected" in events[-1].reason


def test_replans_are_bounded_per_run() -> None:
    run = run_of(
        StepSpec(id="a", role="r", max_attempts=1, on_exhausted="replan"),
        limits=Limits(max_replans=0),
        agents=[*AGENTS, AgentView("planner-1", "planner", 1, 0)],
    )
    events = run.fail("a")
    assert [e.limit for e in of(events, LimitReached)] == ["max_replans"]
    assert isinstance(events[-1], RunFailed)


def test_a_failed_planner_fails_the_task() -> None:
    run = replanning()
    events = run.fail("fetch~replan1")
    assert isinstance(events[-1], RunFailed)
    assert "replan failed" in events[-1].reason


def test_a_subtask_for_a_role_the_workflow_does_not_know_is_refused() -> None:
    run = run_of(StepSpec(id="lead", role="p", max_subtasks=1))
    events = report(run, "lead", subtasks=[SubtaskRequest("ghost")])
    [failed] = of(events, TaskAttemptFailed)
    assert "unknown subtask role 'ghost'" in failed.error


def test_replans_stay_bounded_when_several_tasks_give_up_in_one_decision() -> None:
    """Found by the pattern state machine: three copies timing out in one tick each asked
    for a replan, all checked against the count before the tick."""
    run = run_of(
        StepSpec(id="a", role="r", fan_out=3, max_attempts=1, on_exhausted="replan", timeout_s=1),
        limits=Limits(max_replans=2),
        agents=[AgentView("r1", "r", 3, 0), AgentView("planner-1", "planner", 3, 0)],
    )
    run.now += 2
    events = run.do(Tick())
    assert run.state.replans == 2
    assert [e.limit for e in of(events, LimitReached)] == ["max_replans"]


def test_running_out_of_steps_mid_dispatch_sends_nothing_it_then_cancels() -> None:
    """A limit hit halfway through a dispatch stops the run from the state before that
    dispatch: no assignment goes out only to be cancelled, no cancel names an agent that
    never held the task."""
    run = run_of(StepSpec(id="a", role="r", fan_out=3), limits=Limits(max_steps=2))
    assert not of(run.log, TaskAssigned)
    assert all(e.agent_id == "" for e in of(run.log, TaskCancelled))
    assert run.state.status == "stopped"
    assert run.state.limit == "max_steps"
