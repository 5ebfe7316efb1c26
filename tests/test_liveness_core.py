"""The registry's pure decisions (`orchestrator.core.liveness`), on plain numbers: one
process owns an agent id (a second live one is refused, a restarted one takes the id
over once the old one is lost), and an agent is never lost for a silence that was the
orchestrator's own (while it was cut off from the bus, and for a grace period after)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bus.protocol import Heartbeat, IdVerdict
from orchestrator.core.errors import LivenessConfigError
from orchestrator.core.liveness import (
    IdOwner,
    Link,
    check_timing,
    claim,
    grace_s,
    lost,
    observe_link,
    settled,
    stalled,
)
from orchestrator.service.registry import Registry

TTL = 2.0
HEARTBEAT = 0.5
GRACE = grace_s(TTL, HEARTBEAT)
UP = Link(0.0)
"""Connected since 0: settled from GRACE on."""


class Ids:
    """One agent id's ownership as the registry keeps it, with the orchestrator connected
    since 0 and heard from after GRACE."""

    def __init__(self) -> None:
        self.owner: IdOwner | None = None

    def beat(self, instance: str, now: float) -> IdVerdict:
        current = self.owner
        gone = current is not None and lost(current.last_seen, now, TTL, UP, GRACE)
        self.owner, verdict = claim(current, instance, now, gone)
        return verdict


def test_the_first_process_owns_the_id_and_a_second_live_one_is_refused() -> None:
    ids = Ids()
    assert ids.beat("a", 10.0) == "owner"
    assert ids.beat("b", 10.1) == "waiting"  # a may have just died: b waits to see
    assert ids.beat("b", 10.2) == "waiting"
    assert ids.beat("a", 10.5) == "owner"  # a is alive too
    assert ids.beat("b", 10.6) == "refused"
    assert ids.beat("b", 10.7) == "refused"
    assert ids.beat("a", 11.0) == "owner"


def test_a_restarted_process_takes_its_id_over_once_the_old_one_is_lost() -> None:
    ids = Ids()
    assert ids.beat("old", 10.0) == "owner"
    assert ids.beat("new", 10.3) == "waiting"  # restarted within the TTL
    assert ids.beat("new", 12.0) == "waiting"  # old silent for exactly the TTL: not yet
    assert ids.beat("new", 12.1) == "owner"
    assert ids.beat("old", 12.2) == "waiting"  # a late claim of the old one never wins back


def test_a_refused_process_that_keeps_beating_gets_the_id_once_the_owner_is_lost() -> None:
    ids = Ids()
    ids.beat("a", 10.0)
    ids.beat("b", 10.1)
    ids.beat("a", 10.5)
    assert ids.beat("b", 11.0) == "refused"
    assert ids.beat("b", 12.6) == "owner"  # a was silent for longer than the TTL


def test_an_agent_that_sends_no_instance_owns_its_id_as_before() -> None:
    ids = Ids()
    assert [ids.beat("", t) for t in (10.0, 10.5, 11.0)] == ["owner"] * 3


def test_contenders_are_bounded() -> None:
    ids = Ids()
    ids.beat("a", 10.0)
    for n in range(100):
        ids.beat(f"made-up-{n}", 10.0 + n / 1000)
    assert ids.owner is not None
    assert len(ids.owner.contenders) == 16


@given(
    st.lists(st.floats(0.05, TTL * 0.9), min_size=2, max_size=40),
    st.lists(st.floats(0.05, TTL * 0.9), min_size=2, max_size=40),
    st.floats(0.001, 5.0),
)
@example([1.0, 1.0, 1.0], [1.0, 1.0], 1.0)  # beats at the same instants (found by a CI run)
def test_of_two_live_processes_with_one_id_only_the_first_ever_owns_it(
    gaps_a: list[float], gaps_b: list[float], b_starts: float
) -> None:
    """Both beat within the TTL all along, in any interleaving: the first owns the id
    throughout; the second never does, and is refused once the first beat after it came."""
    beats = [(10.0 + sum(gaps_a[:i]), "a") for i in range(len(gaps_a))]
    a_ends = beats[-1][0]  # after it, a is silent: b may take the id once it is lost
    beats += [(10.0 + b_starts + sum(gaps_b[:i]), "b") for i in range(len(gaps_b))]
    beats = [(t, who) for t, who in beats if t <= a_ends]
    ids = Ids()
    first_b = min((t for t, who in beats if who == "b"), default=0.0)
    for now, who in sorted(beats):
        verdict = ids.beat(who, now)
        if who == "a":
            assert verdict == "owner"
        else:
            assert verdict != "owner"
            # a's beats since b's first, up to this one (at a tie, a's is handled first)
            a_since = [t for t, w in beats if w == "a" and first_b < t <= now]
            assert verdict == ("refused" if a_since else "waiting")


def test_the_link_starts_each_grace_when_it_comes_back() -> None:
    link = observe_link(Link(None), True, 5.0)
    assert link == Link(5.0)
    assert observe_link(link, True, 9.0) == Link(5.0)
    assert observe_link(link, False, 9.0) == Link(None)
    assert observe_link(Link(None), True, 20.0) == Link(20.0)


@given(
    last_seen=st.floats(0, 1000),
    down_at=st.floats(0, 1000),
    outage=st.floats(0, 1000),
    after=st.floats(0, 1000),
)
def test_an_agent_is_never_lost_for_the_orchestrators_own_outage(
    last_seen: float, down_at: float, outage: float, after: float
) -> None:
    """Whenever the orchestrator was cut off, an agent is not lost during the outage nor
    within the grace after it, however long it has been silent."""
    link = observe_link(Link(0.0), False, down_at)
    during = down_at + outage
    assert not lost(last_seen, during, TTL, link, GRACE)
    back = observe_link(link, True, during)
    now = during + after
    if after <= GRACE:
        assert not lost(last_seen, now, TTL, back, GRACE)
        assert not settled(back, now, GRACE)
    else:
        assert lost(last_seen, now, TTL, back, GRACE) == (now - last_seen > TTL)


@given(st.floats(0, 1000), st.floats(0, 1000))
def test_connected_and_settled_an_agent_is_lost_exactly_when_silent_past_the_ttl(
    last_seen: float, silence: float
) -> None:
    long_up = Link(-GRACE - 1.0)
    now = last_seen + silence
    assert lost(last_seen, now, TTL, long_up, GRACE) == (now - last_seen > TTL)


@pytest.mark.parametrize(
    ("ttl", "heartbeat", "said"),
    [
        (2.0, 0.0, "heartbeat interval must be a positive number"),
        (float("nan"), 0.5, "agent TTL must be a positive number"),
        (0.5, 0.5, "must be longer than the heartbeat interval"),
        (1.0, 2.0, "must be longer than the heartbeat interval"),
    ],
)
def test_timings_that_cannot_work_are_refused(ttl: float, heartbeat: float, said: str) -> None:
    with pytest.raises(LivenessConfigError, match=said):
        check_timing(ttl, heartbeat)
    check_timing(3.0, 0.5)


def test_an_orchestrator_that_did_not_run_for_a_while_gives_the_agents_a_grace_again() -> None:
    """Paused (SIGSTOP, a swap storm) for longer than a heartbeat may be old, it cannot
    tell who went silent: that counts as an outage that just ended."""
    assert not stalled(TTL - HEARTBEAT, TTL, HEARTBEAT)
    assert stalled(TTL - HEARTBEAT + 0.01, TTL, HEARTBEAT)
    link = observe_link(UP, True, 100.0, stalled=True)
    assert link == Link(100.0)
    assert not lost(90.0, 100.0 + GRACE, TTL, link, GRACE)
    assert lost(90.0, 100.0 + GRACE + 0.01, TTL, link, GRACE)
    assert observe_link(UP, True, 100.0) == UP


def test_a_process_that_takes_an_id_over_joins_again_with_what_it_announces() -> None:
    """The join records the capabilities (the model, `model:<name>`): a new process that
    took the id over before the old one was found lost is recorded as joining again, so
    the model of its attempts is its own; one process changing them is not (no log
    write per heartbeat)."""
    registry = Registry(TTL, HEARTBEAT)
    registry.connection(True, 0.0)

    def beat(instance: str, capabilities: list[str], now: float) -> tuple[bool, IdVerdict]:
        return registry.observe(Heartbeat("w", "r", capabilities, 1, 0, instance=instance), now)

    start = GRACE + 1.0
    assert beat("one", ["r", "model:a"], start) == (True, "owner")
    assert beat("one", ["r", "model:b"], start + 0.5) == (False, "owner")
    assert beat("two", ["r", "model:c"], start + 1.0) == (False, "waiting")
    taken = start + 0.5 + TTL + 0.1  # "one" silent past the TTL, not yet found lost
    assert beat("two", ["r", "model:c"], taken) == (True, "owner")
    assert beat("two", ["r", "model:c"], taken + 0.5) == (False, "owner")
