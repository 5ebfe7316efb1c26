"""The console's own errors: what a request got wrong, said to the person (HTTP 400),
never a stack trace."""

from __future__ import annotations

from orchestrator.core.errors import OrchestratorError


class ConsoleError(OrchestratorError):
    """Root of the console's errors."""


class BadInput(ConsoleError):
    """A form field or query parameter that cannot be used; nothing was done."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class NotReachable(ConsoleError):
    """An action that needs the running orchestrator's bus, with none reachable."""


class UnsafeBind(ConsoleError):
    """A bind address other than loopback without the flag that allows it."""


class NotInstalled(ConsoleError):
    """`baton ui` without the `ui` extra's web stack."""
