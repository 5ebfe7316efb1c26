"""The log as JetStream messages: creating its stream, reading stored messages by sequence
with direct gets and decoding them into events; and which NATS errors mean a failed
request, with how they become `StorageError`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore

from eventstore.errors import StorageError
from eventstore.jetstream.schema import Layout, decode_event
from eventstore.model import StoredEvent

_READ_CHUNK: Final = 1000
_READ_MAX_BYTES: Final = 8 * 1024 * 1024
NATS_ERRORS: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)
"""What the client raises when the server or the network fails."""


def storage_error(action: str, error: BaseException) -> StorageError:
    """`error` (from the client) as the `StorageError` the caller hears."""
    failure = StorageError(f"{action} failed: {error!r}")
    failure.__cause__ = error
    return failure


UNAVAILABLE_WAIT_S: Final = 20.0
"""How long a read waits for a stream no replica can serve yet (just created, or while
its cluster elects a leader: 4-9 s)."""
STREAM_WAIT_S: Final = 30.0
"""How long creating a stream waits for a JetStream cluster to have a quorum."""
_NOT_CLUSTERED: Final = 10074
_INSUFFICIENT_RESOURCES: Final = 10023
_NOT_ENABLED_FOR_ACCOUNT: Final = 10039
"""JetStream's error code for an account without JetStream (in operator mode: an account
JWT without JetStream limits); its 503 is no quorum to wait for."""
log = logging.getLogger("baton.eventstore")


async def create_stream(js: JetStreamContext, config: api.StreamConfig, wait_s: float) -> None:
    """Add the stream `config` describes (see `until_quorum`)."""
    await until_quorum(lambda: js.add_stream(config), config, wait_s)


async def until_quorum(
    action: Callable[[], Awaitable[object]], config: api.StreamConfig, wait_s: float
) -> None:
    """Do `action` (look up, create the stream `config` describes). A cluster without a
    JetStream quorum, or with fewer servers up than its replicas, is waited for (one log
    line says so) for at most `wait_s` seconds; replicas a server can never hold (it is
    not clustered), and an account without JetStream, are refused at once. All with a
    `StorageError` that says so; any other failure is raised as it is."""
    deadline = time.monotonic() + wait_s
    said = False  # the one line that says it waits
    while True:
        try:
            await action()
            return
        except nats.js.errors.APIError as error:
            if error.err_code == _NOT_CLUSTERED:
                raise StorageError(
                    f"cannot create stream {config.name} with {config.num_replicas} "
                    f"replicas: the NATS server is not a JetStream cluster ({error.description})"
                ) from error
            if error.err_code == _NOT_ENABLED_FOR_ACCOUNT:
                raise StorageError(
                    f"cannot create stream {config.name}: JetStream is not enabled for the "
                    f"account this login belongs to ({error.description})"
                ) from error
            waitable = error.err_code == _INSUFFICIENT_RESOURCES or error.code == 503
            failure: BaseException = error
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            waitable, failure = True, e
        left = deadline - time.monotonic()
        if not waitable:
            raise failure
        if left <= 0:
            raise StorageError(
                f"cannot create stream {config.name} ({config.num_replicas} replicas): "
                f"no JetStream quorum within {wait_s:g}s ({failure!r})"
            ) from failure
        if not said:
            log.warning(
                "waiting up to %gs for a JetStream quorum to create stream %s with %d "
                "replicas (%r)", wait_s, config.name, config.num_replicas, failure,
            )  # fmt: skip
            said = True
        await asyncio.sleep(min(1.0, left))


class _Unavailable(Exception):
    """A direct get found no replica able to answer (503): try again shortly."""


class JetStreamLog:
    """The connection `nc` to the log named by `layout`; every request waits at most
    `timeout` seconds."""

    def __init__(self, nc: NATS, layout: Layout, timeout: float) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.layout = layout
        self.timeout = timeout

    async def ensure_stream(self, replicas: int, wait_s: float = STREAM_WAIT_S) -> None:
        """Create the log stream if it is missing (waiting up to `wait_s` for a cluster's
        quorum, see `create_stream`); allow atomic batches and direct gets on one created
        before they existed."""
        name = self.layout.name
        config = self.layout.log_config(replicas)

        async def ensure() -> None:
            try:
                info = await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(config)
                return
            if not (info.config.allow_atomic and info.config.allow_direct):
                updated = info.config.evolve(allow_atomic=True, allow_direct=True)
                await self.js.update_stream(updated)

        try:
            await until_quorum(ensure, config, wait_s)
        except NATS_ERRORS as error:
            raise storage_error("creating the JetStream stream", error) from error

    async def object_store(self, bucket: str, description: str, replicas: int) -> ObjectStore:
        """The object store `bucket` beside the log, made (file storage, `replicas`) if
        it is missing; NATS errors as they come."""
        try:
            return await self.js.object_store(bucket)
        except nats.js.errors.NotFoundError:
            config = api.ObjectStoreConfig(
                bucket=bucket,
                description=description,
                storage=api.StorageType.FILE,
                replicas=replicas,
            )
            return await self.js.create_object_store(bucket, config=config)

    async def read_object(self, bucket: str, name: str, what: str) -> bytes | None:
        """The object `name` in the object store `bucket`; `None` if either is missing, or
        if it cannot be read (one line naming `what`: the caller does without it)."""
        try:
            found = await (await self.js.object_store(bucket)).get(name)
        except nats.js.errors.NotFoundError:
            return None
        except NATS_ERRORS as error:  # e.g. not allowed
            log.warning("%s not read (%s): doing without it", what, error)
            return None
        return found.data or b""

    def decode(self, msg: Msg) -> StoredEvent:
        return decode_event(msg, self.layout.name)

    async def direct_batch(
        self, stream_name: str, start: int, subject: str, batch: int = _READ_CHUNK
    ) -> list[Msg]:
        """Up to `batch` stored messages on `subject` (wildcards allowed) from sequence
        `start` on, in one direct-get request."""
        deadline = time.monotonic() + UNAVAILABLE_WAIT_S
        while True:
            try:
                return await self._direct_batch(stream_name, start, subject, batch)
            except _Unavailable as unavailable:
                if time.monotonic() >= deadline:
                    raise StorageError(str(unavailable)) from None
                await asyncio.sleep(0.1)

    async def _direct_batch(
        self, stream_name: str, start: int, subject: str, batch: int
    ) -> list[Msg]:
        inbox = self.nc.new_inbox()
        request = {
            "seq": max(start, 1),
            "batch": batch,
            "next_by_subj": subject,
            "max_bytes": _READ_MAX_BYTES,
        }
        found: list[Msg] = []
        try:
            sub = await self.nc.subscribe(inbox)
            try:
                await self.nc.publish(
                    f"$JS.API.DIRECT.GET.{stream_name}", json.dumps(request).encode(), reply=inbox
                )
                while True:
                    msg = await sub.next_msg(timeout=self.timeout)
                    status = msg.headers.get("Status") if msg.headers else None
                    if status is None:
                        found.append(msg)
                    elif status in ("204", "404"):  # end of batch / nothing there
                        return found
                    elif status == "503" and not found:  # no replica can answer yet
                        raise _Unavailable(f"direct get on {stream_name}: 503")
                    else:
                        description = (msg.headers or {}).get("Description", "")
                        raise StorageError(f"direct get on {stream_name}: {status} {description}")
            finally:
                with contextlib.suppress(*NATS_ERRORS):
                    await sub.unsubscribe()
        except NATS_ERRORS as error:
            raise storage_error(f"reading JetStream stream {stream_name}", error) from error

    async def last_by_subject(self, stream_name: str, subject: str) -> Msg | None:
        """The newest message on `subject`, `None` if there is none."""
        deadline = time.monotonic() + UNAVAILABLE_WAIT_S
        while True:
            try:
                msg = await self.nc.request(
                    f"$JS.API.DIRECT.GET.{stream_name}.{subject}", b"", timeout=self.timeout
                )
            except nats.errors.NoRespondersError:
                return None
            except NATS_ERRORS as error:
                raise storage_error(f"reading JetStream stream {stream_name}", error) from error
            status = msg.headers.get("Status") if msg.headers else None
            if status == "404":
                return None
            if status == "503" and time.monotonic() < deadline:  # no replica can answer yet
                await asyncio.sleep(0.1)
                continue
            if status is not None:
                raise StorageError(f"direct get on {stream_name}: {status}")
            return msg

    async def server_tail(self) -> int:
        """The log stream's last sequence, as the server has it now."""
        try:
            info = await self.js.stream_info(self.layout.name)
        except NATS_ERRORS as error:
            raise storage_error("reading the JetStream stream's state", error) from error
        return int(info.state.last_seq)

    async def leader(self) -> str:
        """The node that leads the log's stream now ('' when unknown: no cluster, or the
        server could not say)."""
        try:
            info = await self.js.stream_info(self.layout.name)
        except NATS_ERRORS:
            return ""
        return str(info.cluster.leader or "") if info.cluster is not None else ""

    async def scan(
        self, start: int, subject: str | None = None, stop: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        """The log's events on `subject` (default: all) with positions from `start` to
        `stop` (default: the end), in order, read in chunks."""
        subject = subject or f"{self.layout.log_prefix}>"
        position = max(start, 1)
        while stop is None or position <= stop:
            msgs = await self.direct_batch(self.layout.name, position, subject)
            if not msgs:
                return
            for msg in msgs:
                event = self.decode(msg)
                if stop is not None and event.position > stop:
                    return
                yield event
                position = event.position + 1

    async def collect(
        self, start: int, subject: str | None = None, stop: int | None = None
    ) -> list[StoredEvent]:
        """`scan`, as a list."""
        return [event async for event in self.scan(start, subject, stop)]
