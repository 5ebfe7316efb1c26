"""Bounded memory for a long-lived service.

Anything the shell keeps per message, per sender or per attempt (ids already recorded,
agents already refused, audit budgets) would grow for as long as the service runs, and
faster when someone sends it junk. So it is kept in an `Lru`: at most `limit` entries,
the least recently set forgotten first. Each user says what forgetting costs it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A mapping of at most `limit` entries; setting one past the limit forgets the
    least recently set one (and returns it, for the caller to account for)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an Lru holds at least one entry, not {limit}")
        self.limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def set(self, key: K, value: V) -> list[tuple[K, V]]:
        """Set `key` (now the most recent); returns the entries forgotten to make room."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        forgotten = []
        while len(self._entries) > self.limit:
            forgotten.append(self._entries.popitem(last=False))
        return forgotten

    def add_all(self, keys: Iterable[K], value: V) -> None:
        """Set each of `keys` to `value` (what is forgotten is of no further use)."""
        for key in keys:
            self.set(key, value)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        """The entries, least recently set first."""
        return list(self._entries.items())
