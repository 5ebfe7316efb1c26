"""`baton audit verify`: what the log proves about itself.

It walks the whole hash chain; checks every snapshot (bound to the chain by the store, and
equal to the fold of its run's events, which also catches a snapshot edited with its
digest recomputed); and checks the log against signed checkpoints, which is what catches
a cut tail or a chain rewritten with its hashes recomputed: those of `--anchor PATH`, else
those the orchestrator keeps for the state directory (`$BATON_ANCHOR`, else its
`checkpoints.jsonl`) when there are any, unless `--no-anchor`. A restored backup of the
database, or one cut short, is then caught by the plain command. docs/security.md says
what each check does and does not detect. Exit status: 0 when everything holds, 1 when
something does not, 2 when it cannot be checked.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from nacl.signing import VerifyKey

from eventstore import EventStore, VerifyReport
from eventstore.anchor import (
    AnchorReport,
    anchor_file,
    load_signing_key,
    read_verify_key,
    verify_anchored,
)
from eventstore.errors import AnchorError
from eventstore.model import SnapshotCheck
from orchestrator.core.errors import OrchestratorError, WorkflowError
from orchestrator.core.state import RunState
from orchestrator.service import journal
from orchestrator.service.bootstrap import anchor_key_path, anchor_path, state_dir


def add_arguments(audit: argparse.ArgumentParser) -> None:
    """The options of `audit verify` on the `audit` parser."""
    audit.add_argument(
        "--anchor",
        metavar="PATH",
        help="with verify: check the log against the signed checkpoints in PATH (a file, "
        "or a directory holding checkpoints.jsonl); detects a cut tail and a rewritten "
        "chain (default: those kept for the state directory, $BATON_ANCHOR, else its "
        "checkpoints.jsonl, when there are any)",
    )
    audit.add_argument(
        "--no-anchor",
        action="store_true",
        help="with verify: check the hash chain and snapshots only, not the checkpoints",
    )
    audit.add_argument(
        "--anchor-key",
        metavar="KEY",
        help="with --anchor: the public key that signs the checkpoints (64 hex digits, or a "
        "file holding them); default: the key in the state directory",
    )


def check_options(args: argparse.Namespace) -> None:
    """Refuse the anchor options outside `audit verify`, where they would check nothing."""
    if args.no_anchor and (args.anchor or args.anchor_key):
        raise WorkflowError("--no-anchor", "skips the checkpoints --anchor and --anchor-key name")
    for name in ("anchor", "no_anchor", "anchor_key"):
        if getattr(args, name) and args.action != "verify":
            raise WorkflowError(f"--{name.replace('_', '-')}", "is used with `baton audit verify`")


def _verify_key(directory: Path, anchor_key: str | None) -> VerifyKey:
    """`anchor_key`, else the public half of the state directory's signing key."""
    if anchor_key:
        return read_verify_key(anchor_key)
    return load_signing_key(anchor_key_path(directory), create=False).verify_key


def anchoring(
    directory: Path, anchor: str | None = None, anchor_key: str | None = None
) -> tuple[Path, VerifyKey] | str:
    """What to check the log against (checkpoints and their key), or why nothing:
    `anchor`, else the checkpoints kept for the state directory when it has any."""
    if anchor:
        return Path(anchor), _verify_key(directory, anchor_key)
    kept = anchor_path(directory)
    file = anchor_file(kept)
    if not file.is_file() or not file.stat().st_size:  # none signed yet (or made, not written)
        return f"no checkpoints at {file}; give --anchor PATH"
    try:
        return kept, _verify_key(directory, anchor_key)
    except AnchorError as error:  # its checkpoints, without their key
        return f"{error}; give --anchor-key KEY"


async def check_log(
    store: EventStore, against: tuple[Path, VerifyKey] | str
) -> tuple[bool, list[str]]:
    """Walk the hash chain, check it `against` signed checkpoints unless that says why
    not, and check every snapshot: whether all of it holds, and one line for each check
    (the anchor's problems and the bad snapshots each too)."""
    if isinstance(against, str):
        chain = await store.verify()
        holds = chain.ok
        lines = [
            _chain_line(chain),
            f"anchor: not checked ({against}): without signed checkpoints, a cut tail or a "
            "chain rewritten with its hashes recomputed still verifies",
        ]
    else:
        anchored = await verify_anchored(store, *against)
        holds = anchored.chain.ok and anchored.ok
        lines = [_chain_line(anchored.chain), *_anchor_lines(anchored, anchor_file(against[0]))]
    count, bad = await _check_snapshots(store)
    if bad:
        lines.append(f"snapshots: BAD: {len(bad)} of {count} must not be used")
        lines += [f"  {line}" for line in bad]
    else:
        lines.append(f"snapshots: ok ({count} checked)")
    return holds and not bad, lines


async def verify(args: argparse.Namespace, store: EventStore) -> int:
    """Check the chain, the anchor (given, or the state directory's) and every snapshot;
    print what holds."""
    check_options(args)
    directory = state_dir(args.state_dir)
    against = (
        "--no-anchor" if args.no_anchor else anchoring(directory, args.anchor, args.anchor_key)
    )
    holds, lines = await check_log(store, against)
    print("\n".join(lines))
    return 0 if holds else 1


def _chain_line(report: VerifyReport) -> str:
    if report.ok:
        return f"hash chain: ok ({report.checked} events checked)"
    return f"hash chain: BROKEN at position {report.first_bad_position}: {report.reason}"


def _anchor_lines(report: AnchorReport, file: Path) -> list[str]:
    anchor = report.anchor
    lines = [f"anchor: BAD: {problem}" for problem in anchor.problems]
    if not anchor.count:
        return lines
    signed = (
        f"{anchor.count} signed checkpoint(s) in {file} by key {report.key[:16]}..., "
        f"the newest at position {anchor.newest}"
    )
    if report.ok:
        newer = report.chain.checked - anchor.newest
        lines.append(
            f"anchor: ok ({signed}); {newer} newer event(s) are covered by the hash chain "
            "alone: an event appended after the newest checkpoint cannot be told from a forgery"
        )
    else:
        lines.append(f"anchor: {signed}")
    return lines


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
