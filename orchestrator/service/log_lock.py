"""One orchestrator at a time on a SQLite log: a lock beside it, held by whichever
`baton serve`, `baton run` or `baton resume` opened it, for as long as that process
serves it. Two of them on one log would each carry on the other's open runs (every
orchestrator takes over the open runs of its log when it starts), and the later one
would move the state directory's NATS port away from the one serving."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from orchestrator.core.errors import OrchestratorError


class AlreadyServed(OrchestratorError):
    """Another orchestrator serves this SQLite log: one at a time may."""


def hold_log(store: Path) -> int:
    """An exclusive lock beside the SQLite log `store` (the system drops it when the
    process ends, however it ends), to be closed when serving ends. On JetStream there
    is none: several orchestrators share the runs."""
    fd = os.open(store.with_name(store.name + ".serve.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AlreadyServed(
            f"another orchestrator (baton serve, run or resume) already serves the event "
            f"store {store}: a SQLite log takes one, which carries on the log's open runs by "
            "itself (give it new ones with baton submit); for several orchestrators, keep "
            'the log on JetStream (store = "jetstream", see docs/deploy.md)'
        ) from None
    return fd
