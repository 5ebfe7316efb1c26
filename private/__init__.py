"""Files and directories private to the user who runs Baton, from their creation.

Baton's state directory holds lease tokens, every task's input and output, the users and
passwords of a governed bus, and the key that signs the log's checkpoints. Whatever Baton
creates there is created here: files with mode 0600 and directories with 0700 passed to
the system call that makes them (`os.open(..., O_CREAT, 0o600)`, `os.mkdir(..., 0o700)`),
never written first and restricted afterwards, so no other user can open one in between.
A file that is replaced (a config with passwords) is written to a new private file beside
it and renamed over it, so it is never seen half written or with a looser mode.

The lowest layer: it imports nothing of the project, and everything may import it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import IO

__all__ = [
    "CHILD_UMASK",
    "DIR_MODE",
    "FILE_MODE",
    "NotPrivate",
    "append",
    "append_text",
    "create",
    "make_dir",
    "make_state_dir",
    "restrict_umask",
    "touch",
    "write",
    "write_atomic",
]

FILE_MODE = 0o600
DIR_MODE = 0o700
CHILD_UMASK = 0o077
"""The umask of every process Baton starts (the nats-server, agents, a local model
server): what they create (the JetStream store, the ports file) is private too."""

log = logging.getLogger("baton.private")


class NotPrivate(OSError):
    """A directory that is open to other users and cannot be made private."""


def restrict_umask() -> int:
    """Set this process's umask to 0077 (returning the old one): files that libraries
    create on their own (SQLite's `-wal` and `-shm`, say) are private as well. A belt
    under the explicit modes, which are the contract."""
    return os.umask(CHILD_UMASK)


def make_dir(path: Path) -> Path:
    """`path` as a directory, each level that does not exist yet made with mode 0700
    (`Path.mkdir(parents=True)` makes the parents with the default mode). A directory
    that exists keeps its mode (see `make_state_dir`)."""
    path = Path(path)
    missing: list[Path] = []
    for level in (path, *path.parents):
        if level.is_dir():
            break
        missing.append(level)
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
            os.mkdir(level, DIR_MODE)
    if not path.is_dir():  # a file (or a link to one) is in the way: it is left as it is
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


def make_state_dir(path: Path) -> Path:
    """A state directory: made with mode 0700, or, if it exists with a mode that lets
    other users in, tightened by taking their rights away (0755 becomes 0700, 0555 0500),
    logged. `NotPrivate` if it cannot be (it belongs to someone else, a read-only file
    system)."""
    path = make_dir(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, mode & DIR_MODE)
        except OSError as exc:
            raise NotPrivate(
                exc.errno,
                f"state directory {path} is open to other users (mode {mode:04o}) and "
                f"cannot be made private (chmod go-rwx): {exc.strerror or exc}",
            ) from exc
        log.warning("state directory %s had mode %04o; made it %04o", path, mode, mode & DIR_MODE)
    return path


def _open(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def create(path: Path) -> int:
    """A new file at `path`, mode 0600, open for writing (`FileExistsError` if there is
    one): the descriptor."""
    return _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def touch(path: Path) -> Path:
    """`path` made as an empty 0600 file if there is none (left as it is, and not opened,
    if there is), so a library that opens it next (SQLite) never creates it with its own
    mode."""
    with contextlib.suppress(FileExistsError):
        os.close(create(path))
    return path


def append(path: Path) -> IO[bytes]:
    """`path` open for appending (binary, unbuffered), made with mode 0600 if new: for
    logs, and for a child process's standard output."""
    return os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab", buffering=0)


def append_text(path: Path) -> IO[str]:
    """`append`, as line-buffered text (a log file)."""
    fd = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


def write(path: Path, data: bytes) -> Path:
    """Write `data` to `path` in place (an output file a user names): made with mode 0600
    if new; a file that exists (or a device, a pipe) keeps its mode and is truncated."""
    with os.fdopen(_open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        f.write(data)
    return Path(path)


def write_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data`: written to a new 0600 file beside it, synced, then
    renamed over it, so a reader sees the old content or the new, each 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = create(temporary)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return path
