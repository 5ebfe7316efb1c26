"""Timers and liveness: the tick that lets the core act on time (leases, backoffs,
deadlines), and the agents' heartbeats that keep the registry of live agents (joins and
losses recorded in the `system` stream; an agent serving a contract we do not know is
refused, never routed to, and so is a second process with a live agent's id).

Each heartbeat is answered (`HeartbeatAck`) with the sender's verdict on its id and the
interval and TTL to keep. A loop of its own looks at the orchestrator's bus connection
every `LOOK_S`, and so does each tick before it judges: while the connection is down,
and for a grace period after it is back (or after this process did not run for a while),
no agent is lost and no lease is checked, since the silence was the orchestrator's."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Incoming
from bus.contracts import Contracts
from bus.errors import BusError, MalformedMessage
from bus.protocol import Heartbeat, HeartbeatAck, Progress
from orchestrator.core.commands import Tick
from orchestrator.core.events import AgentJoined, AgentLost, AgentRefused
from orchestrator.service.bounded import Lru
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.pipeline import Pipeline
from orchestrator.service.registry import Registry
from orchestrator.service.system_journal import SystemJournal

_heartbeat_decoder: Decoder[Heartbeat] = Decoder(Heartbeat)
REFUSED_LIMIT = 10_000
LOOK_S = 0.1
"""How often the orchestrator looks at its own bus connection (and notices it was not
running)."""
Send = Callable[[str, bytes], Awaitable[None]]
"""Publishes one message (fire and forget); a `BusError` is logged, nothing more."""


class Liveness:
    """Heartbeats in, the registry kept, lost agents recorded, the runs ticked."""

    def __init__(
        self,
        registry: Registry,
        pipeline: Pipeline,
        system: SystemJournal,
        contracts: Contracts | None,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        tick_s: float,
        send: Send,
        connected: Callable[[], bool],
        joined: Callable[[str], None] = lambda agent_id: None,
    ) -> None:
        self._registry = registry
        self._joined = joined
        """Told of each agent that joins (or whose id another process took over)."""
        self._send = send
        self._connected = connected
        self._looked: float | None = None
        self._pipeline = pipeline
        self._system = system
        self._contracts = contracts
        self._clock = clock
        self._wall = wall
        self._tick_s = tick_s
        self._refused: Lru[tuple[str, str, str], None] = Lru(REFUSED_LIMIT)
        """(agent, role, digest) already audited as refused; forgetting one audits it
        again (within the sender's audit rate), nothing more."""

    def agents(self) -> list[Heartbeat]:
        return self._registry.heartbeats()

    def agent_status(self) -> list[tuple[Heartbeat, int, float]]:
        """Each known agent's last heartbeat, the load routing counts for it, and the
        heartbeat's age in seconds."""
        ages = {agent_id: age for agent_id, _, age in self._registry.ages(self._clock())}
        return [
            (hb, self._registry.load(hb.agent_id), ages.get(hb.agent_id, 0.0))
            for hb in self._registry.heartbeats()
        ]

    async def wait_for_agents(self, roles: Counter[str], timeout: float) -> None:
        """Until at least `roles[r]` live agents serve each role r (or TimeoutError)."""
        async with asyncio.timeout(timeout):
            while True:
                live = Counter(a.role for a in self._registry.live(self._clock()))
                if all(live[r] >= n for r, n in roles.items()):
                    return
                await asyncio.sleep(0.05)

    def look_at_connection(self) -> None:
        """Note the orchestrator's own bus connection now, and how long since the last
        look: a look that comes late means this process did not run (paused, starved),
        so heartbeats may be waiting unread. Either starts a grace."""
        now = self._clock()
        late = now - self._looked - LOOK_S if self._looked is not None else 0.0
        self._looked = now
        self._registry.connection(self._connected(), now, late)

    async def look_loop(self) -> None:
        """Look at the connection every `LOOK_S`, whatever else the orchestrator does."""
        while True:
            await asyncio.sleep(LOOK_S)
            self.look_at_connection()

    async def tick_loop(self) -> None:
        """Every `tick_s`: record agents lost, and tick each running run; leases are
        checked only once the orchestrator has been connected for the registry's grace
        (after its start, after it was cut off, or after it did not run for longer than
        a live agent's heartbeat may be old)."""
        while True:
            await asyncio.sleep(self._tick_s)
            await self._system.flush()
            self.look_at_connection()  # just before judging: a pause may have ended now
            now = self._clock()
            for agent_id, silent in self._registry.lapsed(now):
                await self._system.record(AgentLost(agent_id, silent, self._wall()), ORCHESTRATOR)
                await self._changed("agent.lost", agent_id, f"silent {silent:.1f}s")
            warm = self._registry.settled(now)
            cause = Cause("tick", ORCHESTRATOR)
            for run_id, state in list(self._pipeline.runs.items()):
                if state.status == "running":
                    await self._pipeline.execute(run_id, [(Tick(check_leases=warm), cause)])

    async def on_heartbeat(self, msg: Incoming) -> None:
        try:
            hb = _heartbeat_decoder.decode(msg.data)
            if subjects.heartbeat(hb.agent_id) != msg.subject:
                raise MalformedMessage(f"heartbeat for {hb.agent_id} sent on {msg.subject}")
        except BusError as exc:
            await self._system.reject(msg.subject, str(exc), len(msg.data))
            return
        contracts = self._contracts
        why = ""
        if contracts is not None:
            why = contracts.verdict(hb.role, hb.contract_digest, hb.capacity)
        if why:
            await self._refuse(hb, why)
            return
        joined, verdict = self._registry.observe(hb, self._clock())
        detail = ""
        if verdict != "owner":
            detail = (
                f"agent id {hb.agent_id!r} is in use by another live process; stop that one "
                "or give this one another --id"
            )
        if verdict == "refused":
            await self._refuse(hb, f"duplicate agent id: {detail}", ("duplicate", hb.instance))
        ack = HeartbeatAck(
            hb.instance, verdict, self._registry.heartbeat_s, self._registry.ttl, detail
        )
        await self._send(subjects.registry(hb.agent_id), encode(ack))
        if joined:
            joined_event = AgentJoined(
                hb.agent_id, hb.role, hb.capabilities, hb.capacity, self._wall()
            )
            await self._system.record(joined_event, hb.agent_id)
            await self._changed("agent.joined", hb.agent_id, hb.role)
            self._joined(hb.agent_id)

    async def _changed(self, what: str, agent_id: str, detail: str) -> None:
        """Tell whoever watches the agents (the console's agents page) that one joined,
        was lost or refused, once it is recorded."""
        await self._send(
            subjects.AGENT_CHANGES, encode(Progress("", what, agent_id=agent_id, detail=detail))
        )

    async def _refuse(self, hb: Heartbeat, why: str, what: tuple[str, str] | None = None) -> None:
        """Never route to an agent serving a contract we do not know, nor to a second
        process with a live agent's id; audit each once (per `what`: by default its role
        and contract digest)."""
        first, second = what or (hb.role, hb.contract_digest)
        key = (hb.agent_id, first, second)
        if key not in self._refused:
            self._refused.set(key, None)
            event = AgentRefused(hb.agent_id, hb.role, hb.contract_digest, why, self._wall())
            await self._system.refuse(event)
            await self._changed("agent.refused", hb.agent_id, why)

    def refused_tracked(self) -> int:
        """How many refused (agent, role, digest) are remembered (at most `REFUSED_LIMIT`)."""
        return len(self._refused)
