"""Token use and cost per agent, role and model (`orchestrator.cli.costs`), from events
alone: which agent ran each attempt, the model of its join nearest that attempt, the
role after handoffs, and a cost only where the model has a configured price. Pure: no
store, no bus (but the console's reading of the joins, on a real SQLite log)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.config import Price
from bus.model_capability import announcing, model_capability, model_of
from eventstore import SqliteEventStore
from orchestrator.cli import costs
from orchestrator.cli.console import reads
from orchestrator.cli.costs import Joined, Usage
from orchestrator.core.events import (
    AgentJoined,
    AgentLost,
    RunEvent,
    SystemEvent,
    TaskAssigned,
    TaskHandedOff,
    UsageCharged,
)
from orchestrator.service import journal

PRICES = {"big": Price(2.5, 10.0, "USD"), "small": Price(0.15, 0.6, "USD")}


def _assigned(task: str, attempt: int, agent: str) -> TaskAssigned:
    return TaskAssigned(task, attempt, agent, "lease", "least loaded", 1.0, 1.0)


def _charged(task: str, attempt: int, tokens_in: int, tokens_out: int) -> UsageCharged:
    return UsageCharged(task, attempt, tokens_in + tokens_out, 2.0, tokens_in, tokens_out)


def _numbered(*events: RunEvent, start: int = 10) -> list[tuple[int, RunEvent]]:
    return [(start + 10 * n, e) for n, e in enumerate(events)]


def test_the_model_capability_round_trips_and_the_first_counts() -> None:
    assert model_of([model_capability("qwen2.5:7b")]) == "qwen2.5:7b"
    assert model_of(["research", "model:a", "model:b"]) == "a"
    assert model_of(["research", "model:"]) == ""
    assert model_of([]) == ""
    assert announcing(["r", "model:old"], "new") == ["r", "model:new"]
    assert announcing(["r", "model:given"], "") == ["r", "model:given"]


def test_attempts_of_several_agents_are_charged_to_each_with_its_model() -> None:
    events = _numbered(
        _assigned("a", 1, "w1"),
        _charged("a", 1, 100, 20),
        _assigned("b", 1, "w2"),
        _charged("b", 1, 1000, 200),
        _assigned("c", 1, "w1"),
        _charged("c", 1, 10, 2),
    )
    joins = [Joined(1, "w1", "small"), Joined(2, "w2", "big")]
    rows = costs.usage(events, {"a": "research", "b": "research", "c": "write"}, joins)
    assert rows == [
        Usage("w1", "research", "small", 1, 120, 100, 20),
        Usage("w2", "research", "big", 1, 1200, 1000, 200),
        Usage("w1", "write", "small", 1, 12, 10, 2),
    ]
    shown = [costs.cost(r, PRICES).shown() for r in rows]
    # 100 * 0.15/M + 20 * 0.6/M; 1000 * 2.5/M + 200 * 10/M; 10 * 0.15/M + 2 * 0.6/M
    assert shown == ["0.000027 USD", "0.0045 USD", "0.0000027 USD"]
    assert costs.totals(rows, PRICES) == {"USD": Decimal("0.0045297")}


def test_retries_of_one_task_on_two_agents_are_each_charged_to_their_own_agent() -> None:
    events = _numbered(
        _assigned("a", 1, "w1"),
        _charged("a", 1, 5, 5),
        _assigned("a", 2, "w2"),
        _charged("a", 2, 7, 1),
    )
    rows = costs.usage(events, {"a": "r"}, [Joined(1, "w1", "small"), Joined(1, "w2", "small")])
    assert [(r.agent_id, r.tokens, r.attempts) for r in rows] == [("w1", 10, 1), ("w2", 8, 1)]


def test_an_agent_without_a_model_has_tokens_but_no_cost() -> None:
    events = _numbered(_assigned("a", 1, "plain"), _charged("a", 1, 3, 4))
    rows = costs.usage(events, {"a": "r"}, [Joined(1, "plain", "")])
    assert rows == [Usage("plain", "r", "", 1, 7, 3, 4)]
    assert costs.cost(rows[0], PRICES) == costs.Cost(None, missing="no model")
    assert costs.usage(events, {"a": "r"}, [])[0].model == "", "no join recorded at all"
    assert costs.totals(rows, PRICES) == {}


def test_a_model_without_a_price_is_never_given_one() -> None:
    row = Usage("w", "r", "mystery-7b", 1, 50, 40, 10)
    assert costs.cost(row, PRICES).shown() == "no price"
    assert costs.cost(row, {}).amount is None


def test_usage_without_an_input_output_split_has_no_cost() -> None:
    row = Usage("w", "r", "small", 1, 50, 0, 0)
    assert costs.cost(row, PRICES).shown() == "no input/output split"
    assert costs.cost(Usage("w", "r", "small", 1, 0, 0, 0), PRICES).shown() == "0 USD"


def test_an_agent_that_rejoined_with_another_model_is_priced_per_attempt() -> None:
    events = _numbered(
        _assigned("a", 1, "w"),
        _charged("a", 1, 10, 0),
        _assigned("b", 1, "w"),
        _charged("b", 1, 10, 0),
        start=100,
    )
    # joined with `small` before the first attempt, again with `big` between the two
    joins = [Joined(50, "w", "small"), Joined(115, "w", "big")]
    rows = costs.usage(events, {"a": "r", "b": "r"}, joins)
    assert [(r.model, r.tokens) for r in rows] == [("small", 10), ("big", 10)]


def test_a_join_recorded_just_after_the_first_routing_still_names_the_model() -> None:
    events = _numbered(_assigned("a", 1, "w"), _charged("a", 1, 1, 1), start=100)
    assert costs.usage(events, {"a": "r"}, [Joined(105, "w", "small")])[0].model == "small"


def test_a_handoff_charges_later_attempts_to_the_new_role() -> None:
    events = _numbered(
        _assigned("t", 1, "w1"),
        _charged("t", 1, 1, 1),
        TaskHandedOff("t", 1, "w1", "triage", "billing", {}, 3.0),
        _assigned("t", 2, "w2"),
        _charged("t", 2, 2, 2),
    )
    rows = costs.usage(events, {"t": "triage"}, [])
    assert [(r.agent_id, r.role) for r in rows] == [("w1", "triage"), ("w2", "billing")]


def test_usage_the_log_has_no_assignment_for_is_shown_not_lost() -> None:
    rows = costs.usage(_numbered(_charged("x", 1, 2, 3)), {"x": "r"}, [])
    assert rows == [Usage(costs.UNKNOWN_AGENT, "r", "", 1, 5, 2, 3)]


_runs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["w1", "w2", "w3"]),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(runs=_runs, priced=st.sets(st.sampled_from(["big", "small"])))
def test_every_charged_token_is_in_exactly_one_row_and_costs_add_up(
    runs: list[tuple[str, str, int, int]], priced: set[str]
) -> None:
    events: list[RunEvent] = []
    attempt: dict[str, int] = {}
    for task, agent, tokens_in, tokens_out in runs:
        attempt[task] = attempt.get(task, 0) + 1
        events += [
            _assigned(task, attempt[task], agent),
            _charged(task, attempt[task], tokens_in, tokens_out),
        ]
    joins = [Joined(0, "w1", "big"), Joined(0, "w2", "small"), Joined(0, "w3", "")]
    prices = {m: p for m, p in PRICES.items() if m in priced}
    rows = costs.usage(_numbered(*events), {"a": "r", "b": "r", "c": "s"}, joins)
    assert sum(r.tokens for r in rows) == sum(i + o for _, _, i, o in runs)
    assert sum(r.attempts for r in rows) == len(runs)
    assert len({(r.agent_id, r.role, r.model) for r in rows}) == len(rows)
    expected = (
        sum(
            (
                Decimal(i) * Decimal(str(prices[m].input))
                + Decimal(o) * Decimal(str(prices[m].output))
                for _, agent, i, o in runs
                if (m := {"w1": "big", "w2": "small"}.get(agent, "")) in prices and (i or o)
            ),
            Decimal(0),
        )
        / costs.MILLION
    )
    assert costs.totals(rows, prices).get("USD", Decimal(0)) == expected


def test_the_consoles_joins_are_read_once_then_only_as_the_log_grows(tmp_path: Path) -> None:
    """`reads.Joins` on a real SQLite log: each join once, with its model, in log order,
    however often it is asked and whatever else the system stream holds."""

    async def scenario() -> tuple[list[Joined], list[Joined], int]:
        store = await SqliteEventStore.open(tmp_path / "events.db")
        try:
            version = 0

            async def record(event: SystemEvent, actor: str) -> None:
                nonlocal version
                envelope = journal.system_envelope(version + 1, event, actor)
                await store.append(journal.SYSTEM_STREAM, [envelope], version)
                version += 1

            joins = reads.Joins()
            await record(AgentJoined("w1", "r", ["r", model_capability("small")], 1, 1.0), "w1")
            await record(AgentLost("w1", 3.0, 2.0), "w1")
            first = list(await joins.all(store))
            await record(AgentJoined("w2", "r", ["r"], 1, 3.0), "w2")
            await record(AgentJoined("w1", "r", ["r", model_capability("big")], 1, 4.0), "w1")
            second = list(await joins.all(store))
            again = await joins.all(store)
            return first, second, len(again)
        finally:
            await store.close()

    first, second, again = asyncio.run(scenario())
    assert [(j.agent_id, j.model) for j in first] == [("w1", "small")]
    assert [(j.agent_id, j.model) for j in second] == [("w1", "small"), ("w2", ""), ("w1", "big")]
    assert [j.position for j in second] == sorted(j.position for j in second)
    assert again == 3, "nothing read twice"
