"""`baton blobs ls|gc`: the large values kept beside the log, and collecting those no
event refers to (see `orchestrator.service.blob_gc`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from eventstore import EventStore
from orchestrator.core.errors import WorkflowError
from orchestrator.service import blob_gc


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `blobs` command's parser, under `sub` (the `baton` subparsers)."""
    blobs: argparse.ArgumentParser = sub.add_parser(
        "blobs",
        help="list the large values kept beside the log, or collect the unreferenced",
        description="Large values (over 256 KiB by default) are kept once, by SHA-256, "
        "beside the log (a SQLite file beside events.db, or the JetStream Object Store "
        "bucket BATON_BLOBS), and events refer to them by digest. The log is append-only, "
        "so a run's blobs stay as long as its events; 'gc' removes the blobs no event "
        "refers to (uploads whose result was refused, timed out or never sent) that were "
        "stored more than --grace seconds ago. 'ls' lists every blob and whether the log "
        "refers to it. Exit 1 if the log refers to a blob the store lacks.",
    )
    blobs.add_argument("action", choices=["ls", "gc"], help="'ls' list, 'gc' collect")
    blobs.add_argument("--grace", type=float, default=blob_gc.GRACE_S, metavar="SECONDS",
                       help="keep blobs stored this recently, referenced or not (default "
                            "3600: an upload's result may still be on its way)")  # fmt: skip
    blobs.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return blobs


async def blobs(args: argparse.Namespace, store: EventStore) -> int:
    """`baton blobs ls|gc` on the configured store."""
    if args.action == "ls":
        wanted = await blob_gc.referenced(store)
        for info in await store.blobs.list():
            mark = "referenced" if info.digest in wanted else "unreferenced"
            print(f"{info.digest}  {info.size:>12}  {info.media_type:<28}  {mark}")
        return 0
    if args.grace < 0:
        raise WorkflowError("--grace", "must be at least 0 seconds")
    done = await blob_gc.collect(store, grace_s=args.grace, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(done.removed)} unreferenced blob(s), {done.freed_bytes} bytes; kept "
          f"{done.referenced - len(done.missing)} referenced and {done.kept_young} stored "
          f"within the last {args.grace:g}s")  # fmt: skip
    for digest in done.removed:
        print(f"  {digest}")
    if done.missing:
        print(f"the log refers to {len(done.missing)} blob(s) the store lacks:", file=sys.stderr)
        for digest in done.missing:
            print(f"  {digest}", file=sys.stderr)
        return 1
    return 0
