"""Suite-wide setup.

Bytecode: the suite starts hundreds of Python processes (`baton` commands, agents,
orchestrators). Where the environment sets PYTHONDONTWRITEBYTECODE, as this project's
machines do, each of them compiled every Baton module from source again: about 0.15 s of
CPU per process, a minute and a half of the suite's CPU. `pytest_sessionstart` compiles
the checkout once (a no-op when it is up to date; writes are atomic, so xdist's workers
may do it at the same time).

Hypothesis profiles for the pattern state machine (tests/test_pattern_properties.py):
`ci` (the default) runs 1,500 stateful examples, `dev` (HYPOTHESIS_PROFILE=dev) a quick
sample while editing, `mutants` the same examples as `ci` without shrinking (a mutant that
makes a decision hang fails each shrink step only after its 5 s guard). They are registered,
not loaded, so no other test's settings change.

`nats_url`: one nats-server with JetStream per test module that asks for it."""

from __future__ import annotations

import asyncio
import compileall
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from bus.server import EmbeddedNats

REPO = Path(__file__).resolve().parent.parent
_NOT_OURS = re.compile(r"[/\\]\.(venv|git|mypy_cache|ruff_cache|pytest_cache|hypothesis)[/\\]")

settings.register_profile("ci", max_examples=1500, deadline=None)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "mutants", max_examples=1500, deadline=None, phases=[Phase.generate, Phase.target]
)


def pytest_sessionstart(session: pytest.Session) -> None:
    compileall.compile_dir(REPO, rx=_NOT_OURS, quiet=2)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script (`cmd &`), the suite has Ctrl-C ignored,
        # and every process it starts would inherit that (a handler does not cross exec):
        # the tests that interrupt `baton run` need it as at a terminal.
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nats-server (JetStream, sync_interval: always) shared by a module's tests."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    assert server.sync_always
    url = asyncio.run(server.start())
    try:
        yield url
    finally:
        server.stop()
