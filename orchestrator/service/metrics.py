"""The orchestrator's metrics: attempts started, tasks succeeded, failed and retried,
task duration and queue wait, tokens charged, append latency; and gauges read when the
SDK collects (agent load and heartbeat age, tokens used and budget left per run)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from orchestrator.core.events import (
    RunCompleted,
    RunEvent,
    RunFailed,
    TaskAssigned,
    TaskAttemptFailed,
    TaskFailed,
    TaskSucceeded,
    UsageCharged,
)
from orchestrator.core.state import RunState
from orchestrator.service.registry import Registry


def budget_remaining(state: RunState) -> int | None:
    """Tokens left in the run's token budget; None for a run without one."""
    budget = state.workflow.limits.tokens if state.workflow is not None else 0
    return budget - state.tokens_spent if budget else None


def task_role(state: RunState, task_id: str) -> str:
    """The role a task is labelled with ('' for a task the graph does not have)."""
    spec = state.graph.get(task_id)
    return spec.role if spec else ""


class RunMetrics:
    """The instruments, and what each recorded event adds to them."""

    def __init__(
        self,
        meter: Meter,
        registry: Registry,
        runs: Mapping[str, RunState],
        clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._runs = runs
        self._clock = clock
        self._failed_at: dict[tuple[str, str], float] = {}
        self._tokens: defaultdict[str, int] = defaultdict(int)
        self._started = meter.create_counter("baton.tasks.started", "{attempt}", "attempts started")
        self._succeeded = meter.create_counter("baton.tasks.succeeded", "{task}", "tasks succeeded")
        self._failed = meter.create_counter("baton.tasks.failed", "{task}", "tasks failed for good")
        self._retried = meter.create_counter("baton.tasks.retried", "{attempt}", "attempts retried")
        self._latency = meter.create_histogram(
            "baton.task.duration", "s", "first assignment to the task's end"
        )
        self._queue_wait = meter.create_histogram(
            "baton.task.queue_wait", "s", "ready to assigned, per attempt"
        )
        self._token_counter = meter.create_counter(
            "baton.tokens", "{token}", "model tokens charged to runs, by role and type"
        )
        self._append = meter.create_histogram(
            "baton.eventstore.append.duration", "s", "event store append latency"
        )
        meter.create_observable_gauge(
            "baton.agent.load", [self._observe_load], "{attempt}", "attempts an agent holds"
        )
        meter.create_observable_gauge(
            "baton.agent.heartbeat.age", [self._observe_age], "s", "since an agent's heartbeat"
        )
        meter.create_observable_gauge(
            "baton.run.tokens.used", [self._observe_tokens], "{token}", "tokens charged per run"
        )
        meter.create_observable_gauge(
            "baton.run.budget.remaining",
            [self._observe_budget],
            "{token}",
            "tokens left in a running run's budget",
        )

    def appended(self, stream_kind: str, seconds: float) -> None:
        self._append.record(seconds, {"baton.stream": stream_kind})

    def take_tokens(self, run_id: str) -> int:
        """The tokens charged to a run that ended, no longer reported per run."""
        return self._tokens.pop(run_id, 0)

    def measure(self, state: RunState, event: RunEvent) -> None:
        key = (state.run_id, getattr(event, "task_id", ""))
        match event:
            case TaskAssigned():
                role = task_role(state, event.task_id)
                self._started.add(1, {"baton.role": role})
                ready_at = self._ready_at(state, event)
                if ready_at is not None:
                    kind = "first" if event.attempt == 1 else "retry"
                    self._queue_wait.record(
                        max(0.0, event.at - ready_at), {"baton.role": role, "baton.attempt": kind}
                    )
            case TaskSucceeded():
                role = task_role(state, event.task_id)
                self._succeeded.add(1, {"baton.role": role})
                task = state.tasks[event.task_id]
                self._latency.record(
                    max(0.0, event.at - task.started_at),
                    {"baton.role": role, "baton.outcome": "succeeded"},
                )
                self._failed_at.pop(key, None)
            case TaskAttemptFailed():
                if event.retry_at is not None:
                    self._retried.add(
                        1, {"baton.role": task_role(state, event.task_id), "reason": event.reason}
                    )
                self._failed_at[key] = event.at
            case TaskFailed():
                role = task_role(state, event.task_id)
                self._failed.add(1, {"baton.role": role})
                task = state.tasks[event.task_id]
                if task.started_at:
                    self._latency.record(
                        max(0.0, event.at - task.started_at),
                        {"baton.role": role, "baton.outcome": "failed"},
                    )
                self._failed_at.pop(key, None)
            case RunCompleted() | RunFailed():
                for k in [k for k in self._failed_at if k[0] == state.run_id]:
                    del self._failed_at[k]
            case UsageCharged():
                role = task_role(state, event.task_id)
                for kind, count in (
                    ("input", event.input_tokens),
                    ("output", event.output_tokens),
                    ("other", event.tokens - event.input_tokens - event.output_tokens),
                ):
                    if count:
                        self._token_counter.add(
                            count, {"baton.role": role, "gen_ai.token.type": kind}
                        )
                self._tokens[state.run_id] += event.tokens

    def _ready_at(self, state: RunState, event: TaskAssigned) -> float | None:
        if event.attempt > 1:
            return self._failed_at.get((state.run_id, event.task_id))
        spec = state.graph.get(event.task_id)
        if spec is None:
            return None
        return max([state.started_at, *(state.tasks[d].finished_at for d in spec.deps)])

    # -- gauges --------------------------------------------------------------------------

    def _observe_load(self, options: CallbackOptions) -> Iterable[Observation]:
        for hb in self._registry.heartbeats():
            yield Observation(
                self._registry.load(hb.agent_id),
                {"baton.agent_id": hb.agent_id, "baton.role": hb.role},
            )

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        now = self._clock()
        for agent_id, role, age in self._registry.ages(now):
            yield Observation(age, {"baton.agent_id": agent_id, "baton.role": role})

    def _observe_budget(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in list(self._runs.values()):
            left = None if state.terminal else budget_remaining(state)
            if left is not None:
                yield Observation(left, {"baton.run_id": state.run_id})

    def _observe_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        for run_id, used in list(self._tokens.items()):
            yield Observation(used, {"baton.run_id": run_id})
