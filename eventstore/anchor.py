"""Signed checkpoints: the log's head anchored outside the store.

A hash chain alone cannot tell a log from a shorter one (its tail cut) or from one
rewritten from some point on with every later hash recomputed: each is a valid chain. A
checkpoint is an Ed25519 signature (PyNaCl) over a position of the log, the hash of the
event there and the time, made with a key the store never sees and appended as one JSON
line to a file the operator chooses, outside the database. `Checkpointer` writes them
while a service runs, off the append path; `verify_anchored` keeps the checkpoints the
trusted public key signed and walks the log against them (`EventStore.verify`):

- a log that ends before the newest checkpoint was cut ("truncated");
- a log whose hash at a checkpointed position differs was rewritten at or before it
  ("rewritten"), however carefully its later hashes were recomputed;
- a checkpoint that does not verify with the key, or two that disagree about one
  position, are named too.

What checkpoints cannot show: an event appended after the newest checkpoint by someone who
can write the store, with a correct `prev_hash`, extends the chain validly; and the next
checkpoint signs whatever head it finds, such an event included. Checkpoints prove the log
up to a position is what the key holder saw there, not who wrote each event.

The file is JSON lines, one `Checkpoint` each; the signed bytes are the tag
`baton.eventstore.checkpoint.v1`, the position (big-endian unsigned 64-bit), the time
(IEEE-754 binary64, Unix seconds) and the hash's 64 ASCII hex digits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

import private
from eventstore._common import log
from eventstore.errors import AnchorError, StorageError
from eventstore.model import VerifyReport
from eventstore.store import EventStore

__all__ = [
    "FILE_NAME",
    "FORMAT",
    "Anchor",
    "AnchorReport",
    "Checkpoint",
    "Checkpointer",
    "anchor_file",
    "append_checkpoint",
    "load_signing_key",
    "read_checkpoints",
    "read_verify_key",
    "sign_checkpoint",
    "verify_anchored",
]

FORMAT: Final = "baton-checkpoint/1"
FILE_NAME: Final = "checkpoints.jsonl"
"""The file checkpoints go to when the anchor named is a directory."""
_DOMAIN: Final = b"baton.eventstore.checkpoint.v1"
_SIGNED: Final = struct.Struct(">Q d")
_MAX_PROBLEMS: Final = 20


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One signed statement: the event at `position` of the log had hash `hash` at `at`."""

    format: str = FORMAT
    position: int
    hash: str
    at: float
    """Unix seconds when it was signed."""
    key: str
    """The signer's Ed25519 public key, hex."""
    signature: str
    """Ed25519 over `signed_bytes(position, hash, at)`, hex."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Checkpoint)


def signed_bytes(position: int, hash: str, at: float) -> bytes:
    """What a checkpoint's signature covers (see the module's docs)."""
    return b"".join((_DOMAIN, _SIGNED.pack(position, at), hash.encode("ascii")))


def sign_checkpoint(key: SigningKey, position: int, hash: str, at: float) -> Checkpoint:
    """A checkpoint of `position` and `hash`, signed with `key` at time `at`."""
    signature = key.sign(signed_bytes(position, hash, at)).signature
    return Checkpoint(
        position=position,
        hash=hash,
        at=at,
        key=key.verify_key.encode().hex(),
        signature=signature.hex(),
    )


def _signature_problem(checkpoint: Checkpoint, key: VerifyKey) -> str:
    if checkpoint.format != FORMAT:
        return f"unknown format {checkpoint.format!r}"
    trusted = key.encode().hex()
    if checkpoint.key != trusted:
        return f"signed by key {checkpoint.key[:16]}..., not the trusted key {trusted[:16]}..."
    try:
        message = signed_bytes(checkpoint.position, checkpoint.hash, checkpoint.at)
        key.verify(message, bytes.fromhex(checkpoint.signature))
    except (BadSignatureError, ValueError, TypeError, struct.error, OverflowError):
        return "its signature does not verify: the checkpoint was forged or edited"
    return ""


# -- keys -----------------------------------------------------------------------------


def _read_signing_key(path: Path) -> SigningKey:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise AnchorError(f"{path} does not hold an Ed25519 key (64 hex digits)")
    return SigningKey(seed)


def load_signing_key(path: Path, *, create: bool = True) -> SigningKey:
    """The checkpoint key kept in `path` (its 32-byte Ed25519 seed, hex). Unless `create`
    is False, it is made there first when there is none, with mode 0600 from its creation
    (written to a private temporary file, then linked into place, so no process ever reads
    half a key)."""
    try:
        return _read_signing_key(path)
    except FileNotFoundError as error:
        if not create:
            raise AnchorError(f"no checkpoint key at {path}") from error
    except OSError as error:
        raise AnchorError(f"cannot read the checkpoint key {path}: {error}") from error
    key = SigningKey.generate()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        private.make_dir(path.parent)
        fd = private.create(temporary)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(bytes(key).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made one meanwhile: use that one
            return _read_signing_key(path)
    except OSError as error:
        raise AnchorError(f"cannot create the checkpoint key {path}: {error}") from error
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return key


def read_verify_key(text: str) -> VerifyKey:
    """A public key given as 64 hex digits, or as the path of a file that holds them."""
    candidate = text.strip()
    if len(candidate) != 64:
        try:
            candidate = Path(text).read_text(encoding="ascii", errors="replace").strip()
        except OSError as error:
            raise AnchorError(f"{text!r} is neither a public key nor a readable file") from error
    try:
        raw = bytes.fromhex(candidate)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise AnchorError(f"{text!r} is not an Ed25519 public key (64 hex digits)")
    return VerifyKey(raw)


# -- the anchor file ------------------------------------------------------------------


def anchor_file(anchor: Path) -> Path:
    """The file of checkpoints `anchor` names: itself, or `FILE_NAME` in it when it is a
    directory."""
    return anchor / FILE_NAME if anchor.is_dir() else anchor


def append_checkpoint(anchor: Path, checkpoint: Checkpoint) -> None:
    """Append `checkpoint` to the anchor as one line, durably; a file made here is 0600
    from its creation (and a directory made for it 0700)."""
    file = anchor_file(anchor)
    private.make_dir(file.parent)
    with private.append(file) as f:
        f.write(_encoder.encode(checkpoint) + b"\n")
        os.fsync(f.fileno())


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """The checkpoints of one anchor file that the trusted key signed, and what is wrong
    with the rest of it."""

    file: str
    hashes: dict[int, str] = msgspec.field(default_factory=dict)
    """Position -> signed hash, for `EventStore.verify`."""
    count: int = 0
    """Signed checkpoints read (several may name one position)."""
    problems: list[str] = msgspec.field(default_factory=list)

    @property
    def newest(self) -> int:
        """The highest position a checkpoint covers, 0 if none."""
        return max(self.hashes, default=0)


def read_checkpoints(anchor: Path, key: VerifyKey) -> Anchor:
    """Every checkpoint in `anchor` that `key` signed. A line that is not one, is signed
    by another key or does not verify, and two checkpoints that disagree about a position,
    are problems; a last line without its newline is a write cut short and is skipped."""
    file = anchor_file(anchor)
    hashes: dict[int, str] = {}
    problems: list[str] = []
    count = 0

    def problem(text: str) -> None:
        if len(problems) < _MAX_PROBLEMS:
            problems.append(text)

    try:
        with file.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith(b"\n") or not line.strip():
                    continue
                try:
                    checkpoint = _decoder.decode(line)
                except msgspec.DecodeError as error:
                    problem(f"line {number} of {file} is not a checkpoint: {error}")
                    continue
                wrong = _signature_problem(checkpoint, key)
                if wrong:
                    problem(f"line {number} of {file}: {wrong}")
                    continue
                count += 1
                known = hashes.setdefault(checkpoint.position, checkpoint.hash)
                if known != checkpoint.hash:
                    problem(
                        f"line {number} of {file}: two signed checkpoints disagree about "
                        f"position {checkpoint.position}: the log was rewritten between them"
                    )
    except FileNotFoundError:
        problems.append(f"no checkpoints at {file}")
    except OSError as error:
        problems.append(f"cannot read {file}: {error}")
    if not count and not problems:
        problems.append(f"no signed checkpoints in {file}")
    return Anchor(file=str(file), hashes=hashes, count=count, problems=problems)


class AnchorReport(msgspec.Struct, frozen=True, kw_only=True):
    """The log checked against its anchor: the chain walk (which fails "truncated" or
    "rewritten" when the log disagrees with a checkpoint) and the anchor's own problems."""

    chain: VerifyReport
    anchor: Anchor
    key: str
    """The trusted public key, hex."""

    @property
    def ok(self) -> bool:
        """The chain holds, agrees with every checkpoint, and the anchor is sound."""
        return self.chain.ok and not self.anchor.problems


async def verify_anchored(store: EventStore, anchor: Path, key: VerifyKey) -> AnchorReport:
    """Walk `store`'s log against the checkpoints in `anchor` that `key` signed."""
    found = await asyncio.to_thread(read_checkpoints, anchor, key)
    chain = await store.verify(found.hashes)
    return AnchorReport(chain=chain, anchor=found, key=key.encode().hex())


# -- writing checkpoints while a service runs -----------------------------------------


class Checkpointer:
    """Signs the log's head into `anchor` now and then, never on the append path.

    Every `poll_s` seconds it reads the head's position (one cheap read); it signs when
    `every_events` events or `every_s` seconds have passed since its last checkpoint (and
    the log moved), when asked (`request`, e.g. at a run's end; the asks that come within
    `asked_gap_s` of the last checkpoint share the next one) and when closed. Signing
    reads one event, signs 80 bytes and appends one line with an fsync, in a thread. A
    failure is logged and counted, and the loop carries on.
    """

    def __init__(
        self,
        store: EventStore,
        anchor: Path,
        key: SigningKey,
        *,
        every_events: int = 1000,
        every_s: float = 10.0,
        poll_s: float = 1.0,
        asked_gap_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._anchor = anchor
        self._key = key
        self._every_events = every_events
        self._every_s = every_s
        self._poll_s = poll_s
        self._asked_gap_s = asked_gap_s
        self._clock = clock
        self._wall = wall
        self._signed = 0
        self._since = clock()
        self._asked = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        """Checkpoints that failed (logged each time)."""

    @property
    def public_key(self) -> str:
        """The public key that verifies these checkpoints, hex."""
        return self._key.verify_key.encode().hex()

    async def start(self) -> None:
        """Start checkpointing in the background."""
        if self._task is None:
            log.info("checkpoints of the event log go to %s, key %s", self._anchor, self.public_key)
            self._task = asyncio.create_task(self._loop())

    def request(self) -> None:
        """Ask for a checkpoint soon (it never waits: safe on any path)."""
        self._asked.set()

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the head now, unless it is the one signed last; the checkpoint written."""
        async with self._lock:
            head = await self._store.last_position()
            if head <= self._signed:
                return None
            found = await self._store.read_all(head, 1)
            if not found:
                return None
            event = found[0]
            taken = self._clock()  # before the line exists: whoever sees it sees this time
            checkpoint = sign_checkpoint(self._key, event.position, event.hash, self._wall())
            await asyncio.to_thread(append_checkpoint, self._anchor, checkpoint)
            self._signed = event.position
            self._since = taken
            return checkpoint

    async def _due(self) -> bool:
        moved = await self._store.last_position() - self._signed
        late = self._clock() - self._since >= self._every_s
        return moved >= self._every_events or (moved > 0 and late)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), self._poll_s)
            asked = self._asked.is_set()
            if asked:  # the runs ending in the meanwhile share the checkpoint
                await asyncio.sleep(max(0.0, self._since + self._asked_gap_s - self._clock()))
            self._asked.clear()
            try:
                if asked or await self._due():
                    await self.checkpoint()
            except StorageError as exc:  # the log unreadable a moment (a failover): one line
                self.failures += 1
                log.warning("a checkpoint of the event log to %s failed: %s", self._anchor, exc)
            except Exception:  # supervised: logged, counted, and the loop goes on
                self.failures += 1
                log.exception("a checkpoint of the event log to %s failed", self._anchor)

    async def close(self) -> None:
        """Stop the loop and sign the head one last time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.checkpoint()
        except Exception:
            self.failures += 1
            log.exception("the last checkpoint of the event log to %s failed", self._anchor)
