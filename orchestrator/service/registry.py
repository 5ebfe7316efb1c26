"""Live agents, as heartbeats tell them, with the load the orchestrator knows it gave them,
which process owns each agent id, and whether the orchestrator could hear them lately.

Liveness is not state worth recording per heartbeat: it is re-learned within one TTL
after a restart, and every decision made from it is recorded in the event that follows.
The decisions themselves (who owns an id, when silence means lost) are the pure
`orchestrator.core.liveness`; this keeps their state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import msgspec

from bus.protocol import Heartbeat, IdVerdict
from orchestrator.core.commands import AgentView
from orchestrator.core.liveness import (
    IdOwner,
    Link,
    check_timing,
    claim,
    grace_s,
    lost,
    observe_link,
    stalled,
)
from orchestrator.core.liveness import settled as link_settled

HEARTBEAT_S = 0.5
"""The heartbeat interval agents are told to keep, unless configured otherwise."""
AGENT_TTL = 2.0
"""How long an agent may be silent before it is lost, unless configured otherwise."""


class _Seen(msgspec.Struct):
    heartbeat: Heartbeat
    last_seen: float


class Registry:
    """Agents whose last heartbeat is younger than `ttl` seconds (monotonic time), each
    id owned by one agent process (`Heartbeat.instance`)."""

    def __init__(self, ttl: float = AGENT_TTL, heartbeat_s: float = HEARTBEAT_S) -> None:
        check_timing(ttl, heartbeat_s)
        self.ttl = ttl
        self.heartbeat_s = heartbeat_s
        self.grace = grace_s(ttl, heartbeat_s)
        """After the orchestrator (re)connects, no agent is lost and no lease checked."""
        self._link = Link(None)
        self._owners: dict[str, IdOwner] = {}
        self._agents: dict[str, _Seen] = {}
        self._inflight: dict[str, Counter[str]] = {}
        self._load: Counter[str] = Counter()
        """The sum of `_inflight` over runs, kept as it changes: routing reads it often."""

    def connection(self, connected: bool, now: float, gap: float = 0.0) -> None:
        """What the orchestrator's own bus connection is at `now` (looked at every tick,
        `gap` seconds after the tick before: a long one starts a grace too)."""
        stall = stalled(gap, self.ttl, self.heartbeat_s)
        self._link = observe_link(self._link, connected, now, stall)

    def settled(self, now: float) -> bool:
        """Whether the orchestrator has been connected long enough (`grace`) that an
        agent's silence is the agent's: only then are agents lost and leases checked."""
        return link_settled(self._link, now, self.grace)

    def observe(self, heartbeat: Heartbeat, now: float) -> tuple[bool, IdVerdict]:
        """Record a heartbeat: whether the agent joined (its id was not known, or another
        process now owns it: what it serves, and the model it calls, may have changed),
        and the sender's verdict; only the owner's heartbeats count."""
        agent_id = heartbeat.agent_id
        current = self._owners.get(agent_id)
        gone = current is not None and self._lost(current.last_seen, now)
        self._owners[agent_id], verdict = claim(current, heartbeat.instance, now, gone)
        if verdict != "owner":
            return False, verdict
        seen = self._agents.get(agent_id)
        if seen is None:
            self._agents[agent_id] = _Seen(heartbeat, now)
            return True, verdict
        took_over = seen.heartbeat.instance != heartbeat.instance
        seen.heartbeat, seen.last_seen = heartbeat, now
        return took_over, verdict

    def heard(self, agent_id: str) -> bool:
        """Whether the agent's heartbeats reach this orchestrator (since it started, and
        not lost since)."""
        return agent_id in self._agents

    def instance_of(self, agent_id: str) -> str:
        """The instance that owns the id ('' if none, or an agent that sends none)."""
        owner = self._owners.get(agent_id)
        return owner.instance if owner is not None else ""

    def _lost(self, last_seen: float, now: float) -> bool:
        return lost(last_seen, now, self.ttl, self._link, self.grace)

    def lapsed(self, now: float) -> list[tuple[str, float]]:
        """Forget agents lost (silent for longer than the TTL while the orchestrator could
        hear them); (agent id, silence) of each."""
        gone = [
            (a, now - s.last_seen) for a, s in self._agents.items() if self._lost(s.last_seen, now)
        ]
        for agent_id, _ in gone:
            del self._agents[agent_id]
            self._owners.pop(agent_id, None)
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

    def has_room(self, agent_id: str) -> bool:
        """Whether a known agent holds fewer attempts than its capacity."""
        seen = self._agents.get(agent_id)
        return seen is not None and self._load[agent_id] < seen.heartbeat.capacity

    def roles_with_room(self) -> set[str]:
        """The roles of the known agents holding fewer attempts than their capacity."""
        load = self._load
        return {s.heartbeat.role for a, s in self._agents.items() if load[a] < s.heartbeat.capacity}

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
