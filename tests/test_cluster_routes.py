"""The cluster port of docs/deploy.md takes only routes over TLS from servers holding a
certificate of the cluster's authority: a nats-server started by someone else and
pointed at a node's cluster port, with no TLS or with a certificate of another
authority, neither carries its clients' messages into the cluster nor hears the
cluster's. The nodes themselves route to each other (checked first, or nothing here
could fail).

Marked `cluster`: `pytest -m cluster`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest
from nats.aio.subscription import Subscription

from tests.nats_cluster import NatsCluster, Node, free_port, nats_cluster
from tests.pki import certificates

pytestmark = pytest.mark.cluster

ROUTE_RETRY_S = 3.0
"""Long enough for a server to try its route several times (nats-server retries every 1 s)."""


def _rogue(directory: Path, cluster: NatsCluster, tls: str = "") -> Node:
    """A nats-server of someone else's, routing to n1's cluster port; its clients log in
    with nothing (it is theirs)."""
    port = free_port()
    conf = (
        f"listen: 127.0.0.1:{port}\nserver_name: {directory.name}\n"
        f"cluster {{\n  name: baton\n  listen: 127.0.0.1:{free_port()}\n"
        f"  routes: [nats://127.0.0.1:{cluster.routes['n1']}]\n{tls}}}\n"
    )
    return Node(directory, port=port, conf=conf)


async def _heard(subscription: Subscription, wait: float) -> list[str]:
    heard = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            heard.append((await subscription.next_msg(timeout=left)).subject)
        except nats.errors.TimeoutError:
            break
    return heard


async def _check(cluster: NatsCluster, rogues: list[Node]) -> None:
    n1 = await nats.connect(cluster.node("n1").url, **cluster.options)
    n2 = await nats.connect(cluster.node("n2").url, **cluster.options)
    outsiders = [await nats.connect(rogue.url) for rogue in rogues]
    try:
        inside = await n1.subscribe("probe.>")
        await n1.flush()
        deadline = time.monotonic() + 30
        while not await _heard(inside, 0.2):  # the nodes' own routes are up
            assert time.monotonic() < deadline, "n2's message never reached n1's client"
            await n2.publish("probe.n2", b"")
        listening = [await outsider.subscribe("probe.>") for outsider in outsiders]
        for outsider in outsiders:
            await outsider.flush()
        began = time.monotonic()
        while time.monotonic() - began < ROUTE_RETRY_S:
            await n2.publish("probe.n2", b"")
            for n, outsider in enumerate(outsiders):
                await outsider.publish(f"probe.rogue{n}", b"")
            await asyncio.sleep(0.1)
        heard_inside = await _heard(inside, 0.5)
        assert "probe.n2" in heard_inside  # the control: the cluster kept routing meanwhile
        assert [s for s in heard_inside if s.startswith("probe.rogue")] == []
        for rogue, subscription in zip(rogues, listening, strict=True):
            heard = await _heard(subscription, 0.1)
            assert "probe.n2" not in heard, f"{rogue.name} heard the cluster's messages"
    finally:
        for client in (n1, n2, *outsiders):
            await client.close()


def test_a_server_without_the_clusters_certificate_cannot_join_it(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign-pki"
    certificates(foreign)
    with nats_cluster(tmp_path / "nats") as cluster:
        ca = json.dumps(str(cluster.login.pki / "ca.pem"))
        key, cert = (json.dumps(str(foreign / f"server.{x}")) for x in ("key", "pem"))
        rogues = [
            _rogue(tmp_path / "plain", cluster),
            _rogue(
                tmp_path / "foreign",
                cluster,
                f"  tls {{\n    cert_file: {cert}\n    key_file: {key}\n    ca_file: {ca}\n  }}\n",
            ),
        ]
        try:
            for rogue in rogues:
                rogue.start()
            asyncio.run(_check(cluster, rogues))
        finally:
            for rogue in rogues:
                rogue.stop()
