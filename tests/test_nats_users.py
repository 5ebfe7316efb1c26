"""One login per agent on an external NATS server (docs/deploy.md, "One login per agent"):
`baton nats-users` prints the `authorization` block, a real nats-server (TLS, nkey
users, JetStream) runs with it, and Baton runs a workflow through the CLI with the
services' login and each agent's own. Then agent A, logged in as itself with nats-py,
tries to act as agent B while B holds a task: a report and a result on B's subjects,
and a subscription to B's assignments. The server refuses each (a permissions
violation), the log records no rejected result, and B's own result is the one kept.
Bad input to the command is one line and exit status 2."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import nats
import pytest

from bus import subjects
from bus.codec import encode
from bus.contract_files import load_contracts
from bus.nkey import new_user_seed, public_key
from bus.permissions import User, agent_permissions, authorization_block, inbox_prefix
from bus.protocol import TaskResult
from orchestrator.cli.main import main
from orchestrator.service.logins import agent_login
from private import write
from tests.cluster import baton
from tests.nats_cluster import Login, Node
from tests.test_operator_mode import baton_in, clean_env, until_audited, until_logged

WORKFLOW = """\
name = "own-logins"
[[steps]]
id = "a"
role = "alpha"
[[steps]]
id = "b"
role = "beta"
needs = ["a"]
params = { seconds = 6 }
"""
AGENTS = {
    "worker-a": ("alpha", "agents.builtin:echo"),
    "worker-b": ("beta", "agents.builtin:sleep"),
}


def new_seed(path: Path) -> str:
    """A new user nkey seed in `path` (0600); its public key."""
    seed = new_user_seed()
    write(path, seed)
    return public_key(seed)


def _toml(url: str, login: Login, nkey: Path | None) -> str:
    text = f'store = "jetstream"\nnats = ["{url}"]\n'
    text += f"tls_ca = {json.dumps(str(login.pki / 'ca.pem'))}\n"
    return text + (f"nkey = {json.dumps(str(nkey))}\n" if nkey else "")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Node, Login, dict[str, Path]]]:
    """A nats-server whose users are what `baton nats-users` printed: the services' login
    (that of docs/deploy.md) and worker-a, worker-b, each with its own seed file."""
    login = Login.make(tmp_path)
    seeds = {agent: tmp_path / f"{agent}.nk" for agent in AGENTS}
    listed = [f"{agent}:{AGENTS[agent][0]}:{new_seed(seeds[agent])}" for agent in AGENTS]
    printed = subprocess.run(
        baton("nats-users", "--services", login.public, *listed),
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    tls = (
        f"tls {{\n  cert_file: {json.dumps(str(login.pki / 'server.pem'))}\n"
        f"  key_file: {json.dumps(str(login.pki / 'server.key'))}\n}}\n"
    )
    node = Node(tmp_path / "nats", tls + printed.stdout, scheme="tls")
    node.start()
    try:
        yield node, login, seeds
    finally:
        node.stop()


class Refusals:
    """What agent A's connection is told by the server, as nats-py's error callback
    hears it."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.heard = asyncio.Event()

    async def on(self, error: Exception) -> None:
        self.said.append(str(error))
        self.heard.set()

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.said) < count:
                self.heard.clear()
                await self.heard.wait()
        return self.said


async def _as_a_acting_as_b(url: str, login: Login, seed: Path, run_id: str) -> list[str]:
    """Agent A's login tries B's assignments, report and result subjects; the server's
    answers, once it has answered all three (or 10 s have passed)."""
    refusals = Refusals()
    tls = ssl.create_default_context(cafile=str(login.pki / "ca.pem"))
    nc = await nats.connect(
        url,
        tls=tls,
        nkeys_seed_str=seed.read_text().strip(),
        inbox_prefix=inbox_prefix("worker-a"),
        error_cb=refusals.on,
        max_reconnect_attempts=0,
    )
    try:
        # B's result, as B's agent would send it (a guessed lease token)
        forged = encode(TaskResult(run_id, "b", 1, "guessed", "worker-b", {"forged": 1}, 0.1))
        await nc.subscribe(subjects.assign("worker-b"))
        await nc.publish(subjects.report(run_id, "worker-b"), forged, reply=nc.new_inbox())
        await nc.publish(subjects.inbox(run_id, "worker-b"), forged)
        await nc.flush()
        return await refusals.until(3)
    finally:
        await nc.close()


class OwnLogins(NamedTuple):
    """What `own_logins_run` saw: the run, what the server said to A acting as B, the
    run's audit once completed, `audit --type *.rejected` and `audit verify`; and the
    processes, still running inside the `with`."""

    run_id: str
    refused: list[str]
    audit: str
    rejected: subprocess.CompletedProcess[str]
    verify: subprocess.CompletedProcess[str]
    started: dict[str, subprocess.Popen[bytes]]


@contextmanager
def own_logins_run(
    tmp_path: Path, url: str, login: Login, seeds: dict[str, Path], tomls: dict[str, str]
) -> Iterator[OwnLogins]:
    """`baton serve` in `tmp_path/work`, agent A in `tmp_path/a` (its seed named in its
    baton.toml), agent B in `tmp_path/b` (its seed in $BATON_NATS_NKEY), each folder's
    baton.toml `tomls[folder]`; the workflow submitted, and while B holds its 6 s task, A
    (its login, nats-py, on `url`) tries B's subjects. The processes are stopped when
    the `with` ends."""
    work, a_dir, b_dir = (tmp_path / name for name in ("work", "a", "b"))
    for folder in (work, a_dir, b_dir):
        folder.mkdir()
        (folder / "baton.toml").write_text(tomls[folder.name])
    (work / "wf.toml").write_text(WORKFLOW)

    def agent(name: str) -> list[str]:
        role, handler = AGENTS[name]
        return baton("agent", "--id", name, "--role", role, "--handler", handler)

    commands = {
        "serve": (work, baton("serve"), clean_env()),
        "worker-a": (a_dir, agent("worker-a"), clean_env()),
        "worker-b": (
            b_dir,
            agent("worker-b"),
            clean_env({"BATON_NATS_NKEY": str(seeds["worker-b"])}),
        ),
    }
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (cwd, argv, env) in commands.items():
            with (tmp_path / f"{name}.log").open("wb") as out:
                started[name] = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        until_logged(tmp_path / "serve.log", started["serve"], "serving on NATS")
        for name in AGENTS:
            until_logged(tmp_path / f"{name}.log", started[name], "serving role")
        submitted = baton_in(work, "submit", "wf.toml")
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip().splitlines()[-1]
        held = until_audited(work, run_id, '"task_id":"b","attempt":1,"agent_id":"worker-b"')
        assert "run.completed" not in held, "b (6 s long) ended before A could try it"
        refused = asyncio.run(_as_a_acting_as_b(url, login, seeds["worker-a"], run_id))
        audit = until_audited(work, run_id, "run.completed")
        rejected = baton_in(work, "audit", "--type", "*.rejected")
        verify = baton_in(work, "audit", "verify")
        yield OwnLogins(run_id, refused, audit, rejected, verify, started)
    finally:
        for process in started.values():
            process.terminate()
            process.wait(15)


def assert_each_acted_only_as_itself(tmp_path: Path, seen: OwnLogins) -> None:
    """No traceback logged; A was refused each of B's subjects; each task succeeded once,
    by its own agent; nothing forged reached the log, which verifies."""
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("serve", *AGENTS)}
    assert all("Traceback" not in log for log in logs.values()), logs
    run_id, audit = seen.run_id, seen.audit
    assert [said.lower() for said in seen.refused] == [
        f'nats: permissions violation for subscription to "{subjects.assign("worker-b")}"',
        f'nats: permissions violation for publish to "{subjects.report(run_id, "worker-b")}"',
        f'nats: permissions violation for publish to "{subjects.inbox(run_id, "worker-b")}"',
    ]
    succeeded = [line for line in audit.splitlines() if "task.succeeded" in line]
    assert len(succeeded) == 2, audit
    assert "worker-a" in succeeded[0], audit
    assert "worker-b" in succeeded[1], audit
    assert '"slept_s"' in succeeded[1], audit
    assert "forged" not in audit, audit
    assert seen.rejected.returncode == 0, seen.rejected.stderr
    assert "rejected" not in seen.rejected.stdout, "a forgery reached the orchestrator"
    assert seen.verify.returncode == 0, seen.verify.stdout + seen.verify.stderr
    assert "hash chain: ok" in seen.verify.stdout


def test_each_agent_has_its_own_login_and_cannot_act_as_another(
    server: tuple[Node, Login, dict[str, Path]], tmp_path: Path
) -> None:
    """Agent A names its seed in its baton.toml, agent B by $BATON_NATS_NKEY."""
    node, login, seeds = server
    tomls = {
        "work": _toml(node.url, login, login.nkey),
        "a": _toml(node.url, login, seeds["worker-a"]),
        "b": _toml(node.url, login, None),
    }
    with own_logins_run(tmp_path, node.url, login, seeds, tomls) as seen:
        pass
    assert_each_acted_only_as_itself(tmp_path, seen)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["nats-users", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_block_gives_each_agent_its_embedded_permissions_under_contracts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text('[[roles]]\nname = "researcher"\ntools = ["web_search"]\n')
    (tmp_path / "wf.toml").write_text('name = "w"\ncontracts = "roles.toml"\n')
    services, agent = new_seed(tmp_path / "s.nk"), new_seed(tmp_path / "a.nk")
    contract = load_contracts(roles).get("researcher")
    expected = authorization_block(
        [
            User("baton-services", "", None, services),
            agent_login("r-1", "researcher", contract, agent),
        ]
    )
    for governed in (("--contracts", str(roles)), ("--workflow", str(tmp_path / "wf.toml"))):
        code, out, err = _cli(capsys, "--services", services, f"r-1:researcher:{agent}", *governed)
        assert (code, err) == (0, ""), err
        assert out == expected
    assert '"baton.tool.call.web_search"' in out
    assert '"baton.cfp.researcher"' in out
    assert "baton.tool.call.*" not in out
    allowed = agent_permissions("r-1", contract)
    assert json.dumps(allowed.publish) in out
    assert json.dumps(allowed.subscribe) in out


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("a.b:worker:{key}", "argument 1: 'a.b' is not a valid agent id"),
        ("w-1:worker:UBAD", "argument 1: 'UBAD' is not a public user nkey"),
        ("w-1:worker:{bent}", "argument 1: U"),
        ("w-1:worker", "argument 1: 'w-1:worker' is not AGENT_ID:ROLE:PUBLIC_NKEY"),
        ("w-1:w.x:{key}", "argument 1: 'w.x' is not a valid role"),
        ("w-1:worker:{services}", "argument 1: that key is already listed (--services)"),
        ("w-1:nobody:{key}", "argument 1: no role contract for 'nobody' in"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, said: str
) -> None:
    services, key = new_seed(tmp_path / "s.nk"), new_seed(tmp_path / "a.nk")
    bent = key[:-1] + ("A" if key[-1] != "A" else "B")  # its checksum no longer matches
    spec = given.format(key=key, services=services, bent=bent)
    governed = ["--contracts", str(tmp_path / "roles.toml")] if "nobody" in given else []
    (tmp_path / "roles.toml").write_text('[[roles]]\nname = "worker"\n')
    code, out, err = _cli(capsys, "--services", services, spec, *governed)
    assert (code, out) == (2, "")
    assert err.startswith(f"baton nats-users: error: {said}"), err
    assert len(err.splitlines()) == 1, err


def test_agents_from_a_file_an_id_given_twice_and_a_bad_services_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services, one, two = (new_seed(tmp_path / f"{n}.nk") for n in ("s", "1", "2"))
    listed = tmp_path / "agents.txt"
    listed.write_text(f"# the workers\nw-1:worker:{one}\n\nw-2:worker:{two}  # the second\n")
    code, out, _ = _cli(capsys, "--services", services, "--agents-file", str(listed))
    assert code == 0
    assert [line.rpartition("  # ")[2] for line in out.splitlines() if '"nkey"' in line] == [
        "baton-services",
        "w-1, role worker",
        "w-2, role worker",
    ]
    listed.write_text(f"w-1:worker:{one}\nw-1:worker:{two}\n")
    code, out, err = _cli(capsys, "--services", services, "--agents-file", str(listed))
    assert (code, out) == (2, "")
    assert err == f"baton nats-users: error: {listed} line 2: agent id w-1 is listed twice\n"
    code, out, err = _cli(capsys, "--services", "UBAD", "--agents-file", str(listed))
    assert (code, out) == (2, "")
    assert (
        err == "baton nats-users: error: --services: 'UBAD' is not a public user nkey (U "
        "followed by 55 base32)\n"
    )
    missing = tmp_path / "none.txt"
    code, out, err = _cli(capsys, "--services", services, "--agents-file", str(missing))
    assert (code, out) == (2, "")
    assert err == (
        f"baton nats-users: error: --agents-file: cannot read {missing}: No such file or "
        "directory\n"
    )
