"""Partition ownership, pure: a hypothesis state machine of orchestrators sharing runs
through leases in a compare-and-set key-value bucket and run logs appended with the
expected version. Leases expire on each observer's own clock, renewals and claims race,
orchestrators crash and restart, and a stale owner wakes up and appends on what it
cached: whatever the interleaving, every run's log has one decider between takeovers
(invariant 8), and an orchestrator that lost a partition decides nothing more in it.

The model plays the shell's part (the bucket, the logs, the caches); every choice it
makes comes from `orchestrator.core.partitions`, the rules the service follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from orchestrator.core import partitions as parts
from orchestrator.core.commands import Context, Resume, StartRun
from orchestrator.core.decide import decide
from orchestrator.core.events import RunTakenOver
from orchestrator.core.partitions import Lease
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import StepSpec, WorkflowSpec

ORCHESTRATORS = ("a", "b")
RUNS = ("run-0", "run-1")
PARTITIONS = 2
TTL = 3.0


def _partition(run_id: str) -> int:
    return parts.partition_of(run_id, PARTITIONS)


@dataclass
class Node:
    """One orchestrator's memory: what it saw of the bucket, the leases it holds (with
    the revision of its last successful write), the runs it serves (with the version and
    owner it last read or wrote)."""

    view: dict[int, Lease] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)
    served: dict[str, tuple[int, str]] = field(default_factory=dict)


class Ownership(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.revision = 0
        self.bucket: dict[int, tuple[str, int]] = {}
        """partition → (owner, revision): the KV bucket, compare-and-set on revision."""
        self.logs: dict[str, list[tuple[str, str, int]]] = {}
        """run → its events as (kind, writer, lease): start, takeover, decision."""
        self.nodes = {name: Node() for name in ORCHESTRATORS}
        self.lost: dict[str, set[int]] = {name: set() for name in ORCHESTRATORS}

    # -- the bucket (compare-and-set) ---------------------------------------------------

    def _cas(self, partition: int, owner: str | None, expected: int | None) -> int | None:
        """Write (or delete, owner None) if the key is at `expected` (None: absent)."""
        current = self.bucket.get(partition)
        if (current[1] if current else None) != expected:
            return None
        self.revision += 1
        if owner is None:
            self.bucket.pop(partition, None)
        else:
            self.bucket[partition] = (owner, self.revision)
        return self.revision

    # -- the logs (expected version) ----------------------------------------------------

    def _append(self, run_id: str, expected: int, kind: str, writer: str, lease: int = 0) -> bool:
        log = self.logs.setdefault(run_id, [])
        if len(log) != expected:
            return False
        log.append((kind, writer, lease))
        return True

    def _read(self, run_id: str) -> tuple[int, str, int]:
        """The run as the log gives it: version, and owner and lease as `RunState.owner`
        and `owner_lease` fold them ('' and 0 before any takeover)."""
        owner, lease = "", 0
        for kind, writer, revision in self.logs.get(run_id, []):
            if kind == "takeover":
                owner, lease = writer, revision
        return len(self.logs.get(run_id, [])), owner, lease

    def _judge(self, name: str, run_id: str) -> None:
        """Read the run from the log and do what the core's verdict says."""
        node = self.nodes[name]
        version, owner, lease = self._read(run_id)
        mine = node.held.get(_partition(run_id))
        match parts.verdict(owner, lease, name, mine):
            case "serve":
                node.served[run_id] = (version, owner)
            case "take over":
                assert mine is not None
                taken = self._append(run_id, version, "takeover", name, mine)
                if taken:
                    node.served[run_id] = (version + 1, name)
                else:
                    node.served.pop(run_id, None)
            case "step down":
                node.served.pop(run_id, None)

    def _step_down(self, name: str, partition: int) -> None:
        node = self.nodes[name]
        node.held.pop(partition, None)
        node.served = {r: v for r, v in node.served.items() if _partition(r) != partition}
        self.lost[name].add(partition)

    # -- what happens -------------------------------------------------------------------

    @rule(
        name=st.sampled_from(ORCHESTRATORS),
        members=st.integers(1, 2),
        wait=st.sampled_from([0.0, 0.5, 1.5, 3.5]),
    )
    def lease_round(self, name: str, members: int, wait: float) -> None:
        """After `wait` seconds, read the bucket, then renew, release and claim as the
        core plans, and take over the open runs of each partition claimed (the member
        count an orchestrator believes in may be wrong: safety must not depend on it)."""
        self.now += wait
        node = self.nodes[name]
        seen = {}
        for partition, (owner, revision) in self.bucket.items():
            seen[partition] = parts.observe(node.view.get(partition), owner, revision, self.now)
        node.view = seen
        for partition in list(node.held):
            if partition not in seen or seen[partition].owner != name:
                self._step_down(name, partition)  # someone claimed it meanwhile
        mine = {p: lease for p, lease in seen.items() if lease.owner == name}
        plan = parts.plan(name, {**seen, **mine}, members, self.now, partitions=PARTITIONS, ttl=TTL)
        for partition in plan.renew:
            renewed = self._cas(partition, name, node.held.get(partition))
            if renewed is None:
                self._step_down(name, partition)
            else:
                node.held[partition] = renewed
        for partition in plan.release:
            expected = node.held.get(partition)
            self._step_down(name, partition)  # stop serving first, then let go
            self._cas(partition, None, expected)
        for partition in plan.claim:
            lease = seen.get(partition)
            claimed = self._cas(partition, name, lease.revision if lease else None)
            if claimed is not None:
                node.held[partition] = claimed
                self.lost[name].discard(partition)
                for run_id in RUNS:
                    if _partition(run_id) == partition:
                        self.take_over(name, run_id)

    @rule(name=st.sampled_from(ORCHESTRATORS), run_id=st.sampled_from(RUNS))
    def start_run(self, name: str, run_id: str) -> None:
        node = self.nodes[name]
        if _partition(run_id) in node.held and self._append(run_id, 0, "start", name):
            node.served[run_id] = (1, "")

    @rule(name=st.sampled_from(ORCHESTRATORS), run_id=st.sampled_from(RUNS))
    def take_over(self, name: str, run_id: str) -> None:
        """A partition's holder loads a run of it it does not serve and takes it over (at
        its claim, and when it looks again for runs started by a stale holder)."""
        node = self.nodes[name]
        partition = _partition(run_id)
        if partition not in node.held or run_id in node.served or run_id not in self.logs:
            return
        self._judge(name, run_id)

    @rule(name=st.sampled_from(ORCHESTRATORS), run_id=st.sampled_from(RUNS))
    def decide(self, name: str, run_id: str) -> None:
        """A decision on what the orchestrator cached, however stale: appended with the
        version it knows; a conflict reloads the run and the core says serve or step down."""
        node = self.nodes[name]
        for _ in range(2):  # what caused a decision that failed comes back once more
            if run_id not in node.served:
                return
            version, owner = node.served[run_id]
            if not parts.may_decide(owner, name, _partition(run_id) in node.held):
                return
            if self._append(run_id, version, "decision", name):
                node.served[run_id] = (version + 1, owner)
                return
            del node.served[run_id]
            self._judge(name, run_id)  # reloaded: serve, take over or step down

    @rule(name=st.sampled_from(ORCHESTRATORS))
    def crash(self, name: str) -> None:
        """Killed and started again: it remembers nothing; its leases run out."""
        self.nodes[name] = Node()

    # -- what must hold -----------------------------------------------------------------

    @invariant()
    def one_decider_between_takeovers(self) -> None:
        for run_id, log in self.logs.items():
            decider, newest = "", 0
            for kind, writer, lease in log:
                if kind == "takeover":
                    assert lease > newest, f"{run_id}: taken over under an older lease"
                    newest = lease
                if kind in ("start", "takeover"):
                    decider = writer
                else:
                    assert writer == decider, f"{run_id}: {writer} decided for {decider}'s run"

    @invariant()
    def a_key_has_one_holder(self) -> None:
        for partition, (owner, revision) in self.bucket.items():
            holders = [n for n, node in self.nodes.items() if node.held.get(partition) == revision]
            assert holders in ([], [owner])

    @invariant()
    def nothing_served_in_a_partition_let_go(self) -> None:
        for name, node in self.nodes.items():
            for run_id in node.served:
                assert _partition(run_id) in node.held, f"{name} serves {run_id} unheld"


def test_no_run_ever_has_two_deciders() -> None:
    run_state_machine_as_test(
        Ownership,
        settings=settings(
            max_examples=250,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_partition_of_a_run_is_stable_and_spread() -> None:
    assert parts.partition_of("run-1", 16) == parts.partition_of("run-1", 16)
    assert parts.partition_of("20261204-170000-abcdef") == 12, "fixed: sha256, not hash()"
    counts = [0] * 16
    for n in range(1600):
        counts[parts.partition_of(f"run-{n}")] += 1
    assert min(counts) > 50, counts
    with pytest.raises(ValueError, match="at least 1"):
        parts.partition_of("run-1", 0)


def test_a_lease_expires_only_on_its_observers_clock() -> None:
    seen = parts.observe(None, "a", 7, now=100.0)
    assert parts.observe(seen, "a", 7, now=102.0) is seen, "same revision: its age counts on"
    assert seen.expired(103.0, ttl=3.0)
    assert not seen.expired(102.9, ttl=3.0)
    renewed = parts.observe(seen, "a", 8, now=102.5)
    assert not renewed.expired(105.0, ttl=3.0), "a new revision starts the count again"


def test_the_plan_shares_the_partitions_fairly() -> None:
    alone = parts.plan("a", {}, 1, 0.0, partitions=4)
    assert sorted(alone.claim) == [0, 1, 2, 3]
    assert not alone.release
    held = {p: Lease("a", p + 1, 0.0) for p in range(4)}
    crowded = parts.plan("a", held, 2, 1.0, partitions=4)
    assert crowded.renew == (0, 1)
    assert crowded.release == (2, 3)
    assert not crowded.claim
    other = parts.plan("b", held, 2, 1.0, partitions=4)
    assert not other.claim, "a's leases are live: nothing to claim"
    late = parts.plan("b", held, 2, 3.0, partitions=4, ttl=3.0)
    assert len(late.claim) == 2, "a's leases expired on b's clock: b claims its share"


def _ctx(now: float) -> Context:
    return Context(now, 1000.0 + now, [], lambda: "token", lambda: 0.5, "boot-1")


def test_a_takeover_is_an_event_that_names_the_new_owner() -> None:
    workflow = WorkflowSpec("w", [StepSpec("s", role="worker")])
    started = decide(RunState("r"), StartRun("r", workflow, {}, "t" * 32, "cli"), _ctx(1.0))
    state = fold(RunState("r"), started)
    assert decide(state, Resume(), _ctx(2.0)) == [], "same boot, no owner: nothing"
    events = decide(state, Resume("orch-b", 5, 42), _ctx(2.0))
    assert isinstance(events[0], RunTakenOver)
    assert events[0].owner == "orch-b"
    taken = fold(state, events)
    assert taken.owner == "orch-b"
    assert decide(taken, Resume("orch-b", 5, 43), _ctx(3.0)) == [], "its owner already"
    assert taken.owner_lease == 42
    assert not parts.may_decide(taken.owner, "orch-a", holds_partition=True)
    assert parts.verdict(taken.owner, 42, "orch-a", 40) == "step down", "an older lease"
    assert parts.verdict(taken.owner, 42, "orch-a", 44) == "take over", "a newer lease"
    assert parts.verdict(taken.owner, 42, "orch-a", None) == "step down", "no lease"
    assert parts.verdict(taken.owner, 42, "orch-b", 44) == "serve"


def test_a_stale_owner_that_wakes_after_a_takeover_decides_nothing() -> None:
    """The machine's worst case, spelled out: a holds the partition and starts a run,
    stops renewing, b claims the partition once a's lease expired on b's clock and takes
    the run over; a, waking up, still believes it holds the partition: its append fails,
    and after reloading it steps down."""
    machine = Ownership()
    machine.lease_round("a", members=1, wait=0.0)
    machine.start_run("a", "run-0")
    machine.lease_round("b", members=2, wait=0.0)
    machine.lease_round("b", members=2, wait=3.5)
    assert _partition("run-0") in machine.nodes["b"].held
    assert [kind for kind, _, _ in machine.logs["run-0"]] == ["start", "takeover"]
    assert _partition("run-0") in machine.nodes["a"].held, "a has not noticed yet"
    machine.decide("a", "run-0")
    assert "run-0" not in machine.nodes["a"].served, "a stepped down"
    machine.decide("b", "run-0")
    assert machine.logs["run-0"][-1][:2] == ("decision", "b")
    machine.one_decider_between_takeovers()


def test_the_protocol_document_says_the_partitioning_the_core_does() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    assert f"modulo {parts.PARTITIONS}) into {parts.PARTITIONS} partitions" in doc
    assert f"every {parts.RENEW_S:g} s" in doc
    assert f"once it went {parts.LEASE_TTL_S:.1f} s unrenewed" in doc
