"""Typed errors of the bus: what crosses the wire decodes strictly or fails with one of these."""

from __future__ import annotations


class BusError(Exception):
    """Root of every error the bus raises."""


class InvalidSubjectToken(BusError):
    """A subject token that would change the subject's shape (a dot, a wildcard, blank)."""

    def __init__(self, token: str) -> None:
        super().__init__(
            f"invalid subject token {token!r}: must be non-empty, no '.', '*', '>' or space"
        )
        self.token = token


class MalformedMessage(BusError):
    """A payload that does not decode into exactly one known message type."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed message: {reason}")
        self.reason = reason


class OversizedMessage(MalformedMessage):
    """A payload larger than the limit the receiver accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes is over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class ServerStartError(BusError):
    """The embedded nats-server could not be found or did not come up."""


class ConnectRefused(BusError):
    """The server will not have this client: its login refused, or its certificate not
    trusted. Trying again later would be refused again."""


class RequestFailed(BusError):
    """A request got no reply (nobody listening, or a timeout) or an error reply."""


class MessageIdTaken(BusError):
    """JetStream answered a durable publish as a duplicate of a message this publisher
    never sent: someone else stored a message under the same `Nats-Msg-Id` first, so this
    one was dropped. Publish it again under another id (the ids should be unguessable)."""

    def __init__(self, subject: str, msg_id: str) -> None:
        super().__init__(f"durable publish to {subject}: id {msg_id!r} was already taken")
        self.subject = subject
        self.msg_id = msg_id


class NoResponders(RequestFailed):
    """Nobody listens on the subject right now (a service restarting, say)."""


class ConnectionClosed(RequestFailed):
    """This side's own connection is closed for good (closed here, or given up on): the
    request did not go out, and nobody on the other side is to blame."""


class ContractError(BusError):
    """A role contract that does not load or does not hold together; names where."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


class NotAnNkey(BusError):
    """Text that is not a valid NATS user nkey (a public key `U...` or a seed `SU...`)."""
