"""The composition root: configuration in, a wired orchestrator (store, bus, server) out.
Everything else receives its ports as arguments; only this module decides which."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bus.connection import Bus
from bus.contracts import Contracts, RoleContract
from bus.permissions import agent_permissions, human_permissions, new_user, url_for
from bus.server import EmbeddedNats
from bus.telemetry import Telemetry
from eventstore import SqliteEventStore
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

    def agent_url(self, agent_id: str, role: str) -> str:
        """The URL an agent process connects with: on a governed embedded server, with
        its own new user whose permissions its role's contract decides; else `nats_url`."""
        if self.server is None or not self.server.secured or self.contracts is None:
            return self.nats_url
        if role in self.contracts:
            user = new_user(agent_id, agent_permissions(agent_id, self.contracts.get(role)))
        else:  # it will be refused anyway; let it in with no rights beyond heartbeating
            user = new_user(agent_id, agent_permissions(agent_id, RoleContract(name=role)))
        self.server.add_users([user])
        return url_for(self.server.url, user)

    async def close(self) -> None:
        await self.orchestrator.stop()
        await self.bus.close()
        await self.store.close()
        if self.server is not None:
            self.server.stop()
        if self.telemetry is not None:
            self.telemetry.shutdown()


async def bootstrap(
    directory: Path,
    nats_url: str = "",
    *,
    agent_ttl: float = 2.0,
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
    try:
        if not nats_url and contracts is not None:
            # governed: every client logs in, each agent gets its contract's permissions
            orchestrator_user = new_user("orchestrator", None)
            human = new_user("human", human_permissions("human"))
            server = EmbeddedNats(directory, users=[orchestrator_user, human])
            base_url = await server.start()
            nats_url = url_for(base_url, orchestrator_user)
            write_secret(human_url_path(directory), url_for(base_url, human))
        elif not nats_url:
            human_url_path(directory).unlink(missing_ok=True)
            server = EmbeddedNats(directory)
            nats_url = await server.start()
        bus = await Bus.connect(nats_url, name="baton-orchestrator")
        orchestrator = Orchestrator(
            bus,
            store,
            agent_ttl=agent_ttl,
            tick_s=tick_s,
            telemetry=telemetry,
            contracts=contracts,
        )
        await orchestrator.start()
    except BaseException:
        await store.close()
        if server is not None:
            server.stop()
        raise
    # the stack shuts down (flushes) only the telemetry it made itself
    return Stack(
        orchestrator, bus, store, nats_url, server, telemetry if owned else None, contracts
    )


def human_url_path(directory: Path) -> Path:
    """Where a governed embedded server's CLI credentials (`baton tool ...`) are kept."""
    return directory / "nats" / "human.url"


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
