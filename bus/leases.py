"""The lease bucket: a JetStream key-value bucket whose keys orchestrators hold by
compare-and-set, for orchestrators that share the runs by partition.

Split from `bus.connection` (it is that module's key-value part, and the only other
place that touches nats-py): one watcher keeps a copy of the whole bucket, so a round of
lease upkeep reads memory, not the server; every write names the revision it expects,
and a write that finds another revision is `LeaseLost`, never a silent overwrite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from bus.errors import BusError
from bus.nats_options import STREAM_WAIT_S, quorum_wait

log = logging.getLogger("baton.bus")

LEASES_BUCKET = "BATON_LEASES"
"""The key-value bucket of partition leases and orchestrator presence."""
KEEP_S = 300.0
"""A key nobody wrote for this long leaves the bucket (an orchestrator gone for good)."""


class LeaseLost(BusError):
    """A compare-and-set on the lease bucket found another revision than expected."""


class LeaseBucket:
    """The lease bucket, as a local copy kept by a watcher, and compare-and-set writes."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv
        self.entries: dict[str, tuple[str, int]] = {}
        """Key → (value, revision), as the watcher last delivered it."""
        self._watcher: Any = None
        self.ready = asyncio.Event()
        """Set once the watcher delivered the bucket as it was when it started."""

    @classmethod
    async def open(cls, js: Any, replicas: int, wait_s: float = STREAM_WAIT_S) -> LeaseBucket:
        """The bucket, created with `replicas` copies if it is not there. A cluster
        without a JetStream quorum yet (just started, electing) is waited for, with one
        line saying so, for at most `wait_s` seconds."""
        config = KeyValueConfig(
            bucket=LEASES_BUCKET,
            history=1,
            ttl=KEEP_S,
            storage=StorageType.FILE,
            replicas=replicas,
        )
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                try:
                    kv = await js.key_value(LEASES_BUCKET)
                except nats.js.errors.BucketNotFoundError:
                    kv = await js.create_key_value(config)
                return cls(kv)
            except (nats.errors.Error, TimeoutError) as exc:
                left = deadline - time.monotonic()
                if not quorum_wait(exc) or left <= 0:
                    waited = f"; no JetStream quorum within {wait_s:g}s" if left <= 0 else ""
                    raise BusError(
                        f"cannot open the lease bucket {LEASES_BUCKET}: {exc}{waited}"
                    ) from exc
                if not said:
                    log.warning(
                        "waiting up to %gs for a JetStream quorum to open the lease bucket "
                        "%s (%s)", wait_s, LEASES_BUCKET, exc or type(exc).__name__,
                    )  # fmt: skip
                    said = True
                await asyncio.sleep(min(1.0, left))

    async def watch(self) -> None:
        """Keep `entries` up to date, until cancelled (run it supervised: a failure of
        the watcher raises, and the next call starts a new one from the bucket's state)."""
        try:
            self._watcher = await self._kv.watchall()
            entries: dict[str, tuple[str, int]] = {}  # the bucket as it is: swapped in whole
            while True:
                try:
                    entry = await self._watcher.updates(timeout=5.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                if entry is None:  # the initial values are all delivered
                    self.entries = entries  # (keys deleted while no watcher ran are gone)
                    self.ready.set()
                    continue
                if entry.operation in ("DEL", "PURGE") or entry.value is None:
                    entries.pop(entry.key, None)
                else:
                    entries[entry.key] = (entry.value.decode(), entry.revision)
        except nats.errors.Error as exc:
            raise BusError(f"watching {LEASES_BUCKET} failed: {exc}") from exc
        finally:
            watcher, self._watcher = self._watcher, None
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    async def write(self, key: str, value: str, expected: int | None) -> int:
        """Set `key` to `value` if it is at revision `expected` (None: if it is absent or
        deleted); its new revision. `LeaseLost` if it is not."""
        try:
            if expected is None:
                revision = int(await self._kv.create(key, value.encode()))
            else:
                revision = int(await self._kv.update(key, value.encode(), last=expected))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyValueError) as exc:
            raise LeaseLost(f"{key}: not at revision {expected}") from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == 10071:  # wrong last sequence
                raise LeaseLost(f"{key}: not at revision {expected}") from exc
            raise BusError(f"cannot write {key} in {LEASES_BUCKET}: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot write {key} in {LEASES_BUCKET}: {exc}") from exc
        self.entries[key] = (value, revision)
        return revision

    async def put(self, key: str, value: str) -> None:
        """Set `key` whatever it holds (presence, never a lease)."""
        try:
            revision = int(await self._kv.put(key, value.encode()))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot write {key} in {LEASES_BUCKET}: {exc}") from exc
        self.entries[key] = (value, revision)

    async def release(self, key: str, expected: int) -> None:
        """Delete `key` if it is still at revision `expected` (else someone else holds it
        now, which is as good)."""
        try:
            await self._kv.delete(key, last=expected)
        except nats.js.errors.KeyWrongLastSequenceError:
            return
        except nats.js.errors.APIError as exc:
            if exc.err_code == 10071:  # wrong last sequence
                return
            raise BusError(f"cannot delete {key} in {LEASES_BUCKET}: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot delete {key} in {LEASES_BUCKET}: {exc}") from exc
        self.entries.pop(key, None)
