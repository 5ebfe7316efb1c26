"""Governed credentials for agents started by hand (`baton creds`, issue 17): a user nkey
seed file that plain NATS clients log in with, the permissions of its agent id and role,
revocation that the running server applies at once, and the audit of both.

Against a real nats-server throughout: the composition (`bootstrap`) with role contracts
for the permissions, and real `baton serve`, `baton creds`, `baton agent`, `baton
submit` and `baton audit` processes end to end.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import stat
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest

import private
from agents import cli as agent_cli
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.contracts import Contracts, RoleContract
from bus.errors import BusError
from bus.logins import load_logins
from bus.nats_options import NKEY_ENV
from bus.nkey import new_user_seed, public_key
from bus.permissions import inbox_prefix
from bus.protocol import ErrorReply
from orchestrator.core.events import CredentialsIssued, CredentialsRevoked
from orchestrator.service import journal
from orchestrator.service.api import AdmitRequest, Admitted, CredsReply, CredsRequest
from orchestrator.service.bootstrap import Stack, bootstrap
from tests.cluster import REPO, baton
from tests.processes import event_types, serving_url, start_baton, terminate, until
from tests.test_auth import as_person
from tests.test_permissions import Taps

_reply: Decoder[CredsReply | ErrorReply] = Decoder(CredsReply | ErrorReply)
ROLES = Contracts(
    [RoleContract(name="writer", tools=["search"]), RoleContract(name="critic", tools=["grade"])]
)


@asynccontextmanager
async def governed(directory: Path) -> AsyncIterator[Stack]:
    stack = await bootstrap(directory / "state", contracts=ROLES)
    try:
        yield stack
    finally:
        await stack.close()


def seed_file(path: Path) -> tuple[Path, str]:
    seed = new_user_seed()
    path.write_bytes(seed + b"\n")
    return path, public_key(seed)


async def as_nkey(url: str, agent_id: str, seed: Path, monkeypatch: pytest.MonkeyPatch) -> Bus:
    """Baton's own connection, logging in with the seed file (`$BATON_NATS_NKEY`)."""
    monkeypatch.setenv(NKEY_ENV, str(seed))
    try:
        return await Bus.connect(url, name=agent_id, inbox_prefix=inbox_prefix(agent_id), tries=1)
    finally:
        monkeypatch.delenv(NKEY_ENV)


def test_an_issued_nkey_acts_only_as_its_agent_in_its_role_until_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seed, key = seed_file(tmp_path / "w1.nk")
    other_seed, other_key = seed_file(tmp_path / "stranger.nk")
    bent = key[:-1] + ("A" if key[-1] != "A" else "B")  # its last character changed

    async def ask(person: Bus, me: str, request: CredsRequest) -> CredsReply | ErrorReply:
        return _reply.decode(await person.request(subjects.creds(me), encode(request), 10))

    async def scenario() -> dict[str, Any]:
        found: dict[str, Any] = {}
        async with governed(tmp_path) as stack:
            assert stack.server is not None
            url = stack.server.url
            me, person = await as_person(tmp_path / "state")
            found["me"] = me
            refusals = [
                CredsRequest("issue", "w1", "writer", bent),  # a broken checksum
                CredsRequest("issue", "w1", "nobody", key),  # a role without a contract
                CredsRequest("issue", "w.1", "writer", key),  # not an agent id
                CredsRequest("issue", "w1", "writer", ""),  # no key
                CredsRequest("revoke", "w9"),  # never issued
            ]
            found["refusals"] = [await ask(person, me, r) for r in refusals]
            issued = await ask(person, me, CredsRequest("issue", "w1", "writer", key))
            found["issued"] = issued
            found["taken"] = await ask(person, me, CredsRequest("issue", "w1", "critic", other_key))
            found["saved"] = [(u.name, u.nkey, u.role) for u in load_logins(tmp_path / "state")]

            with pytest.raises(BusError, match=r"(?i)authorization"):
                await as_nkey(url, "w1", other_seed, monkeypatch)  # a key nobody issued
            agent = await as_nkey(url, "w1", seed, monkeypatch)
            taps, got = Taps(), Taps()
            for subject in (subjects.cfp("critic"), subjects.cfp("writer"), "baton.agent.w2.>"):
                await agent.subscribe(subject, got.on)
            await agent.flush()
            await stack.bus.publish(subjects.cfp("critic"), b"x")
            await stack.bus.publish(subjects.assign("w2"), b"x")
            await stack.bus.publish(subjects.cfp("writer"), b"control")
            await got.until(subjects.cfp("writer"))
            found["read"] = list(got.seen)
            await stack.bus.subscribe("baton.>", taps.on)  # from here on: the agent's
            await stack.bus.flush()
            for subject in (
                subjects.tool_call("grade"),  # the critic's tool, not the writer's
                subjects.heartbeat("w2"),  # as another agent
                subjects.inbox("run1", "w2"),
                subjects.API_STATUS,  # people's
                subjects.tool_call("search"),
                subjects.inbox("run1", "w1"),
                subjects.heartbeat("w1"),  # the control, last
            ):
                await agent.publish(subject, b"x")
            await taps.until(subjects.heartbeat("w1"))
            found["published"] = [s for s in taps.seen if not s.startswith("baton.events")]

            revoked = await ask(person, me, CredsRequest("revoke", "w1"))
            found["revoked"] = revoked
            async with asyncio.timeout(10):  # the server closes its connection as it reloads
                while agent.connected:
                    await asyncio.sleep(0.02)
            async with asyncio.timeout(10):  # its reconnects are refused: it says so, once
                while "refused while reconnecting" not in caplog.text:
                    await asyncio.sleep(0.05)
            with pytest.raises(BusError, match=r"(?i)authorization"):
                await as_nkey(url, "w1", seed, monkeypatch)
            found["refusals said"] = caplog.text.count("refused while reconnecting")
            found["listed"] = await ask(person, me, CredsRequest("list"))
            found["saved_after"] = [u.name for u in load_logins(tmp_path / "state")]
            stored = await stack.store.read_stream(journal.SYSTEM_STREAM)
            found["audit"] = [
                (s.actor, journal.decode_any(s))
                for s in stored
                if s.type.startswith("credentials.")
            ]
            await agent.close()
            await person.close()
        return found

    found = asyncio.run(scenario())
    me = found["me"]
    reasons = [r.detail for r in found["refusals"]]
    assert "checksum" in reasons[0]
    assert "no role contract for 'nobody'" in reasons[1]
    assert "not a valid agent id" in reasons[2]
    assert "public user nkey" in reasons[3]
    assert "no credentials given by hand" in reasons[4]
    issued = found["issued"]
    assert isinstance(issued, CredsReply), issued
    assert [(c.agent_id, c.role, c.login, c.public_key) for c in issued.credentials] == [
        ("w1", "writer", "nkey", key)
    ]
    assert issued.url.startswith("nats://127.0.0.1:")
    assert "@" not in issued.url
    taken = found["taken"]
    assert isinstance(taken, ErrorReply)
    assert "already has credentials" in taken.detail
    assert ("w1", key, "writer") in found["saved"]
    assert found["read"] == [subjects.cfp("writer")]
    assert found["published"] == [
        subjects.tool_call("search"),
        subjects.inbox("run1", "w1"),
        subjects.heartbeat("w1"),
    ]
    assert isinstance(found["revoked"], CredsReply)
    assert found["refusals said"] == 1
    listed = found["listed"]
    assert isinstance(listed, CredsReply)
    assert listed.credentials == []
    assert "w1" not in found["saved_after"]
    audit = found["audit"]
    assert [(actor, type(e)) for actor, e in audit] == [
        (me, CredentialsIssued),
        (me, CredentialsRevoked),
    ]
    issued_event = audit[0][1]
    assert (issued_event.agent_id, issued_event.role) == ("w1", "writer")
    assert issued_event.login == "nkey"
    assert issued_event.public_key == key


def _baton(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        baton(*args, "--state-dir", str(state)),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_baton_creds_end_to_end_issue_run_revoke_audit(tmp_path: Path) -> None:
    """`baton serve`; `baton creds issue` writes a 0600 seed file; `baton agent` logs in
    with it and does a submitted run's task; `baton creds revoke` drops it and the seed
    no longer logs in; `baton audit` shows both, as the person."""
    state = tmp_path / "state"
    workflow = tmp_path / "one.toml"
    workflow.write_text('name = "one"\n[[steps]]\nid = "only"\nrole = "noop"\n')
    serve = start_baton(tmp_path / "serve.log", "serve", "--state-dir", str(state))
    agent: subprocess.Popen[bytes] | None = None
    out = tmp_path / "w1.nk"
    try:
        serving_url(tmp_path / "serve.log", serve)
        issued = _baton("creds", "issue", "w1", "--role", "noop", "--out", str(out), state=state)
        assert issued.returncode == 0, issued.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        seed = out.read_bytes().strip()
        assert seed.startswith(b"SU")
        assert len(seed) == 58
        assert public_key(seed) in issued.stdout
        assert seed.decode() not in issued.stdout + issued.stderr, "the seed stays in its file"
        url = re.search(r"--nats (nats://\S+)", issued.stdout)
        assert url is not None, issued.stdout
        again = _baton("creds", "issue", "w1", "--role", "noop", "--out", str(out), state=state)
        assert again.returncode == 2
        assert "exists" in again.stderr
        twice = tmp_path / "w1-again.nk"
        taken = _baton("creds", "issue", "w1", "--role", "noop", "--out", str(twice), state=state)
        assert taken.returncode == 2
        assert "already has credentials" in taken.stderr
        assert not twice.exists(), "a refused issue leaves no seed file behind"

        agent = subprocess.Popen(
            baton("agent", "--id", "w1", "--role", "noop", "--nats", url.group(1),
                  "--nats-file", str(out), "--handler", "agents.builtin:noop"),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        submitted = _baton("submit", str(workflow), state=state)
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.strip().splitlines()[-1]
        until(lambda: "run.completed" in event_types(state, run_id), 60, f"run {run_id}")

        listed = _baton("creds", "list", state=state)
        assert listed.returncode == 0, listed.stderr
        assert re.search(rf"w1\s+noop\s+nkey\s+{public_key(seed)}", listed.stdout), listed.stdout
        revoked = _baton("creds", "revoke", "w1", state=state)
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked the nkey login of agent w1" in revoked.stdout

        async def connect_with_the_seed() -> None:
            nc = await nats.connect(url.group(1), nkeys_seed=str(out), allow_reconnect=False)
            await nc.close()

        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(connect_with_the_seed())
        assert _baton("creds", "revoke", "w1", state=state).returncode == 2  # once only

        audit = _baton("audit", "--type", "credentials.*", "--json", state=state)
        assert audit.returncode == 0, audit.stderr
        events = [json.loads(line) for line in audit.stdout.splitlines()]
        assert [e["type"] for e in events] == ["credentials.issued", "credentials.revoked"]
        assert {e["actor"] for e in events} == {f"human:{_login()}"}
        assert events[0]["data"]["public_key"] == public_key(seed)
    finally:
        if agent is not None:
            terminate(agent)
        terminate(serve)


def _login() -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", getpass.getuser())


def test_a_password_login_from_baton_admit_is_revoked_the_same_way(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], str]:
        async with governed(tmp_path) as stack:
            me, person = await as_person(tmp_path / "state")
            admitted = await person.request(
                subjects.API_ADMIT, encode(AdmitRequest("w2", "critic")), 10
            )
            reply: Admitted = Decoder(Admitted).decode(admitted)
            agent = await Bus.connect(reply.url, name="w2", inbox_prefix=inbox_prefix("w2"))
            listed = _reply.decode(
                await person.request(subjects.creds(me), encode(CredsRequest("list")), 10)
            )
            assert isinstance(listed, CredsReply)
            logins = [f"{c.agent_id}:{c.role}:{c.login}" for c in listed.credentials]
            revoked = await person.request(
                subjects.creds(me), encode(CredsRequest("revoke", "w2")), 10
            )
            assert isinstance(_reply.decode(revoked), CredsReply)
            async with asyncio.timeout(10):
                while agent.connected:
                    await asyncio.sleep(0.02)
            with pytest.raises(BusError, match=r"(?i)authorization"):
                await Bus.connect(reply.url, name="w2", tries=1)
            stored = await stack.store.read_stream(journal.SYSTEM_STREAM)
            audited = " ".join(
                f"{s.type}:{s.actor}" for s in stored if s.type.startswith("credentials.")
            )
            await agent.close()
            await person.close()
            return logins, audited.replace(me, "ME")

    logins, audited = asyncio.run(scenario())
    assert logins == ["w2:critic:password"]
    assert audited == "credentials.issued:ME credentials.revoked:ME"


def test_baton_agent_with_a_seed_file_needs_the_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed, _ = seed_file(tmp_path / "w1.nk")
    monkeypatch.delenv("BATON_NATS_URL", raising=False)
    monkeypatch.setenv(NKEY_ENV, "")  # restored (to unset) after the test: main sets it
    monkeypatch.setattr(private, "restrict_umask", lambda: 0o077)  # not this test process's
    assert agent_cli.main(["--role", "noop", "--nats-file", str(seed)]) == 2
    assert "holds a user nkey seed, which says no address: give --nats URL" in (
        capsys.readouterr().err
    )
    assert os.environ[NKEY_ENV] == str(seed), "the seed is what it logs in with"


def test_an_issued_nkey_outlives_a_restart_of_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, key = seed_file(tmp_path / "w1.nk")

    async def scenario() -> None:
        async with governed(tmp_path):
            me, person = await as_person(tmp_path / "state")
            request = encode(CredsRequest("issue", "w1", "writer", key))
            assert isinstance(
                _reply.decode(await person.request(subjects.creds(me), request, 10)), CredsReply
            )
            await person.close()
        async with governed(tmp_path) as again:  # a new orchestrator and server, same state
            assert again.server is not None
            agent = await as_nkey(again.server.url, "w1", seed, monkeypatch)
            await agent.close()

    asyncio.run(scenario())
