"""A state directory the orchestrator cannot write is refused at startup, in one line;
one that other users may enter is made private (0700) first, or refused if it cannot be.

SQLite opens a file it may not write read-only, and serves reads from it: without this
check an orchestrator on a read-only state directory (or event store file) starts, says
it is serving, and fails at the first append of the first run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import private
from orchestrator.core.errors import OrchestratorError


class StateDirUnwritable(OrchestratorError):
    """The state directory, or a file of the event store in it, cannot be written."""


class StateDirNotPrivate(OrchestratorError):
    """The state directory lets other users in, and cannot be made private."""


def check_writable(directory: Path, files: Iterable[Path] = ()) -> None:
    """Create the directory (0700) if need be, or tighten it to 0700, write and remove a
    file in it, and open each of `files` that exists for writing; `StateDirNotPrivate` or
    `StateDirUnwritable` names the first that fails. A file named in a directory that does
    not exist (a store named elsewhere is not given one) is refused before anything is
    made."""
    files = list(files)
    for path in files:
        if path.parent.resolve() != directory.resolve() and not path.parent.is_dir():
            raise StateDirUnwritable(f"{path}: its directory {path.parent} does not exist")
    probe = directory / f".baton-write-check-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        private.make_state_dir(directory)
    except private.NotPrivate as exc:
        raise StateDirNotPrivate(exc.strerror or str(exc)) from exc
    except OSError as exc:
        raise StateDirUnwritable(
            f"state directory {directory} is not writable: {exc.strerror or exc}"
        ) from exc
    try:
        fd = private.create(probe)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise StateDirUnwritable(
            f"state directory {directory} is not writable: {exc.strerror or exc}"
        ) from exc
    for path in files:
        try:
            os.close(os.open(path, os.O_RDWR))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StateDirUnwritable(
                f"{path} in the state directory is not writable: {exc.strerror or exc}"
            ) from exc
