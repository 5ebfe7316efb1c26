"""Who may publish and subscribe to what on Baton's bus, so the NATS server itself refuses
what a role contract does not allow (DESIGN §5, governance).

Pure: it turns identities (the orchestrator, one agent serving one contract, a person at
the CLI) into subject permissions and renders the server's `authorization` block. Each
agent gets its own user, so it can publish results only on its own inbox subject (never
as another agent), heartbeat and ask for a tool call's approval only as itself, call only
the tool subjects its contract lists, receive only its own assignments and the decisions
on its own tool calls, put and get blobs only as itself (the orchestrator then checks
the run), and read no run's progress or other agents' results. Replies go to
a per-user inbox prefix, so no one reads another's replies.
"""

from __future__ import annotations

import json
import re
import secrets

import msgspec

from bus import subjects
from bus.contracts import RoleContract
from bus.nkey import check_public_user_key

_SERVICES = (subjects.AGENT_SERVICE, subjects.ORCHESTRATOR_SERVICE)
DISCOVERY_ASKS = [
    subject
    for verb in subjects.DISCOVERY_VERBS
    for subject in (
        subjects.discovery(verb),
        *(subjects.discovery(verb, name) for name in _SERVICES),
        *(f"{subjects.discovery(verb, name)}.*" for name in _SERVICES),
    )
]
"""What a person may ask of Baton's micro services (`nats micro ls`, `info`, `stats`):
PING, INFO and STATS of all services, of Baton's two kinds, and of one instance of them."""


class Permissions(msgspec.Struct, frozen=True):
    """Subjects a user may publish to and subscribe to (everything else is refused)."""

    publish: list[str]
    subscribe: list[str]
    allow_responses: bool = False


class User(msgspec.Struct, frozen=True):
    """One NATS user of the embedded server: a name and password, or (with `nkey`) the
    public key of a user nkey whose seed only the agent holds (`baton creds issue`)."""

    name: str
    password: str
    permissions: Permissions | None
    """None: everything (the orchestrator)."""
    nkey: str = ""
    """The public user nkey (`U...`) it logs in with; then `password` is empty."""
    role: str = ""
    """For an agent's user, the role it was let in for."""


def inbox_prefix(name: str) -> str:
    """The reply-inbox prefix of a user: only that user may subscribe under it."""
    return f"_INBOX_{re.sub(r'[-:]', '_', subjects.token(name))}"


def person_identity(login: str) -> str:
    """A person's identity on the bus, `human:<login>` (a character no subject token may
    hold becomes '_'): what the log records as the actor of that person's decisions."""
    return "human:" + (re.sub(r"[^A-Za-z0-9_\-]", "_", login) or "_")


def agent_permissions(agent_id: str, contract: RoleContract | None) -> Permissions:
    """What one agent may do: under a role contract, only that role's calls for proposals
    and that contract's tools; without contracts (open mode) any role's calls and any
    tool. In both, it receives only its own assignments and publishes only as itself;
    it hears the discovery requests for all services, for `baton-agent`, and for itself
    by its id (never another agent's), and answers them as replies."""
    agent_id = subjects.token(agent_id)
    tools = [subjects.TOOL_CALL_ALL]
    if contract is not None:
        tools = [subjects.tool_call(t) for t in contract.tools]
    return Permissions(
        publish=[
            f"baton.inbox.*.{agent_id}",
            f"baton.report.*.{agent_id}",
            f"baton.bids.*.{agent_id}",
            subjects.heartbeat(agent_id),
            subjects.memory_search(agent_id),
            subjects.blob_put(agent_id),
            subjects.blob_get(agent_id),
            *tools,
            f"baton.tool.approval.*.{agent_id}",
        ],
        subscribe=[
            f"baton.agent.{agent_id}.>",
            subjects.cfp(contract.name) if contract is not None else subjects.CFP_ALL,
            f"baton.tool.decision.{agent_id}.*",
            f"{inbox_prefix(agent_id)}.>",
            *subjects.discovery_all(subjects.AGENT_SERVICE, agent_id),
        ],
        allow_responses=True,
    )


def human_permissions(person: str) -> Permissions:
    """A person at the CLI: ask the orchestrator about runs and agents (`baton status`,
    `agents`, `health`), start runs (`submit`), get credentials for an agent started by
    hand (`admit`), decide on a run as this person and no one else (`approve`, `reject`,
    `retry`, `cancel`), issue, revoke and list agents' credentials as this person
    (`creds`), decide tool calls (`baton tool approve|deny`), watch progress, the tool
    calls the orchestrator passes on for approval and agents joining or lost, and ask
    Baton's micro services who is there (`nats micro ls`, `DISCOVERY_ASKS`); no more."""
    return Permissions(
        publish=[
            subjects.API_STATUS,
            subjects.API_AGENTS,
            subjects.API_HEALTH,
            subjects.run_start(person),
            subjects.API_ADMIT,
            subjects.creds(person),
            subjects.run_control(person),
            subjects.TOOL_DECISIONS_ALL,
            *DISCOVERY_ASKS,
        ],
        subscribe=[
            subjects.PROGRESS_ALL,
            subjects.TOOL_PROMPT_ALL,
            subjects.AGENT_CHANGES,
            f"{inbox_prefix(person)}.>",
        ],
    )


def person_user(person: str) -> User:
    """A new NATS user for a person (`human:<login>`) with `human_permissions`; its name
    has '-' for ':', which a user name in a URL cannot hold."""
    return new_user(person.replace(":", "-"), human_permissions(person))


def new_user(name: str, permissions: Permissions | None) -> User:
    return User(subjects.token(name), secrets.token_urlsafe(24), permissions)


def nkey_user(agent_id: str, public_key: str, permissions: Permissions, role: str) -> User:
    """An agent's user that logs in with the user nkey `public_key` (checked: it goes into
    the server's configuration), with `permissions`."""
    return User(subjects.token(agent_id), "", permissions, check_public_user_key(public_key), role)


def url_for(base_url: str, user: User) -> str:
    """`nats://user:password@host:port` for a `nats://host:port` base URL."""
    scheme, sep, rest = base_url.partition("://")
    if not sep:
        raise ValueError(f"not a NATS URL: {base_url!r}")
    return f"{scheme}://{user.name}:{user.password}@{rest}"


def shown_url(url: str) -> str:
    """A URL fit to print: never with the user and password it may carry."""
    scheme, _, rest = url.rpartition("://")
    return f"{scheme or 'nats'}://{rest.rpartition('@')[2]}"


def authorization_block(users: list[User]) -> str:
    """The nats-server `authorization { users = [...] }` config for these users; an nkey
    user, which the server knows only by its key, is named (and its role) in a comment."""
    lines = ["authorization {", "  users = ["]
    for user in users:
        entry: dict[str, object] = (
            {"nkey": user.nkey} if user.nkey else {"user": user.name, "password": user.password}
        )
        if user.permissions is not None:
            p = user.permissions
            permissions: dict[str, object] = {
                "publish": {"allow": p.publish},
                "subscribe": {"allow": p.subscribe},
            }
            if p.allow_responses:
                permissions["allow_responses"] = True
            entry["permissions"] = permissions
        named = f"  # {user.name}" + (f", role {user.role}" if user.role else "")
        lines.append(f"    {json.dumps(entry)}" + (named if user.nkey else ""))
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
