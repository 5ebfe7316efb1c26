"""Token use and its cost per agent, role and model, derived from the log alone, so any
view of a run (the console's run page, at its head or at a past position) says the same.

Which agent ran an attempt is its `task.assigned`; the role is the task's step role, or
the role it was handed off to (`task.handed_off`) before that attempt; the model is what
the agent announced (`model:<name>` in its heartbeat capabilities, `bus.model_capability`) in its
join (`agent.joined`, the `system` stream) last recorded before the assignment, else its
first join after it (the join may be recorded just after the agent's first routing).
What an attempt used is its `usage.charged`. The cost is the model's configured price
(`bus.config.Price`, per million input and output tokens); none is made up: usage with
no model, a model with no price, or no input/output split has no cost, and says why.

Pure: the caller reads the events and the configuration; nothing here does I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from bus.config import Price
from orchestrator.core.events import RunEvent, TaskAssigned, TaskHandedOff, UsageCharged

UNKNOWN_AGENT = "-"
"""The agent of usage charged to an attempt the log has no assignment for."""
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Joined:
    """An agent's join as the `system` stream recorded it: where, and the model it named
    ('' none)."""

    position: int
    agent_id: str
    model: str


@dataclass(frozen=True)
class Usage:
    """The tokens of the attempts one agent ran for one role with one model ('' unknown)."""

    agent_id: str
    role: str
    model: str
    attempts: int
    tokens: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Cost:
    """What some usage cost: `amount` in `currency`, or None with the reason there is none."""

    amount: Decimal | None
    currency: str = ""
    missing: str = ""

    def shown(self) -> str:
        if self.amount is None:
            return self.missing
        return f"{format(self.amount.normalize(), 'f')} {self.currency}"


def models_by_agent(joins: Iterable[Joined]) -> dict[str, list[Joined]]:
    """Each agent's joins in the order of the log."""
    found: dict[str, list[Joined]] = {}
    for joined in sorted(joins, key=lambda j: j.position):
        found.setdefault(joined.agent_id, []).append(joined)
    return found


def model_at(joins: list[Joined], position: int) -> str:
    """The model of the last of an agent's `joins` (in log order) at or before
    `position`, else of its first after it ('' with no join at all)."""
    if not joins:
        return ""
    at = bisect.bisect_right([j.position for j in joins], position)
    return joins[at - 1].model if at else joins[0].model


@dataclass(frozen=True)
class _Attempt:
    agent_id: str
    role: str
    position: int


def usage(
    events: Iterable[tuple[int, RunEvent]],
    step_roles: Mapping[str, str],
    joins: Iterable[Joined],
) -> list[Usage]:
    """The run's usage per (agent, role, model), in the order each was first charged, from
    its own events (with their global positions, in log order), each task's role before
    any handoff (`step_roles`) and the joins of the agents that ran its attempts."""
    by_agent = models_by_agent(joins)
    roles = dict(step_roles)
    attempts: dict[tuple[str, int], _Attempt] = {}
    rows: dict[tuple[str, str, str], list[int]] = {}
    for position, event in events:
        match event:
            case TaskAssigned():
                role = roles.get(event.task_id, "")
                attempts[event.task_id, event.attempt] = _Attempt(event.agent_id, role, position)
            case TaskHandedOff():
                roles[event.task_id] = event.to_role
            case UsageCharged():
                ran = attempts.get((event.task_id, event.attempt))
                if ran is None:
                    ran = _Attempt(UNKNOWN_AGENT, roles.get(event.task_id, ""), position)
                model = model_at(by_agent.get(ran.agent_id, []), ran.position)
                row = rows.setdefault((ran.agent_id, ran.role, model), [0, 0, 0, 0])
                row[0] += 1
                row[1] += event.tokens
                row[2] += event.input_tokens
                row[3] += event.output_tokens
            case _:
                pass
    return [Usage(a, r, m, *counts) for (a, r, m), counts in rows.items()]


def cost(row: Usage, prices: Mapping[str, Price]) -> Cost:
    """What `row` cost at its model's price; no amount if the model is unknown, has no
    price, or the tokens were not reported split into input and output."""
    if not row.model:
        return Cost(None, missing="no model")
    price = prices.get(row.model)
    if price is None:
        return Cost(None, missing="no price")
    if row.tokens and row.input_tokens + row.output_tokens == 0:
        return Cost(None, missing="no input/output split")
    amount = (
        row.input_tokens * Decimal(str(price.input))
        + row.output_tokens * Decimal(str(price.output))
    ) / MILLION
    return Cost(amount, price.currency)


def totals(rows: Iterable[Usage], prices: Mapping[str, Price]) -> dict[str, Decimal]:
    """The costs that are known, summed per currency."""
    summed: dict[str, Decimal] = {}
    for row in rows:
        found = cost(row, prices)
        if found.amount is not None:
            summed[found.currency] = summed.get(found.currency, Decimal(0)) + found.amount
    return summed
