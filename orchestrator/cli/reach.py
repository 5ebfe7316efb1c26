"""How a person's CLI reaches the running orchestrator, and as whom.

One rule for every command that talks to it (`status`, `agents`, `health`, `submit`,
`admit`, `approve`, `reject`, `retry`, `cancel`, `tool approve|deny`): `--nats URL` if
given; else the embedded server running for the state directory, with the person's own
credentials (every client logs in; the server then lets the person act only as the
identity its credentials name, which is what the log records)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import NamedTuple

from bus.permissions import person_identity, shown_url
from bus.server import person_credentials, running_urls


class Reach(NamedTuple):
    """Where to connect, and the identity the server lets this connection act as ('' when
    unknown: a bus given with `--nats`)."""

    url: str
    identity: str


def me() -> str:
    """This OS user as a person on the bus (`human:<login>`)."""
    return person_identity(getpass.getuser())


def reach(nats: str, directory: Path) -> Reach | None:
    """`--nats` if given, else the running embedded server of `directory` (with the
    person's credentials; without them, e.g. as another OS user, the server will refuse
    the login and say so), else None: nothing is running there."""
    if nats:
        return Reach(nats, "")
    credentials = person_credentials(directory)
    if credentials is not None:
        return Reach(credentials.url, credentials.identity)
    urls = running_urls(directory)
    return Reach(urls[0], "") if urls else None


shown = shown_url
"""A URL fit to print: never with the password it may carry."""
