"""What a NATS connection says when it fails: during its first connect, the error that
tells why a server will not have the client (its login refused, its certificate not
trusted), not the broken pipe that may follow; once connected, one line when it is lost
and one when it is back, not a line per try, and one more if a server refuses it while
it tries (its login revoked: it would otherwise try on in silence)."""

from __future__ import annotations

import logging
import ssl
import time

import nats.errors

log = logging.getLogger("baton.bus")


def says_why(exc: BaseException) -> bool:
    """Whether a failed connect says why the server will not have this client (its login
    refused, its certificate not trusted), unlike the broken pipe or reset that may
    follow when the server closes the connection."""
    return isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLError)) or (
        "Authorization Violation" in str(exc)
    )


class Outage:
    """Logs a connection's outages: one line when it is lost (with the first error), one
    when it is back (how long, how many errors); the errors between are only counted,
    but the first that says why a server will not have it is logged too."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._since = 0.0
        self._errors = 0
        self._refused = False
        self.closing = False
        """Set by `Bus.close`: the disconnection that follows is no outage."""

    def error(self, exc: Exception) -> None:
        if self._since:
            self._errors += 1
            if says_why(exc) and not self._refused:
                self._refused = True
                log.warning(
                    "nats (%s): refused while reconnecting: %s; still trying", self._name, exc
                )
            return
        log.warning("nats (%s): %s", self._name, exc or type(exc).__name__)

    async def began(self) -> None:
        if not self._since and not self.closing:
            self._since = time.monotonic()
            self._errors = 0
            self._refused = False
            log.warning("nats (%s): disconnected; reconnecting", self._name)

    async def ended(self) -> None:
        if self._since:
            took = time.monotonic() - self._since
            log.warning(
                "nats (%s): reconnected after %.1f s (%d failed tries)",
                self._name,
                took,
                self._errors,
            )
        self._since = 0.0


class FirstConnect:
    """The error callback of a connect to `servers` servers. nats-py retries a failed
    first connect forever when reconnects are unlimited, so until `connected` an error is
    raised from here instead (once every server failed, or at once for a server
    certificate the configured authority does not vouch for); after, `outage` counts it."""

    def __init__(self, servers: int, outage: Outage) -> None:
        self._servers = servers
        self._outage = outage
        self.connected = False
        self.failed = 0
        self._telling: list[Exception] = []

    async def on_error(self, exc: Exception) -> None:
        if self.connected:
            self._outage.error(exc)
            return
        self.failed += 1
        if says_why(exc):
            self._telling.append(exc)
        if self.failed >= self._servers:  # each server tried (nats-py goes round them)
            raise self._telling[-1] if self._telling else exc
        if isinstance(exc, ssl.SSLCertVerificationError):  # stays so; and nats-py 2.16
            raise exc  # hangs on the next server after one

    def why(self, exc: BaseException) -> BaseException:
        """The error to name for a connect that failed with `exc`: one that says why, if
        any came, not the broken pipe after it."""
        return self._telling[-1] if self._telling else exc
