"""The composition root: configuration in, a wired orchestrator (store, bus, server) out.
Everything else receives its ports as arguments; only this module decides which."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bus.connection import Bus
from bus.contracts import Contracts
from bus.server import EmbeddedNats
from eventstore import SqliteEventStore
from orchestrator.service import Orchestrator

DEFAULT_STATE_DIR = ".baton"


def state_dir(explicit: str | None = None) -> Path:
    """`--state-dir`, else `$BATON_STATE_DIR`, else `.baton` in the working directory."""
    return Path(explicit or os.environ.get("BATON_STATE_DIR") or DEFAULT_STATE_DIR)


def store_path(directory: Path) -> Path:
    return directory / "events.db"


async def open_store(directory: Path) -> SqliteEventStore:
    return await SqliteEventStore.open(store_path(directory))


@dataclass
class Stack:
    """A running orchestrator with what it owns; `close()` stops all of it in order."""

    orchestrator: Orchestrator
    bus: Bus
    store: SqliteEventStore
    nats_url: str
    server: EmbeddedNats | None

    async def close(self) -> None:
        await self.orchestrator.stop()
        await self.bus.close()
        await self.store.close()
        if self.server is not None:
            self.server.stop()


async def bootstrap(
    directory: Path,
    nats_url: str = "",
    *,
    agent_ttl: float = 2.0,
    tick_s: float = 0.2,
    contracts: Contracts | None = None,
) -> Stack:
    """Open the store, start the embedded NATS unless `nats_url` is given, start serving."""
    directory.mkdir(parents=True, exist_ok=True)
    store = await open_store(directory)
    server = None
    try:
        if not nats_url:
            server = EmbeddedNats(directory)
            nats_url = await server.start()
        bus = await Bus.connect(nats_url, name="baton-orchestrator")
        orchestrator = Orchestrator(
            bus, store, agent_ttl=agent_ttl, tick_s=tick_s, contracts=contracts
        )
        await orchestrator.start()
    except BaseException:
        await store.close()
        if server is not None:
            server.stop()
        raise
    return Stack(orchestrator, bus, store, nats_url, server)
