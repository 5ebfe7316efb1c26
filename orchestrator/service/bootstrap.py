"""The composition root: configuration in, a wired orchestrator (store, bus, server) out.
Everything else receives its ports as arguments; only this module decides which."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from bus.connection import Bus
from bus.contracts import Contracts
from bus.server import EmbeddedNats
from bus.telemetry import Telemetry
from eventstore import SqliteEventStore
from eventstore.anchor import Checkpointer, load_signing_key
from orchestrator.service.credentials import Credentials
from orchestrator.service.logins import Logins
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S
from orchestrator.service.service import Orchestrator
from orchestrator.service.writable import check_writable

DEFAULT_STATE_DIR = ".baton"


def state_dir(explicit: str | None = None) -> Path:
    """`--state-dir`, else `$BATON_STATE_DIR`, else `.baton` in the working directory."""
    return Path(explicit or os.environ.get("BATON_STATE_DIR") or DEFAULT_STATE_DIR)


def store_path(directory: Path) -> Path:
    return directory / "events.db"


async def open_store(directory: Path) -> SqliteEventStore:
    return await SqliteEventStore.open(store_path(directory))


def anchor_path(directory: Path) -> Path:
    """Where signed checkpoints of the log go: `$BATON_ANCHOR` (a file, or a directory
    that gets a `checkpoints.jsonl`), else `checkpoints.jsonl` in the state directory.
    Point it outside what a writer of the state directory can change (see docs/security.md)."""
    return Path(os.environ.get("BATON_ANCHOR") or directory / "checkpoints.jsonl")


def anchor_key_path(directory: Path) -> Path:
    """The checkpoint signing key: `$BATON_ANCHOR_KEY`, else `anchor.key` in the state
    directory (made there, mode 0600, on first use)."""
    return Path(os.environ.get("BATON_ANCHOR_KEY") or directory / "anchor.key")


@dataclass
class Stack:
    """A running orchestrator with what it owns; `close()` stops all of it in order."""

    orchestrator: Orchestrator
    bus: Bus
    store: SqliteEventStore
    nats_url: str
    server: EmbeddedNats | None
    telemetry: Telemetry | None = None
    """Telemetry this stack owns and flushes on close (None when the caller owns it)."""
    contracts: Contracts | None = None
    checkpoints: Checkpointer | None = None
    """Signs the log's head into the anchor; closed (one last checkpoint) before the store."""
    logins: Logins | None = None
    """Who may log in to the embedded server (None on an external bus)."""
    server_watch: asyncio.Task[None] | None = None
    """Restarts the embedded server whenever it exits (`EmbeddedNats.supervise`)."""

    def agent_url(self, agent_id: str, role: str) -> str:
        """The URL an agent process connects with: on the embedded server, with its own
        new user (see `Logins`); else `nats_url`."""
        return self.logins.agent_url(agent_id, role) if self.logins else self.nats_url

    async def close(self) -> None:
        """Stop it all; bounded whatever the bus's state (a server gone, reconnecting)."""
        if self.server_watch is not None:
            self.server_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.server_watch
        await self.orchestrator.stop()
        if self.checkpoints is not None:
            await self.checkpoints.close()
        await self.bus.close()
        await self.store.close()
        if self.server is not None:
            self.server.stop(timeout=2.0)
        if self.telemetry is not None:
            self.telemetry.shutdown()


async def bootstrap(
    directory: Path,
    nats_url: str = "",
    *,
    agent_ttl: float = AGENT_TTL,
    heartbeat_s: float = HEARTBEAT_S,
    tick_s: float = 0.2,
    telemetry: Telemetry | None = None,
    contracts: Contracts | None = None,
) -> Stack:
    """Open the store, start the embedded NATS unless `nats_url` is given, start serving.
    Telemetry comes from the `OTEL_*` / `BATON_*` environment unless one is given."""
    owned = telemetry is None
    telemetry = telemetry or Telemetry.from_env("baton-orchestrator")
    store_file = store_path(directory)
    wal = [store_file.with_name(store_file.name + end) for end in ("-wal", "-shm")]
    check_writable(directory, [store_file, *wal])
    store = await open_store(directory)
    server = None
    logins: Logins | None = None
    checkpoints: Checkpointer | None = None
    try:
        key = load_signing_key(anchor_key_path(directory))
        checkpoints = Checkpointer(store, anchor_path(directory), key)
        if not nats_url:
            logins = Logins(directory, contracts)
            server = logins.server
            nats_url = await logins.start()
        bus = await Bus.connect(nats_url, name="baton-orchestrator")
        orchestrator = Orchestrator(
            bus,
            store,
            agent_ttl=agent_ttl,
            heartbeat_s=heartbeat_s,
            tick_s=tick_s,
            telemetry=telemetry,
            contracts=contracts,
            checkpoints=checkpoints,
        )
        await orchestrator.start()
        await checkpoints.start()
        if logins is not None:
            await Credentials(logins, orchestrator.audit).serve(bus)
    except BaseException:
        if checkpoints is not None:
            await checkpoints.close()
        await store.close()
        if server is not None:
            server.stop()
        raise
    # the stack shuts down (flushes) only the telemetry it made itself
    return Stack(
        orchestrator,
        bus,
        store,
        nats_url,
        server,
        telemetry if owned else None,
        contracts,
        checkpoints,
        logins,
        asyncio.create_task(server.supervise()) if server is not None else None,
    )
