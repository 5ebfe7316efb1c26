"""Who decides for a run when several orchestrators share the runs: the rules, pure.

The runs are split by a stable hash of the run id into a fixed number of partitions;
each partition is owned through a lease, a key in a JetStream KV bucket that its owner
renews by compare-and-set on the key's revision. An observer that sees a lease's revision
unchanged for `ttl` seconds of its own monotonic clock takes it to be expired and may
claim it, again by compare-and-set; of two racing claims (or a claim racing a late
renewal) exactly one succeeds. No clock is compared across machines.

A lease alone cannot fence a stale owner (a paused process wakes up believing it still
holds it), so the run's log does: the new owner first appends `RunTakenOver` with the
expected version, after which the previous owner's next append fails, it reloads the
run, finds another owner recorded, and steps down (`verdict`). Everything here is
a function of values the shell passes in (revisions, readings of its clock).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

PARTITIONS = 16
"""How many partitions the runs are split into (fixed for a deployment: changing it
moves runs between partitions, so every orchestrator of one bus must agree on it)."""
LEASE_TTL_S = 3.0
"""A lease whose revision no observer saw change for this long has expired."""
RENEW_S = 0.5
"""How often an owner renews its leases (well inside `LEASE_TTL_S`)."""


def partition_of(run_id: str, partitions: int = PARTITIONS) -> int:
    """The partition of a run: the same on every machine and every Python (no `hash()`)."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    digest = hashlib.sha256(run_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions


@dataclass(frozen=True)
class Lease:
    """One key of the lease bucket as one observer saw it: who holds it, its revision,
    and when (on the observer's own monotonic clock) that revision was first seen."""

    owner: str
    revision: int
    seen_at: float
    renewed: bool = False
    """Whether this observer saw the key change (one only ever seen as it was when first
    read may be long dead: a presence key counts as a live orchestrator only once seen
    renewed)."""

    def expired(self, now: float, ttl: float = LEASE_TTL_S) -> bool:
        """Whether the holder let `ttl` pass without renewing (as this observer saw it)."""
        return now - self.seen_at >= ttl


def observe(before: Lease | None, owner: str, revision: int, now: float) -> Lease:
    """A key read now: the lease seen before if its revision is the same (its age keeps
    counting), else a new one, first seen now."""
    if before is not None and before.revision == revision and before.owner == owner:
        return before
    return Lease(owner, revision, now, renewed=before is not None)


def fair_share(partitions: int, members: int) -> int:
    """How many partitions each of `members` live orchestrators should own."""
    return -(-partitions // max(1, members))


def _spread(me: str, partition: int) -> bytes:
    """An order of the partitions that differs per orchestrator, so that ones starting
    together mostly claim different partitions instead of racing for the same."""
    return hashlib.sha256(f"{me}\0{partition}".encode()).digest()


@dataclass(frozen=True)
class Plan:
    """What an orchestrator does with the lease bucket in one round."""

    renew: tuple[int, ...]
    """Partitions it holds and keeps: renewed (compare-and-set on the seen revision)."""
    claim: tuple[int, ...]
    """Partitions free or expired: claimed (compare-and-set; create if absent)."""
    release: tuple[int, ...]
    """Partitions it holds beyond its fair share: it stops serving their runs, then
    deletes their keys (compare-and-set), for another orchestrator to claim."""


def plan(
    me: str,
    leases: Mapping[int, Lease],
    members: int,
    now: float,
    *,
    partitions: int = PARTITIONS,
    ttl: float = LEASE_TTL_S,
) -> Plan:
    """One round of lease upkeep for `me`, given the leases it sees and how many live
    orchestrators there are (itself included): keep its own up to its fair share, release
    the rest, and claim free or expired partitions until it has its share."""
    share = fair_share(partitions, members)
    mine = sorted(p for p, lease in leases.items() if lease.owner == me)
    keep, release = mine[:share], mine[share:]
    free = [
        p
        for p in range(partitions)
        if p not in leases or (leases[p].owner != me and leases[p].expired(now, ttl))
    ]
    free.sort(key=lambda p: _spread(me, p))
    claim = free[: max(0, share - len(keep))]
    return Plan(tuple(keep), tuple(claim), tuple(release))


def may_decide(run_owner: str, me: str, holds_partition: bool) -> bool:
    """Whether `me` may decide for a run it serves, whose log names `run_owner` as its
    last taker ('' if none took it over: then its starter, which `me` is if it serves a
    run it did not take over): only while it holds the run's partition and no other
    orchestrator took the run over since."""
    return holds_partition and run_owner in ("", me)


Verdict = Literal["serve", "take over", "step down"]


def verdict(run_owner: str, run_lease: int, me: str, my_lease: int | None) -> Verdict:
    """What `me` does with a run it read from the log (on claiming its partition, looking
    for runs it does not serve, or reloading after an append of its own failed because
    the stream had moved on): `run_owner` took the run over last under lease revision
    `run_lease` ('' and 0: none did), and `me` holds the run's partition at revision
    `my_lease` (None: it does not).

    Revisions of one key only grow, and a claim is a compare-and-set, so a holder whose
    revision is newer than the run's last takeover is the rightful one: it takes the run
    over. One whose revision is older is stale (someone claimed the partition after its
    last write): it steps down, as does one that holds no lease at all."""
    if my_lease is None:
        return "step down"
    if run_owner == me:
        return "serve"
    return "take over" if my_lease > run_lease else "step down"
