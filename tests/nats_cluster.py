"""Real nats-servers for the tests, on free loopback ports: one server, or a cluster of
three with JetStream whose nodes a test can stop, SIGKILL and start again (same ports,
same data), and ask which node leads a stream. A cluster node's configuration is the one
docs/deploy.md gives, read from the page (its machines n1, n2, n3 become loopback ports,
its files the test's: TLS certificates made here, the login a user nkey made here), and
so is `baton.toml` (`deploy_baton_toml`): a change to either on the page changes what
the tests run, or fails them where it no longer fits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import nats
import nats.errors
import nats.js.errors

from bus.nkey import new_user_seed, public_key
from bus.server import find_binary
from private import write
from tests.pki import certificates

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
NAMES = ("n1", "n2", "n3")
"""The machines of docs/deploy.md."""


def deploy_blocks(section: str, fence: str) -> list[str]:
    """The code blocks fenced with `fence` in the docs/deploy.md section whose heading
    starts with `section` (at least one)."""
    page = DEPLOY.read_text()
    start = page.index(f"\n## {section}")
    end = page.find("\n## ", start + 1)
    found = re.findall(rf"^{re.escape(fence)}\n(.*?)^```$", page[start:end], re.M | re.S)
    assert found, f"docs/deploy.md: no {fence} block under '## {section}'"
    return found


def _deploy_block(section: str, fence: str) -> str:
    """The first code block fenced with `fence` in that docs/deploy.md section."""
    return deploy_blocks(section, fence)[0]


def _sub(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"docs/deploy.md changed: {old!r} is not there once"
    return text.replace(old, new)


class Login(NamedTuple):
    """What the cluster's clients log in with: the CA and server certificate files
    (`tests.pki`), and a user nkey seed file with its public key."""

    pki: Path
    nkey: Path
    public: str

    @classmethod
    def make(cls, directory: Path) -> Login:
        certificates(directory / "pki")
        seed = new_user_seed()
        write(directory / "baton.nk", seed + b"\n")
        return cls(directory / "pki", directory / "baton.nk", public_key(seed))

    def options(self) -> dict[str, Any]:
        """nats-py's connect options for this login."""
        tls = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        return {"tls": tls, "nkeys_seed_str": self.nkey.read_text().strip()}

    def environ(self) -> dict[str, str]:
        """The environment that makes Baton in this process log in so."""
        return {"BATON_NATS_NKEY": str(self.nkey), "BATON_TLS_CA": str(self.pki / "ca.pem")}


def deploy_server_conf(
    name: str, directory: Path, port: int, routes: dict[str, int], login: Login
) -> str:
    """docs/deploy.md's nats-server.conf for machine `name` (n1, n2, n3), on loopback:
    client port `port`, cluster ports `routes` (machine → port), JetStream in
    `directory`, the server certificate and the login of `login`."""
    conf = _deploy_block("1. The NATS cluster", "```")
    conf = _sub(conf, "server_name: n1", f"server_name: {name}")
    conf = _sub(conf, "listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
    for file in ("server.pem", "server.key"):  # the clients' TLS and the routes'
        path = f"/etc/nats/{file}"
        assert conf.count(path) == 2, f"docs/deploy.md changed: {path!r} is not there twice"
        conf = conf.replace(path, json.dumps(str(login.pki / file)))
    conf = _sub(conf, "/etc/nats/ca.pem", json.dumps(str(login.pki / "ca.pem")))
    conf = _sub(conf, "<the public key of /etc/baton/baton.nk>", login.public)
    conf = _sub(conf, "store_dir: /var/lib/nats", f"store_dir: {json.dumps(str(directory))}")
    conf = _sub(conf, "listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{routes[name]}")
    for machine, route in routes.items():
        conf = _sub(conf, f"nats://{machine}:6222", f"nats://127.0.0.1:{route}")
    return conf


def deploy_baton_toml(urls: dict[str, str], login: Login) -> str:
    """docs/deploy.md's baton.toml, its machines' NATS URLs replaced by `urls`, its
    login files by `login`'s."""
    toml = _deploy_block("2. One configuration", "```toml")
    for machine, url in urls.items():
        toml = _sub(toml, f"tls://{machine}:4222", url)
    toml = _sub(toml, '"/etc/baton/baton.nk"', json.dumps(str(login.nkey)))
    return _sub(toml, '"/etc/baton/ca.pem"', json.dumps(str(login.pki / "ca.pem")))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Node:
    """One nats-server process, its configuration in `directory/server.conf`."""

    def __init__(
        self, directory: Path, extra: str = "", port: int = 0, conf: str = "", scheme: str = "nats"
    ) -> None:
        """A server named after `directory`, listening on `port` (0: a free one), with
        JetStream (synced) and `extra` configuration; or exactly `conf` (whose clients
        connect with `scheme`)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.name = directory.name
        self.directory = directory
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        store = json.dumps(str(directory / "js"))
        (directory / "server.conf").write_text(
            conf
            or f"listen: 127.0.0.1:{self.port}\nserver_name: {self.name}\n"
            f"jetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n{extra}"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.leaving = False
        """Told to stop in order (SIGTERM, lame duck) and not gone yet: not asked."""

    def start(self) -> None:
        """Start the server and wait until it accepts connections (bounded)."""
        self.leaving = False
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(find_binary()), "-c", str(self.directory / "server.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 15
        while True:
            assert self.process.poll() is None, f"nats-server {self.name} refused its config"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"nats-server {self.name} did not start"
                time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to the cluster."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def leave(self, how: signal.Signals) -> None:
        """Stop in order, without waiting: SIGTERM (shut down: its raft leaderships are
        stepped down first) or SIGUSR2 (lame-duck mode: leaderships moved to the others,
        no new clients, the connected ones closed over its grace period, then exit)."""
        assert self.process is not None
        self.leaving = True
        self.process.send_signal(how)

    def gone(self, timeout: float) -> int:
        """Wait until the process has exited (bounded); its exit status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def nats_server(directory: Path, extra: str = "", port: int = 0) -> Iterator[str]:
    """A nats-server with JetStream (synced, as Baton wants it) on loopback; its URL."""
    node = Node(directory, extra, port)
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


class StreamCluster(NamedTuple):
    """A stream as its leader has it: which node leads, each follower's (current, lag),
    and its last sequence."""

    leader: str
    replicas: dict[str, tuple[bool, int]]
    last_seq: int


class NatsCluster:
    """docs/deploy.md's three machines n1, n2, n3 as nats-servers on loopback ports, each
    in its own folder under `directory`."""

    def __init__(self, directory: Path) -> None:
        routes = {name: free_port() for name in NAMES}
        self.routes = routes
        """Machine → its cluster (route) port."""
        self.login = Login.make(directory)
        self.options = self.login.options()
        """How a client connects to the cluster (TLS, the login), for nats-py."""
        self.nodes = []
        for name in NAMES:
            port = free_port()
            conf = deploy_server_conf(name, directory / name / "js", port, routes, self.login)
            self.nodes.append(Node(directory / name, port=port, conf=conf, scheme="tls"))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def baton_toml(self) -> str:
        """docs/deploy.md's baton.toml for this cluster."""
        return deploy_baton_toml({node.name: node.url for node in self.nodes}, self.login)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def alive(self) -> list[Node]:
        """The nodes running and not told to stop."""
        return [node for node in self.nodes if node.alive and not node.leaving]

    async def stream_cluster(self, stream: str, timeout: float = 30.0) -> StreamCluster:
        """The stream's cluster as the live nodes' JetStream API has it once it has a
        leader (a bounded wait)."""
        deadline = time.monotonic() + timeout
        failure: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                nc = await nats.connect(
                    servers=[n.url for n in self.alive()],
                    connect_timeout=2,
                    max_reconnect_attempts=0,
                    **self.options,
                )
            except (nats.errors.Error, OSError) as error:
                failure = error
                await asyncio.sleep(0.1)
                continue
            try:
                info = await nc.jetstream(timeout=2).stream_info(stream)
                cluster = info.cluster
                if cluster is not None and cluster.leader:
                    return StreamCluster(
                        cluster.leader,
                        {
                            str(p.name): (bool(p.current), p.lag or 0)
                            for p in cluster.replicas or []
                        },
                        info.state.last_seq,
                    )
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as error:
                failure = error
            finally:
                await nc.close()
            await asyncio.sleep(0.1)
        raise AssertionError(f"stream {stream} had no leader within {timeout}s ({failure!r})")

    async def leader(self, stream: str) -> str:
        """The name of the node leading `stream` now."""
        return (await self.stream_cluster(stream)).leader

    async def until_current(self, stream: str, timeout: float = 60.0) -> None:
        """Wait until every node holds `stream` with no lag (a restarted one caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.stream_cluster(stream)
            replicas = found.replicas
            if len(replicas) == len(self.nodes) - 1 and all(
                current and lag == 0 for current, lag in replicas.values()
            ):
                return
            assert time.monotonic() < deadline, f"{stream} never current on every node: {found}"
            await asyncio.sleep(0.2)


@contextmanager
def nats_cluster(directory: Path) -> Iterator[NatsCluster]:
    """A running cluster; every node is stopped at the end, whatever state it is in."""
    cluster = NatsCluster(directory)
    try:
        for node in cluster.nodes:
            node.start()
        yield cluster
    finally:
        for node in cluster.nodes:
            node.stop()
