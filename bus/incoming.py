"""`Incoming`: one received NATS message as Baton's code sees it, whatever it came by
(a subscription, a request, a pull of the durable inbox)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from bus import tracecontext
from bus.codec import ENCODING_HEADER, Decoder, from_msgpack, to_msgpack
from bus.errors import MalformedMessage
from bus.protocol import ErrorReply


class Incoming:
    """A received message: its bytes, where it came from, its trace, and how to answer it.

    A message sent as JSON (header `Baton-Encoding: json`) is handed on as msgpack, so
    every decoder stays one strict msgpack decoder, and its reply goes back as JSON.
    """

    __slots__ = ("_msg", "data", "encoding", "refused", "subject", "trace")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.refused = ""
        """Set once this message was answered with an `error` reply: what was refused
        (discovery counts it as the endpoint's error)."""
        self.subject: str = msg.subject
        headers = msg.headers or {}
        self.encoding: str = headers.get(ENCODING_HEADER, "")
        try:
            self.data: bytes = to_msgpack(msg.data, self.encoding)
        except MalformedMessage:
            self.data = msg.data  # left as is: the decoder refuses it, naming why
        self.trace = tracecontext.parse(headers.get(tracecontext.HEADER))

    @property
    def reply_to(self) -> str:
        """The subject a request wants its answer on ('' for a plain message): under the
        sender's own inbox prefix on a server that enforces one."""
        return self._msg.reply or ""

    @property
    def deliveries(self) -> int:
        """How often JetStream has delivered this message (1 the first time); 0 for a
        message that did not come from a stream."""
        try:
            return int(self._msg.metadata.num_delivered)
        except Exception:  # a core NATS message has no stream metadata
            return 0

    async def reply(self, payload: bytes) -> None:
        if payload[1:12] == _ERROR_MARK:
            self.refused = _refusal(payload)
        if self._msg.reply:
            await self._msg.respond(from_msgpack(payload, self.encoding))

    async def answer(self, data: bytes) -> None:
        """Reply with exactly these bytes, whatever Baton encoding was asked for: the
        answer of another protocol (NATS micro's JSON)."""
        if self._msg.reply:
            await self._msg.respond(data)

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float) -> None:
        """Ask JetStream to redeliver this message after `delay` seconds (it could not be
        handled now), instead of waiting out the consumer's whole ack wait."""
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        """Tell JetStream never to redeliver this message (it was refused, not lost)."""
        await self._msg.term()

    async def in_progress(self) -> None:
        """Tell JetStream this message is still being worked on: its ack wait starts over."""
        await self._msg.in_progress()


Handler = Callable[[Incoming], Awaitable[None]]

_ERROR_MARK = b"\xa4kind\xa5error"
"""What follows the map header of an encoded `error` reply (its tag comes first)."""
_error: Decoder[ErrorReply] = Decoder(ErrorReply)


def _refusal(payload: bytes) -> str:
    """`<error>: <detail>` of an encoded `error` reply."""
    try:
        refused = _error.decode(payload)
    except MalformedMessage:
        return "error"
    return f"{refused.error}: {refused.detail}" if refused.detail else refused.error
