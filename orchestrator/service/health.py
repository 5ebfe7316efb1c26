"""What an operator must see of a running orchestrator, with since-when: the event store
refusing writes, the bus connection down, a loop of the shell that stopped, a run that
nothing moves any more. `baton status` shows it and `baton health` exits by it.

Each failure that can repeat many times a second (a full disk refuses every append) is a
`Condition`: logged once, in one line, when it starts; counted while it lasts, with a
reminder line now and then; logged once more when it ends, which is once it has worked
for `SETTLE_S` with no failure (so a store that fails every other append is one long
condition, not a line per flip). So the log says what is wrong and for how long, not
the same traceback four times a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from bus.supervise import LoopHealth
from orchestrator.core.commands import AgentView
from orchestrator.core.state import RunState
from orchestrator.service.api import HealthIssue

log = logging.getLogger("baton.health")

STUCK_AFTER_S = 120.0
"""A running run with no event for this long, and nothing that would make one, is stuck."""
REMIND_S = 60.0
"""While a condition lasts, a reminder line at most this often."""
RECOVERED_KEPT_S = 600.0
"""A condition that ended is still shown (as recovered) this long."""
SETTLE_S = 3.0
"""A condition ends once what failed has worked, with no failure, for this long."""


class Condition:
    """One thing that is failing or not, with since-when and how often, logged on change."""

    def __init__(
        self,
        kind: str,
        subject: str,
        *,
        wall: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        self.kind = kind
        self.subject = subject
        self._wall = wall
        self._clock = clock
        self.failing = False
        self._since = 0.0
        self._until = 0.0
        self._count = 0
        self._detail = ""
        self._reminded = 0.0
        self._failed_at = 0.0
        self._worked_at = 0.0

    def fail(self, detail: str) -> None:
        """It failed (again): the first time logs a line, the others count."""
        self._detail = detail
        self._failed_at = self._clock()
        if not self.failing:
            self.failing = True
            self._since, self._until, self._count = self._wall(), 0.0, 1
            self._reminded = self._clock()
            log.warning("%s %s failing: %s (repeats are counted, not logged)",
                        self.kind, self.subject, detail)  # fmt: skip
            return
        self._count += 1
        if self._clock() - self._reminded >= REMIND_S:
            self._reminded = self._clock()
            log.warning("%s %s still failing, %d times in %.0f s; last: %s", self.kind,
                        self.subject, self._count, self._wall() - self._since, detail)  # fmt: skip

    def ok(self) -> None:
        """It worked: the condition ends (one line) once it has worked for `SETTLE_S`
        with no failure; `settle` ends it too when nothing happens meanwhile."""
        self._worked_at = self._clock()
        self.settle()

    def settle(self) -> None:
        """End the condition if it last worked after its last failure, `SETTLE_S` ago."""
        if not self.failing or self._worked_at <= self._failed_at:
            return
        if self._clock() - self._failed_at < SETTLE_S:
            return
        self.failing = False
        self._until = self._wall()
        log.warning("%s %s recovered after %d failures in %.1f s", self.kind, self.subject,
                    self._count, self._until - self._since)  # fmt: skip

    def issue(self) -> HealthIssue | None:
        """What to show: the failure going on, or one that ended recently (as recovered)."""
        if not self.failing and (not self._until or self._wall() - self._until > RECOVERED_KEPT_S):
            return None
        return HealthIssue(
            self.kind, self.subject, self._since, self._detail, self._count, self._until
        )


RECENT_CRASH_S = 60.0
"""How long after its last crash a supervised loop is still shown as a condition."""


class Health:
    """The orchestrator's conditions, its watched loops and its runs' progress."""

    def __init__(
        self,
        *,
        connected: Callable[[], bool],
        wall: Callable[[], float],
        clock: Callable[[], float],
        stuck_after_s: float = STUCK_AFTER_S,
        supervised: Callable[[], Mapping[str, LoopHealth]] = dict,
    ) -> None:
        self._connected = connected
        self._supervised = supervised
        self._crashes: dict[str, tuple[int, float]] = {}
        """Each supervised loop's crash count as last seen, and when it last grew."""
        self._crashing: dict[str, HealthIssue] = {}
        self._wall = wall
        self._clock = clock
        self._stuck_after_s = stuck_after_s
        self._started = wall()
        self.storage = Condition("storage", "event store", wall=wall, clock=clock)
        self.bus = Condition("bus", "nats", wall=wall, clock=clock)
        self._loops: dict[str, HealthIssue] = {}
        self._stopping = False
        self._progress: dict[str, float] = {}

    # -- what the shell tells it ---------------------------------------------------------

    def storage_failed(self, action: str, exc: BaseException) -> None:
        self.storage.fail(f"{action}: {exc}")

    def progressed(self, run_id: str) -> None:
        """Events of the run are durable now."""
        self._progress[run_id] = self._wall()

    def forget(self, run_id: str) -> None:
        self._progress.pop(run_id, None)

    def stopping(self) -> None:
        """The orchestrator stops: a loop that returns from now on was asked to."""
        self._stopping = True

    def watch(self, name: str, task: asyncio.Task[Any]) -> None:
        """A loop that must run as long as the orchestrator does: if it ends (other than
        by being cancelled), it is reported dead, with its error, logged once."""

        def ended(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is None and self._stopping:
                return  # it was asked to end (the intake's pull ends when it is closed)
            detail = f"{type(error).__name__}: {error}" if error else "returned"
            self._loops[name] = HealthIssue("loop", name, self._wall(), f"stopped: {detail}")
            log.error("loop %s stopped: %s", name, detail, exc_info=error)

        task.add_done_callback(ended)

    async def watch_conditions(self, every_s: float = 0.25) -> None:
        """Note the bus connection going down and coming back, with since-when, and end
        conditions that have settled while nothing happened."""
        while True:
            if self._connected():
                self.bus.ok()
            else:
                self.bus.fail("disconnected; reconnecting")
            self.storage.settle()
            self._note_crashes()
            await asyncio.sleep(every_s)

    def _note_crashes(self) -> None:
        """A supervised loop that crashed within `RECENT_CRASH_S` is a condition: it is
        restarted each time, but something keeps breaking it."""
        now = self._wall()
        for name, loop in self._supervised().items():
            seen, at = self._crashes.get(name, (0, 0.0))
            if loop.crashes > seen:
                self._crashes[name] = (loop.crashes, now)
                issue = self._crashing.get(name)
                self._crashing[name] = HealthIssue(
                    "loop", name, issue.since if issue else now,
                    f"crashed {loop.crashes} time(s), restarted; last: {loop.last_error}",
                )  # fmt: skip
            elif name in self._crashing and now - at > RECENT_CRASH_S:
                del self._crashing[name]

    # -- what it reports -----------------------------------------------------------------

    def issues(self, runs: Iterable[RunState], live: Collection[AgentView]) -> list[HealthIssue]:
        """Everything wrong now (and conditions that ended recently), oldest first."""
        found = [i for c in (self.storage, self.bus) if (i := c.issue()) is not None]
        found += self._loops.values()
        found += self._crashing.values()
        found += self._stuck(runs, live)
        return sorted(found, key=lambda i: i.since)

    def _stuck(self, runs: Iterable[RunState], live: Collection[AgentView]) -> list[HealthIssue]:
        """Running runs with no event for `stuck_after_s` and nothing that would make one:
        no attempt out on a live agent, no task waiting for a person."""
        now = self._wall()
        agents = {a.agent_id for a in live}
        roles = {a.role for a in live}
        stuck = []
        for state in runs:
            if state.status != "running":
                continue
            last = self._progress.get(state.run_id, self._started)
            if now - last < self._stuck_after_s:
                continue
            tasks = state.tasks.values()
            if any(t.status == "escalated" for t in tasks) or any(
                t.status == "running" and t.agent_id in agents for t in tasks
            ):
                continue
            detail = f"no event for {now - last:.0f} s"
            unserved = sorted(r for r, ready in state.ready.items() if ready and r not in roles)
            if unserved:
                detail += f"; tasks ready for {', '.join(unserved)}, which no live agent serves"
            stuck.append(HealthIssue("run", state.run_id, last, detail))
        return stuck
