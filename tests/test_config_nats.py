"""The one configuration against real nats-servers started here: a command takes its store
from baton.toml, the environment or a flag (flags over environment over file); `--nats`
with several URLs connects while one is dead; a bad baton.toml is exit 2 with nothing
done; replicas a server cannot hold are refused clearly and a missing quorum is waited
for within a bound, never a hang; on a 3-node cluster every stream gets its 3 replicas."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from bus.connection import Bus
from bus.errors import BusError
from bus.subjects import INBOX_STREAM
from eventstore import JetStreamEventStore, StorageError
from tests.cluster import EXAMPLE, baton
from tests.nats_cluster import free_port, nats_cluster, nats_server
from tests.pki import certificates


def _baton(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return subprocess.run(
        baton(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def _streams(url: str, **options: Any) -> dict[str, int]:
    """Every stream on the server at `url` and its configured replicas (nats-py's
    connect `options`: TLS, a login)."""

    async def ask() -> dict[str, int]:
        nc = await nats.connect(url, **options)
        try:
            js = nc.jetstream()
            found = await js.streams_info()
            return {str(s.config.name): s.config.num_replicas or 1 for s in found}
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_a_run_keeps_its_log_on_jetstream_as_baton_toml_says(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats") as url:
        work = tmp_path / "work"
        work.mkdir()
        (work / "baton.toml").write_text(f'store = "jetstream"\nnats = ["{url}"]\n')
        ran = _baton(work, "run", str(EXAMPLE), "--timeout", "120")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert f"event store JetStream stream BATON_EVENTS (1 replica) on {url}" in ran.stdout
        started = re.search(r"^run (\S+): workflow", ran.stdout, re.M)
        assert started is not None, ran.stdout
        run_id = started.group(1)

        audit = _baton(work, "audit", "--run", run_id)
        assert audit.returncode == 0, audit.stderr
        assert "run.completed" in audit.stdout
        assert "task.succeeded" in audit.stdout
        replay = _baton(work, "replay", run_id)
        assert replay.returncode == 0, replay.stderr
        assert "hash chain: ok" in replay.stdout
        verify = _baton(work, "audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "hash chain: ok" in verify.stdout
        # the log is on the server, not in a file of the state directory
        assert not (work / ".baton" / "events.db").exists()
        assert _streams(url)["BATON_EVENTS"] == 1

        # the environment overrides the file, and a flag the environment
        elsewhere = tmp_path / "other.db"
        by_env = _baton(work, "replay", run_id, env={"BATON_STORE": f"sqlite:{elsewhere}"})
        assert by_env.returncode == 2
        assert f"no event store at {elsewhere}" in by_env.stderr
        by_flag = _baton(
            work, "audit", "--run", run_id, "--store", "jetstream",
            env={"BATON_STORE": f"sqlite:{elsewhere}"},
        )  # fmt: skip
        assert by_flag.returncode == 0
        assert "run.completed" in by_flag.stdout
        assert not elsewhere.exists()


def test_a_bad_baton_toml_is_exit_2_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "baton.toml").write_text('store = "jetstream"\nreplica = 3\n')
    commands = (
        ("run", str(EXAMPLE)),
        ("audit", "verify"),
        ("status",),
        ("import", "x"),
        ("tool", "pending"),
        ("agent", "--role", "greeter", "--handler", "agents.builtin:echo"),
        ("conformance", "--role", "greeter"),
    )
    for args in commands:
        done = _baton(tmp_path, *args, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "configuration baton.toml line 2: replica: unknown key" in done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baton.toml"]


def test_the_state_dirs_baton_toml_comes_before_the_working_dirs(tmp_path: Path) -> None:
    (tmp_path / "baton.toml").write_text('store = "sqlite:nowhere.db"\n')
    state = tmp_path / "state"
    state.mkdir()
    (state / "baton.toml").write_text("replicas = 0\n")
    done = _baton(tmp_path, "audit", "--state-dir", str(state), timeout=60)
    assert done.returncode == 2
    assert f"configuration {state / 'baton.toml'} line 1: replicas" in done.stderr


def test_several_urls_connect_while_one_is_dead(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    with nats_server(tmp_path / "nats") as url:

        async def both_orders() -> None:
            for urls in (f"{dead},{url}", f"{url},{dead}", f" {dead} , {url} "):
                for _ in range(3):  # nats-py shuffles the servers: try a few times
                    bus = await Bus.connect(urls, name="two-urls", tries=1)
                    try:
                        assert bus.connected
                        await bus.ensure_inbox()
                    finally:
                        await bus.close()
            other = f"nats://127.0.0.1:{free_port()}"
            with pytest.raises(BusError, match="cannot connect"):
                await Bus.connect(f"{dead},{other}", name="x", tries=1)
            for _ in range(3):  # beside a URL nats-py cannot use at all, in either order
                with pytest.raises(BusError, match="cannot connect"):
                    await Bus.connect(f"{dead},nats:1//127.0.0.1:1", name="x", tries=1)

        asyncio.run(both_orders())
        # and through the command line: the JetStream log reached through a dead URL too
        done = _baton(
            tmp_path, "audit", "--store", "jetstream", "--nats", f"{dead},{url}", timeout=60
        )
        assert done.returncode == 0, done.stderr


def test_replicas_a_single_server_cannot_hold_are_refused_at_once(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats") as url:
        (tmp_path / "baton.toml").write_text(f'nats = "{url}"\nreplicas = 2\n')
        began = time.monotonic()
        inbox = _baton(tmp_path, "run", str(EXAMPLE), "--timeout", "60", timeout=60)
        assert inbox.returncode == 2, inbox.stdout + inbox.stderr
        assert (
            f"cannot create stream {INBOX_STREAM} with 2 replicas: the NATS server is not a "
            "JetStream cluster" in inbox.stderr
        )
        log = _baton(tmp_path, "audit", "--store", "jetstream", timeout=60)
        assert log.returncode == 2
        assert "cannot create stream BATON_EVENTS with 2 replicas" in log.stderr
        assert "Traceback" not in inbox.stderr + log.stderr
        assert time.monotonic() - began < 30
        assert INBOX_STREAM not in _streams(url)


def test_a_cluster_without_quorum_is_waited_for_within_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clustered server whose two peers never come: no JetStream meta leader, so
    creating a stream times out; it is retried, said once, and given up on in time."""
    routes = ", ".join(f"nats://127.0.0.1:{free_port()}" for _ in range(2))
    listen = f"127.0.0.1:{free_port()}"
    cluster = f"cluster {{\n  name: c\n  listen: {listen}\n  routes: [{routes}]\n}}\n"
    with nats_server(tmp_path / "n1", cluster) as url:

        async def create() -> None:
            bus = await Bus.connect(url, name="no-quorum", tries=1)
            try:
                await bus.ensure_inbox(3, wait_s=6.0)
            finally:
                await bus.close()

        began = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, logger="baton.bus"),
            pytest.raises(BusError, match="no JetStream quorum within 6s"),
        ):
            asyncio.run(create())
        took = time.monotonic() - began
        assert 5.5 < took < 6 + 5 + 4  # the bound, one request's own timeout, slack
        waits = [r for r in caplog.records if "waiting up to 6s" in r.getMessage()]
        assert len(waits) == 1

        async def open_log() -> None:
            await JetStreamEventStore.open(url, replicas=3, wait_s=3.0, timeout=1.0)

        with pytest.raises(StorageError, match="no JetStream quorum within 3s"):
            asyncio.run(open_log())

        async def open_leases() -> None:
            bus = await Bus.connect(url, name="no-quorum", tries=1)
            try:
                await bus.lease_bucket(3, wait_s=3.0)
            finally:
                await bus.close()

        with (
            caplog.at_level(logging.WARNING, logger="baton.bus"),
            pytest.raises(BusError, match=r"BATON_LEASES: .*no JetStream quorum within 3s"),
        ):
            asyncio.run(open_leases())
        assert any("to open the lease bucket" in r.getMessage() for r in caplog.records)


def test_on_a_three_node_cluster_every_stream_gets_three_replicas(tmp_path: Path) -> None:
    with nats_cluster(tmp_path / "nats") as servers:
        urls = servers.urls
        (tmp_path / "baton.toml").write_text(servers.baton_toml())  # docs/deploy.md's
        done = _baton(tmp_path, "run", str(EXAMPLE), "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        streams = _streams(urls[1], **servers.options)
        assert streams["BATON_EVENTS"] == 3
        assert streams[INBOX_STREAM] == 3
        assert all(replicas == 3 for replicas in streams.values()), streams


def test_serve_agent_and_submit_all_take_the_cluster_from_baton_toml(tmp_path: Path) -> None:
    """`baton serve`, `baton agent` and `baton submit` started with no NATS flag in a
    directory whose baton.toml lists a dead server before the live one: all three reach
    the live one, and the run's log is on JetStream."""
    dead = f"nats://127.0.0.1:{free_port()}"
    with nats_server(tmp_path / "nats") as url:
        work = tmp_path / "work"
        work.mkdir()
        (work / "baton.toml").write_text(f'store = "jetstream"\nnats = ["{dead}", "{url}"]\n')
        (work / "wf.toml").write_text(
            'name = "one"\n[[agents]]\nrole = "worker"\nhandler = "agents.builtin:echo"\n'
            '[[steps]]\nid = "s"\nrole = "worker"\nparams = { n = 1 }\n'
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        logs = [(work / "serve.log").open("wb"), (work / "agent.log").open("wb")]
        started = [
            subprocess.Popen(argv, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=clean)
            for argv, log in zip(
                (
                    baton("serve"),
                    baton("agent", "--role", "worker", "--handler", "agents.builtin:echo"),
                ),
                logs,
                strict=True,
            )
        ]
        try:
            deadline = time.monotonic() + 60
            while "serving on NATS" not in (work / "serve.log").read_text():
                assert started[0].poll() is None, (work / "serve.log").read_text()
                assert time.monotonic() < deadline, "baton serve did not serve"
                time.sleep(0.1)
            assert "event store JetStream stream BATON_EVENTS" in (work / "serve.log").read_text()
            submitted = _baton(work, "submit", "wf.toml", timeout=60)
            assert submitted.returncode == 0, submitted.stderr
            run_id = submitted.stdout.strip().splitlines()[-1]
            while True:
                audit = _baton(work, "audit", "--run", run_id, timeout=60)
                assert audit.returncode == 0, audit.stderr
                if "run.completed" in audit.stdout:
                    break
                assert started[1].poll() is None, (work / "agent.log").read_text()
                assert time.monotonic() < deadline + 60, audit.stdout
                time.sleep(0.3)
        finally:
            for process in started:
                process.terminate()
                process.wait(15)
            for log in logs:
                log.close()
        assert not (work / ".baton" / "events.db").exists()


def test_tls_files_from_baton_toml_reach_a_server_that_wants_a_client_certificate(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    certificates(pki)
    tls = (
        f"tls {{\n  cert_file: {json.dumps(str(pki / 'server.pem'))}\n"
        f"  key_file: {json.dumps(str(pki / 'server.key'))}\n"
        f"  ca_file: {json.dumps(str(pki / 'ca.pem'))}\n  verify: true\n}}\n"
    )
    with nats_server(tmp_path / "nats", tls) as url:
        tls_url = url.replace("nats://", "tls://")
        work = tmp_path / "work"
        work.mkdir()
        settings = f'store = "jetstream"\nnats = ["{tls_url}"]\ntls_ca = "{pki / "ca.pem"}"\n'
        (work / "baton.toml").write_text(settings)
        without = _baton(work, "audit", timeout=60)  # the server wants a client certificate
        assert without.returncode == 2, without.stdout + without.stderr
        assert "error: connecting to tls://" in without.stderr
        assert "Traceback" not in without.stderr
        (work / "baton.toml").write_text(
            settings + f'tls_cert = "{pki / "client.pem"}"\ntls_key = "{pki / "client.key"}"\n'
        )
        audit = _baton(work, "audit", timeout=60)
        assert audit.returncode == 0, audit.stderr
        verify = _baton(work, "audit", "verify", timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        served = _baton(work, "status", timeout=60)  # the bus too: no orchestrator answers
        assert served.returncode == 2
        assert "no orchestrator answered" in served.stderr, served.stderr  # not a TLS error


def test_a_server_that_cannot_be_reached_is_named_without_its_password(tmp_path: Path) -> None:
    closed = free_port()
    (tmp_path / "baton.toml").write_text(
        f'store = "jetstream"\nnats = ["nats://alice:s3cret@127.0.0.1:{closed}"]\n'
    )
    for command in (("audit", "verify"), ("audit",)):
        refused = _baton(tmp_path, *command, timeout=60)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"connecting to nats://127.0.0.1:{closed} failed" in refused.stderr
        assert "s3cret" not in refused.stdout + refused.stderr


async def _bus(url: str) -> object:
    return await Bus.connect(url, name="refused", tries=1)


async def _store(url: str) -> object:
    return await JetStreamEventStore.open(url)


@pytest.mark.parametrize("connect", [_bus, _store], ids=["bus", "event store"])
def test_a_refused_login_leaves_no_socket_open(connect: Any) -> None:
    """A server that answers the login with -ERR and keeps its end open: the client
    closes its own at once. Left open, the server's later reset of it lands in a future
    nobody awaits, which asyncio may print to stderr as the process exits (a CLI's one
    line of error became four that way)."""

    async def scenario() -> tuple[str, bytes]:
        hung_up = asyncio.get_running_loop().create_future()

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b'INFO {"server_id":"fake","version":"2.10.0","max_payload":1048576}\r\n')
            await writer.drain()
            await reader.readline()  # CONNECT
            writer.write(b"-ERR 'Authorization Violation'\r\n")
            await writer.drain()
            rest = await reader.read()  # until the client closes its end
            if not hung_up.done():
                hung_up.set_result(rest)
            writer.close()

        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises((BusError, StorageError)) as refused:
                await connect(f"nats://127.0.0.1:{port}")
            async with asyncio.timeout(2):
                rest = await hung_up
        return str(refused.value), rest

    said, rest = asyncio.run(scenario())
    assert "Authorization Violation" in said
    assert rest.startswith(b"PING")  # what the client sent after CONNECT, then its close
