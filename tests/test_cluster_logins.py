"""Logins other than step 1's on docs/deploy.md's three-node cluster (its configuration,
TLS and routes included).

"One login per agent": `baton nats-users` prints the users, the block
replaces each node's `authorization` block and each node reloads, and Baton runs a
workflow through the CLI, `baton serve` with the services' login on n1, agent A with its
own seed on n2, agent B with its own on n3, so every assignment and report crosses a
route. While B holds its task, A (logged in as itself, with nats-py, on n2) tries B's
assignments, report and result subjects: n2 refuses each, the log records no rejected
result and B's own result is kept. Then the users are printed again without A and every
node reloads: A's agent is cut off and its login refused on every node, while B's still
logs in.

Operator mode: each node trusts an operator (made as `nsc` makes one, `resolver:
MEMORY`) in place of its `authorization` block; `baton serve` with `creds` in its
`baton.toml` and two agents with `$BATON_NATS_CREDS` run a workflow whose large output
goes to the Object Store; every stream Baton made has three replicas, in the account
of the creds, and `baton audit verify` is ok.

Marked `cluster` (about 30 s on 2 cores): `pytest -m cluster`."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import subprocess
import time
from pathlib import Path

import nats
import nats.errors
import pytest

from bus.connection import RECONNECT_WAIT_S
from tests.cluster import baton
from tests.nats_cluster import Login, NatsCluster, Node, nats_cluster
from tests.operator_mode import Operator
from tests.test_nats_users import (
    AGENTS,
    assert_each_acted_only_as_itself,
    new_seed,
    own_logins_run,
)
from tests.test_operator_mode import (
    assert_each_task_by_its_agent_the_large_output_by_blob,
    baton_in,
    clean_env,
    creds_run,
)

pytestmark = pytest.mark.cluster

_AUTHORIZATION = re.compile(r"^authorization \{.*?^\}\n", re.M | re.S)


def _users(cluster: NatsCluster, cwd: Path, agents: dict[str, str]) -> str:
    """What `baton nats-users` prints for the services' login and `agents` (id → public
    key, each in its role of `AGENTS`)."""
    listed = [f"{agent}:{AGENTS[agent][0]}:{key}" for agent, key in agents.items()]
    printed = subprocess.run(
        baton("nats-users", "--services", cluster.login.public, *listed),
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=cwd,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    return printed.stdout


def _authorized_by(node: Node, block: str) -> None:
    """Put `block` in place of the node's authorization block, in its configuration."""
    conf_path = node.directory / "server.conf"
    conf, found = _AUTHORIZATION.subn(block.replace("\\", "\\\\"), conf_path.read_text())
    assert found == 1, "the node's configuration has no one authorization block"
    conf_path.write_text(conf)


def _reload_with(node: Node, users: str) -> None:
    """Put `users` in place of the node's authorization block and have it reload
    (SIGHUP, what `nats-server --signal reload` sends); return once its log says so."""
    _authorized_by(node, users)
    log = node.directory / "server.log"
    offset = log.stat().st_size
    assert node.process is not None
    node.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while b"Reloaded server configuration" not in log.read_bytes()[offset:]:
        assert time.monotonic() < deadline, log.read_text()[offset:]
        time.sleep(0.05)


def _toml_on(cluster: NatsCluster, node: str, nkey: Path | None) -> str:
    """docs/deploy.md's baton.toml, on one node of the cluster, logged in with `nkey`
    (none: the login comes from $BATON_NATS_NKEY)."""
    toml = cluster.baton_toml()
    toml, named = re.subn(
        r"^nats = \[.*\]$", f'nats = ["{cluster.node(node).url}"]', toml, flags=re.M
    )
    assert named == 1, toml
    login = "" if nkey is None else f"nkey = {json.dumps(str(nkey))}"
    toml, logins = re.subn(r"^nkey = .*$", login, toml, flags=re.M)
    assert logins == 1, toml
    return toml


async def _logs_in(url: str, login: Login, seed: Path) -> str:
    """'' if the seed logs in on `url`, else what the server said."""
    try:
        nc = await nats.connect(
            url,
            tls=ssl.create_default_context(cafile=str(login.pki / "ca.pem")),
            nkeys_seed_str=seed.read_text().strip(),
            connect_timeout=5,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
    except (nats.errors.Error, OSError) as error:
        return str(error) or type(error).__name__
    await nc.close()
    return ""


def _cut_off(log: Path) -> str:
    """What a process logged since its connection was last lost, once that says its
    login was refused and it has not reconnected, then again two reconnect waits later
    (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        since = log.read_text().rpartition("disconnected; reconnecting")[2]
        if "refused while reconnecting" in since and "reconnected after" not in since:
            break
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    time.sleep(2 * RECONNECT_WAIT_S)  # room for a reconnect, which must not come
    return log.read_text().rpartition("disconnected; reconnecting")[2]


def test_one_login_per_agent_on_the_three_nodes(tmp_path: Path) -> None:
    seeds = {agent: tmp_path / f"{agent}.nk" for agent in AGENTS}
    keys = {agent: new_seed(seeds[agent]) for agent in AGENTS}
    with nats_cluster(tmp_path / "nats") as cluster:
        users = _users(cluster, tmp_path, keys)
        for node in cluster.nodes:
            _reload_with(node, users)
        tomls = {
            "work": _toml_on(cluster, "n1", cluster.login.nkey),
            "a": _toml_on(cluster, "n2", seeds["worker-a"]),
            "b": _toml_on(cluster, "n3", None),
        }
        n2 = cluster.node("n2").url
        with own_logins_run(tmp_path, n2, cluster.login, seeds, tomls) as seen:
            users = _users(cluster, tmp_path, {"worker-b": keys["worker-b"]})
            for node in cluster.nodes:
                _reload_with(node, users)
            a_refused = [
                asyncio.run(_logs_in(node.url, cluster.login, seeds["worker-a"]))
                for node in cluster.nodes
            ]
            b_refused = [
                asyncio.run(_logs_in(node.url, cluster.login, seeds["worker-b"]))
                for node in cluster.nodes
            ]
            cut_off = _cut_off(tmp_path / "worker-a.log")
    assert_each_acted_only_as_itself(tmp_path, seen)
    assert all("authorization violation" in said.lower() for said in a_refused), a_refused
    assert b_refused == ["", "", ""]
    assert "'Authorization Violation'; still trying" in cut_off, cut_off
    assert "reconnected after" not in cut_off, cut_off


async def _replicas(cluster: NatsCluster, creds: Path) -> dict[str, int]:
    """Each stream of the creds' account and its replicas, as the cluster has them."""
    nc = await nats.connect(
        servers=cluster.urls,
        tls=ssl.create_default_context(cafile=str(cluster.login.pki / "ca.pem")),
        user_credentials=str(creds),
    )
    try:
        return {
            info.config.name: info.config.num_replicas or 1
            for info in await nc.jetstream().streams_info()
            if info.config.name
        }
    finally:
        await nc.close()


def test_creds_in_operator_mode_on_the_three_nodes(tmp_path: Path) -> None:
    operator = Operator.make()
    creds = operator.app.user_creds(tmp_path / "baton.creds")
    cluster = NatsCluster(tmp_path / "nats")
    for node in cluster.nodes:
        _authorized_by(node, operator.server_conf())
    toml, logins = re.subn(r"^nkey = .*$", "", cluster.baton_toml(), flags=re.M)
    assert logins == 1, toml
    try:
        for node in cluster.nodes:
            node.start()
        with creds_run(tmp_path, toml, creds) as seen:
            replicas = asyncio.run(_replicas(cluster, creds))
            verify = baton_in(tmp_path / "work", "audit", "verify")
    finally:
        for node in cluster.nodes:
            node.stop()
    assert "BATON_EVENTS (3 replicas)" in seen.serving, seen.serving
    assert_each_task_by_its_agent_the_large_output_by_blob(seen.audited)
    made = {"BATON_EVENTS", "BATON_INBOX", "KV_BATON_LEASES", "OBJ_BATON_BLOBS"}
    assert made <= replicas.keys(), replicas
    assert set(replicas.values()) == {3}, replicas
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "hash chain: ok" in verify.stdout
