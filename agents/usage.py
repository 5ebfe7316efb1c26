"""The tokens one attempt spends, metered where they are spent and reported with its result.

A value of its own because three places share it and none owns the others: the SDK hands
it to the handler (`task.usage`), telemetry adds what traced model calls report to it,
and the runtime puts its total on the `TaskResult`.
"""

from __future__ import annotations

from bus.protocol import Usage


class UsageMeter:
    """Model tokens one attempt spent; the runtime reports them on its `TaskResult`."""

    __slots__ = ("calls", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.calls = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens += max(0, input_tokens)
        self.output_tokens += max(0, output_tokens)
        self.calls += 1

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def report(self, extra_output_tokens: int = 0) -> Usage | None:
        """The `usage` of a `TaskResult` (with tokens a handler's `Reply` adds as output
        tokens): None when nothing was spent."""
        usage = Usage(self.input_tokens, self.output_tokens + max(0, extra_output_tokens))
        return usage if usage.tokens else None
