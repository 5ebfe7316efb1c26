"""NATS-native discovery (issue 17): every agent and the orchestrator answer NATS micro's
`$SRV.PING|INFO|STATS` (ADR-32), so `nats micro ls` lists them; the person's login may
ask, an agent's login hears only what is for it; the statistics are real counts; a bad
discovery request never hurts an agent, and an agent that exits stops answering.

The integration tests run a real stack (the embedded nats-server `baton run` starts,
with its logins) in open and governed mode, and ask as the person, with a plain nats-py
client, as the NATS CLI would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.micro.service as micro
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import discovery, protocol_doc, subjects
from bus.codec import encode
from bus.connection import Bus, Incoming
from bus.contract_files import load_contracts
from bus.errors import BusError
from bus.permissions import inbox_prefix, new_user, url_for
from bus.protocol import ErrorReply
from bus.server import EmbeddedNats, person_credentials
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service.api import StatusRequest
from tests.cluster import cluster
from tests.processes import admitted, serving_url, start_baton, submit_run, terminate

CONTRACTS = """
[[roles]]
name = "worker"
budget = { seconds = 20 }
concurrency = 2
"""
WORKERS = [AgentSpec(role="worker", handler="agents.builtin:noop", count=2, capacity=2)]
FAN_OUT = WorkflowSpec("fan", [StepSpec("s", "worker", fan_out=6)])


def _incoming(subject: str = "s") -> Incoming:
    return Incoming(Msg(_client=None, subject=subject, reply="", data=b""))  # type: ignore[arg-type]


# -- the service itself, without a server ------------------------------------------------


def test_an_endpoint_counts_requests_errors_and_time() -> None:
    service = discovery.Service("baton-agent", "a1", lambda: {"role": "worker", "load": "0"})

    async def fine(msg: Incoming) -> None:
        await asyncio.sleep(0.001)

    async def refusing(msg: Incoming) -> None:
        await msg.reply(encode(ErrorReply("MalformedMessage", "not msgpack")))

    async def failing(msg: Incoming) -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        counted_fine = service.endpoint("fine", "x.fine", fine)
        counted_refusing = service.endpoint("refusing", "x.refusing", refusing)
        counted_failing = service.endpoint("failing", "x.failing", failing)
        for _ in range(3):
            await counted_fine(_incoming())
        await counted_refusing(_incoming())
        with pytest.raises(RuntimeError):
            await counted_failing(_incoming())

    asyncio.run(scenario())
    stats = {e["name"]: e for e in service.stats()["endpoints"]}  # type: ignore[attr-defined]
    assert stats["fine"]["num_requests"] == 3
    assert stats["fine"]["num_errors"] == 0
    assert stats["fine"]["processing_time"] >= 3_000_000  # three sleeps of 1 ms, in ns
    assert stats["fine"]["average_processing_time"] == stats["fine"]["processing_time"] // 3
    assert (stats["refusing"]["num_requests"], stats["refusing"]["num_errors"]) == (1, 1)
    assert stats["refusing"]["last_error"] == "MalformedMessage: not msgpack"
    assert (stats["failing"]["num_errors"], stats["failing"]["last_error"]) == (
        1,
        "RuntimeError: boom",
    )


def test_the_answers_have_the_shape_adr_32_gives_them() -> None:
    service = discovery.Service("baton-agent", "a1", lambda: {"load": 2})  # type: ignore[dict-item]
    service.endpoint("assign", subjects.assign("a1"), _noop)
    ping, info, stats = service.ping(), service.info(), service.stats()
    assert ping == {
        "type": "io.nats.micro.v1.ping_response",
        "name": "baton-agent",
        "id": "a1",
        "version": discovery.baton_version(),
        "metadata": {"load": "2", "protocol": "1"},
    }
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["endpoints"] == [
        {"name": "assign", "subject": "baton.agent.a1.assign", "queue_group": "", "metadata": {}}
    ]
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert str(stats["started"]).endswith("Z")
    assert set(stats["endpoints"][0]) == {  # type: ignore[index]
        "name", "subject", "queue_group", "num_requests", "num_errors", "last_error",
        "processing_time", "average_processing_time", "data",
    }  # fmt: skip
    # another implementation's reading of them: nats-py's own micro client types
    wire = {
        k: json.loads(json.dumps(v)) for k, v in (("ping", ping), ("info", info), ("stats", stats))
    }
    assert micro.ServicePing.from_dict(wire["ping"]).metadata["load"] == "2"
    assert micro.ServiceInfo.from_dict(wire["info"]).endpoints[0].subject == "baton.agent.a1.assign"
    read = micro.ServiceStats.from_dict(wire["stats"])
    assert (read.id, read.endpoints[0].num_requests) == ("a1", 0)
    assert discovery.baton_version().count(".") >= 2, "a semantic version"
    with pytest.raises(ValueError, match="not a micro service name"):
        discovery.Service("baton agent", "a1", dict)


async def _noop(msg: Incoming) -> None:
    return None


def test_discovery_subjects() -> None:
    assert subjects.discovery("PING") == "$SRV.PING"
    assert subjects.discovery("INFO", "baton-agent") == "$SRV.INFO.baton-agent"
    assert subjects.discovery("STATS", "baton-agent", "w-1") == "$SRV.STATS.baton-agent.w-1"
    assert len(subjects.discovery_all("baton-agent", "w-1")) == 9
    for bad in (("HELLO",), ("PING", "a.b"), ("PING", "a", "*")):
        with pytest.raises(BusError):
            subjects.discovery(*bad)


# -- on a real server ---------------------------------------------------------------------


async def collect(
    nc: Client, subject: str, until: int, timeout: float = 10
) -> list[dict[str, Any]]:
    """Every reply to one request on `subject`, until `until` of them came (as `nats micro`
    gathers them: one request, a reply from each service)."""
    replies: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def on(msg: Msg) -> None:
        replies.append(json.loads(msg.data))
        arrived.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on)
    await nc.publish(subject, b"", reply=inbox)
    try:
        async with asyncio.timeout(timeout):
            while len(replies) < until:
                arrived.clear()
                await arrived.wait()
    finally:
        await sub.unsubscribe()
    return replies


@asynccontextmanager
async def as_person(directory: Path) -> AsyncIterator[Client]:
    credentials = person_credentials(directory)
    assert credentials is not None
    nc = await nats.connect(credentials.url, inbox_prefix=inbox_prefix(credentials.identity))
    try:
        yield nc
    finally:
        await nc.close()


def _by_agent(replies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["agent_id"]: r for r in replies if r["name"] == "baton-agent"}


def _endpoint(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in stats["endpoints"] if e["name"] == name)


@pytest.mark.parametrize("mode", ["open", "governed"])
def test_the_orchestrator_and_every_agent_answer_discovery(tmp_path: Path, mode: str) -> None:
    contracts = ""
    if mode == "governed":
        (tmp_path / "contracts.toml").write_text(CONTRACTS)
        contracts = str(tmp_path / "contracts.toml")
    state = tmp_path / "state"

    async def scenario() -> None:
        async with cluster(state, contracts=contracts) as c, as_person(state) as person:
            agent_ids = await c.add_agents(WORKERS)
            orchestrator_id = c.orchestrator.discovery.id
            pings = await collect(person, "$SRV.PING", until=3)
            assert sorted((p["name"], p["id"]) for p in pings) == sorted(
                [("baton-orchestrator", orchestrator_id)] + [("baton-agent", a) for a in agent_ids]
            )
            assert all(p["type"] == "io.nats.micro.v1.ping_response" for p in pings)

            infos = _by_agent(await collect(person, "$SRV.INFO.baton-agent", until=2))
            digest = load_contracts(contracts).get("worker").digest if contracts else ""
            for agent_id in agent_ids:
                meta = infos[agent_id]["metadata"]
                assert meta["role"] == "worker"
                assert meta["contract_digest"] == digest
                assert (meta["capacity"], meta["load"], meta["protocol"]) == ("2", "0", "1")
                assert meta["state"] == "serving"
                served = {e["name"]: e["subject"] for e in infos[agent_id]["endpoints"]}
                assert served == {
                    "assign": subjects.assign(agent_id),
                    "control": subjects.control(agent_id),
                    "cfp": subjects.cfp("worker"),
                }

            [before] = await collect(person, "$SRV.STATS.baton-orchestrator", until=1)
            before_agents = _by_agent(await collect(person, "$SRV.STATS.baton-agent", until=2))
            assert (
                sum(_endpoint(s, "assign")["num_requests"] for s in before_agents.values()) == 0
            ), "no assignment yet"
            run_id = await c.orchestrator.start_run(FAN_OUT)
            assert (await c.orchestrator.wait(run_id, timeout=60)).status == "completed"
            # three status requests, one of them malformed, as the person
            for payload in (encode(StatusRequest()), encode(StatusRequest()), b"\xc1"):
                await person.request(subjects.API_STATUS, payload, timeout=5)
            # a malformed assignment, from the orchestrator's own login
            refused = await c.stack.bus.request(subjects.assign(agent_ids[0]), b"\xc1", 5)
            assert b"MalformedMessage" in refused

            after_agents = _by_agent(await collect(person, "$SRV.STATS.baton-agent", until=2))
            assigned = [_endpoint(after_agents[a], "assign") for a in agent_ids]
            assert 2 <= sum(e["num_requests"] for e in assigned) <= 6 + 1, assigned
            assert [e["num_errors"] for e in assigned] == [1, 0]
            assert "MalformedMessage" in assigned[0]["last_error"]
            assert all(e["processing_time"] > 0 for e in assigned)
            [after] = await collect(person, "$SRV.STATS.baton-orchestrator", until=1)
            status, status_before = _endpoint(after, "status"), _endpoint(before, "status")
            assert status["num_requests"] - status_before["num_requests"] == 3
            assert status["num_errors"] - status_before["num_errors"] == 1
            assert "MalformedMessage" in status["last_error"]
            reports = _endpoint(after, "report")["num_requests"]
            assert reports > _endpoint(before, "report")["num_requests"]
            assert after["metadata"]["agents"] == "2"
            assert after["metadata"]["runs"] == "0"
            # docs/protocol.md names every endpoint and metadata key the processes use
            for service in [after, *after_agents.values()]:
                for key in [*service["metadata"], *(e["name"] for e in service["endpoints"])]:
                    assert f"`{key}`" in protocol_doc.DISCOVERY, key

    asyncio.run(scenario())


def test_an_agent_that_exits_stops_answering(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c, as_person(tmp_path) as person:
            gone, stays = await c.add_agents(WORKERS)
            one = subjects.discovery("PING", "baton-agent", gone)
            assert json.loads((await person.request(one, b"", timeout=5)).data)["id"] == gone
            process = c.agents.processes[gone]
            process.terminate()  # SIGTERM: drains, then exits
            await asyncio.to_thread(process.wait, 30)
            with pytest.raises(nats.errors.NoRespondersError):
                await person.request(one, b"", timeout=5)
            assert [p["id"] for p in await collect(person, "$SRV.PING.baton-agent", until=1)] == [
                stays
            ]

    asyncio.run(scenario())


def test_bad_discovery_requests_never_hurt_an_agent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c, as_person(tmp_path) as person:
            [agent_id, _] = await c.add_agents(WORKERS)
            nasty = [b"\xc1" * 1000, b'{"kind": "task.assign"}', b"{" * 10_000]
            for verb in subjects.DISCOVERY_VERBS:
                for payload in nasty:
                    subject = subjects.discovery(verb, "baton-agent", agent_id)
                    reply = await person.request(subject, payload, timeout=5)
                    assert json.loads(reply.data)["id"] == agent_id  # the payload is ignored
                    await c.stack.bus.publish(subject, payload)  # no reply subject at all
            run_id = await c.orchestrator.start_run(FAN_OUT)
            assert (await c.orchestrator.wait(run_id, timeout=60)).status == "completed"
            assert c.agents.processes[agent_id].poll() is None, "still running"

    asyncio.run(scenario())


def test_a_failing_answer_is_logged_and_the_next_one_served(tmp_path: Path) -> None:
    """The discovery handlers run under the subscription's guard: a metadata source that
    fails once costs that one answer, not the service."""
    calls = 0

    def flaky() -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("metadata failed")
        return {"role": "worker"}

    async def scenario() -> None:
        admin = new_user("orchestrator", None)
        server = EmbeddedNats(tmp_path, users=[admin])
        base = await server.start()
        bus = await Bus.connect(url_for(base, admin), name="svc")
        asker = await Bus.connect(url_for(base, admin), name="asker")
        try:
            service = discovery.Service("baton-agent", "a1", flaky)
            await service.start(bus)
            with pytest.raises(BusError):
                await asker.request("$SRV.PING.baton-agent.a1", b"", timeout=1)
            answer = json.loads(await asker.request("$SRV.PING.baton-agent.a1", b"", timeout=5))
            assert answer["metadata"] == {"role": "worker", "protocol": "1"}
            await service.stop()
            with pytest.raises(BusError):
                await asker.request("$SRV.PING.baton-agent.a1", b"", timeout=2)
        finally:
            await asker.close()
            await bus.close()
            server.stop()

    asyncio.run(scenario())


def test_baton_serve_and_baton_agent_answer_as_the_cli_starts_them(tmp_path: Path) -> None:
    """The processes as a person starts them: `baton serve` (its embedded server, open
    mode) and `baton agent` with the login `baton admit` gave it; a submitted run shows
    in both processes' STATS."""
    state = tmp_path / "state"
    workflow = tmp_path / "one.toml"
    workflow.write_text('name = "one"\n[[steps]]\nid = "only"\nrole = "noop"\n')
    serving = start_baton(tmp_path / "serve.log", "serve", "--state-dir", str(state))
    agent: subprocess.Popen[bytes] | None = None
    try:
        serving_url(tmp_path / "serve.log", serving)
        url_file = tmp_path / "w1.url"
        url_file.write_text(admitted(state, "w1", "noop"))
        agent = start_baton(
            tmp_path / "agent.log", "agent", "--id", "w1", "--role", "noop",
            "--nats-file", str(url_file), "--handler", "agents.builtin:noop",
        )  # fmt: skip

        async def ask() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
            async with as_person(state) as person:
                async with asyncio.timeout(60):  # until the agent process is up
                    while True:
                        try:
                            await person.request("$SRV.PING.baton-agent.w1", b"", timeout=5)
                            break
                        except nats.errors.NoRespondersError:
                            await asyncio.sleep(0.1)
                pings = await collect(person, "$SRV.PING", until=2)
                run_id = await asyncio.to_thread(submit_run, workflow, state)
                assert run_id
                one = subjects.discovery("STATS", "baton-agent", "w1")
                async with asyncio.timeout(60):
                    while True:  # the agent's report is counted once the orchestrator took it
                        [orchestrator] = await collect(person, "$SRV.STATS.baton-orchestrator", 1)
                        if _endpoint(orchestrator, "report")["num_requests"] >= 1:
                            break
                        await asyncio.sleep(0.1)
                stats = json.loads((await person.request(one, b"", timeout=5)).data)
                return pings, stats, orchestrator

        pings, stats, orchestrator = asyncio.run(ask())
    finally:
        for process in (agent, serving):
            if process is not None:
                terminate(process)
    assert sorted(p["name"] for p in pings) == ["baton-agent", "baton-orchestrator"]
    assert _endpoint(stats, "assign")["num_requests"] == 1
    assert _endpoint(stats, "assign")["num_errors"] == 0
    assert stats["metadata"]["role"] == "noop"
    assert _endpoint(orchestrator, "run-start")["num_requests"] == 1
