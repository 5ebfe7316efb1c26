"""Baton on a NATS server in operator mode (accounts and users as JWTs, made here as
`nsc` makes them; `tests.operator_mode`), every process logged in with a creds file, as
docs/deploy.md step 2 and docs/security.md say: `baton serve`, two `baton agent`s and
`baton submit` run a workflow through the CLI, with the log, the inbox, the lease bucket
and the blob store on the account's JetStream, and `baton audit verify` checks the log;
`baton run` hands the login to the agents it starts. Refused logins (none, another
operator's user, an account the server does not know), a file that is no creds file and
an account without JetStream each stop a command at once with exit status 2 and one
line, the server's streams untouched."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import nats
import nkeys
import pytest

from tests.cluster import EXAMPLE, baton
from tests.nats_cluster import nats_server
from tests.operator_mode import Operator, keypair

WORKFLOW = """\
name = "operator-mode"
[[steps]]
id = "large"
role = "producer"
[[steps]]
id = "echo"
role = "worker"
needs = ["large"]
"""
PRODUCER = '''\
async def large(task):
    """An output over the blob threshold: it goes to the Object Store BATON_BLOBS."""
    return {"text": "operator mode " * 30_000}
'''


class Server(NamedTuple):
    """The server in operator mode, its operator, and the creds of a user of the account
    with JetStream."""

    url: str
    operator: Operator
    creds: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("operator")
    operator = Operator.make()
    creds = operator.app.user_creds(folder / "baton.creds")
    with nats_server(folder / "nats", operator.server_conf()) as url:
        yield Server(url, operator, creds)


def _toml(url: str, creds: Path | None = None) -> str:
    text = f'store = "jetstream"\nnats = ["{url}"]\n'
    return text + (f"creds = {json.dumps(str(creds))}\n" if creds else "")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**clean, **(extra or {})}


def baton_in(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        baton(*args), cwd=cwd, capture_output=True, text=True, timeout=120, env=clean_env(env)
    )


class Seen(NamedTuple):
    """The account as a user of it sees it: each stream's message count, and the ids
    of the NATS micro services answering `$SRV.PING`."""

    streams: dict[str, int]
    services: set[str]


def _seen(server: Server) -> Seen:
    async def look() -> Seen:
        nc = await nats.connect(server.url, user_credentials=str(server.creds))
        try:
            streams = {
                str(s.config.name): s.state.messages for s in await nc.jetstream().streams_info()
            }
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$SRV.PING", b"", reply=inbox)
            services: set[str] = set()
            try:
                while reply := await sub.next_msg(timeout=1):
                    if reply.data:  # not the server's "no responders"
                        services.add(json.loads(reply.data)["id"])
            except nats.errors.TimeoutError:
                pass
            return Seen(streams, services)
        finally:
            await nc.close()

    return asyncio.run(look())


def until_audited(cwd: Path, run_id: str, text: str, timeout: float = 90) -> str:
    """The run's audit once it holds `text` (bounded)."""
    deadline = time.monotonic() + timeout
    while text not in (audit := baton_in(cwd, "audit", "--run", run_id)).stdout:
        assert audit.returncode == 0, audit.stderr
        assert time.monotonic() < deadline, audit.stdout
        time.sleep(0.2)
    return audit.stdout


def until_logged(log: Path, process: subprocess.Popen[bytes], text: str) -> str:
    deadline = time.monotonic() + 60
    while text not in (logged := log.read_text()):
        assert process.poll() is None, logged
        assert time.monotonic() < deadline, f"not logged in 60s: {text!r}\n{logged}"
        time.sleep(0.1)
    return logged


class CredsRun(NamedTuple):
    """What `creds_run` saw: `baton serve`'s first lines, the orchestrator id it serves
    as, and the run's audit once completed."""

    serving: str
    orchestrator: list[str]
    audited: str


@contextmanager
def creds_run(tmp_path: Path, toml: str, creds: Path) -> Iterator[CredsRun]:
    """`baton serve` in `tmp_path/work` with `creds` in its baton.toml (`toml` plus the
    creds), and the producer and a worker in `tmp_path/agents` (`toml` alone) with
    $BATON_NATS_CREDS; the workflow submitted and completed. Inside the `with` they
    still run; after it, each process's log is checked for tracebacks."""
    work, elsewhere = tmp_path / "work", tmp_path / "agents"
    for folder in (work, elsewhere):
        folder.mkdir()
    (work / "baton.toml").write_text(f"{toml}creds = {json.dumps(str(creds))}\n")
    (work / "wf.toml").write_text(WORKFLOW)
    (elsewhere / "baton.toml").write_text(toml)
    (elsewhere / "producer.py").write_text(PRODUCER)
    by_env = clean_env({"BATON_NATS_CREDS": str(creds)})
    commands = {
        "serve": (work, baton("serve"), clean_env()),
        "producer-1": (elsewhere, baton("agent", "--id", "producer-1", "--role", "producer",
                       "--handler", f"{elsewhere / 'producer.py'}:large"), by_env),
        "worker-1": (elsewhere, baton("agent", "--id", "worker-1", "--role", "worker",
                     "--handler", "agents.builtin:echo"), by_env),
    }  # fmt: skip
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (cwd, argv, env) in commands.items():
            with (tmp_path / f"{name}.log").open("wb") as out:
                started[name] = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        serving = until_logged(tmp_path / "serve.log", started["serve"], "serving on NATS")
        orchestrator = re.findall(r"as orchestrator (\S+)", serving)
        for agent in ("producer-1", "worker-1"):
            until_logged(tmp_path / f"{agent}.log", started[agent], "serving role")
        submitted = baton_in(work, "submit", "wf.toml")
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip().splitlines()[-1]
        yield CredsRun(serving, orchestrator, until_audited(work, run_id, "run.completed"))
    finally:
        for process in started.values():
            process.terminate()
            process.wait(15)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in commands}
    assert all("Traceback" not in log for log in logs.values()), logs


def assert_each_task_by_its_agent_the_large_output_by_blob(audited: str) -> None:
    succeeded = [line for line in audited.splitlines() if "task.succeeded" in line]
    assert [("producer-1" in line, "worker-1" in line) for line in succeeded] == [
        (True, False),
        (False, True),
    ], audited
    assert '"$blob"' in succeeded[0]  # the large output went by the Object Store


def test_serve_agents_and_submit_run_a_workflow_logged_in_with_creds(
    server: Server, tmp_path: Path
) -> None:
    """The orchestrator takes the creds from baton.toml, the agents (in a folder whose
    baton.toml names none) from $BATON_NATS_CREDS."""
    with creds_run(tmp_path, _toml(server.url), server.creds) as seen:
        found = _seen(server)
    assert f"event store JetStream stream BATON_EVENTS (1 replica) on {server.url}" in seen.serving
    assert_each_task_by_its_agent_the_large_output_by_blob(seen.audited)
    assert {"producer-1", "worker-1", *seen.orchestrator} <= found.services
    made = {"BATON_EVENTS", "BATON_INBOX", "KV_BATON_LEASES", "OBJ_BATON_BLOBS"}
    assert made <= found.streams.keys(), found.streams
    assert found.streams["OBJ_BATON_BLOBS"] > 0, found.streams
    verify = baton_in(tmp_path / "work", "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "hash chain: ok" in verify.stdout


def test_baton_run_hands_the_creds_to_the_agents_it_starts(server: Server, tmp_path: Path) -> None:
    (tmp_path / "baton.toml").write_text(_toml(server.url, server.creds))
    ran = baton_in(tmp_path, "run", str(EXAMPLE), "--timeout", "120")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"^run \S+ completed; result:", ran.stdout, re.M), ran.stdout
    verify = baton_in(tmp_path, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


REFUSED = "nats: 'Authorization Violation'"


@pytest.mark.parametrize(
    "case",
    ["no creds", "another operator's user", "an account the server does not know",
     "an nkey seed as creds", "a missing creds file"],
)  # fmt: skip
def test_a_refused_or_wrong_login_is_one_line_and_exit_2(
    server: Server, tmp_path: Path, case: str
) -> None:
    creds = tmp_path / "user.creds"
    env: dict[str, str] = {}
    expected = REFUSED
    if case == "another operator's user":
        Operator.make().app.user_creds(creds)
    elif case == "an account the server does not know":
        server.operator.unknown_account().user_creds(creds)
    elif case == "an nkey seed as creds":
        creds.write_bytes(keypair(nkeys.PREFIX_BYTE_USER).seed + b"\n")  # an nkey = "FILE"
        expected = f"configuration baton.toml line 3: creds: {creds} is not a NATS creds file"
    elif case == "a missing creds file":
        env["BATON_NATS_CREDS"] = str(tmp_path / "nowhere.creds")
        expected = f"configuration $BATON_NATS_CREDS: cannot read {tmp_path / 'nowhere.creds'}"
    given = creds if creds.exists() else None
    (tmp_path / "baton.toml").write_text(_toml(server.url, given))
    (tmp_path / "wf.toml").write_text(WORKFLOW)
    files = sorted(tmp_path.iterdir())
    before = _seen(server).streams
    for args in (
        ("serve",),
        ("agent", "--role", "worker", "--handler", "agents.builtin:echo"),
        ("submit", "wf.toml"),
        ("audit", "verify"),
    ):
        began = time.monotonic()
        done = baton_in(tmp_path, *args, env=env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stdout == "", (args, done.stdout)
        assert len(done.stderr.splitlines()) == 1, (args, done.stderr)
        assert expected in done.stderr, (args, done.stderr)
        assert time.monotonic() - began < 10, (args, "not at once")
    assert _seen(server).streams == before
    assert sorted(tmp_path.iterdir()) == files


def test_an_account_without_jetstream_is_said_at_once(server: Server, tmp_path: Path) -> None:
    """Not the 30 s wait for a quorum that no account limit will ever bring."""
    creds = server.operator.plain.user_creds(tmp_path / "plain.creds")
    (tmp_path / "baton.toml").write_text(_toml(server.url, creds))
    for args in (("serve",), ("audit", "verify"), ("serve", "--store", "sqlite:events.db")):
        began = time.monotonic()
        done = baton_in(tmp_path, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert len(done.stderr.splitlines()) == 1, (args, done.stderr)
        assert "JetStream not enabled for account" in done.stderr, (args, done.stderr)
        assert time.monotonic() - began < 10, (args, "not at once")
