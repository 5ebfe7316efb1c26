"""`baton audit verify`: what the log proves about itself.

It walks the whole hash chain; checks every snapshot (bound to the chain by the store, and
equal to the fold of its run's events, which also catches a snapshot edited with its
digest recomputed); and, with `--anchor PATH`, checks the log against the signed
checkpoints there, which is what catches a cut tail or a chain rewritten with its hashes
recomputed. docs/security.md says what each check does and does not detect. Exit status:
0 when everything holds, 1 when something does not, 2 when it cannot be checked.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from eventstore import EventStore, VerifyReport
from eventstore.anchor import AnchorReport, load_signing_key, read_verify_key, verify_anchored
from eventstore.model import SnapshotCheck
from orchestrator.core.errors import OrchestratorError, WorkflowError
from orchestrator.core.state import RunState
from orchestrator.service import journal
from orchestrator.service.bootstrap import anchor_key_path, state_dir


def add_arguments(audit: argparse.ArgumentParser) -> None:
    """The options of `audit verify` on the `audit` parser."""
    audit.add_argument(
        "--anchor",
        metavar="PATH",
        help="with verify: check the log against the signed checkpoints in PATH (a file, "
        "or a directory holding checkpoints.jsonl); detects a cut tail and a rewritten chain",
    )
    audit.add_argument(
        "--anchor-key",
        metavar="KEY",
        help="with --anchor: the public key that signs the checkpoints (64 hex digits, or a "
        "file holding them); default: the key in the state directory",
    )


def check_options(args: argparse.Namespace) -> None:
    """Refuse the anchor options outside `audit verify`, where they would check nothing."""
    if args.anchor_key and not args.anchor:
        raise WorkflowError("--anchor-key", "is used with --anchor")
    if args.anchor and args.action != "verify":
        raise WorkflowError("--anchor", "is used with `baton audit verify`")


async def verify(args: argparse.Namespace, store: EventStore) -> int:
    """Check the chain, the anchor (when given) and every snapshot; print what holds."""
    check_options(args)
    anchored: AnchorReport | None = None
    if args.anchor:
        if args.anchor_key:
            key = read_verify_key(args.anchor_key)
        else:
            own = anchor_key_path(state_dir(args.state_dir))
            key = load_signing_key(own, create=False).verify_key
        anchored = await verify_anchored(store, Path(args.anchor), key)
        chain = anchored.chain
    else:
        chain = await store.verify()
    _print_chain(chain)
    if anchored is None:
        print(
            "anchor: not checked (give --anchor PATH): without signed checkpoints, a cut tail "
            "or a chain rewritten with its hashes recomputed still verifies"
        )
    else:
        _print_anchor(anchored)
    count, bad = await _check_snapshots(store)
    if bad:
        print(f"snapshots: BAD: {len(bad)} of {count} must not be used")
        for line in bad:
            print(f"  {line}")
    else:
        print(f"snapshots: ok ({count} checked)")
    holds = chain.ok and not bad and (anchored is None or anchored.ok)
    return 0 if holds else 1


def _print_chain(report: VerifyReport) -> None:
    if report.ok:
        print(f"hash chain: ok ({report.checked} events checked)")
    else:
        print(f"hash chain: BROKEN at position {report.first_bad_position}: {report.reason}")


def _print_anchor(report: AnchorReport) -> None:
    anchor = report.anchor
    for problem in anchor.problems:
        print(f"anchor: BAD: {problem}")
    if not anchor.count:
        return
    signed = (
        f"{anchor.count} signed checkpoint(s) by key {report.key[:16]}..., "
        f"the newest at position {anchor.newest}"
    )
    if report.ok:
        newer = report.chain.checked - anchor.newest
        print(
            f"anchor: ok ({signed}); {newer} newer event(s) are covered by the hash chain "
            "alone: an event appended after the newest checkpoint cannot be told from a forgery"
        )
    else:
        print(f"anchor: {signed}")


async def _check_snapshots(store: EventStore) -> tuple[int, list[str]]:
    """How many snapshots there are, and what is wrong with each bad one: not bound to the
    chain (the store's check), or, for a run's snapshot, not the fold of its events."""
    checks = await store.verify_snapshots()
    bad = [_named(c, c.problem) for c in checks if not c.ok]
    runs: defaultdict[str, list[SnapshotCheck]] = defaultdict(list)
    for check in checks:
        if check.ok and check.stream.startswith(journal.RUN_PREFIX):
            runs[check.stream].append(check)
    for stream, kept in sorted(runs.items()):
        state = RunState(journal.run_id_of(stream))
        for check in sorted(kept, key=lambda c: c.version):
            try:
                state = await journal.fold_run(store, state, check.position)
            except OrchestratorError as error:
                bad.append(_named(check, f"its run's events do not replay: {error}"))
                break
            problem = await _differs(store, check, state)
            if problem:
                bad.append(_named(check, problem))
    return len(checks), bad


async def _differs(store: EventStore, check: SnapshotCheck, replayed: RunState) -> str:
    snapshot = await store.load_snapshot(check.stream, until_position=check.position)
    if snapshot is None or snapshot.version != check.version:
        return "it is no longer bound to the chain"
    if snapshot.schema != journal.STATE_SCHEMA:
        return ""  # of another shape: never used
    held = journal.snapshot_state(snapshot)
    if held is None:
        return "its state does not decode"
    if held != replayed:
        return (
            f"its state is not the replay of the run's events up to v{check.version}: "
            "it was edited and its digest recomputed"
        )
    return ""


def _named(check: SnapshotCheck, problem: str) -> str:
    return f"snapshot of {check.stream} v{check.version} at position {check.position}: {problem}"
