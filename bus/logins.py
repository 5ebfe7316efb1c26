"""The embedded server's users, kept beside it in the state directory.

A `baton serve` killed and started again on the same state directory must let in every
agent and person the last one let in (they keep retrying with the credentials they
have), so the users outlive the process: one JSON file, private to the OS user from
the moment it exists, replaced whole (write a private temporary file, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from bus.errors import ServerStartError
from bus.permissions import User


def logins_path(state_dir: Path) -> Path:
    return Path(state_dir) / "nats" / "users.json"


def load_logins(state_dir: Path) -> list[User]:
    """The users saved for this state directory ([] if none were)."""
    path = logins_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        return msgspec.json.decode(data, type=list[User])
    except msgspec.DecodeError as exc:
        raise ServerStartError(f"{path} is not a list of users ({exc}); move it away") from exc


def save_logins(state_dir: Path, users: list[User]) -> None:
    """Replace the saved users with `users`; the file is 0600 from birth."""
    path = logins_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.encode(users))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
