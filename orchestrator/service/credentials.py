"""Credentials for agents started by hand, given and taken away by a person (`baton creds`,
`baton admit`), each recorded in the `system` stream with that person as its actor.

A request comes on `baton.api.creds.<person>` (`baton.api.admit` for `baton admit`,
which only people may publish to, and the only person with a login on the embedded
server is the one who started it): the server lets only that person's login publish
there, so the actor comes from the server, not from the payload. Append first, act
second: the event is durable before the server lets the agent in or shuts it out, and
the reply goes out after both; a request whose event cannot be recorded changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.errors import BusError
from bus.permissions import User, url_for
from bus.protocol import ErrorReply
from orchestrator.core.events import CredentialsIssued, CredentialsRevoked, SystemEvent
from orchestrator.service.api import (
    AdmitRequest,
    Admitted,
    Credential,
    CredsReply,
    CredsRequest,
)
from orchestrator.service.logins import AdmissionRefused, Logins

_creds: Decoder[CredsRequest] = Decoder(CredsRequest)
_admit: Decoder[AdmitRequest] = Decoder(AdmitRequest)

Record = Callable[[SystemEvent, str], Awaitable[bool]]
"""Appends an event to the `system` stream as done by an actor; True once durable."""


def credential(user: User) -> Credential:
    return Credential(user.name, user.role, "nkey" if user.nkey else "password", user.nkey)


class Credentials:
    """Answers people's requests for agents' credentials on the embedded server."""

    def __init__(
        self, logins: Logins, record: Record, wall: Callable[[], float] = time.time
    ) -> None:
        self._logins = logins
        self._record = record
        self._wall = wall
        self._lock = asyncio.Lock()
        """One change at a time: two issues of one id must not both pass the check."""

    async def issue(self, person: str, agent_id: str, role: str, public_key: str = "") -> User:
        """Let `agent_id` in as `role` (with the user nkey `public_key`, else a new
        password), recorded as `person`'s doing; `AdmissionRefused` says why not."""
        async with self._lock:
            self._logins.check_role(role)
            user = self._logins.agent_user(agent_id, role, public_key)
            login = "nkey" if public_key else "password"
            event = CredentialsIssued(agent_id, role, login, public_key, self._wall())
            if not await self._record(event, person):
                raise AdmissionRefused("the log could not record it; nothing was issued")
            self._logins.let_in(user)
            return user

    async def revoke(self, person: str, agent_id: str) -> User:
        """Take `agent_id`'s login away (the server closes its connections), recorded as
        `person`'s doing; `AdmissionRefused` if it has none given by hand."""
        async with self._lock:
            user = self._logins.revocable(agent_id)
            login = "nkey" if user.nkey else "password"
            event = CredentialsRevoked(agent_id, login, user.nkey, self._wall())
            if not await self._record(event, person):
                raise AdmissionRefused("the log could not record it; nothing was revoked")
            self._logins.revoke(user)
            return user

    async def answer(self, person: str, request: CredsRequest) -> CredsReply:
        if request.action == "issue":
            if not request.public_key:
                raise AdmissionRefused("an issue request carries the agent's public user nkey")
            done = [await self.issue(person, request.agent_id, request.role, request.public_key)]
        elif request.action == "revoke":
            done = [await self.revoke(person, request.agent_id)]
        else:
            done = self._logins.admitted()
        return CredsReply(request.action, [credential(u) for u in done], self._logins.server.url)

    async def serve(self, bus: Bus) -> list[Subscription]:
        """Answer `baton.api.creds.<person>` and `baton.api.admit`."""

        async def on_creds(msg: Incoming) -> None:
            try:
                person = subjects.creds_requester(msg.subject)
                reply: CredsReply | ErrorReply = await self.answer(person, _creds.decode(msg.data))
            except (BusError, AdmissionRefused) as exc:
                reply = ErrorReply(type(exc).__name__, str(exc))
            await msg.reply(encode(reply))

        async def on_admit(msg: Incoming) -> None:
            try:
                request = _admit.decode(msg.data)
                user = await self.issue(self._logins.person, request.agent_id, request.role)
                reply: Admitted | ErrorReply = Admitted(
                    request.agent_id, url_for(self._logins.server.url, user)
                )
            except (BusError, AdmissionRefused) as exc:
                reply = ErrorReply(type(exc).__name__, str(exc))
            await msg.reply(encode(reply))

        return [
            await bus.subscribe(subjects.API_CREDS_ALL, on_creds),
            await bus.subscribe(subjects.API_ADMIT, on_admit),
        ]
