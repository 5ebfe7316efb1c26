"""The only module that touches nats-py (with `bus.leases`, its key-value part, and
`bus.incoming` and `bus.inbox`, the messages it hands on): a connection with exactly
the operations Baton needs, trace context in headers, and driver errors turned into
`BusError`s.

Subscription handlers run each message in its own asyncio task, because nats-py runs one
subscription's callbacks one at a time and an agent must not serialise its work (unless
the handler is quick and says so: `inline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from bus import subjects, tracecontext
from bus.codec import ENCODING_HEADER, MAX_MESSAGE_BYTES, to_msgpack
from bus.errors import (
    BusError,
    ConnectionClosed,
    ConnectRefused,
    MessageIdTaken,
    NoResponders,
    OversizedMessage,
    RequestFailed,
)
from bus.inbox import ACK_WAIT_S
from bus.inbox import InboxConsumer as InboxConsumer
from bus.incoming import Handler as Handler
from bus.incoming import Incoming as Incoming
from bus.leases import LeaseBucket
from bus.nats_options import (
    NOT_CLUSTERED,
    STREAM_WAIT_S,
    login_options,
    quorum_wait,
    servers,
)
from bus.outage import FirstConnect, Outage, says_why
from bus.tracecontext import TraceContext

log = logging.getLogger("baton.bus")


RECONNECT_WAIT_S = 0.5
"""Between two tries to reconnect to a server that went away."""
CLOSE_TIMEOUT_S = 1.0
"""How long `Bus.close` waits to flush and say goodbye; a server that is gone gets none."""


def _headers(trace: TraceContext | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(extra or {})
    if trace is not None:
        headers[tracecontext.HEADER] = trace.header()
    return headers


async def _drop(nc: Client) -> None:
    """Close the socket of a connect that failed. `FirstConnect` stops nats-py's connect
    by raising from its error callback, which skips nats-py's own close; the server's
    reset of that socket then lands in a future nobody awaits, and asyncio may print it
    to stderr when the process exits ("Future exception was never retrieved")."""
    transport: Any = nc._transport
    if transport:
        transport.close()
        with contextlib.suppress(Exception):  # TLS: a peer that is gone sends no close_notify
            async with asyncio.timeout(1):
                await transport.wait_closed()


class Bus:
    """A live NATS connection with JetStream, used by the orchestrator and by agents."""

    def __init__(self, nc: Client, outage: Outage | None = None) -> None:
        self._nc = nc
        self._outage = outage
        self._js = nc.jetstream()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls, url: str, name: str, inbox_prefix: str = "", tries: int = 3, *, login: bool = True
    ) -> Bus:
        """Connect to `url` (one server, or several comma-separated: the first that
        answers), trying `tries` times (a server may be reloading its users), failing
        with `BusError` if it cannot; once connected, it reconnects forever by itself
        (every `RECONNECT_WAIT_S`, to the same URL: an embedded server comes back on its
        port), re-subscribing and sending what was queued meanwhile. A failed first
        connect names why (`bus.outage.FirstConnect`); an outage is two lines
        (`bus.outage.Outage`)."""
        outage = Outage(name)
        urls = servers(url)
        first = FirstConnect(len(urls), outage)
        options: dict[str, Any] = {
            "name": name,
            "connect_timeout": 5,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "allow_reconnect": True,
            "pending_size": 64 * 1024 * 1024,
            "error_cb": first.on_error,
            "disconnected_cb": outage.began,
            "reconnected_cb": outage.ended,
        }
        if inbox_prefix:
            options["inbox_prefix"] = inbox_prefix
        if login:  # False: nothing but what the URL carries (to probe a server)
            options |= login_options()
        shown = ",".join(u.rpartition("@")[2] for u in servers(url))  # never echo a password
        for attempt in range(tries):
            nc = Client()
            try:
                await nc.connect(urls, **options)
            except (OSError, TimeoutError, ValueError, nats.errors.Error) as exc:
                # ValueError: a URL nats-py cannot use at all (nats-py 2.14: no host in it)
                await _drop(nc)
                first.failed = 0
                if attempt == tries - 1:
                    why = first.why(exc)
                    error = ConnectRefused if says_why(why) else BusError
                    raise error(f"cannot connect to {shown}: {why or type(why).__name__}") from exc
                await asyncio.sleep(0.3)
                continue
            first.connected = True
            return cls(nc, outage)
        raise BusError(f"cannot connect to {shown}: no tries")

    @property
    def needs_no_login(self) -> bool:
        """Whether the server let this client in without a login (its INFO asks for none)."""
        return not (getattr(self._nc, "_server_info", None) or {}).get("auth_required", False)

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (not reconnecting, not closed)."""
        return bool(self._nc.is_connected)

    async def flush(self, timeout: int = 5) -> None:
        """Until the server has processed everything sent so far (subscriptions too).

        nats-py (2.16) writes a flush's PING straight to the socket, ahead of commands
        still queued for its flusher task, so its PONG can come back before a queued SUB
        or PUB was even sent; the queue is written out first, then the PING goes."""
        try:
            async with asyncio.timeout(timeout):
                await self._nc._flush_pending(force_flush=True)
            await self._nc.flush(timeout=timeout)
        except (TimeoutError, nats.errors.Error) as exc:
            raise BusError(f"flush failed: {exc}") from exc

    async def publish(
        self, subject: str, payload: bytes, trace: TraceContext | None = None
    ) -> None:
        """Fire-and-forget (core NATS, at most once): progress and heartbeats only."""
        try:
            await self._nc.publish(subject, payload, headers=_headers(trace) or None)
        except nats.errors.Error as exc:
            raise BusError(f"publish to {subject} failed: {exc}") from exc

    async def request(
        self, subject: str, payload: bytes, timeout: float, trace: TraceContext | None = None
    ) -> bytes:
        """One request, one reply; no responder or no reply in time is `RequestFailed`."""
        msg = await self._request(subject, payload, timeout, _headers(trace) or None)
        encoding = (msg.headers or {}).get(ENCODING_HEADER, "")
        return to_msgpack(bytes(msg.data), encoding)  # a JSON reply is decoded like msgpack

    async def request_as(
        self, subject: str, payload: bytes, timeout: float, encoding: str
    ) -> tuple[bytes, str, int]:
        """One request sent in `encoding` (`payload` already in it; the header says so):
        (the reply as msgpack, the encoding its header named, its size on the wire), for
        a peer that must answer in the encoding it was asked in. Failures as `request`."""
        headers = {ENCODING_HEADER: encoding} if encoding and encoding != "msgpack" else None
        msg = await self._request(subject, payload, timeout, headers)
        answered_in = (msg.headers or {}).get(ENCODING_HEADER, "")
        return to_msgpack(bytes(msg.data), answered_in), answered_in, len(msg.data)

    async def _request(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None
    ) -> Msg:
        try:
            return await self._nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(f"{subject}: {type(exc).__name__}") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise ConnectionClosed(f"{subject}: {exc}") from exc
        except nats.errors.TimeoutError as exc:
            raise RequestFailed(f"{subject}: {type(exc).__name__}") from exc
        except nats.errors.MaxPayloadError as exc:  # never sent: sending again cannot help
            raise OversizedMessage(len(payload), self._nc.max_payload) from exc
        except nats.errors.Error as exc:
            raise RequestFailed(f"{subject}: {exc}") from exc

    async def subscribe(
        self, subject: str, handler: Handler, queue: str = "", *, inline: bool = False
    ) -> Subscription:
        """Call `handler` for every message, each in its own task; a failing handler is
        logged and isolated, never allowed to end the subscription. `inline` runs it in
        the subscription's own task instead, one message after another: for a handler
        that never waits on anything slow, a hop less per message.

        Returns once the server has the subscription (a flush), so a message another
        connection publishes afterwards reaches it; while disconnected, once it is queued
        (nats-py subscribes again on reconnect)."""

        async def dispatch(msg: Msg) -> None:
            task = asyncio.create_task(self._guard(handler, Incoming(msg)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        async def run_inline(msg: Msg) -> None:
            await self._guard(handler, Incoming(msg))

        subscription = await self._nc.subscribe(
            subject, queue=queue, cb=run_inline if inline else dispatch
        )
        with contextlib.suppress(BusError):
            await self.flush()
        return subscription

    @staticmethod
    async def _guard(handler: Handler, incoming: Incoming) -> None:
        try:
            await handler(incoming)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler for %s failed", incoming.subject)

    async def ensure_inbox(self, replicas: int = 1, wait_s: float = STREAM_WAIT_S) -> None:
        """Create (or keep) the durable inbox stream that holds agents' results until the
        orchestrator has recorded them, with `replicas` copies. A cluster without a
        JetStream quorum (or with fewer servers than `replicas`) is waited for, with one
        line saying so, for at most `wait_s` seconds; a server that can never hold the
        replicas (not clustered) is refused at once."""
        config = StreamConfig(
            name=subjects.INBOX_STREAM,
            subjects=[subjects.INBOX_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_msg_size=MAX_MESSAGE_BYTES,
            num_replicas=replicas,
        )
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                await self._add_or_update(config)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                failure: Exception = exc
            if isinstance(failure, nats.js.errors.APIError) and failure.err_code == NOT_CLUSTERED:
                raise BusError(
                    f"cannot create stream {subjects.INBOX_STREAM} with {replicas} replicas: "
                    f"the NATS server is not a JetStream cluster ({failure.description})"
                ) from failure
            left = deadline - time.monotonic()
            if not quorum_wait(failure) or left <= 0:
                waited = f"; no JetStream quorum within {wait_s:g}s" if left <= 0 else ""
                raise BusError(
                    f"cannot create stream {subjects.INBOX_STREAM} ({replicas} replicas): "
                    f"{failure or type(failure).__name__}{waited}"
                ) from failure
            if not said:
                log.warning(
                    "waiting up to %gs for a JetStream quorum to create stream %s with %d "
                    "replicas (%s)", wait_s, subjects.INBOX_STREAM, replicas,
                    failure or type(failure).__name__,
                )  # fmt: skip
                said = True
            await asyncio.sleep(min(1.0, left))

    async def _add_or_update(self, config: StreamConfig) -> None:
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == NOT_CLUSTERED:
                raise
            await self._js.update_stream(config)  # it is there, made otherwise

    async def lease_bucket(self, replicas: int = 1, wait_s: float = STREAM_WAIT_S) -> LeaseBucket:
        """The lease bucket of orchestrators sharing the runs (see `bus.leases`), waiting
        up to `wait_s` for a cluster's quorum."""
        return await LeaseBucket.open(self._js, replicas, wait_s)

    async def purge_inbox(self, run_id: str) -> None:
        """Drop whatever the durable inbox holds for one run (a run no orchestrator will
        read, such as a conformance check's)."""
        subject = f"baton.inbox.{subjects.token(run_id)}.>"
        try:
            await self._js.purge_stream(subjects.INBOX_STREAM, subject=subject)
        except nats.errors.Error as exc:
            raise BusError(f"cannot purge {subject}: {exc}") from exc

    async def publish_durable(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        trace: TraceContext | None = None,
        attempts: int = 20,
    ) -> None:
        """Publish to JetStream and return only once the server acknowledged it stored
        the message; retried on failure, deduplicated by `msg_id` on the server.

        An acknowledgement that says "duplicate" is success only if an earlier try of this
        call may have stored the message (its answer was lost); on a first try it means
        another publisher took the id first, and this message was dropped:
        `MessageIdTaken`."""
        headers = _headers(trace, {"Nats-Msg-Id": msg_id})
        delay = 0.05
        for attempt in range(attempts):
            try:
                ack = await self._js.publish(subject, payload, headers=headers, timeout=5)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                if attempt == attempts - 1:
                    raise BusError(f"durable publish to {subject} failed: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if ack.duplicate and attempt == 0:
                raise MessageIdTaken(subject, msg_id)
            return

    async def inbox_consumer(self, durable: str) -> InboxConsumer:
        """The orchestrator's durable pull consumer on the inbox stream: made, or brought
        to this configuration if an older Baton made it otherwise (its ack wait)."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=50_000,
        )
        try:
            await self._update_inbox_consumer(durable, config)
            sub = await self._js.pull_subscribe(
                subjects.INBOX_ALL, durable=durable, stream=subjects.INBOX_STREAM, config=config
            )
        except nats.errors.Error as exc:
            raise BusError(f"cannot bind inbox consumer {durable}: {exc}") from exc
        return InboxConsumer(sub)

    async def _update_inbox_consumer(self, durable: str, config: ConsumerConfig) -> None:
        """Bring an inbox consumer an older Baton made to `config`'s ack wait; one that is
        missing is made by the pull subscription, one that is right is left alone (so that
        orchestrators starting together do not all update one replicated consumer)."""
        try:
            info = await self._js.consumer_info(subjects.INBOX_STREAM, durable)
        except nats.js.errors.NotFoundError:
            return
        if info.config.ack_wait != config.ack_wait:
            await self._js.add_consumer(subjects.INBOX_STREAM, config=config)

    async def close(self) -> None:
        """Close within about `CLOSE_TIMEOUT_S`, connected or not: what is queued is
        flushed only if there is a server to take it."""
        if self._outage is not None:
            self._outage.closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._nc.is_connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._nc.flush(timeout=1)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._nc.close()
