"""A person on a governed bus: their own user, kept for them in the state directory, lets
them ask the orchestrator about runs and agents and decide runs only as themselves (the
server refuses a decision sent on another person's subject), and the orchestrator takes
the actor from the subject, never from the payload."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bus import subjects
from bus.connection import Bus
from bus.permissions import (
    agent_permissions,
    inbox_prefix,
    new_user,
    person_identity,
    person_user,
    url_for,
)
from bus.server import EmbeddedNats, PersonCredentials, person_credentials, save_person
from orchestrator.cli.reach import reach
from tests.test_permissions import RESEARCHER, Taps


def test_a_persons_identity_is_token_safe() -> None:
    assert person_identity("alice") == "human:alice"
    assert person_identity("john.doe smith") == "human:john_doe_smith"
    assert subjects.run_control(person_identity("x.y")) == "baton.api.run.control.human:x_y"
    assert subjects.run_controller("baton.api.run.control.human:alice") == "human:alice"
    assert person_user("human:alice").name == "human-alice"
    assert inbox_prefix("human:alice") == "_INBOX_human_alice"


def test_a_person_decides_only_as_themselves_and_asks_the_api(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        admin = new_user("orchestrator", None)
        alice, bob = person_user("human:alice"), person_user("human:bob")
        agent = new_user("a1", agent_permissions("a1", RESEARCHER))
        server = EmbeddedNats(tmp_path, users=[admin, alice, bob, agent])
        base = await server.start()
        try:
            orchestrator = await Bus.connect(url_for(base, admin), name="orchestrator")
            as_alice = await Bus.connect(
                url_for(base, alice), name="alice", inbox_prefix=inbox_prefix("human:alice")
            )
            as_agent = await Bus.connect(
                url_for(base, agent), name="a1", inbox_prefix=inbox_prefix("a1")
            )
            taps = Taps()
            await orchestrator.subscribe("baton.api.>", taps.on)
            await orchestrator.flush()
            await as_alice.publish(subjects.run_control("human:bob"), b"as bob")
            await as_agent.publish(subjects.run_control("human:alice"), b"an agent")
            await as_alice.publish(subjects.API_STATUS, b"status")
            await as_alice.publish(subjects.API_AGENTS, b"agents")
            await as_alice.publish(subjects.run_control("human:alice"), b"as herself")
            await taps.until(subjects.run_control("human:alice"))
            for bus in (as_alice, as_agent, orchestrator):
                await bus.close()
            return taps.seen
        finally:
            server.stop()

    seen = asyncio.run(scenario())
    assert seen == [subjects.API_STATUS, subjects.API_AGENTS, subjects.run_control("human:alice")]


def test_the_cli_uses_the_persons_credentials_only_while_their_server_runs(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        person = person_user("human:alice")
        server = EmbeddedNats(tmp_path, users=[new_user("orchestrator", None), person])
        base = await server.start()
        save_person(tmp_path, PersonCredentials("human:alice", url_for(base, person)))
        assert (tmp_path / "nats" / "person.json").stat().st_mode & 0o777 == 0o600
        try:
            where = reach("", tmp_path)
            assert where is not None
            assert (where.url, where.identity) == (url_for(base, person), "human:alice")
            assert reach("nats://elsewhere:1", tmp_path) == ("nats://elsewhere:1", "")
        finally:
            server.stop()
        assert person_credentials(tmp_path) is None, "a stopped server's credentials are stale"
        assert reach("", tmp_path) is None

    asyncio.run(scenario())
