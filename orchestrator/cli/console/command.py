"""`baton ui`: open the state directory's event store (or the configured one), reach the
running orchestrator as the CLI does, and serve the console on loopback, printing the
one-time login URL. Any other address needs `--allow-remote` (the console speaks plain
HTTP: put it behind TLS, see docs/security.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bus.config import Price
from eventstore import EventStore
from orchestrator.cli.console import runs_list
from orchestrator.cli.console.errors import NotInstalled, UnsafeBind
from orchestrator.cli.console.live import Live
from orchestrator.cli.control import actor_of
from orchestrator.cli.listening import is_loopback
from orchestrator.cli.log_commands import existing_store
from orchestrator.cli.reach import Reach, me, reach
from orchestrator.service import run_summaries
from orchestrator.service.bootstrap import Stack, state_dir, store_name

if TYPE_CHECKING:
    from orchestrator.cli.console.app import Console

DEFAULT_PORT = 8765
START_S = 10.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ui = sub.add_parser(
        "ui",
        help="the operator's console: runs, a run live (its tokens and their cost per agent, "
        "role and model, priced by `prices` in baton.toml or $BATON_PRICES), approvals, "
        "agents, audit, time travel in a browser (needs the ui extra)",
    )
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; another needs "
                         "--allow-remote)")  # fmt: skip
    ui.add_argument("--port", type=port, default=DEFAULT_PORT,
                    help=f"port (default {DEFAULT_PORT}; 0: any free one)")  # fmt: skip
    ui.add_argument("--allow-remote", action="store_true",
                    help="listen on an address other than loopback (plain HTTP: put TLS in "
                         "front of it)")  # fmt: skip
    ui.add_argument("--as", dest="actor", default="",
                    help="who decides, on a bus given with --nats (default human:<login>); "
                         "on the embedded server, always who its credentials name")  # fmt: skip
    ui.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)")


def port(text: str) -> int:
    """A TCP port (0: any free one), for argparse."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """`baton serve --ui`: the console in the same process, on the orchestrator's own
    store and bus."""
    serve.add_argument("--ui", action="store_true",
                       help="also serve the operator's console (as baton ui; needs the ui "
                            "extra)")  # fmt: skip
    serve.add_argument("--ui-host", default="127.0.0.1",
                       help="the console's address (default 127.0.0.1; another needs "
                            "--allow-remote)")  # fmt: skip
    serve.add_argument("--ui-port", type=port, default=DEFAULT_PORT,
                       help=f"the console's port (default {DEFAULT_PORT}; 0: any free "
                            "one)")  # fmt: skip
    serve.add_argument("--allow-remote", action="store_true",
                       help="let the console listen on an address other than loopback")  # fmt: skip


def bind(host: str, port: int, allow_remote: bool) -> socket.socket:
    """A listening socket on `host:port`; `UnsafeBind` for a non-loopback host without
    `allow_remote`."""
    if not is_loopback(host) and not allow_remote:
        raise UnsafeBind(
            f"--host {host} is not a loopback address: anyone who can reach it could try the "
            "console; pass --allow-remote to mean it (and put TLS in front, docs/security.md)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class Running:
    """A console being served: where, and the one-time login URL."""

    console: Console
    host: str
    port: int
    task: asyncio.Task[None]
    """The server; it ends when it is told to stop (Ctrl-C, or the block's end)."""
    projecting: asyncio.Task[None]
    """Keeps the run summaries the runs list reads up to date with the log
    (`run_summaries.follow`)."""

    @property
    def base(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.base}/login?token={self.console.guard.token}"


@contextlib.asynccontextmanager
async def serving(
    store: EventStore,
    where: Reach | None,
    actor: str,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    shown_store: str = "",
    find: Callable[[], Reach | None] | None = None,
    prices: Mapping[str, Price] | None = None,
    directory: Path | None = None,
) -> AsyncIterator[Running]:
    """The console served in this event loop until the block ends; with `directory` (the
    state directory), Audit's verify checks the log against its signed checkpoints."""
    try:
        import uvicorn

        from orchestrator.cli.console.app import Console, secured
        from orchestrator.cli.console.guard import Guard
    except ImportError as exc:
        raise NotInstalled(
            f"baton ui needs the ui extra (pip install 'batonbus[ui]'): {exc}"
        ) from None
    sock = bind(host, port, allow_remote)
    bound = sock.getsockname()[1]
    live = Live(where, actor, find)
    await live.start()
    guard = Guard.for_address(host, bound, remote=not is_loopback(host))
    rows = store.projections
    console = Console(
        store,
        live,
        guard,
        runs_list.Summaries(rows),
        store_name=shown_store,
        directory=directory,
        prices=prices or {},
    )
    config = uvicorn.Config(
        secured(console),
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=1,
        server_header=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    projecting = asyncio.create_task(
        run_summaries.follow(store, rows, quiet=console.summaries.quiet)
    )
    try:
        deadline = time.monotonic() + START_S
        while not server.started:  # uvicorn says so only by this flag
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the console did not start in {START_S:g}s")
            await asyncio.sleep(0.01)
        yield Running(console, host, bound, task, projecting)
    finally:
        projecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await projecting
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await live.close()
        sock.close()


async def ui(args: argparse.Namespace) -> int:
    directory: Path = state_dir(args.state_dir)
    bind(args.host, 0, args.allow_remote).close()  # refused before the store is opened
    store = await existing_store(args)
    try:
        where = reach(args.nats, directory)
        actor = actor_of(args, where) if where is not None else (args.actor or "")
        async with serving(
            store,
            where,
            actor or actor_of(args, Reach("", "")),
            args.host,
            args.port,
            args.allow_remote,
            store_name(directory, args.config),
            find=lambda: reach(args.nats, directory),
            prices=args.config.prices,
            directory=directory,
        ) as running:
            print(f"baton ui: {running.console.where()}")
            print(f"open {running.login_url}  (the link logs in once)", flush=True)
            await running.task
    finally:
        await store.close()
    return 0


def beside_serve(args: argparse.Namespace) -> Callable[[Stack], Awaitable[object]]:
    """What `baton serve --ui` runs once its stack is up: the console on the stack's own
    store, reaching the bus as `baton ui` would (the person's credentials)."""
    bind(args.ui_host, 0, args.allow_remote).close()  # refused before anything starts

    async def console(stack: Stack) -> None:
        directory = state_dir(args.state_dir)
        where = reach(args.nats or "", directory) or Reach(stack.nats_url, "")
        actor = where.identity or me()  # as baton approve decides on this bus
        shown = store_name(directory, args.config)
        async with serving(
            stack.store,
            where,
            actor,
            args.ui_host,
            args.ui_port,
            args.allow_remote,
            shown,
            prices=args.config.prices,
            directory=directory,
        ) as running:
            print(f"baton ui: {running.console.where()}")
            print(f"open {running.login_url}  (the link logs in once)", flush=True)
            await running.task

    return console
