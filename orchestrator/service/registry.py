"""Live agents, as heartbeats tell them, with the load the orchestrator knows it gave them.

Liveness is not state worth recording per heartbeat: it is re-learned within one TTL
after a restart, and every decision made from it is recorded in the event that follows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import msgspec

from bus.protocol import Heartbeat
from orchestrator.core.commands import AgentView


class _Seen(msgspec.Struct):
    heartbeat: Heartbeat
    last_seen: float


class Registry:
    """Agents whose last heartbeat is younger than `ttl` seconds (monotonic time)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._agents: dict[str, _Seen] = {}
        self._inflight: dict[str, Counter[str]] = {}
        self._load: Counter[str] = Counter()
        """The sum of `_inflight` over runs, kept as it changes: routing reads it often."""

    def observe(self, heartbeat: Heartbeat, now: float) -> bool:
        """Record a heartbeat; True when the agent was not known (it joined)."""
        seen = self._agents.get(heartbeat.agent_id)
        if seen is None:
            self._agents[heartbeat.agent_id] = _Seen(heartbeat, now)
            return True
        seen.heartbeat, seen.last_seen = heartbeat, now
        return False

    def lapsed(self, now: float) -> list[tuple[str, float]]:
        """Forget agents silent for longer than the TTL; (agent id, silence) of each."""
        gone = [
            (a, now - s.last_seen) for a, s in self._agents.items() if now - s.last_seen > self.ttl
        ]
        for agent_id, _ in gone:
            del self._agents[agent_id]
        return gone

    def set_inflight(self, run_id: str, running: Mapping[str, int]) -> None:
        """The attempts one run has out, per agent (a run rebuilt from the log)."""
        self.add_inflight(run_id, {a: -n for a, n in self._inflight.get(run_id, {}).items()})
        self.add_inflight(run_id, running)

    def add_inflight(self, run_id: str, delta: Mapping[str, int]) -> None:
        """Attempts a decision gave out (+) or ended (-), per agent; a run with none left
        out is forgotten."""
        counts = self._inflight.setdefault(run_id, Counter())
        for agent_id, n in delta.items():
            if n:
                counts[agent_id] += n
                self._load[agent_id] += n
                if not counts[agent_id]:
                    del counts[agent_id]
                if not self._load[agent_id]:
                    del self._load[agent_id]
        if not counts:
            del self._inflight[run_id]

    def load(self, agent_id: str) -> int:
        """Attempts the agent holds, over every run."""
        return self._load[agent_id]

    def live(self, now: float) -> list[AgentView]:
        """Routable agents, sorted by id, with the load the orchestrator gave them."""
        views = []
        for agent_id in sorted(self._agents):
            seen = self._agents[agent_id]
            if now - seen.last_seen > self.ttl:
                continue
            hb = seen.heartbeat
            views.append(AgentView(agent_id, hb.role, hb.capacity, self.load(agent_id)))
        return views

    def ages(self, now: float) -> list[tuple[str, str, float]]:
        """(agent id, role, seconds since its last heartbeat) of every known agent."""
        return [(a, s.heartbeat.role, now - s.last_seen) for a, s in self._agents.items()]

    def role_of(self, agent_id: str) -> str | None:
        """The role a known agent serves (as its last heartbeat said), else None."""
        seen = self._agents.get(agent_id)
        return seen.heartbeat.role if seen is not None else None

    def heartbeats(self) -> list[Heartbeat]:
        return [s.heartbeat for s in self._agents.values()]
