"""`baton blobs ls|get|gc`: the large values kept beside the log, one value by its digest,
and collecting those no event refers to (see `orchestrator.service.blob_gc`)."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import private
from bus import blobs as blobs_wire
from eventstore import EventStore
from orchestrator.core.errors import WorkflowError
from orchestrator.service import blob_gc


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `blobs` command's parser, under `sub` (the `baton` subparsers)."""
    blobs: argparse.ArgumentParser = sub.add_parser(
        "blobs",
        help="list the large values kept beside the log, read one, or collect the unreferenced",
        description="Large values (over 256 KiB by default) are kept once, by SHA-256, "
        "beside the log (a SQLite file beside events.db, or the JetStream Object Store "
        "bucket BATON_BLOBS), and events refer to them by digest. The log is append-only, "
        "so a run's blobs stay as long as its events; 'gc' removes the blobs no event "
        "refers to (uploads whose result was refused, timed out or never sent) that were "
        "stored more than --grace seconds ago. 'ls' lists every blob and whether the log "
        "refers to it; 'get DIGEST' writes the value a reference names (text and bytes as they "
        "are, any other value as JSON whose large parts are references of their own). Exit "
        "1 if the log refers to a blob the store lacks, or 'get' finds no such blob.",
    )
    blobs.add_argument("action", choices=["ls", "get", "gc"],
                       help="'ls' list, 'get' read one, 'gc' collect")  # fmt: skip
    blobs.add_argument("digest", nargs="?", default="",
                       help="get: the reference's digest, sha256:<64 hex>")  # fmt: skip
    blobs.add_argument("-o", "--output", type=Path, metavar="FILE",
                       help="get: write the value to FILE (made readable by you only) "
                            "instead of standard output")  # fmt: skip
    blobs.add_argument("--grace", type=float, default=blob_gc.GRACE_S, metavar="SECONDS",
                       help="keep blobs stored this recently, referenced or not (default "
                            "3600: an upload's result may still be on its way)")  # fmt: skip
    blobs.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return blobs


async def blobs(args: argparse.Namespace, store: EventStore) -> int:
    """`baton blobs ls|gc` on the configured store."""
    if args.action != "get" and (args.digest or args.output):
        raise WorkflowError("digest", f"'{args.action}' takes no digest or --output")
    if args.action == "get":
        return await _get(args, store)
    if args.action == "ls":
        wanted = await blob_gc.referenced(store)
        stored = await store.blobs.list()
        for info in stored:
            mark = "referenced" if info.digest in wanted else "unreferenced"
            print(f"{info.digest}  {info.size:>12}  {info.media_type:<28}  {mark}")
        if not stored:
            print("no blobs: no value has been over the blob threshold")
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


async def _get(args: argparse.Namespace, store: EventStore) -> int:
    if not blobs_wire.is_digest(args.digest):
        raise WorkflowError("digest", f"{args.digest!r} is not a digest: sha256:<64 lowercase hex>")
    info = await store.blobs.info(args.digest)
    if info is None:
        print(f"no blob {args.digest} in this store", file=sys.stderr)
        return 1
    data = await store.blobs.get(args.digest)
    if info.media_type.split(";", 1)[0].strip().lower() == blobs_wire.MSGPACK:
        value = blobs_wire.decode_value(data, info.media_type)
        data = json.dumps(value, indent=2, default=_bytes_as_text).encode() + b"\n"
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    private.write(args.output, data)  # 0600 if new: a run's value
    print(f"wrote {len(data)} bytes of {args.digest} ({info.media_type}) to {args.output}")
    return 0


def _bytes_as_text(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON")
