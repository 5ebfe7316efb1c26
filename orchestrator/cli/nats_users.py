"""`baton nats-users`: the nats-server `authorization` block that gives every agent on an
external NATS server or cluster its own login, with the permissions it has on the
embedded bus (docs/deploy.md, "One login per agent").

On the embedded bus each agent logs in as its own user and the server refuses it
anything but acting as itself (`bus.permissions.agent_permissions`). An external server
knows only the users its configuration lists; this command writes them out: the Baton
services' login (`baton serve` and the CLI, every subject, as the embedded server's
orchestrator has) and one nkey user per agent, made exactly as the embedded server makes
an agent let in by hand (`orchestrator.service.logins.agent_login`), under the role
contracts the run would be governed by. It only prints: keys and permissions are
checked here, and nothing is asked of a server.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bus.contract_files import load_contracts
from bus.contracts import Contracts, RoleContract
from bus.errors import InvalidSubjectToken, NotAnNkey
from bus.nkey import check_public_user_key
from bus.permissions import User, authorization_block
from bus.subjects import token
from orchestrator.service.logins import AdmissionRefused, agent_login
from orchestrator.service.workflow_files import contracts_file

SERVICES = "baton-services"
"""The name of the services' user (in the block only as a comment: an nkey user has none)."""

DESCRIPTION = """\
Print the nats-server `authorization { users: [...] }` block for an external NATS
server or cluster (docs/deploy.md): the Baton services' login (baton serve and the CLI:
every subject, as the embedded server's orchestrator) and, for each agent, a login that
lets it do exactly what it may on the embedded bus: publish results, reports, bids and
heartbeats only as itself, receive only its own assignments and replies, and (under role
contracts) call only its contract's tools. Paste the block into nats-server.conf on every
node in place of its authorization block, and reload. Each agent must then run with its
own seed and the id it was listed under (baton agent --id ID; nkey = "SEED FILE" in its
baton.toml, or $BATON_NATS_NKEY)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "nats-users",
        help="the nats-server authorization block: one login per agent (external NATS)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 printed; 2 a bad agent, key or contracts file (nothing printed)",
    )
    p.add_argument("agents", nargs="*", metavar="AGENT_ID:ROLE:PUBLIC_NKEY",
                   help="an agent: its id, its role and the public key (U...) of its user "
                        "nkey (nk -gen user > ID.nk; nk -inkey ID.nk -pubout)")  # fmt: skip
    p.add_argument("--services", action="append", required=True, metavar="PUBLIC_NKEY",
                   help="the public user nkey Baton's services and CLI log in with (the "
                        "nkey of baton.toml); again for more than one")  # fmt: skip
    p.add_argument("--agents-file", metavar="FILE",
                   help="more agents, one AGENT_ID:ROLE:PUBLIC_NKEY a line ('#' "
                        "comments)")  # fmt: skip
    governed = p.add_mutually_exclusive_group()
    governed.add_argument("--contracts", default="", metavar="FILE",
                          help="the role contracts TOML the runs are governed by "
                               "(default: $BATON_CONTRACTS; neither: open mode, any role "
                               "and tool)")  # fmt: skip
    governed.add_argument("--workflow", default="", metavar="FILE",
                          help="the contracts file this workflow file names (none: open "
                               "mode)")  # fmt: skip


def _contracts(args: argparse.Namespace) -> tuple[Contracts | None, str]:
    """The contracts the agents are governed by, and the file they came from."""
    path = args.contracts or (contracts_file(args.workflow) if args.workflow else "")
    if not path and not args.workflow:
        path = os.environ.get("BATON_CONTRACTS", "")
    return (load_contracts(path), path) if path else (None, "")


def _specs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Each agent given as (where it was given, AGENT_ID:ROLE:PUBLIC_NKEY)."""
    given = [(f"argument {n}", spec) for n, spec in enumerate(args.agents, 1)]
    if args.agents_file:
        try:
            lines = Path(args.agents_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise AdmissionRefused(f"--agents-file: cannot read {args.agents_file}: {why}") from exc
        for n, line in enumerate(lines, 1):
            line = line.partition("#")[0].strip()
            if line:
                given.append((f"{args.agents_file} line {n}", line))
    return given


def _agent(where: str, spec: str, contracts: Contracts | None, source: str) -> User:
    parts = spec.rsplit(":", 2)  # an agent id may hold ':'; a role and a key may not
    if len(parts) != 3 or not all(parts):
        raise AdmissionRefused(f"{where}: {spec[:80]!r} is not AGENT_ID:ROLE:PUBLIC_NKEY")
    agent_id, role, key = parts
    try:
        token(role)
    except InvalidSubjectToken as exc:
        raise AdmissionRefused(f"{where}: {role!r} is not a valid role: {exc}") from exc
    contract: RoleContract | None = None
    if contracts is not None:
        if role not in contracts:
            raise AdmissionRefused(f"{where}: no role contract for {role!r} in {source}")
        contract = contracts.get(role)
    try:
        return agent_login(agent_id, role, contract, key)
    except AdmissionRefused as exc:
        raise AdmissionRefused(f"{where}: {exc}") from exc


def users(args: argparse.Namespace) -> list[User]:
    """The services' users, then one per agent; `AdmissionRefused` naming the first bad
    entry, an agent id given twice or a key given twice."""
    contracts, source = _contracts(args)
    listed: list[User] = []
    keys: dict[str, str] = {}
    for key in args.services:
        try:
            listed.append(User(SERVICES, "", None, check_public_user_key(key)))
        except NotAnNkey as exc:
            raise AdmissionRefused(f"--services: {exc}") from exc
        if key in keys:
            raise AdmissionRefused(f"--services: {key[:12]}... is given twice")
        keys[key] = "--services"
    names: set[str] = set()
    for where, spec in _specs(args):
        user = _agent(where, spec, contracts, source)
        if user.name in names:
            raise AdmissionRefused(f"{where}: agent id {user.name} is listed twice")
        if user.nkey in keys:
            raise AdmissionRefused(f"{where}: that key is already listed ({keys[user.nkey]})")
        names.add(user.name)
        keys[user.nkey] = f"agent {user.name}"
        listed.append(user)
    return listed


async def nats_users(args: argparse.Namespace) -> int:
    print(authorization_block(users(args)), end="")
    return 0
