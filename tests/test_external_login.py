"""A bus the operator runs (`--nats URL`) takes the NATS ecosystem's own logins: a user
nkey seed (`$BATON_NATS_NKEY`) or a creds file with a user JWT (`$BATON_NATS_CREDS`, as
`nsc` writes it, for a server in operator mode: `tests.operator_mode`). Both against a
real nats-server configured here; a missing or wrong file is a clear error, never a hang."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nkeys
import pytest

from bus.connection import Bus
from bus.errors import BusError
from bus.nats_options import CREDS_ENV, NKEY_ENV
from bus.server import find_binary
from tests.operator_mode import Operator, keypair


@contextmanager
def nats_server(directory: Path, config: str) -> Iterator[str]:
    """A nats-server on a free loopback port with `config` added; its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.conf").write_text(
        f"listen: 127.0.0.1:-1\nports_file_dir: {json.dumps(str(directory))}\n{config}"
    )
    process = subprocess.Popen(
        [str(find_binary()), "-c", str(directory / "server.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ports = directory / f"nats-server_{process.pid}.ports"
        deadline = time.monotonic() + 15
        while not ports.exists():
            assert process.poll() is None, "nats-server refused its config"
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.02)
        time.sleep(0.05)  # the file is written whole once it is there; let it be read whole
        yield str(json.loads(ports.read_text())["nats"][0])
    finally:
        process.terminate()
        process.wait(10)


async def _round_trip(url: str) -> bytes:
    bus = await Bus.connect(url, name="operator-bus", tries=1)
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on(msg: object) -> None:
            await got.put(getattr(msg, "data", b""))

        await bus.subscribe("baton.test.login", on)
        await bus.publish("baton.test.login", b"in")
        async with asyncio.timeout(10):
            return await got.get()
    finally:
        await bus.close()


def test_a_user_nkey_seed_logs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = keypair(nkeys.PREFIX_BYTE_USER)
    seed = tmp_path / "user.nk"
    seed.write_bytes(user.seed)
    config = f'authorization {{ users = [ {{ nkey: "{user.public_key.decode()}" }} ] }}\n'
    with nats_server(tmp_path / "nats", config) as url:
        monkeypatch.delenv(NKEY_ENV, raising=False)
        with pytest.raises(BusError, match=r"(?i)authorization"):
            asyncio.run(_round_trip(url))
        monkeypatch.setenv(NKEY_ENV, str(seed))
        assert asyncio.run(_round_trip(url)) == b"in"
        other = tmp_path / "other.nk"
        other.write_bytes(keypair(nkeys.PREFIX_BYTE_USER).seed)
        monkeypatch.setenv(NKEY_ENV, str(other))
        with pytest.raises(BusError, match=r"(?i)authorization"):
            asyncio.run(_round_trip(url))


def test_a_creds_file_logs_in_to_a_server_in_operator_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = Operator.make()
    creds = operator.app.user_creds(tmp_path / "user.creds")
    config = operator.server_conf()
    with nats_server(tmp_path / "nats", config) as url:
        monkeypatch.delenv(CREDS_ENV, raising=False)
        with pytest.raises(BusError):
            asyncio.run(_round_trip(url))
        monkeypatch.setenv(CREDS_ENV, str(creds))
        assert asyncio.run(_round_trip(url)) == b"in"


@pytest.mark.parametrize("variable", [CREDS_ENV, NKEY_ENV])
def test_a_missing_or_wrong_login_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))
    with pytest.raises(BusError, match=rf"\${variable}: cannot read"):
        asyncio.run(Bus.connect("nats://127.0.0.1:1", name="x", tries=1))
    wrong = tmp_path / "wrong"
    wrong.write_text("not a login\n")
    monkeypatch.setenv(variable, str(wrong))
    with pytest.raises(BusError, match=rf"\${variable}: .* is not"):
        asyncio.run(Bus.connect("nats://127.0.0.1:1", name="x", tries=1))
