"""Who may log in to the embedded server, in every mode (DESIGN §5; docs/security.md).

The embedded server never lets anyone in anonymously. Its users: the orchestrator (all
subjects), the person who started it (`human:<login>`: the CLI's commands, acting only
as that person), each agent `baton run` starts (its own user, made when it starts), and
each agent a person admits by hand (`baton admit`, answered here on `baton.api.admit`).
An agent's user lets it act only as its own id; under role contracts also only in its
role, with its contract's tools. The orchestrator's, the person's and the admitted users
are saved beside the server, so a restarted `baton serve` lets them all in again.
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.contracts import Contracts, RoleContract
from bus.errors import BusError, InvalidSubjectToken
from bus.logins import load_logins, save_logins
from bus.permissions import (
    User,
    agent_permissions,
    new_user,
    person_identity,
    person_user,
    url_for,
)
from bus.protocol import ErrorReply
from bus.server import EmbeddedNats, PersonCredentials, save_person
from orchestrator.core.errors import OrchestratorError
from orchestrator.service.api import AdmitRequest, Admitted

log = logging.getLogger("baton.logins")
_admit: Decoder[AdmitRequest] = Decoder(AdmitRequest)


class AdmissionRefused(OrchestratorError):
    """An agent could not be given credentials (a taken id, a role without a contract)."""


def _kept(saved: dict[str, User], fresh: User) -> User:
    """`fresh` with the password saved under its name, if any: a client that has it keeps
    working; the permissions are always today's."""
    known = saved.get(fresh.name)
    return User(fresh.name, known.password, fresh.permissions) if known else fresh


class Logins:
    """The users of one embedded server, and the admission of agents started by hand."""

    def __init__(self, directory: Path, contracts: Contracts | None) -> None:
        self.directory = directory
        self.contracts = contracts
        saved = {u.name: u for u in load_logins(directory)}
        self.orchestrator = _kept(saved, new_user("orchestrator", None))
        self.person = person_identity(getpass.getuser())
        self._person = _kept(saved, person_user(self.person))
        saved |= {u.name: u for u in (self.orchestrator, self._person)}
        self._saved = saved
        self.server = EmbeddedNats(directory, users=list(saved.values()))

    async def start(self) -> str:
        """Start the server; the orchestrator's URL (with its credentials)."""
        save_logins(self.directory, list(self._saved.values()))
        base_url = await self.server.start()
        save_person(self.directory, PersonCredentials(self.person, url_for(base_url, self._person)))
        return url_for(base_url, self.orchestrator)

    def _contract(self, role: str) -> RoleContract | None:
        if self.contracts is None:
            return None
        if role in self.contracts:
            return self.contracts.get(role)
        return RoleContract(name=role)  # refused anyway; it may heartbeat, nothing more

    def _new_agent(self, agent_id: str, role: str) -> User:
        try:
            user = new_user(agent_id, agent_permissions(agent_id, self._contract(role)))
        except InvalidSubjectToken as exc:
            raise AdmissionRefused(f"{agent_id!r} is not a valid agent id: {exc}") from exc
        if any(u.name == user.name for u in self.server.users):
            raise AdmissionRefused(f"agent id {agent_id} already has credentials on this server")
        self.server.add_users([user])
        return user

    def agent_url(self, agent_id: str, role: str) -> str:
        """A new user for an agent `baton run` starts (for this server's life only)."""
        return url_for(self.server.url, self._new_agent(agent_id, role))

    def admit(self, agent_id: str, role: str) -> str:
        """A new user for an agent started by hand, saved so that it outlives a restart."""
        if self.contracts is not None and role not in self.contracts:
            raise AdmissionRefused(f"no role contract for {role!r} on this server")
        user = self._new_agent(agent_id, role)
        self._saved[user.name] = user
        save_logins(self.directory, list(self._saved.values()))
        log.info("admitted agent %s (role %s)", agent_id, role)
        return url_for(self.server.url, user)

    async def serve(self, bus: Bus) -> Subscription:
        """Answer `baton.api.admit` (the server lets only people publish there)."""

        async def on_admit(msg: Incoming) -> None:
            try:
                request = _admit.decode(msg.data)
                reply: Admitted | ErrorReply = Admitted(
                    request.agent_id, self.admit(request.agent_id, request.role)
                )
            except (BusError, AdmissionRefused) as exc:
                reply = ErrorReply(type(exc).__name__, str(exc))
            await msg.reply(encode(reply))

        return await bus.subscribe(subjects.API_ADMIT, on_admit)
