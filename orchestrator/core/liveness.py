"""Who owns an agent id, and when a silent agent is lost: the decisions of the registry,
kept pure so they are tested on plain numbers (monotonic seconds), never on a clock.

An agent id is owned by one process at a time, told apart by the random `instance` each
agent process sends with its heartbeats. Another instance that claims a live id waits:
if the owner heartbeats again after that claim, both are alive and the newcomer is
refused; if the owner stays silent past the TTL (it crashed, or it was restarted), the
newcomer takes the id over. So a restarted agent gets its id back and a second process
with the same id never runs anything.

An agent is lost when it has been silent for longer than the TTL *while the orchestrator
could have heard it*: not while the orchestrator itself is cut off from the bus (or was
not running: paused, starved), and not within a grace period after it reconnects (the
agents reconnect and heartbeat again).
"""

from __future__ import annotations

import math

import msgspec

from bus.protocol import IdVerdict
from orchestrator.core.errors import LivenessConfigError

MAX_CONTENDERS = 16
"""Other instances remembered per id (a flood of made-up instances forgets the oldest)."""


def check_timing(ttl: float, heartbeat_s: float) -> None:
    """`LivenessConfigError` unless both are positive and finite and the TTL is longer
    than the interval (three intervals or more are advised: a heartbeat may be late)."""
    for name, value in (("heartbeat interval", heartbeat_s), ("agent TTL", ttl)):
        if not math.isfinite(value) or value <= 0:
            raise LivenessConfigError(
                f"the {name} must be a positive number of seconds, not {value}"
            )
    if ttl <= heartbeat_s:
        raise LivenessConfigError(
            f"the agent TTL ({ttl:g}s) must be longer than the heartbeat interval "
            f"({heartbeat_s:g}s), or every agent is lost between two heartbeats"
        )


class IdOwner(msgspec.Struct, frozen=True):
    """An agent id's owning instance, its last heartbeat, and the other instances that
    claimed the id meanwhile: each with the time of its first claim, and whether the
    owner has heartbeated since (then it is refused)."""

    instance: str
    last_seen: float
    contenders: tuple[tuple[str, float, bool], ...] = ()


def claim(
    current: IdOwner | None, instance: str, now: float, owner_lost: bool
) -> tuple[IdOwner, IdVerdict]:
    """A heartbeat from `instance` at `now`: the id's new ownership and the sender's verdict.

    The owner renews its claim (and every contender that claimed before this heartbeat is
    refused: two processes are alive); a new instance waits while the owner is live, and
    takes the id once the owner is lost (`owner_lost`, as `lost` decides it)."""
    if current is None or (owner_lost and instance != current.instance):
        return IdOwner(instance, now), "owner"
    if instance == current.instance:
        contenders = tuple(
            (other, since, refused or since < now) for other, since, refused in current.contenders
        )
        return IdOwner(instance, now, contenders), "owner"
    for other, _, refused in current.contenders:
        if other == instance:
            return current, "refused" if refused else "waiting"
    contenders = (*current.contenders, (instance, now, False))[-MAX_CONTENDERS:]
    return msgspec.structs.replace(current, contenders=contenders), "waiting"


class Link(msgspec.Struct, frozen=True):
    """The orchestrator's own connection to the bus, as liveness needs it: since when it
    has been up (the start counts as a connection), or None while it is down."""

    up_since: float | None


def observe_link(link: Link, connected: bool, now: float, stalled: bool = False) -> Link:
    """The link after looking at the connection at `now`. `stalled`: the orchestrator
    itself did not run for a while (paused, starved), so heartbeats may wait unread in
    its socket; that counts as a disconnection that just ended."""
    if not connected:
        return Link(None)
    return link if link.up_since is not None and not stalled else Link(now)


def stalled(gap: float, ttl: float, heartbeat_s: float) -> bool:
    """Whether `gap` seconds between two of the orchestrator's ticks were long enough for
    a live agent's last heartbeat it read to look older than the TTL."""
    return gap > ttl - heartbeat_s


def settled(link: Link, now: float, grace: float) -> bool:
    """Whether the orchestrator has been connected for longer than `grace`: only then is
    an agent's silence the agent's (and leases are checked)."""
    return link.up_since is not None and now - link.up_since > grace


def grace_s(ttl: float, heartbeat_s: float) -> float:
    """After a (re)connection, how long agents get to be heard again: one TTL and one
    heartbeat interval."""
    return ttl + heartbeat_s


def lost(last_seen: float, now: float, ttl: float, link: Link, grace: float) -> bool:
    """Whether an agent last heard at `last_seen` is lost at `now`: silent for longer
    than `ttl`, and the orchestrator has been connected for longer than `grace`."""
    return settled(link, now, grace) and now - last_seen > ttl
