"""`baton ui`'s guard alone (tokens, sessions, hosts, origins) and its refusal to listen
beyond loopback without `--allow-remote`: no stack needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the console needs the ui extra (pip install '.[ui]')")

from orchestrator.cli.console.command import bind
from orchestrator.cli.console.errors import UnsafeBind
from orchestrator.cli.console.guard import SESSION_S, Guard
from orchestrator.cli.listening import is_loopback
from tests.cluster import baton


def test_the_guard_alone_tokens_sessions_hosts_and_origins() -> None:
    guard = Guard.for_address("127.0.0.1", 8765)
    assert guard.host_ok("127.0.0.1:8765")
    assert guard.host_ok("localhost:8765")
    assert not guard.host_ok("evil.example:8765")
    assert not guard.host_ok("127.0.0.1:8766")
    assert not guard.host_ok("")
    token = guard.token
    assert len(token) >= 40
    assert guard.login("wrong", now=0.0) is None
    session = guard.login(token, now=0.0)
    assert session is not None
    assert guard.login(token, now=0.0) is None, "spent"
    assert guard.session(session.sid, now=1.0) == session
    assert guard.session(session.sid, now=SESSION_S + 1) is None, "it ends"
    assert guard.session(session.sid, now=1.0) is None, "and stays ended"
    assert guard.csrf_ok(session, session.csrf)
    assert not guard.csrf_ok(session, "")
    assert not guard.csrf_ok(session, session.csrf[:-1])
    assert guard.origin_ok("", "127.0.0.1:8765"), "no Origin: same-origin GET-like"
    assert guard.origin_ok("http://127.0.0.1:8765", "127.0.0.1:8765")
    assert not guard.origin_ok("http://evil.example", "127.0.0.1:8765")
    assert not guard.origin_ok("null", "127.0.0.1:8765")
    remote = Guard.for_address("0.0.0.0", 8765, remote=True)
    assert remote.host_ok("console.example:8765"), "let out: any name its operator uses"
    assert remote.origin_ok("https://console.example", "console.example")
    assert not remote.origin_ok("https://evil.example", "console.example")


def test_a_non_loopback_bind_needs_the_flag(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.1.2.3")
    with pytest.raises(UnsafeBind):
        bind("0.0.0.0", 0, allow_remote=False)
    out = subprocess.run(
        baton("ui", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "not a loopback address" in out.stderr
    bad = subprocess.run(baton("ui", "--port", "99999"), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "'99999' is not a port (0 to 65535)" in bad.stderr
    assert "--allow-remote" in out.stderr
