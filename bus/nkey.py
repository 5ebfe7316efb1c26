"""NATS user nkeys: the Ed25519 key pairs an outside agent logs in with on the embedded
server (`baton creds issue`).

The seed (`SU...`, the private half) is made where it is kept, in the file the person
names; the server is told only the public key (`U...`), which it lists as a user with
that agent's permissions. A client proves it holds the seed by signing the server's
nonce; nats-py (`nkeys_seed`), the `nats` CLI (`--nkey`) and the Node client
(`nkeyAuthenticator`) do that from the seed file alone.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

import nkeys

from bus.errors import NotAnNkey

_PUBLIC_USER = re.compile(r"^U[A-Z2-7]{55}$")


def new_user_seed() -> bytes:
    """A new user seed (`SU...`, 58 ASCII characters) from the OS's random source."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed: bytes) -> str:
    """The public user key (`U...`) of a user seed, or `NotAnNkey`."""
    if not seed.startswith(b"SU"):
        raise NotAnNkey("not a user nkey seed (SU...)")
    try:
        key: bytes = nkeys.from_seed(bytearray(seed.strip())).public_key
    except (nkeys.NkeysError, ValueError, binascii.Error) as exc:
        raise NotAnNkey(f"not a user nkey seed: {exc}") from exc
    return key.decode()


def check_public_user_key(key: str) -> str:
    """`key` if it is a well-formed public user nkey (prefix and checksum), else
    `NotAnNkey`: it goes into the server's configuration, so nothing else may."""
    if not _PUBLIC_USER.match(key):
        raise NotAnNkey(f"{key[:60]!r} is not a public user nkey (U followed by 55 base32)")
    raw = base64.b32decode(key)
    body, checksum = raw[:-2], int.from_bytes(raw[-2:], "little")
    if body[0] != nkeys.PREFIX_BYTE_USER or nkeys.crc16(bytearray(body)) != checksum:
        raise NotAnNkey(f"{key[:12]}...: its checksum is wrong")
    return key
