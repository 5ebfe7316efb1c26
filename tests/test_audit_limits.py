"""Bad messages are no amplifier (issue 12, finding 7), against a real server: a governed
agent flooding its own subjects with junk and with heartbeats for roles it has no
contract for gets a burst of audit events one by one, and the rest counted into a few
`messages.suppressed` events; what the orchestrator remembers per sender stays bounded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bus import subjects
from bus.codec import encode
from bus.connection import Bus
from bus.permissions import inbox_prefix
from bus.protocol import Heartbeat
from orchestrator.core.events import AgentRefused, MessageRejected, MessagesSuppressed
from orchestrator.service import liveness, system_journal
from orchestrator.service.bounded import Lru
from orchestrator.service.system_journal import OTHERS, AuditLimits, sender_of
from tests.cluster import cluster
from tests.test_poison import until_system

CONTRACTS = """
[[roles]]
name = "worker"
concurrency = 2
"""
FLOOD = 2000


def test_a_governed_agents_flood_is_audited_in_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liveness, "REFUSED_LIMIT", 100)
    contracts = tmp_path / "roles.toml"
    contracts.write_text(CONTRACTS)
    flooder = "worker-flooder"

    async def scenario() -> tuple[int, int, int, int, int, float]:
        async with cluster(tmp_path / "state", contracts=str(contracts)) as c:
            began = time.monotonic()
            bus = await Bus.connect(
                c.stack.agent_url(flooder, "worker"),
                name=flooder,
                inbox_prefix=inbox_prefix(flooder),
            )
            try:
                inbox = subjects.inbox("some-run", flooder)
                for i in range(FLOOD):  # junk on its own inbox and as itself, fast
                    await bus.publish(inbox, b"\xc1 junk %d" % i)
                    hb = Heartbeat(flooder, f"role-{i}", ["x"], 1, 0, [], "no-digest")
                    await bus.publish(subjects.heartbeat(flooder), encode(hb))
                await bus.flush()
            finally:
                await bus.close()

            def counted(events: list[object]) -> tuple[int, int]:
                summaries = [
                    e for e in events if isinstance(e, MessagesSuppressed) and e.sender == flooder
                ]
                one_by_one_rejected = [
                    e for e in events if isinstance(e, MessageRejected) and e.subject == inbox
                ]
                one_by_one_refused = [
                    e for e in events if isinstance(e, AgentRefused) and e.agent_id == flooder
                ]
                return (
                    len(one_by_one_rejected) + sum(s.rejected for s in summaries),
                    len(one_by_one_refused) + sum(s.refused for s in summaries),
                )

            events = await until_system(
                c, lambda es: counted(list(es)) == (FLOOD, FLOOD), timeout=60
            )
            about_flooder = [
                e
                for e in events
                if (isinstance(e, MessageRejected) and e.subject == inbox)
                or (isinstance(e, AgentRefused) and e.agent_id == flooder)
                or (isinstance(e, MessagesSuppressed) and e.sender == flooder)
            ]
            summaries = [e for e in about_flooder if isinstance(e, MessagesSuppressed)]
            refused_tracked = c.orchestrator._liveness.refused_tracked()
            senders = c.orchestrator._system.senders_tracked()
            routable = [a.agent_id for a in c.orchestrator.agents()]
            took = time.monotonic() - began
        return len(about_flooder), len(summaries), refused_tracked, senders, len(routable), took

    audited, summaries, refused_tracked, senders, routable, took = asyncio.run(scenario())
    limits = system_journal.AUDIT_LIMITS
    # of 4,000: a burst one by one, a trickle at the refill rate, a summary every 2 s
    assert audited <= limits.burst + limits.per_s * took * 2 + 2, (audited, took)
    assert summaries >= 1
    assert refused_tracked <= 100
    assert senders <= limits.senders
    assert routable == 0, "a refused agent is never routed to"


def test_the_senders_tracked_are_bounded_and_the_rest_counted_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        system_journal,
        "AUDIT_LIMITS",
        AuditLimits(burst=1, per_s=0.01, senders=10, all_burst=20, all_per_s=0.01),
    )

    async def scenario() -> tuple[list[MessagesSuppressed], int]:
        async with cluster(tmp_path) as c:
            bus = await Bus.connect(c.stack.nats_url, name="many-senders")
            try:
                for _ in range(3):  # past each sender's burst of one
                    for n in range(50):
                        await bus.publish(subjects.report("r", f"sender-{n}"), b"\xc1")
                        await bus.flush()
            finally:
                await bus.close()
            events = await until_system(
                c,
                lambda es: (
                    sum(e.rejected for e in es if isinstance(e, MessagesSuppressed))
                    + len([e for e in es if isinstance(e, MessageRejected)])
                    == 150
                ),
            )
            assert c.orchestrator._system.senders_tracked() <= 10
            summaries = [e for e in events if isinstance(e, MessagesSuppressed)]
            return summaries, len([e for e in events if isinstance(e, MessageRejected)])

    summaries, one_by_one = asyncio.run(scenario())
    assert one_by_one <= 20, "all senders together get one burst"
    assert OTHERS in {s.sender for s in summaries}, "forgotten senders are counted together"


def test_sender_of_reads_the_sender_from_an_agents_own_subjects() -> None:
    assert sender_of(subjects.inbox("r", "a1")) == "a1"
    assert sender_of(subjects.report("r", "a2")) == "a2"
    assert sender_of(subjects.bids("r", "a3")) == "a3"
    assert sender_of(subjects.heartbeat("a4")) == "a4"
    assert sender_of(subjects.memory_search("a5")) == "a5"
    assert sender_of(subjects.API_STATUS) == subjects.API_STATUS
    assert sender_of("baton.inbox..") == "baton.inbox.."


def test_an_lru_forgets_the_least_recently_set_first() -> None:
    lru: Lru[str, int] = Lru(2)
    assert lru.set("a", 1) == []
    assert lru.set("b", 2) == []
    assert lru.set("a", 3) == []  # set again: the most recent now
    assert lru.set("c", 4) == [("b", 2)]
    assert len(lru) == 2
    assert "b" not in lru
    assert lru.items() == [("a", 3), ("c", 4)]
