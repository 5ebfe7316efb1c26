"""The conformance kit (`baton conformance`) against real agents on a real nats-server:
Baton's own Python agent and the Node.js example pass every case; deliberately broken
agents fail, and the kit names the case. The Node agent also does real `baton run`s, in
open mode and under role contracts, with the login `baton admit` gives it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import msgspec
import nats
import nkeys
import pytest
from nats.aio.msg import Msg

from bus import blobs
from bus.contract_files import load_contracts
from bus.nats_options import NKEY_ENV
from bus.permissions import User, agent_permissions, new_user, url_for
from bus.protocol import Heartbeat, HeartbeatAck
from bus.server import EmbeddedNats
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service.bootstrap import bootstrap
from orchestrator.service.conformance import CASES
from tests.cluster import REPO, baton
from tests.processes import admitted, event_types, start_baton, terminate, until
from tests.programs import need

NODE_EXAMPLE = REPO / "examples" / "node-agent"


class _RoomyNats(EmbeddedNats):
    """A server that lets a 4 MB message through, so the kit (not the server) is the one
    to see an agent's oversized reply."""

    def _config_text(self) -> str:
        return super()._config_text().replace("max_payload: 1MB", "max_payload: 4MB")


@contextmanager
def nats_server(state: Path, users: list[User] | None = None) -> Iterator[str]:
    server = _RoomyNats(state, sync_always=False, users=users)
    url = asyncio.run(server.start())
    try:
        yield url
    finally:
        server.stop()


@contextmanager
def process(log: Path, args: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        yield
    finally:
        terminate(proc)


def conformance(url: str, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    """`baton conformance --json`: its exit code and its verdicts by case."""
    done = subprocess.run(
        baton("conformance", "--nats", url, "--json", *args),
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.stdout, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["passed"] == (done.returncode == 0), done.stdout
    return done.returncode, {c["case"]: c for c in report["cases"]}


def python_agent(agent_id: str, url: str) -> list[str]:
    return [*baton("agent"), "--role", "worker", "--id", agent_id,
            "--handler", "agents.builtin:sleep", "--nats", url]  # fmt: skip


@pytest.fixture(scope="module")
def node_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Node example, installed (`npm ci`, from its lock file) into a copy."""
    need("node", "the Node.js example agent cannot run here")
    npm = need("npm", "the Node.js example agent cannot be installed here")
    copy = tmp_path_factory.mktemp("node") / "node-agent"
    shutil.copytree(NODE_EXAMPLE, copy, ignore=shutil.ignore_patterns("node_modules"))
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=copy,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return copy


def node_command(folder: Path, agent_id: str, role: str = "worker") -> list[str]:
    node = need("node", "the Node.js example agent cannot run here")
    return [node, str(folder / "agent.js"), "--role", role, "--id", agent_id]


def test_baton_python_agent_passes_every_case(tmp_path: Path) -> None:
    with (
        nats_server(tmp_path / "nats") as url,
        process(tmp_path / "agent.log", python_agent("py-1", url)),
    ):
        code, cases = conformance(url, "--role", "worker")
    assert code == 0, cases
    assert {c: v["status"] for c, v in cases.items()} == {
        c: "skip" if c == "credentials" else "pass" for c in CASES
    }
    assert "not sent again" in cases["refused-report"]["reason"]


def test_the_node_example_passes_every_case(tmp_path: Path, node_agent: Path) -> None:
    """Speaking JSON itself (its heartbeats, acks and reports), msgpack where asked."""
    env = {"BATON_NATS_URL": "", "BATON_ENCODING": "json"}
    with (
        nats_server(tmp_path / "nats") as url,
        process(tmp_path / "agent.log", [*node_command(node_agent, "node-1"), "--nats", url], env),
    ):
        code, cases = conformance(url, "--role", "worker")
    log = (tmp_path / "agent.log").read_text()
    assert code == 0, (cases, log)
    assert all(v["status"] == "pass" for c, v in cases.items() if c != "credentials"), cases


SCRIPTED_AGENT = r"""
import asyncio, sys, msgspec, nats

mode, url, agent, role = sys.argv[1:5]
encode, decode = msgspec.msgpack.encode, msgspec.msgpack.decode

async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    previous = ["a-lease-of-long-ago"]
    taken = set()

    async def on_assign(msg):
        message = decode(msg.data)
        batch = message["kind"] == "task.assign.batch"
        items = message["assignments"] if batch else [message]
        reason = "x" * 1_500_000 if mode == "oversized" else ""
        acks = [{"kind": "task.assign.ack", "accepted": True, "reason": reason} for _ in items]
        await msg.respond(encode({"kind": "task.assign.acks", "acks": acks} if batch else acks[0]))
        for a in items:
            if (a["run_id"], a["task_id"], a["attempt"]) in taken:
                continue  # a re-sent assignment: taken already
            taken.add((a["run_id"], a["task_id"], a["attempt"]))
            lease = a["lease_token"]
            if mode == "stale-lease":  # echoes the lease of the assignment before
                lease, previous[0] = previous[0], lease
            result = {"kind": "task.result", "run_id": a["run_id"], "task_id": a["task_id"],
                      "attempt": a["attempt"], "lease_token": lease, "agent_id": agent,
                      "output": {}, "elapsed_s": 0.0}
            if mode == "inbox":  # durably only, as the protocol allows
                msg_id = f"{a['run_id']}:{a['task_id']}:{a['attempt']}:result:{agent}:{lease}"
                subject = f"baton.inbox.{a['run_id']}.{agent}"
                await js.publish(subject, encode(result), headers={"Nats-Msg-Id": msg_id})
                continue
            await nc.request(f"baton.report.{a['run_id']}.{agent}", encode(result), timeout=2)

    await nc.subscribe(f"baton.agent.{agent}.assign", cb=on_assign)
    beat = {"kind": "agent.heartbeat", "agent_id": agent, "role": role,
            "capabilities": [role], "capacity": 4, "load": 0, "instance": "i1",
            "contract_digest": "0" * 64 if mode == "digest" else ""}
    while True:
        if mode != "silent":
            await nc.publish(f"baton.registry.heartbeat.{agent}", encode(beat))
        await asyncio.sleep(0.2)

asyncio.run(main())
"""

CONTRACTS = """
[[roles]]
name = "worker"
description = "Does what the conformance kit asks."
budget = { seconds = 30 }
concurrency = 4
"""


@pytest.mark.parametrize(
    ("mode", "args", "failed", "because"),
    [
        ("digest", ["--contracts", "{contracts}"], "join", "contract digest 000000000000"),
        ("stale-lease", [], "single", "lease_token 'a-lease-of-" ),
        ("silent", ["--join-timeout", "1"], "join", "no heartbeat from an agent of role worker"),
        ("oversized", ["--case", "reply-size"], "reply-size", "over the 1048576-byte limit"),
    ],
)  # fmt: skip
def test_the_kit_names_the_case_a_broken_agent_fails(
    tmp_path: Path, mode: str, args: list[str], failed: str, because: str
) -> None:
    script = tmp_path / "broken.py"
    script.write_text(SCRIPTED_AGENT)
    (tmp_path / "roles.toml").write_text(CONTRACTS)
    args = [a.format(contracts=tmp_path / "roles.toml") for a in args]
    with (
        nats_server(tmp_path / "nats") as url,
        process(
            tmp_path / "agent.log", [sys.executable, str(script), mode, url, "bad-1", "worker"]
        ),
    ):
        code, cases = conformance(url, "--role", "worker", "--case", "single", *args)
    assert code == 1
    assert cases[failed]["status"] == "fail", cases
    assert because in cases[failed]["reason"], cases[failed]
    if mode == "oversized":
        assert "1500" in cases["single"]["reason"], cases["single"]  # its ack, named


def test_the_kit_tells_when_an_orchestrator_serves_the_bus_too(tmp_path: Path) -> None:
    """Someone else answering the agent's heartbeats (as an orchestrator does) fails the
    heartbeat case, saying so, instead of leaving the other cases to fail obscurely."""

    async def answering(url: str, code: list[int], cases: dict[str, dict[str, str]]) -> None:
        nc = await nats.connect(url)

        async def on_beat(msg: Msg) -> None:
            beat = msgspec.msgpack.decode(msg.data, type=Heartbeat)
            ack = HeartbeatAck(beat.instance, "owner", 0.5, 2.0)
            await nc.publish(f"baton.agent.{beat.agent_id}.registry", msgspec.msgpack.encode(ack))

        await nc.subscribe("baton.registry.heartbeat.*", cb=on_beat)
        try:
            found = await asyncio.to_thread(conformance, url, "--role", "worker",
                                            "--case", "heartbeat")  # fmt: skip
            code.append(found[0])
            cases.update(found[1])
        finally:
            await nc.close()

    code: list[int] = []
    cases: dict[str, dict[str, str]] = {}
    with (
        nats_server(tmp_path / "nats") as url,
        process(tmp_path / "agent.log", python_agent("py-1", url)),
    ):
        asyncio.run(answering(url, code, cases))
    assert code == [1]
    assert "an orchestrator serves this bus" in cases["heartbeat"]["reason"], cases


def test_results_through_the_durable_inbox_alone_pass(tmp_path: Path) -> None:
    """An agent that sends its outcomes only to the durable inbox (the stream the kit
    makes) passes; the inbox has no refusal to give, so a refused report is one copy."""
    script = tmp_path / "inbox.py"
    script.write_text(SCRIPTED_AGENT)
    with (
        nats_server(tmp_path / "nats") as url,
        process(
            tmp_path / "agent.log",
            [sys.executable, str(script), "inbox", url, "durable-1", "worker"],
        ),
    ):
        code, cases = conformance(url, "--role", "worker", "--case", "single",
                                  "--case", "batch", "--case", "refused-report")  # fmt: skip
    assert code == 0, cases
    assert "through the inbox" in cases["single"]["reason"]
    assert "sent durably" in cases["refused-report"]["reason"]


@pytest.mark.parametrize("agent", ["python", "node"])
def test_credentials_on_a_server_that_lets_only_logins_in(
    tmp_path: Path, agent: str, request: pytest.FixtureRequest
) -> None:
    """The agent joins with the login it was given (a URL as `baton admit` writes it), on
    a server that refuses anonymous clients and answers only under its inbox prefix."""
    kit = new_user("conformance", None)
    user = new_user("gov-1", agent_permissions("gov-1", None))
    login = tmp_path / "gov-1.url"
    with nats_server(tmp_path / "nats", users=[kit, user]) as base:
        login.write_text(url_for(base, user) + "\n")
        if agent == "python":
            command = [*python_agent("gov-1", ""), "--nats-file", str(login)]
            command.remove("--nats")
            command.remove("")
        else:
            command = node_command(request.getfixturevalue("node_agent"), "gov-1")
        env = {"BATON_NATS_URL": login.read_text().strip()}
        with process(tmp_path / "agent.log", command, env):
            code, cases = conformance(
                url_for(base, kit), "--role", "worker", "--login", str(login),
                "--case", "single", "--case", "credentials",
            )  # fmt: skip
    assert code == 0, (cases, (tmp_path / "agent.log").read_text())
    assert "refuses anonymous clients" in cases["credentials"]["reason"]
    assert "replies under _INBOX_gov_1" in cases["credentials"]["reason"]


class _NkeyNats(_RoomyNats):
    """A server whose users are the kit (user and password) and one agent that logs in
    with a user nkey, allowed what Baton allows an agent."""

    def __init__(self, state: Path, kit: User, agent_id: str, nkey: str) -> None:
        super().__init__(state, sync_always=False)
        allowed = agent_permissions(agent_id, None)
        permissions = {"publish": {"allow": allowed.publish},
                       "subscribe": {"allow": allowed.subscribe},
                       "allow_responses": allowed.allow_responses}  # fmt: skip
        users = [{"user": kit.name, "password": kit.password},
                 {"nkey": nkey, "permissions": permissions}]  # fmt: skip
        self._block = f"authorization {{\n  users = {json.dumps(users)}\n}}\n"

    def _config_text(self) -> str:
        return super()._config_text() + self._block


@pytest.mark.parametrize("agent", ["python", "node"])
def test_credentials_with_a_user_nkey_seed(
    tmp_path: Path, agent: str, request: pytest.FixtureRequest
) -> None:
    """The agent logs in with the seed file `$BATON_NATS_NKEY` names, on a server that
    knows it only by its public key."""
    keys = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    seed = tmp_path / "nk-1.nk"
    seed.write_bytes(keys.seed)
    kit = new_user("conformance", None)
    server = _NkeyNats(tmp_path / "nats", kit, "nk-1", keys.public_key.decode())
    base = asyncio.run(server.start())
    try:
        if agent == "python":
            command = python_agent("nk-1", base)
        else:
            command = [*node_command(request.getfixturevalue("node_agent"), "nk-1"), "--nats", base]
        with process(tmp_path / "agent.log", command, {NKEY_ENV: str(seed)}):
            code, cases = conformance(
                url_for(base, kit), "--role", "worker", "--login", str(seed),
                "--case", "single", "--case", "credentials",
            )  # fmt: skip
    finally:
        server.stop()
    assert code == 0, (cases, (tmp_path / "agent.log").read_text())
    assert "joined with its nkey seed as nk-1" in cases["credentials"]["reason"]


def test_credentials_fail_on_a_server_that_lets_anyone_in(tmp_path: Path) -> None:
    login = tmp_path / "py-1.url"
    with (
        nats_server(tmp_path / "nats") as url,
        process(tmp_path / "agent.log", python_agent("py-1", url)),
    ):
        login.write_text(url.replace("nats://", "nats://py-1:secret@") + "\n")
        code, cases = conformance(url, "--role", "worker", "--login", str(login),
                                  "--case", "credentials")  # fmt: skip
    assert code == 1
    assert "lets anyone in" in cases["credentials"]["reason"]


WORKFLOW = """
name = "node-greeting"
description = "Two steps, done by an agent written in Node.js."
{contracts}
[[agents]]
role = "greeter"
handler = "agents.builtin:noop"
capacity = 2

[[steps]]
id = "hello"
role = "greeter"
params = {{ name = "baton" }}

[[steps]]
id = "again"
role = "greeter"
needs = ["hello"]
params = {{ name = "again" }}
"""

GREETER = """
[[roles]]
name = "greeter"
description = "Greets."
budget = { seconds = 10 }
concurrency = 2
"""


def node_digest(folder: Path, contract_json: str, role: str) -> str:
    """The digest the Node agent computes itself (`--print-digest`) from its contract."""
    node = need("node", "the Node.js example agent cannot run here")
    done = subprocess.run(
        [node, str(folder / "agent.js"), "--role", role, "--print-digest"],
        env={**os.environ, "BATON_CONTRACT": contract_json},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("governed", [False, True], ids=["open", "governed"])
def test_the_node_agent_does_a_real_run(tmp_path: Path, node_agent: Path, governed: bool) -> None:
    """`baton run --no-agents` on its embedded server; the Node agent joins with the login
    `baton admit` gives it. Under contracts it advertises the digest it computes itself
    from its contract as `baton contracts show` prints it; another, given that contract
    changed in one field, is refused (`agent.refused`) and never given work."""
    workflow = tmp_path / "workflow.toml"
    workflow.write_text(WORKFLOW.format(contracts='contracts = "roles.toml"' if governed else ""))
    roles = tmp_path / "roles.toml"
    roles.write_text(GREETER)
    state, log = tmp_path / "state", tmp_path / "run.log"
    run = start_baton(log, "run", str(workflow), "--no-agents", "--timeout", "60",
                      "--state-dir", str(state))  # fmt: skip
    try:
        until(lambda: run.poll() is not None or "run started" in log.read_text(), 60,
              f"the run to start ({log})")  # fmt: skip
        assert run.poll() is None, log.read_text()
        env = {"BATON_NATS_URL": admitted(state, "node-1", "greeter"), "BATON_CAPACITY": "2"}
        with ExitStack() as agents:
            if governed:
                shown = subprocess.run(
                    baton("contracts", "show", str(roles), "--role", "greeter"),
                    capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
                ).stdout  # fmt: skip
                digest = load_contracts(roles).get("greeter").digest
                assert node_digest(node_agent, shown, "greeter") == digest
                env["BATON_CONTRACT"] = shown
                changed = json.dumps({**json.loads(shown), "description": "Greets twice."})
                assert node_digest(node_agent, changed, "greeter") != digest
                bad = {"BATON_NATS_URL": admitted(state, "node-bad", "greeter"),
                       "BATON_CAPACITY": "2", "BATON_CONTRACT": changed}  # fmt: skip
                agents.enter_context(process(tmp_path / "bad.log",
                    node_command(node_agent, "node-bad", "greeter"), bad))  # fmt: skip
                until(lambda: "agent.refused" in event_types(state), 60,
                      "the agent with the changed contract to be refused")  # fmt: skip
            agents.enter_context(
                process(tmp_path / "agent.log", node_command(node_agent, "node-1", "greeter"), env)
            )
            assert run.wait(60) == 0, log.read_text()
    finally:
        terminate(run)
    text = log.read_text()
    assert "completed; result:" in text, text
    assert '"said": "hello again from node"' in text, text
    assert '"by": "node-1"' in text, text
    if governed:
        audit = subprocess.run(
            baton("audit", "--type", "agent.*", "--json", "--state-dir", str(state)),
            capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
        ).stdout  # fmt: skip
        events = [json.loads(line) for line in audit.splitlines() if line.strip()]
        refused = [e for e in events if e["type"] == "agent.refused"]
        assert refused, events
        assert all("node-bad" in json.dumps(e) for e in refused), events
        assert "differs from the known" in json.dumps(refused), refused
        joined = [e for e in events if e["type"] == "agent.joined"]
        assert joined, events
        assert all("node-bad" not in json.dumps(e) for e in joined), events


def test_the_node_agent_reads_and_writes_large_values(tmp_path: Path, node_agent: Path) -> None:
    """Written from docs/protocol.md alone: the Node agent fetches the blob its input
    refers to (in chunks, checked against its digest) and uploads its large output, on
    the embedded server with its own login."""
    document = "a document larger than any message. " * 40_000
    echo = WorkflowSpec("echo", [StepSpec("echo", role="worker", params={"echo": "document"})])

    async def scenario() -> None:
        stack = await bootstrap(tmp_path / "state", tick_s=0.05)
        try:
            url = stack.agent_url("node-1", "worker")
            command = [*node_command(node_agent, "node-1"), "--nats", url]
            with process(tmp_path / "agent.log", command, {"BATON_NATS_URL": ""}):
                await stack.orchestrator.wait_for_agents(Counter(worker=1), timeout=60)
                run_id = await stack.orchestrator.start_run(echo, {"document": document})
                state = await stack.orchestrator.wait(run_id, timeout=60)
            assert state.status == "completed", (state, (tmp_path / "agent.log").read_text())
            output = state.tasks["echo"].output or {}
            assert output["echo_length"] == len(document)
            ref = blobs.as_ref(output["echo"])
            assert ref is not None, output
            assert await stack.store.blobs.get(ref.digest) == document.encode()
        finally:
            await stack.close()

    asyncio.run(scenario())


def test_every_case_is_documented_and_offered() -> None:
    """docs/protocol.md's table and `baton conformance --help` name every case."""
    doc = (REPO / "docs" / "protocol.md").read_text()
    table = doc.split("## Checking an agent: the conformance kit", 1)[1]
    helped = subprocess.run(
        baton("conformance", "--help"), capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    ).stdout  # fmt: skip
    for case in CASES:
        assert f"| `{case}` |" in table, case
        assert case in helped, case
