"""Every connection to the embedded server logs in, in every mode (issue 12, finding 2).

On today's open mode (no contracts) anyone who could reach the port could read lease
tokens on `baton.agent.*.assign`, forge results and heartbeats as another agent, and
decide runs under any person's name. These tests drive the real composition
(`bootstrap`) and a real nats-server: no anonymous login in either mode; an agent `baton
run` starts (or a person admits) acts only as itself; the person decides only as
themselves; admitted agents keep their login across a restart of the orchestrator.
Refusals are proven next to a positive control on the same connection (NATS keeps one
connection's messages in order; see tests/test_permissions.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.contracts import Contracts, RoleContract
from bus.errors import BusError
from bus.logins import load_logins, logins_path
from bus.permissions import User, inbox_prefix, url_for
from bus.protocol import ErrorReply, Heartbeat
from bus.server import person_credentials
from orchestrator.service.api import AdmitRequest, Admitted
from orchestrator.service.bootstrap import Stack, bootstrap
from orchestrator.service.logins import AdmissionRefused
from tests.cluster import REPO, baton
from tests.test_permissions import Taps

_admitted: Decoder[Admitted | ErrorReply] = Decoder(Admitted | ErrorReply)
MODES = {"open": None, "governed": Contracts([RoleContract(name="worker")])}


@asynccontextmanager
async def stack_in(directory: Path, mode: str) -> AsyncIterator[Stack]:
    stack = await bootstrap(directory, contracts=MODES[mode])
    try:
        yield stack
    finally:
        await stack.close()


async def as_agent(stack: Stack, agent_id: str) -> Bus:
    url = stack.agent_url(agent_id, "worker")
    return await Bus.connect(url, name=agent_id, inbox_prefix=inbox_prefix(agent_id))


async def as_person(directory: Path) -> tuple[str, Bus]:
    credentials = person_credentials(directory)
    assert credentials is not None, "the person's login is saved beside every embedded server"
    bus = await Bus.connect(
        credentials.url, name="person", inbox_prefix=inbox_prefix(credentials.identity)
    )
    return credentials.identity, bus


@pytest.mark.parametrize("mode", MODES)
def test_no_one_gets_in_without_a_login(tmp_path: Path, mode: str) -> None:
    async def scenario() -> None:
        async with stack_in(tmp_path, mode) as stack:
            assert stack.server is not None
            with pytest.raises(BusError, match=r"(?i)authorization"):
                await Bus.connect(stack.server.url, name="anonymous", tries=1)
            wrong = url_for(stack.server.url, User("orchestrator", "guessed", None))
            with pytest.raises(BusError, match=r"(?i)authorization"):
                await Bus.connect(wrong, name="orchestrator", tries=1)

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", MODES)
def test_an_agent_reads_only_its_own_assignments_and_speaks_only_as_itself(
    tmp_path: Path, mode: str
) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        async with stack_in(tmp_path, mode) as stack:
            alice, bob = await as_agent(stack, "alice"), await as_agent(stack, "bob")
            watched, got = Taps(), Taps()
            await stack.bus.subscribe("baton.registry.heartbeat.*", watched.on)
            await stack.bus.subscribe("baton.bids.>", watched.on)
            await stack.bus.flush()
            for subject in (subjects.assign("bob"), subjects.assign("alice")):
                await alice.subscribe(subject, got.on)
            await alice.flush()
            # the lease tokens of bob's assignments, then alice's own (the control)
            await stack.bus.publish(subjects.assign("bob"), b"bob's lease token")
            await stack.bus.publish(subjects.assign("alice"), b"alice's")
            await got.until(subjects.assign("alice"))
            # a heartbeat and a bid as bob, then as herself (the controls)
            beat = encode(Heartbeat("bob", "worker", ["worker"], 1, 0))
            await alice.publish(subjects.heartbeat("bob"), beat)
            await alice.publish(subjects.bids("run1", "bob"), b"forged bid")
            await alice.publish(subjects.bids("run1", "alice"), b"own bid")
            await watched.until(subjects.bids("run1", "alice"))
            for bus in (alice, bob):
                await bus.close()
            return got.seen, watched.seen

    got, watched = asyncio.run(scenario())
    assert got == [subjects.assign("alice")], "bob's assignment never reached alice"
    assert subjects.heartbeat("bob") not in watched
    assert subjects.bids("run1", "bob") not in watched


@pytest.mark.parametrize("mode", MODES)
def test_the_person_decides_only_as_themselves(tmp_path: Path, mode: str) -> None:
    async def scenario() -> tuple[str, list[str]]:
        async with stack_in(tmp_path, mode) as stack:
            me, person = await as_person(tmp_path)
            agent = await as_agent(stack, "alice")
            taps = Taps()
            await stack.bus.subscribe("baton.api.run.control.*", taps.on)
            await stack.bus.flush()
            await person.publish(subjects.run_control("human:someone_else"), b"as another")
            await agent.publish(subjects.run_control(me), b"an agent as the person")
            await person.publish(subjects.run_control(me), b"as themselves")
            await taps.until(subjects.run_control(me))
            for bus in (person, agent):
                await bus.close()
            return me, taps.seen

    me, seen = asyncio.run(scenario())
    assert seen == [subjects.run_control(me)]


def test_an_admitted_agent_keeps_its_login_across_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stack_in(tmp_path, "governed"):
            _, person = await as_person(tmp_path)

            async def ask(request: AdmitRequest) -> Admitted | ErrorReply:
                return _admitted.decode(
                    await person.request(subjects.API_ADMIT, encode(request), 5)
                )

            reply = await ask(AdmitRequest("w1", "worker"))
            assert isinstance(reply, Admitted)
            assert reply.agent_id == "w1"
            again = await ask(AdmitRequest("w1", "worker"))
            assert isinstance(again, ErrorReply)
            assert "already has credentials" in again.detail
            other = await ask(AdmitRequest("w2", "no-such-role"))
            assert isinstance(other, ErrorReply)
            assert "no role contract" in other.detail
            bad = await ask(AdmitRequest("w.3", "worker"))
            assert isinstance(bad, ErrorReply)
            assert bad.error == AdmissionRefused.__name__
            agent = await Bus.connect(reply.url, name="w1", inbox_prefix=inbox_prefix("w1"))
            await agent.close()
            await person.close()
            login = reply.url.partition("://")[2].rpartition("@")[0]
        mode = stat.S_IMODE(os.stat(logins_path(tmp_path)).st_mode)
        assert mode == 0o600
        assert "w1" in {u.name for u in load_logins(tmp_path)}
        async with stack_in(tmp_path, "governed") as restarted:
            assert restarted.server is not None
            name, _, password = login.partition(":")
            url = url_for(restarted.server.url, User(name, password, None))
            agent = await Bus.connect(url, name="w1", inbox_prefix=inbox_prefix("w1"))
            await agent.close()

    asyncio.run(scenario())


def test_an_agent_cannot_admit_anyone(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stack_in(tmp_path, "open") as stack:
            agent = await as_agent(stack, "alice")
            with pytest.raises(BusError):
                await agent.request(subjects.API_ADMIT, encode(AdmitRequest("w9", "worker")), 2)
            await agent.close()

    asyncio.run(scenario())


def test_baton_admit_writes_a_private_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """The CLI end to end: `baton serve` (embedded, open mode), `baton admit`, and the
    admitted agent serving a submitted run as its own login."""
    state = tmp_path / "state"
    workflow = tmp_path / "one.toml"
    workflow.write_text('name = "one"\n[[steps]]\nid = "only"\nrole = "noop"\n')
    serving = subprocess.Popen(
        baton("serve", "--state-dir", str(state)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert serving.stdout is not None
        line = serving.stdout.readline()
        assert "serving on NATS nats://127.0.0.1:" in line, line
        assert "@" not in line, "never the orchestrator's password"
        out = tmp_path / "w1.url"
        admit = baton("admit", "w1", "--role", "noop", "-o", str(out), "--state-dir", str(state))
        done = subprocess.run(admit, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert out.read_text().startswith("nats://w1:")
        again = subprocess.run(admit, capture_output=True, text=True, timeout=60)
        assert again.returncode == 2, again.stderr
        assert "exists" in again.stderr
        agent = subprocess.Popen(
            baton("agent", "--id", "w1", "--role", "noop", "--nats-file", str(out),
                  "--handler", "agents.builtin:noop"),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        submitted = subprocess.run(
            baton("submit", str(workflow), "--state-dir", str(state)),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip()
        for _ in range(300):
            status = subprocess.run(
                baton("status", "--all", "--json", "--state-dir", str(state)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            runs = {
                r["run_id"]: r["status"] for r in json.loads(status.stdout or "{}").get("runs", [])
            }
            if runs.get(run_id) == "completed":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(status.stdout + status.stderr)
    finally:
        for process in (agent, serving):
            if process is not None:
                process.terminate()
                process.wait(30)


PERSON = "human:PERSON"
"""Stands for the person's identity in the tables below (known once the stack runs)."""

PUBLISH = [  # subject, (agent alice may, the person may), the same in both modes
    (subjects.inbox("run1", "alice"), (True, False)),
    (subjects.inbox("run1", "bob"), (False, False)),
    (subjects.report("run1", "alice"), (True, False)),
    (subjects.report("run1", "bob"), (False, False)),
    (subjects.bids("run1", "alice"), (True, False)),
    (subjects.bids("run1", "bob"), (False, False)),
    (subjects.heartbeat("bob"), (False, False)),
    (subjects.memory_search("alice"), (True, False)),
    (subjects.memory_search("bob"), (False, False)),
    (subjects.tool_approval("run1", "alice"), (True, False)),
    (subjects.tool_approval("run1", "bob"), (False, False)),
    (subjects.tool_decision("bob", "c1"), (False, True)),
    (subjects.assign("bob"), (False, False)),
    (subjects.progress("run1"), (False, False)),
    (subjects.run_control(PERSON), (False, True)),
    (subjects.run_control("human:someone_else"), (False, False)),
    (subjects.run_start(PERSON), (False, True)),
    (subjects.run_start("human:someone_else"), (False, False)),
    (subjects.API_ADMIT, (False, True)),
    (subjects.creds(PERSON), (False, True)),
    (subjects.creds("human:someone_else"), (False, False)),
    (subjects.API_AGENTS, (False, True)),
    # discovery (NATS micro): the person asks, as `nats micro ls` does; agents only answer
    (subjects.discovery("PING"), (False, True)),
    (subjects.discovery("INFO", subjects.AGENT_SERVICE), (False, True)),
    (subjects.discovery("STATS", subjects.AGENT_SERVICE, "bob"), (False, True)),
    (subjects.discovery("PING", subjects.ORCHESTRATOR_SERVICE, "o1"), (False, True)),
    (subjects.discovery("INFO", "someone-elses-service"), (False, False)),
    (subjects.discovery("STATS", subjects.AGENT_SERVICE, "bob") + ".deeper", (False, False)),
]
SUBSCRIBE = [  # subject, (agent alice may read it, the person may)
    (subjects.assign("bob"), (False, False)),
    (subjects.control("bob"), (False, False)),
    (subjects.inbox("run1", "bob"), (False, False)),
    (subjects.report("run1", "bob"), (False, False)),
    (subjects.heartbeat("bob"), (False, False)),
    (subjects.tool_decision("bob", "c1"), (False, False)),
    (subjects.tool_decision("alice", "c1"), (True, False)),
    (subjects.tool_approval("run1", "bob"), (False, False)),
    (subjects.tool_prompt("run1"), (False, True)),
    (subjects.progress("run1"), (False, True)),
    (subjects.run_control(PERSON), (False, False)),
    (subjects.API_ADMIT, (False, False)),
    (subjects.creds(PERSON), (False, False)),
    # discovery requests: an agent hears those for all, for agents, and for itself
    (subjects.discovery("PING"), (True, False)),
    (subjects.discovery("INFO", subjects.AGENT_SERVICE), (True, False)),
    (subjects.discovery("STATS", subjects.AGENT_SERVICE, "alice"), (True, False)),
    (subjects.discovery("STATS", subjects.AGENT_SERVICE, "bob"), (False, False)),
    (subjects.discovery("INFO", subjects.ORCHESTRATOR_SERVICE), (False, False)),
    (subjects.discovery("PING", "someone-elses-service"), (False, False)),
]


def mine(subject: str, me: str) -> str:
    return subject.replace(PERSON, me)


@pytest.mark.parametrize("mode", MODES)
def test_every_identity_and_subject_in_every_mode(tmp_path: Path, mode: str) -> None:
    """The whole table: what an agent and the person may publish and read, on the
    embedded server with contracts and without (the governed worker's contract lists no
    tools, so the only difference between the modes is the tool calls, checked apart)."""

    async def scenario() -> tuple[str, dict[str, tuple[list[str], list[str]]]]:
        async with stack_in(tmp_path, mode) as stack:
            me, person = await as_person(tmp_path)
            clients = {"alice": await as_agent(stack, "alice"), "person": person}
            controls = {"alice": subjects.heartbeat("alice"), "person": subjects.API_STATUS}
            seen: dict[str, tuple[list[str], list[str]]] = {}
            for who, bus in clients.items():
                published, got = Taps(), Taps()
                for subject, _ in SUBSCRIBE:
                    await bus.subscribe(mine(subject, me), got.on)
                readable = subjects.assign("alice") if who == "alice" else subjects.progress("r2")
                await bus.subscribe(readable, got.on)
                for subject, _ in SUBSCRIBE:
                    await stack.bus.publish(mine(subject, me), b"x")
                await stack.bus.publish(readable, b"control")
                await got.until(readable)
                await stack.bus.subscribe("baton.>", published.on)  # from here on: theirs
                await stack.bus.subscribe("$SRV.>", published.on)
                for subject, _ in PUBLISH:
                    await bus.publish(mine(subject, me), b"x")
                await bus.publish(controls[who], b"control")
                await published.until(controls[who])
                seen[who] = (list(published.seen), list(got.seen))  # taps go on listening
            for bus in clients.values():
                await bus.close()
            return me, seen

    me, seen = asyncio.run(scenario())
    for column, who in enumerate(("alice", "person")):
        published, got = seen[who]
        allowed = {mine(subject, me) for subject, may in PUBLISH if may[column]}
        assert {s for s in published if s in {mine(m, me) for m, _ in PUBLISH}} == allowed, who
        readable = {mine(subject, me) for subject, may in SUBSCRIBE if may[column]}
        assert {s for s in got if s in {mine(m, me) for m, _ in SUBSCRIBE}} == readable, who


@pytest.mark.parametrize(("mode", "may"), [("open", True), ("governed", False)])
def test_tool_calls_are_any_tool_without_contracts_and_the_contracts_with(
    tmp_path: Path, mode: str, may: bool
) -> None:
    async def scenario() -> list[str]:
        async with stack_in(tmp_path, mode) as stack:
            alice = await as_agent(stack, "alice")
            taps = Taps()
            await stack.bus.subscribe("baton.>", taps.on)
            await alice.publish(subjects.tool_call("shell"), b"{}")
            await alice.publish(subjects.heartbeat("alice"), b"control")
            await taps.until(subjects.heartbeat("alice"))
            await alice.close()
            return taps.seen

    assert (subjects.tool_call("shell") in asyncio.run(scenario())) is may
