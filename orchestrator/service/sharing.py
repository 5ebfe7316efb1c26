"""Several orchestrators on one bus share the runs by partition: this one's share.

Each round (every `RENEW_S`) it marks itself present in the lease bucket, reads the
bucket (a watcher's copy, see `bus.leases`), and does what `orchestrator.core.partitions`
plans: renew its leases, release those beyond its fair share, claim free or expired
ones, each by compare-and-set. A partition claimed is handed to `gained` (the
orchestrator takes over its open runs from the log, in a task of its own while the
renewals go on) before this one serves it; one lost
(a renewal found another revision, or it was released) to `lost` at once (the
orchestrator drops its runs). A lease this one could not renew for `ttl` (the bus gone)
counts as lost for serving, though it is kept until someone else claims it.

Every `RESCAN_S` it looks again for open runs of its partitions that it does not serve
(one a stale holder started after the claim), so no run is left without a decider.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bus.errors import BusError
from bus.leases import LeaseBucket, LeaseLost
from eventstore import EventStoreError
from orchestrator.core import partitions as parts
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.partitions import Lease
from orchestrator.service.background import Spawn

log = logging.getLogger("baton.orchestrator.sharing")

RESCAN_S = 10.0
"""How often the open runs of the held partitions are looked for again."""
READY_WAIT_S = 10.0
"""How long the first round waits for the bucket's watcher to deliver its contents."""


class RunElsewhere(OrchestratorError):
    """A run was asked of an orchestrator that does not hold the run's partition."""


def _key(partition: int) -> str:
    return f"p.{partition}"


class Sharing:
    """This orchestrator's leases of partitions, kept by compare-and-set, and what it
    serves because of them."""

    def __init__(
        self,
        bucket: LeaseBucket,
        me: str,
        *,
        clock: Callable[[], float],
        gained: Callable[[dict[int, int]], Awaitable[None]],
        lost: Callable[[set[int]], None],
        rescan: Callable[[dict[int, int]], Awaitable[None]],
        spawn: Spawn,
        partitions: int = parts.PARTITIONS,
        ttl: float = parts.LEASE_TTL_S,
        renew_s: float = parts.RENEW_S,
    ) -> None:
        self.bucket = bucket
        self.me = me
        self.partitions = partitions
        self._clock = clock
        self._gained = gained
        self._lost = lost
        self._rescan = rescan
        self._spawn = spawn
        self._rescanning = False
        self._taking: set[int] = set()
        """Claimed partitions whose runs are being taken over now."""
        self._take_said_at = float("-inf")
        self._ttl = ttl
        self._renew_s = renew_s
        self.held: dict[int, int] = {}
        """Partition → the revision of this one's last successful write of its lease."""
        self._claims: dict[int, int] = {}
        """Partition → the revision its claim wrote (renewals do not change it)."""
        self._renewed_at: dict[int, float] = {}
        self._unsure: dict[int, tuple[int, float]] = {}
        """Partition → (the revision its renewal expected, when it was sent) for a renewal
        that got no reply: it may have landed (a leader stepping down drops the reply)."""
        self._ready: set[int] = set()
        """Held partitions whose open runs were taken over: served."""
        self._leases: dict[int, Lease] = {}
        self._members: dict[str, Lease] = {}
        self._rescanned_at = clock()
        self.serving = asyncio.Event()
        """Set while this one serves at least one partition."""
        self._unreachable = False
        self._closed = False
        self._turn = asyncio.Lock()
        """Held by a round, and by `release_all` (which must see what a round renewed)."""

    def partition(self, run_id: str) -> int:
        return parts.partition_of(run_id, self.partitions)

    def lease_of(self, run_id: str) -> int | None:
        """The revision of the lease this one holds on the run's partition (None: it does
        not hold it, or could not renew it for `ttl`)."""
        partition = self.partition(run_id)
        revision = self.held.get(partition)
        if revision is None or self._clock() - self._renewed_at[partition] >= self._ttl:
            return None
        return revision

    def serves(self, run_id: str) -> bool:
        """Whether the run is this one's to decide for now."""
        return self.partition(run_id) in self._ready and self.lease_of(run_id) is not None

    def elsewhere(self, run_id: str) -> bool:
        return not self.serves(run_id)

    def owned(self) -> list[int]:
        """The partitions this one serves, in order."""
        return sorted(self._ready)

    async def start(self) -> None:
        """Wait for the bucket's contents, then do the first round and take over the runs
        of what it claimed (a lone orchestrator claims every partition in it)."""
        try:
            async with asyncio.timeout(READY_WAIT_S):
                await self.bucket.ready.wait()
        except TimeoutError:
            raise BusError(f"the lease bucket was not read within {READY_WAIT_S:g}s") from None
        async with self._turn:
            await self._round(inline=True)

    async def loop(self) -> None:
        """A round every `renew_s`, for ever (run it supervised)."""
        while True:
            await asyncio.sleep(self._renew_s)
            await self.round()

    async def round(self) -> None:
        """One round of lease upkeep (see the module's docstring)."""
        async with self._turn:
            if not self._closed:
                await self._round()

    async def _round(self, inline: bool = False) -> None:
        now = self._clock()
        try:
            await self.bucket.put(f"m.{self.me}", self.me)
        except BusError as exc:  # the bus is gone: the leases lapse (see `lease_of`)
            if not self._unreachable:
                log.warning("cannot keep the leases (%s): serving none after %gs", exc, self._ttl)
            self._unreachable = True
            return
        self._unreachable = False
        self._observe(now)
        self._settle_unsure()
        live = 1 + sum(
            lease.renewed and not lease.expired(now, self._ttl)
            for name, lease in self._members.items()
            if name != self.me
        )
        gone = {p for p, rev in self.held.items() if self._revision(p) != rev}
        if gone:
            self._lose(gone, "claimed by another orchestrator")
        plan = parts.plan(
            self.me, self._leases, max(1, live), now, partitions=self.partitions, ttl=self._ttl
        )
        for partition in plan.renew:
            await self._renew(partition, now)
        if plan.release:
            self._lose(set(plan.release), "released to share the runs")
            for partition in plan.release:
                await self.bucket.release(_key(partition), self._leases[partition].revision)
        claimed: dict[int, int] = {}
        for partition in plan.claim:
            if self._closed:
                break
            seen = self._leases.get(partition)
            try:
                revision = await self.bucket.write(
                    _key(partition), self.me, seen.revision if seen else None
                )
            except LeaseLost:
                continue  # another claim won the race
            if self._closed:  # stopped meanwhile: let it go again
                await self.bucket.release(_key(partition), revision)
                break
            self.held[partition] = self._claims[partition] = revision
            self._renewed_at[partition] = now
            claimed[partition] = revision
        for partition, revision in self._claims.items():  # a takeover that failed: again
            if partition not in self._ready and partition not in self._taking:
                claimed.setdefault(partition, revision)
        if claimed and not self._closed and inline:
            await self._take(claimed)
        elif claimed and not self._closed:  # the renewals go on while the runs are read
            self._spawn(self._take(claimed))
        if now - self._rescanned_at >= RESCAN_S and self._ready and not self._rescanning:
            self._rescanned_at = now
            self._spawn(self._look_again({p: self.held[p] for p in self._ready}))

    def look_soon(self) -> None:
        """Look for open runs of the held partitions at the next round."""
        self._rescanned_at = float("-inf")

    def holds(self, partition: int, claimed: int) -> bool:
        """Whether this one still holds `partition` by the claim that wrote revision
        `claimed` (renewed since or not; not lost and claimed again)."""
        return partition in self.held and self._claims.get(partition) == claimed

    async def _take(self, claimed: dict[int, int]) -> None:
        """Take the claimed partitions' runs over, then serve those still held. If the
        log cannot be read now (a failover), the next round tries again."""
        self._taking.update(claimed)
        try:
            await self._gained(claimed)
        except (EventStoreError, BusError) as exc:  # one line per outage, not per round
            if self._clock() - self._take_said_at >= RESCAN_S:
                self._take_said_at = self._clock()
                log.warning(
                    "orchestrator %s could not take over partitions %s yet (%s); trying "
                    "again every round", self.me, ",".join(map(str, sorted(claimed))), exc,
                )  # fmt: skip
            return
        finally:
            self._taking.difference_update(claimed)
        taken = {p for p, revision in claimed.items() if self.holds(p, revision)}
        if taken and not self._closed:
            self._ready.update(taken)
            self.serving.set()

    async def _look_again(self, leases: dict[int, int]) -> None:
        self._rescanning = True
        try:
            await self._rescan(leases)
        except (EventStoreError, BusError) as exc:  # the log unreadable now: at the next round
            log.warning("looking for open runs to take over failed (%s); trying again", exc)
            self.look_soon()
        finally:
            self._rescanning = False

    async def release_all(self) -> None:
        """Stop serving every partition and delete its lease, so that the others take
        them over at once instead of waiting for the leases to expire; no round after."""
        self._closed = True
        async with self._turn:  # after the round under way, with what it renewed
            held = dict(self.held)
        if held:
            self._lose(set(held), "stopping")
        presence = self.bucket.entries.get(f"m.{self.me}")
        if presence is not None:  # first, so that the others count one fewer to share
            await self.bucket.release(f"m.{self.me}", presence[1])
        for partition, revision in held.items():
            await self.bucket.release(_key(partition), revision)

    def _observe(self, now: float) -> None:
        leases: dict[int, Lease] = {}
        members: dict[str, Lease] = {}
        for key, (value, revision) in list(self.bucket.entries.items()):
            kind, _, name = key.partition(".")
            if kind == "p" and name.isdigit() and int(name) < self.partitions:
                p = int(name)
                leases[p] = parts.observe(self._leases.get(p), value, revision, now)
            elif kind == "m":
                members[name] = parts.observe(self._members.get(name), value, revision, now)
        self._leases, self._members = leases, members

    def _revision(self, partition: int) -> int | None:
        lease = self._leases.get(partition)
        return lease.revision if lease is not None and lease.owner == self.me else None

    async def _renew(self, partition: int, now: float) -> None:
        if self._closed:
            return
        try:
            revision = await self.bucket.write(
                _key(partition), self.me, self._leases[partition].revision
            )
        except LeaseLost:
            self._unsure.pop(partition, None)
            self._lose({partition}, "its renewal found another holder")
            return
        except BusError as exc:  # kept until someone claims it; not served after ttl
            log.warning("could not renew the lease of partition %d: %s", partition, exc)
            self._unsure[partition] = (self._leases[partition].revision, now)
            return
        self._unsure.pop(partition, None)
        self.held[partition] = revision
        self._renewed_at[partition] = now

    def _settle_unsure(self) -> None:
        """A renewal without a reply that the bucket shows landed (a newer revision in
        this one's name: only its own compare-and-set at the expected revision can have
        written it) counts as renewed when it was sent, instead of reading as a claim by
        another orchestrator."""
        for partition, (expected, sent_at) in list(self._unsure.items()):
            lease = self._leases.get(partition)
            if lease is not None and lease.revision == expected:
                continue  # it did not land, or the watcher has not said so yet
            del self._unsure[partition]
            mine = lease is not None and lease.owner == self.me
            if mine and lease is not None and self.held.get(partition) == expected:
                self.held[partition] = lease.revision
                self._renewed_at[partition] = sent_at

    def _lose(self, lost: set[int], why: str) -> None:
        for partition in lost:
            self.held.pop(partition, None)
            self._claims.pop(partition, None)
            self._renewed_at.pop(partition, None)
            self._ready.discard(partition)
        if not self._ready:
            self.serving.clear()
        log.warning(
            "orchestrator %s stepped down from partition%s %s (%s)",
            self.me, "s" if len(lost) > 1 else "", ",".join(map(str, sorted(lost))), why,
        )  # fmt: skip
        self._lost(lost)
