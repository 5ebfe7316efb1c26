"""A NATS server in operator mode, made here as `nsc` would make it: an operator, its
system account, an application account with JetStream, and users of that account with
creds files. The JWTs are NATS JWT v2 (nats-io/jwt): ed25519-nkey signatures, the claims'
`jti` the base32 of their SHA-512/256. The server trusts the operator and holds the two
accounts in memory (`resolver: MEMORY`); a user logs in with its creds file alone."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import nkeys

from private import write

UNLIMITED: dict[str, Any] = {
    "subs": -1, "data": -1, "payload": -1,
    "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
}  # fmt: skip
"""An account's core NATS limits: none."""
JETSTREAM: dict[str, Any] = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
"""An account's JetStream limits: enabled, unbounded (all 0, JWT's default: disabled)."""


def keypair(prefix: int) -> nkeys.KeyPair:
    """A new nkey pair of the kind `prefix` says (operator, account, user)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT v2 about `subject`, signed by `issuer`."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    claims["nats"] = {**nats, "version": 2}
    body = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def write_creds(path: Path, user_jwt: str, seed: bytes) -> Path:
    """A creds file as `nsc` writes it (created 0600)."""
    text = (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
    write(path, text.encode())
    return path


class Account(NamedTuple):
    """An account: its key pair and its JWT (signed by the operator)."""

    key: nkeys.KeyPair
    jwt: str

    @property
    def id(self) -> str:
        return str(self.key.public_key.decode())

    def user_creds(self, path: Path, name: str = "baton") -> Path:
        """A creds file (at `path`) of a new user of this account, allowed everything the
        account is."""
        user = keypair(nkeys.PREFIX_BYTE_USER)
        claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
        token = jwt(self.key, user.public_key.decode(), name, claims)
        return write_creds(path, token, user.seed)


class Operator(NamedTuple):
    """An operator with its system account, an application account with JetStream
    (`app`) and one without (`plain`), and the nats-server configuration that trusts
    them."""

    key: nkeys.KeyPair
    jwt: str
    system: Account
    app: Account
    plain: Account

    @classmethod
    def make(cls, name: str = "baton-test") -> Operator:
        operator = keypair(nkeys.PREFIX_BYTE_OPERATOR)
        system = _account(operator, "SYS", {"limits": UNLIMITED})
        app = _account(operator, "APP", {"limits": {**UNLIMITED, **JETSTREAM}})
        plain = _account(operator, "PLAIN", {"limits": UNLIMITED})
        claims = {"type": "operator", "system_account": system.id}
        token = jwt(operator, operator.public_key.decode(), name, claims)
        return cls(operator, token, system, app, plain)

    def unknown_account(self) -> Account:
        """An account this operator signs but the server was never given."""
        return _account(self.key, "UNKNOWN", {"limits": {**UNLIMITED, **JETSTREAM}})

    def server_conf(self) -> str:
        """What nats-server needs to run in this operator's mode."""
        accounts = ", ".join(f"{a.id}: {a.jwt}" for a in (self.system, self.app, self.plain))
        return (
            f"operator: {self.jwt}\nsystem_account: {self.system.id}\n"
            f"resolver: MEMORY\nresolver_preload: {{ {accounts} }}\n"
        )


def _account(operator: nkeys.KeyPair, name: str, nats: dict[str, Any]) -> Account:
    key = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    claims = {"type": "account", **nats}
    return Account(key, jwt(operator, key.public_key.decode(), name, claims))
