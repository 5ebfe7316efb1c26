"""The composition root: configuration in, a wired orchestrator (store, bus, server) out.
Everything else receives its ports as arguments; only this module decides which."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bus import config_files
from bus.config import Config
from bus.connection import Bus
from bus.contracts import Contracts
from bus.nats_options import login_options, servers
from bus.permissions import shown_url
from bus.server import EmbeddedNats
from bus.telemetry import Telemetry
from eventstore import EventStore, JetStreamEventStore, SqliteEventStore
from eventstore.anchor import Checkpointer, load_signing_key
from orchestrator.service.credentials import Credentials
from orchestrator.service.log_lock import hold_log
from orchestrator.service.logins import Logins
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S
from orchestrator.service.service import Orchestrator
from orchestrator.service.writable import check_writable

log = logging.getLogger("baton.orchestrator")

OPEN_BUS = (
    "the NATS server %s let the orchestrator in without a login: whoever reaches it may "
    "act as any agent or person (report results, approve, submit); give each client a "
    "login there (docs/deploy.md, baton nats-users) or use the embedded server"
)

DEFAULT_STATE_DIR = ".baton"
DEFAULT_CONFIG = Config()
JETSTREAM_STREAM = "BATON_EVENTS"


def state_dir(explicit: str | None = None) -> Path:
    """`--state-dir`, else `$BATON_STATE_DIR`, else `.baton` in the working directory."""
    return Path(explicit or os.environ.get("BATON_STATE_DIR") or DEFAULT_STATE_DIR)


def load_config(
    directory: Path,
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The configuration of a command on `directory`: the state directory's
    `baton.toml`, else the working directory's; then the environment, then the command's
    `flags` (see `bus.config`)."""
    return config_files.load((directory, Path(".")), flags or {}, environ)


def store_path(directory: Path, config: Config = DEFAULT_CONFIG) -> Path:
    """The SQLite file of the log: `store = "sqlite:PATH"`, else `events.db` in the
    state directory (not used when the log is on JetStream)."""
    return Path(config.sqlite_path) if config.sqlite_path else directory / "events.db"


def store_name(directory: Path, config: Config = DEFAULT_CONFIG) -> str:
    """Where the log is, as a person reads it."""
    if config.jetstream:
        shown = ",".join(u.rpartition("@")[2] for u in config.nats)
        copies = f"{config.replicas} replica{'s' if config.replicas > 1 else ''}"
        return f"JetStream stream {JETSTREAM_STREAM} ({copies}) on {shown}"
    return str(store_path(directory, config))


def store_exists(directory: Path, config: Config = DEFAULT_CONFIG) -> bool:
    """Whether there is a log to read (one on JetStream is asked for when opened)."""
    return config.jetstream or store_path(directory, config).exists()


async def open_store(directory: Path, config: Config = DEFAULT_CONFIG) -> EventStore:
    """The event log `config` names: every command opens its store here."""
    if config.jetstream:
        return await JetStreamEventStore.open(
            list(config.nats),
            JETSTREAM_STREAM,
            config.replicas,
            connect_options=login_options(),
        )
    return await SqliteEventStore.open(store_path(directory, config))


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
    store: EventStore
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
    log_lock: int | None = None
    """On a SQLite log, the lock that keeps other orchestrators off it (`log_lock`)."""

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
        if self.log_lock is not None:
            os.close(self.log_lock)
            self.log_lock = None


async def bootstrap(
    directory: Path,
    nats_url: str = "",
    *,
    agent_ttl: float = AGENT_TTL,
    heartbeat_s: float = HEARTBEAT_S,
    tick_s: float = 0.2,
    telemetry: Telemetry | None = None,
    contracts: Contracts | None = None,
    config: Config = DEFAULT_CONFIG,
) -> Stack:
    """Open the store `config` names (a SQLite log only if no other orchestrator has it:
    `AlreadyServed`), start the embedded NATS unless `nats_url` is given,
    start serving (the inbox with `config.replicas`); with the log on JetStream, share
    the runs by partition with every other orchestrator serving that log. Telemetry
    comes from the `OTEL_*` / `BATON_*` environment unless one is given."""
    held: int | None = None
    if not config.jetstream:
        store_file = store_path(directory, config)
        wal = [store_file.with_name(store_file.name + end) for end in ("-wal", "-shm")]
        check_writable(directory, [store_file, *wal])
        held = hold_log(store_file)
    owned = telemetry is None
    telemetry = telemetry or Telemetry.from_env("baton-orchestrator")
    store: EventStore | None = None
    server = None
    logins: Logins | None = None
    checkpoints: Checkpointer | None = None
    try:
        store = await open_store(directory, config)
        key = load_signing_key(anchor_key_path(directory))
        checkpoints = Checkpointer(store, anchor_path(directory), key)
        if not nats_url:
            logins = Logins(directory, contracts)
            server = logins.server
            nats_url = await logins.start()
        bus = await Bus.connect(nats_url, name="baton-orchestrator")
        if bus.needs_no_login:  # never the embedded server: it asks every client for one
            log.warning(OPEN_BUS, ",".join(map(shown_url, servers(nats_url))))
        orchestrator = Orchestrator(
            bus,
            store,
            agent_ttl=agent_ttl,
            heartbeat_s=heartbeat_s,
            tick_s=tick_s,
            telemetry=telemetry,
            contracts=contracts,
            checkpoints=checkpoints,
            replicas=config.replicas,
            shared=config.jetstream,  # a log on the bus: other orchestrators may share it
        )
        await orchestrator.start()
        await checkpoints.start()
        if logins is not None:
            await Credentials(logins, orchestrator.audit).serve(bus)
    except BaseException:
        if checkpoints is not None:
            await checkpoints.close()
        if store is not None:
            await store.close()
        if server is not None:
            server.stop()
        if held is not None:
            os.close(held)
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
        held,
    )
