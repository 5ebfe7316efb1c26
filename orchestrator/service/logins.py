"""Who may log in to the embedded server, in every mode (DESIGN §5; docs/security.md).

The embedded server never lets anyone in anonymously. Its users: the orchestrator (all
subjects), the person who started it (`human:<login>`: the CLI's commands, acting only
as that person), each agent `baton run` starts (its own user, made when it starts), and
each agent a person lets in by hand (`baton creds issue`, `baton admit`; the requests are
answered by `orchestrator.service.credentials`), until revoked (`baton creds revoke`).
An agent's user lets it act only as its own id; under role contracts also only in its
role, with its contract's tools. The orchestrator's, the person's and the admitted users
are saved beside the server, so a restarted `baton serve` lets them all in again.
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path

from msgspec.structs import replace

from bus.contracts import Contracts, RoleContract
from bus.errors import InvalidSubjectToken, NotAnNkey
from bus.logins import load_logins, save_logins
from bus.permissions import (
    User,
    agent_permissions,
    new_user,
    nkey_user,
    person_identity,
    person_user,
    url_for,
)
from bus.server import EmbeddedNats, PersonCredentials, save_person
from orchestrator.core.errors import OrchestratorError

log = logging.getLogger("baton.logins")


class AdmissionRefused(OrchestratorError):
    """An agent could not be given credentials (a taken id, a role without a contract)."""


def _kept(saved: dict[str, User], fresh: User) -> User:
    """`fresh` with the password saved under its name, if any: a client that has it keeps
    working; the permissions are always today's."""
    known = saved.get(fresh.name)
    return User(fresh.name, known.password, fresh.permissions) if known else fresh


def agent_login(
    agent_id: str, role: str, contract: RoleContract | None, public_key: str = ""
) -> User:
    """A user for `agent_id` serving `role` with the permissions `agent_permissions` gives
    it under `contract` (None: open mode), logging in with the user nkey `public_key` if
    given, else a new password; `AdmissionRefused` if the id is not a valid subject token
    or the key not a public user nkey. The embedded server's agents are made so, and so
    are the ones `baton nats-users` writes out for an external server."""
    try:
        permissions = agent_permissions(agent_id, contract)
        if public_key:
            return nkey_user(agent_id, public_key, permissions, role)
        return replace(new_user(agent_id, permissions), role=role)
    except InvalidSubjectToken as exc:
        raise AdmissionRefused(f"{agent_id!r} is not a valid agent id: {exc}") from exc
    except NotAnNkey as exc:
        raise AdmissionRefused(str(exc)) from exc


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

    def agent_user(self, agent_id: str, role: str, public_key: str = "") -> User:
        """A new user for `agent_id` serving `role` (logging in with the user nkey
        `public_key` if given, else a new password), not yet let in; `AdmissionRefused`
        if the id is not valid, already has a login here, or (admitted by hand under
        contracts) the role has no contract."""
        user = agent_login(agent_id, role, self._contract(role), public_key)
        for known in self.server.users:
            if known.name == user.name:
                raise AdmissionRefused(f"agent id {agent_id} already has credentials here")
            if public_key and known.nkey == public_key:
                raise AdmissionRefused(f"that key is already the login of {known.name}")
        return user

    def _new_agent(self, agent_id: str, role: str) -> User:
        user = self.agent_user(agent_id, role)
        self.server.add_users([user])
        return user

    def agent_url(self, agent_id: str, role: str) -> str:
        """A new user for an agent `baton run` starts (for this server's life only)."""
        return url_for(self.server.url, self._new_agent(agent_id, role))

    def check_role(self, role: str) -> None:
        """`AdmissionRefused` unless an agent admitted by hand may serve `role` here."""
        if self.contracts is not None and role not in self.contracts:
            raise AdmissionRefused(f"no role contract for {role!r} on this server")

    def let_in(self, user: User) -> None:
        """Let an agent's user (`agent_user`) in, and save it so that it outlives a restart."""
        self.server.add_users([user])
        self._saved[user.name] = user
        save_logins(self.directory, list(self._saved.values()))
        log.info("let in agent %s (role %s, by %s)", user.name, user.role, user.nkey or "password")

    def admit(self, agent_id: str, role: str) -> str:
        """A new user for an agent started by hand, saved so that it outlives a restart;
        its URL with its password."""
        self.check_role(role)
        user = self.agent_user(agent_id, role)
        self.let_in(user)
        return url_for(self.server.url, user)

    def admitted(self) -> list[User]:
        """The agents' users let in by hand (saved), in the order they were."""
        own = {self.orchestrator.name, self._person.name}
        return [u for u in self._saved.values() if u.name not in own]

    def revocable(self, agent_id: str) -> User:
        """The login of the agent `agent_id` let in by hand, or `AdmissionRefused`."""
        for user in self.admitted():
            if user.name == agent_id:
                return user
        raise AdmissionRefused(f"agent id {agent_id} has no credentials given by hand here")

    def revoke(self, user: User) -> None:
        """Let `user` in no more, now and after a restart: the server reloads its users
        and closes that user's connections."""
        self._saved.pop(user.name, None)
        save_logins(self.directory, list(self._saved.values()))
        self.server.remove_users({user.name})
        log.info("revoked the credentials of agent %s", user.name)
