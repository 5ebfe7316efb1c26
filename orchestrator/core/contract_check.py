"""A workflow checked against role contracts before anything of it runs: every role it
puts to work has a contract, and every handoff it allows is allowed by the contract of
each role that may own the task. Pure."""

from __future__ import annotations

from bus.contracts import Contracts
from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import StepSpec, WorkflowSpec


def _step_roles(step: StepSpec) -> list[tuple[str, str]]:
    """The roles a step puts to work, each with where the step names it: its own role, a
    group chat's participants and selector role, a retry's role."""
    roles = [("role", step.role)] if step.role or step.chat is None else []
    if step.chat is not None:
        roles += [(f"chat.participants[{j}]", r) for j, r in enumerate(step.chat.participants)]
        if step.chat.selector_role:
            roles.append(("chat.selector_role", step.chat.selector_role))
    if step.retry is not None and step.retry.role:
        roles.append(("retry.role", step.retry.role))
    return roles


def check_roles(spec: WorkflowSpec, contracts: Contracts) -> WorkflowSpec:
    """`spec` if every role it uses has a contract and every handoff a step allows is
    allowed by the contract of each role that may own the step's task, else
    `WorkflowError` naming where."""
    for i, step in enumerate(spec.steps):
        for where, role in _step_roles(step):
            if role not in contracts:
                raise WorkflowError(f"steps[{i}].{where}", f"no contract for role {role!r}")
        if not step.role:
            continue  # a group chat: its participants own turns, none owns the task
        owners = [step.role, *step.handoff_to]
        for j, target in enumerate(step.handoff_to):
            if target not in contracts:
                raise WorkflowError(f"steps[{i}].handoff_to[{j}]", f"no contract for {target!r}")
            for owner in owners:
                if owner != target and not contracts.get(owner).may_hand_off_to(target):
                    raise WorkflowError(
                        f"steps[{i}].handoff_to[{j}]",
                        f"role {owner!r} may own this task but its contract does not allow "
                        f"a handoff to {target!r}",
                    )
    for i, agent in enumerate(spec.agents):
        if agent.role not in contracts:
            raise WorkflowError(f"agents[{i}].role", f"no contract for role {agent.role!r}")
        limit = contracts.get(agent.role).concurrency
        if agent.capacity > limit:
            raise WorkflowError(
                f"agents[{i}].capacity", f"{agent.capacity} is over the contract's {limit}"
            )
    return spec
