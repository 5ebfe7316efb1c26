"""A state directory the orchestrator cannot write is refused at startup, in one line.

SQLite opens a file it may not write read-only, and serves reads from it: without this
check an orchestrator on a read-only state directory (or event store file) starts, says
it is serving, and fails at the first append of the first run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from orchestrator.core.errors import OrchestratorError


class StateDirUnwritable(OrchestratorError):
    """The state directory, or a file of the event store in it, cannot be written."""


def check_writable(directory: Path, files: Iterable[Path] = ()) -> None:
    """Create the directory if need be, write and remove a file in it, and open each of
    `files` that exists for writing; `StateDirUnwritable` names the first that fails."""
    probe = directory / f".baton-write-check-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
