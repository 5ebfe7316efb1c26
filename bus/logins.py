"""The embedded server's users, kept beside it in the state directory.

A `baton serve` killed and started again on the same state directory must let in every
agent and person the last one let in (they keep retrying with the credentials they
have), so the users outlive the process: one JSON file, private to the OS user from
the moment it exists, replaced whole (`private.write_atomic`).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

import private
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
    private.make_dir(path.parent)
    private.write_atomic(path, msgspec.json.encode(users))
