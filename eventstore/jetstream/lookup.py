"""Which positions of the indexed log a query can match, from the index alone.

A query's stream, correlation id, actor and type glob each name a set of positions the
index holds (a glob: the union of the matching types'); the events the query can match lie
in their intersection, so the reader fetches only those instead of scanning the log. The
other filters (text, time) are applied to the events read, as in a scan.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Sequence

from eventstore._common import glob_to_regex
from eventstore.jetstream.index import LogIndex
from eventstore.model import EventQuery

Group = list[Sequence[int]]
"""Ascending position lists whose union is the positions one filter allows."""


def _groups(index: LogIndex, query: EventQuery) -> list[Group]:
    groups: list[Group] = []
    if query.stream is not None:
        groups.append([index.positions.get(query.stream, [])])
    if query.correlation_id is not None:
        groups.append([index.correlations.get(query.correlation_id, [])])
    if query.actor is not None:
        groups.append([index.actors.get(query.actor, [])])
    if query.type_glob is not None:
        pattern = glob_to_regex(query.type_glob)
        groups.append([found for name, found in index.types.items() if pattern.fullmatch(name)])
    return groups


def _between(positions: Sequence[int], low: int, high: int) -> Iterator[int]:
    start = bisect.bisect_left(positions, low)
    stop = bisect.bisect_right(positions, high)
    return (positions[i] for i in range(start, stop))


def _holds(positions: Sequence[int], position: int) -> bool:
    at = bisect.bisect_left(positions, position)
    return at < len(positions) and positions[at] == position


def narrows(query: EventQuery) -> bool:
    """Whether the index narrows `query` down better than a scan: it names a correlation
    id, an actor or a type (a stream alone is read by its subject)."""
    return (
        query.correlation_id is not None or query.actor is not None or (query.type_glob is not None)
    )


def candidates(index: LogIndex, query: EventQuery) -> Iterator[int]:
    """The ascending positions from `query.from_position` to `query.to_position` and the
    index's tail allowed by every indexed filter of `query`."""
    low = max(query.from_position, 1)
    high = index.tail if query.to_position is None else min(query.to_position, index.tail)
    groups = _groups(index, query)
    if not groups:
        return iter(range(low, high + 1))
    driver = min(groups, key=lambda group: sum(len(p) for p in group))
    others = [group for group in groups if group is not driver]
    walk = heapq.merge(*(_between(p, low, high) for p in driver))
    return (
        position
        for position in walk
        if all(any(_holds(p, position) for p in group) for group in others)
    )
