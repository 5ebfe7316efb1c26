"""Who may use the console, and how a page is kept from being abused by another site.

`baton ui` prints a URL with a one-time login token (as Jupyter does): opening it
trades the token for a session cookie (HttpOnly, SameSite=Strict) and the token is
spent. Every request needs that session; every action (a POST) also needs the
session's CSRF token, sent back from the page's form or header, and an `Origin`, when
the browser sends one, that is the console's own. A `Host` header naming any other
host is refused (DNS rebinding). Every response carries headers that forbid framing,
inline script, sniffing and referrers (the login URL holds the token)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "baton_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600.0
"""A session ends this long after its login (then `baton ui` again, for a new URL)."""
SESSIONS_MAX = 64
OPEN_PATHS = ("/login", "/static/")
"""Paths served without a session: the login itself, and the script and style sheet."""
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


@dataclass(frozen=True)
class Session:
    """One browser's login: its cookie value, its CSRF token, when it ends."""

    sid: str
    csrf: str
    ends: float


@dataclass
class Guard:
    """The login token (until spent), the live sessions and the hosts this console
    answers as."""

    hosts: frozenset[str] | None
    """The `Host` values accepted; None: any (a console let out with `--allow-remote`,
    whose names only its operator knows; its session and CSRF checks still hold)."""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    sessions: dict[str, Session] = field(default_factory=dict)

    @classmethod
    def for_address(cls, host: str, port: int, remote: bool = False) -> Guard:
        """The hosts a browser may call this console by: the bound address, and the
        loopback names when bound to loopback or to every address; any, if `remote`."""
        if remote:
            return cls(None)
        names = {host}
        if host in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::"):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        return cls(frozenset(f"{n}:{port}" for n in names))

    def login(self, offered: str, now: float | None = None) -> Session | None:
        """A new session for the right token, which is then spent; None otherwise."""
        if not self.token or not hmac.compare_digest(offered.encode(), self.token.encode()):
            return None
        self.token = ""
        now = time.time() if now is None else now
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + SESSION_S)
        self.sessions[session.sid] = session
        while len(self.sessions) > SESSIONS_MAX:
            del self.sessions[next(iter(self.sessions))]
        return session

    def renew(self) -> str:
        """A new one-time login token (the old one, if unspent, no longer works): a
        login link for another browser."""
        self.token = secrets.token_urlsafe(32)
        return self.token

    def session(self, cookie: str, now: float | None = None) -> Session | None:
        found = self.sessions.get(cookie) if cookie else None
        if found is None:
            return None
        if found.ends <= (time.time() if now is None else now):
            del self.sessions[cookie]
            return None
        return found

    def end(self, session: Session) -> None:
        self.sessions.pop(session.sid, None)

    def csrf_ok(self, session: Session, offered: str) -> bool:
        return bool(offered) and hmac.compare_digest(offered.encode(), session.csrf.encode())

    def origin_ok(self, origin: str, host: str) -> bool:
        """An `Origin` header, when there is one, must be this console: the host the
        request was sent to (which `host_ok` accepted), by HTTP or by a TLS proxy."""
        return not origin or origin in (f"http://{host}", f"https://{host}")

    def host_ok(self, host: str) -> bool:
        return bool(host) and (self.hosts is None or host in self.hosts)


def cookie_header(session: Session) -> str:
    return f"{COOKIE}={session.sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_S)}"


def _cookie(headers: Headers) -> str:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


async def _plain(send: Send, status: int, text: str, extra: Iterable[tuple[str, str]] = ()) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    headers += [(k.encode(), v.encode()) for k, v in (*HEADERS.items(), *extra)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


class Secured:
    """ASGI middleware: the host check, the session check and the security headers
    around every request; the session found is left in `scope["session"]`."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.guard.host_ok(headers.get("host", "")):
            await _plain(send, 400, "this console answers only by its own address")
            return
        path: str = scope["path"]
        session = self.guard.session(_cookie(headers))
        if session is None and not path.startswith(OPEN_PATHS):
            await _plain(
                send, 401, "no session: open the login URL `baton ui` printed (it works once)"
            )
            return
        scope["session"] = session

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    out[name] = value
            await send(message)

        await self.app(scope, receive, secured)
