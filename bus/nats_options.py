"""What a NATS connection is made with beyond its URL: the servers of a comma-separated
`--nats`, the login files and TLS the configuration (`bus.config`) put in the
environment, and which failures to create a stream are worth waiting out."""

from __future__ import annotations

import os
import ssl
from typing import Any

import nats.errors
import nats.js.errors

from bus.config import ENV
from bus.config_files import read_login
from bus.errors import BusError

CREDS_ENV = ENV["creds"]
NKEY_ENV = ENV["nkey"]


def login_options() -> dict[str, Any]:
    """How to log in to a bus the operator runs, beyond the user and password a URL may
    carry: `$BATON_NATS_CREDS`, a NATS creds file (a user JWT and its nkey seed, as `nsc`
    writes it), or `$BATON_NATS_NKEY`, a file holding a user's nkey seed (`SU...`). TLS
    comes with a `tls://` URL (the system's certificate authorities), or with
    `$BATON_TLS_CA` (the authority to trust) and `$BATON_TLS_CERT` / `$BATON_TLS_KEY` (a
    client certificate). All of them may be set in `baton.toml` too (`bus.config`); the
    command puts what it was configured with into its environment."""
    options: dict[str, Any] = {}
    if tls := _tls_context():
        options["tls"] = tls
    if creds := os.environ.get(CREDS_ENV):
        read_login("creds", creds, f"${CREDS_ENV}")
        options["user_credentials"] = creds
    if nkey := os.environ.get(NKEY_ENV):
        seed = read_login("nkey", nkey, f"${NKEY_ENV}")
        # the seed itself, not the path: nats-py 2.14 hands the file's bytes, newline and
        # all, to nkeys, which refuses a seed that ends in one
        options["nkeys_seed_str"] = seed.strip().decode()
    return options


def _tls_context() -> ssl.SSLContext | None:
    """The TLS context `$BATON_TLS_*` ask for (None: nats-py's own for `tls://`)."""
    ca, cert, key = (os.environ.get(ENV[k], "") for k in ("tls_ca", "tls_cert", "tls_key"))
    if not (ca or cert or key):
        return None
    try:
        context = ssl.create_default_context(cafile=ca or None)
        if cert or key:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise BusError(f"TLS files ({ca or '-'}, {cert or '-'}, {key or '-'}): {exc}") from exc
    return context


def servers(url: str) -> list[str]:
    """The server URLs of `--nats` / `$BATON_NATS_URL`: one, or several comma-separated
    (any of them will do; nats-py tries the others when one is down)."""
    return [u.strip() for u in url.split(",") if u.strip()]


STREAM_WAIT_S = 30.0
"""How long creating a stream waits for a JetStream cluster to have a quorum."""
NOT_CLUSTERED = 10074
"""JetStream's error code for replicas > 1 on a server that is not clustered."""
INSUFFICIENT_RESOURCES = 10023
"""JetStream's error code for a stream no set of servers can hold now (too few of them)."""
NOT_ENABLED_FOR_ACCOUNT = 10039
"""JetStream's error code for an account without JetStream (in operator mode: an account
JWT without JetStream limits); its 503 is no quorum to wait for."""


def quorum_wait(exc: BaseException) -> bool:
    """Whether a failed stream creation may succeed later: a timeout (no meta leader, no
    quorum yet) or too few servers up for the replicas; not JetStream missing from the
    login's account."""
    if isinstance(exc, nats.js.errors.APIError):
        if exc.err_code == NOT_ENABLED_FOR_ACCOUNT:
            return False
        return exc.err_code == INSUFFICIENT_RESOURCES or exc.code == 503
    return isinstance(exc, (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError))
