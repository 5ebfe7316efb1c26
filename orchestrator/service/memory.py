"""Shared memory: scopes `run` (a run's agents), `agent` (private to one agent) and
`global`, governed by each role's memory contract.

Every accepted write is an event in the `memory` stream, so the indexes here are
projections: rebuilt by replaying those events when the orchestrator starts. Retrieval
is lexical always (SQLite FTS5, ranked by BM25) and by vector similarity when an
embeddings endpoint is configured (`$BATON_EMBEDDINGS_MODEL`, at `$OPENAI_BASE_URL` or
`$BATON_EMBEDDINGS_URL`), through a usearch HNSW index. usearch rather than sqlite-vec:
the stdlib `sqlite3` of many Pythons (this one included) cannot load extensions, and
usearch is one pip wheel with a real approximate-nearest-neighbour index.

Who may read or write a scope comes from the caller's role contract; the caller's
identity comes from the subject it used (its own inbox, its own search subject), which
the governed NATS server lets only that agent publish to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.contracts import Contracts
from bus.errors import BusError, MalformedMessage
from bus.protocol import (
    ErrorReply,
    MemoryHit,
    MemoryHits,
    MemoryScope,
    MemorySearch,
    MemoryWrite,
    SearchMode,
    TaskResult,
)
from bus.tracecontext import new_span_id
from eventstore import ConcurrencyError, EventQuery, EventStore, EventStoreError, NewEvent
from orchestrator.service.bounded import Lru

if TYPE_CHECKING:
    import openai
    from usearch.index import Index

log = logging.getLogger("baton.memory")
STREAM = "memory"
EVENT_TYPE = "memory.written"
MAX_LIMIT = 50
SHARED_LIMIT = 100_000
"""Attempts whose shared writes are remembered for a handoff, the newest this many: a
result comes right after its attempt's writes, so an older attempt's are not asked for."""
EMBED_BATCH = 64
_search: Decoder[MemorySearch] = Decoder(MemorySearch)
_written: msgspec.msgpack.Decoder[MemoryWrite] = msgspec.msgpack.Decoder(MemoryWrite)


class MemoryRefused(MalformedMessage):
    """A write or read outside the caller's memory contract (audited, changes nothing)."""


def owner_of(entry: MemoryWrite) -> str:
    """Whose entry it is within its scope: the run, the agent, or everyone."""
    return {"run": entry.run_id, "agent": entry.agent_id, "global": ""}[entry.scope]


def _fts_query(text: str) -> str:
    words = re.findall(r"\w+", text.lower())
    return " OR ".join(f'"{w}"' for w in words)


class LexicalIndex:
    """FTS5 over the entries, BM25-ranked, filtered to what a caller may see."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:")
        self._db.execute(
            "CREATE VIRTUAL TABLE entries USING fts5("
            "key, text, scope UNINDEXED, owner UNINDEXED, ref UNINDEXED)"
        )

    def add(self, rowid: int, entry: MemoryWrite, ref: str) -> None:
        self._db.execute(
            "INSERT INTO entries(rowid, key, text, scope, owner, ref) VALUES (?, ?, ?, ?, ?, ?)",
            (rowid, entry.key, entry.text, entry.scope, owner_of(entry), ref),
        )

    def remove(self, rowid: int) -> None:
        self._db.execute("DELETE FROM entries WHERE rowid = ?", (rowid,))

    def search(
        self, query: str, visible: Sequence[tuple[str, str]], limit: int
    ) -> list[tuple[int, float]]:
        match = _fts_query(query)
        if not match or not visible:
            return []
        where = " OR ".join("(scope = ? AND owner = ?)" for _ in visible)
        params: list[Any] = [match, *(v for pair in visible for v in pair), limit]
        rows = self._db.execute(
            f"SELECT rowid, bm25(entries) FROM entries WHERE entries MATCH ? AND ({where}) "
            "ORDER BY bm25(entries) LIMIT ?",
            params,
        ).fetchall()
        return [(int(rowid), -float(rank)) for rowid, rank in rows]


class VectorIndex:
    """Cosine similarity over embeddings in a usearch HNSW index (usearch and numpy are
    imported on the first vector: an orchestrator without embeddings never loads them)."""

    def __init__(self) -> None:
        self._index: Index | None = None

    def add(self, rowid: int, vector: list[float]) -> None:
        import numpy as np
        from usearch.index import Index

        if self._index is None:
            self._index = Index(ndim=len(vector), metric="cos")
        self._index.add(rowid, np.asarray(vector, dtype=np.float32))

    def remove(self, rowid: int) -> None:
        if self._index is not None and rowid in self._index:
            self._index.remove(rowid)

    def search(self, vector: list[float], count: int) -> list[tuple[int, float]]:
        if self._index is None or len(self._index) == 0:
            return []
        import numpy as np

        found = self._index.search(np.asarray(vector, dtype=np.float32), count)
        return [(int(k), 1.0 - float(d)) for k, d in zip(found.keys, found.distances, strict=True)]


class EmbeddingError(Exception):
    """The embeddings endpoint failed (the openai client's error, as text)."""


class Embedder:
    """Texts to vectors through any OpenAI-compatible embeddings endpoint (the openai
    client is imported only when one is configured: it takes ~0.3 s to import)."""

    def __init__(self, model: str, client: openai.AsyncOpenAI) -> None:
        self.model = model
        self._client = client

    @classmethod
    def from_env(cls) -> Embedder | None:
        model = os.environ.get("BATON_EMBEDDINGS_MODEL", "")
        if not model:
            return None
        base = os.environ.get("BATON_EMBEDDINGS_URL") or os.environ.get("OPENAI_BASE_URL")
        import openai

        client = openai.AsyncOpenAI(
            base_url=base or None,
            api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=30.0,
            max_retries=2,
        )
        return cls(model, client)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        import openai

        try:
            response = await self._client.embeddings.create(model=self.model, input=texts)
        except openai.OpenAIError as exc:
            raise EmbeddingError(f"{type(exc).__name__}: {exc}") from exc
        return [list(d.embedding) for d in sorted(response.data, key=lambda d: d.index)]


class MemoryService:
    """Records governed writes, keeps the indexes, and answers agents' searches."""

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        *,
        contracts: Contracts | None,
        role_of: Callable[[str], str | None],
        works_in: Callable[[str, str], bool],
        embedder: Embedder | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._contracts = contracts
        self._role_of = role_of
        self._works_in = works_in
        self._embedder = embedder
        self._lexical = LexicalIndex()
        self._vectors = VectorIndex()
        self._entries: dict[int, tuple[MemoryWrite, str]] = {}
        self._slots: dict[tuple[str, str, str], int] = {}
        self._refs: dict[str, int] = {}
        """Event id of each live entry → its row."""
        self._shared: Lru[tuple[str, str, int], list[str]] = Lru(SHARED_LIMIT)
        """(run, task, attempt) → refs of the `run`/`global` entries that attempt wrote."""
        self._lock = asyncio.Lock()
        self._version = 0
        self._subscription: Subscription | None = None
        self.elsewhere: Callable[[str], bool] | None = None
        """Sharing the runs: whether a run is another orchestrator's (it answers)."""
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Rebuild the indexes from the `memory` stream, then serve searches."""
        stored = await self._store.read_stream(STREAM)
        self._version = stored[-1].version if stored else 0
        entries = [(_written.decode(e.data), e.event_id, e.position) for e in stored]
        for entry, ref, position in entries:
            self._index_lexical(position, entry, ref)
        live = [
            (position, entry.text) for entry, _, position in entries if position in self._entries
        ]
        for start in range(0, len(live), EMBED_BATCH):
            self._embed_later(live[start : start + EMBED_BATCH])
        self._subscription = await self._bus.subscribe(subjects.MEMORY_SEARCH_ALL, self._on_search)

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def _check(self, role: str, scope: str, action: str, sender: str) -> None:
        if self._contracts is None:
            return
        known = self._role_of(sender)
        if known is None or known != role:
            raise MemoryRefused(f"{sender} is not a live agent of role {role!r}")
        contract = self._contracts.get(role)
        allowed = contract.may_write(scope) if action == "write" else contract.may_read(scope)
        if not allowed:
            raise MemoryRefused(f"role {role!r} may not {action} {scope!r} memory")

    async def write(self, entry: MemoryWrite, sender: str, trace_id: str = "") -> bool:
        """Record and index a write; False if the append failed (do not ack). A write by
        another agent than the sender, or outside its contract, is `MalformedMessage`."""
        if entry.agent_id != sender:
            raise MalformedMessage(f"memory write by {entry.agent_id} sent as {sender}")
        self._check(entry.role, entry.scope, "write", sender)
        if not self._works_in(entry.run_id, sender):
            raise MemoryRefused(f"{sender} has no task in run {entry.run_id!r}")
        event = NewEvent(
            event_id=write_event_id(entry),
            type=EVENT_TYPE,
            data=encode(entry),
            correlation_id=entry.run_id,
            causation_id=f"{entry.task_id}:{entry.attempt}",
            actor=sender,
            trace_id=trace_id,
            span_id=new_span_id(),
        )
        async with self._lock:
            try:
                try:
                    stored = await self._store.append(STREAM, [event], self._version)
                except ConcurrencyError:  # another writer (a fork's copies): index, retry
                    await self._catch_up()
                    stored = await self._store.append(STREAM, [event], self._version)
            except EventStoreError as exc:
                log.warning("memory write %s not recorded: %s", event.event_id, exc)
                self._version = await self._store.stream_version(STREAM)
                return False
            self._version = max(self._version, stored[-1].version)
            position = stored[-1].position
            if position not in self._entries:
                self._index_lexical(position, entry, event.event_id)
        self._embed_later([(position, entry.text)])
        return True

    async def _catch_up(self) -> None:
        """Index what others appended to the `memory` stream since this service's last
        known version (`baton fork` copying a run's memory while the service runs)."""
        newer = await self._store.read_stream(STREAM, from_version=self._version + 1)
        fresh = [(e.position, _written.decode(e.data), e.event_id) for e in newer]
        for position, entry, ref in fresh:
            if position not in self._entries:
                self._index_lexical(position, entry, ref)
        self._embed_later([(p, entry.text) for p, entry, _ in fresh if p in self._entries])
        if newer:
            self._version = newer[-1].version

    def _embed_later(self, items: list[tuple[int, str]]) -> None:
        """Embed in the background: the inbox loop never waits for a model. A vector
        search waits for what is pending, so it still reads every recorded write."""
        if self._embedder is None or not items:
            return
        embedder = self._embedder

        async def embed() -> None:
            try:
                vectors = await embedder.embed([text for _, text in items])
            except EmbeddingError as exc:
                log.warning("memory vectors missing (lexical still works): %s", exc)
                return
            for (rowid, _), vector in zip(items, vectors, strict=True):
                if rowid in self._entries:  # not overwritten meanwhile
                    self._vectors.add(rowid, vector)

        task = asyncio.create_task(embed())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _index_lexical(self, rowid: int, entry: MemoryWrite, ref: str) -> None:
        slot = (entry.scope, owner_of(entry), entry.key)
        previous = self._slots.get(slot)
        if previous is not None:  # a key written again: the newest value wins
            self._lexical.remove(previous)
            self._vectors.remove(previous)
            del self._refs[self._entries.pop(previous)[1]]
        self._slots[slot] = rowid
        self._entries[rowid] = (entry, ref)
        self._refs[ref] = rowid
        if entry.scope != "agent":
            attempt = (entry.run_id, entry.task_id, entry.attempt)
            self._shared.set(attempt, [*(self._shared.get(attempt) or []), ref])
        self._lexical.add(rowid, entry, ref)

    def forget_run(self, run_id: str) -> None:
        """The run ended and is no longer served: drop which of its attempts shared what
        (the entries themselves stay searchable)."""
        for key, _ in [item for item in self._shared.items() if item[0][0] == run_id]:
            self._shared.pop(key)

    def shared_by(self, result: TaskResult) -> tuple[str, ...]:
        """Refs of the `run` and `global` entries the attempt behind `result` wrote that
        still hold (not since overwritten): what a handoff passes to the next owner.
        Its writes were recorded before its result, which follows them in the inbox."""
        written = self._shared.get((result.run_id, result.task_id, result.attempt)) or []
        return tuple(
            ref
            for ref in written
            if ref in self._refs and self._entries[self._refs[ref]][0].agent_id == result.agent_id
        )

    async def search(self, request: MemorySearch, searcher: str) -> MemoryHits:
        """Entries visible to `searcher` in the scopes it asked for and may read: its own
        `agent` entries, `global` ones, and the `run` entries of a run it works in."""
        role = self._role_of(searcher) or ""
        for scope in request.scopes:
            self._check(role, scope, "read", searcher)
        if "run" in request.scopes and not self._works_in(request.run_id, searcher):
            raise MemoryRefused(f"{searcher} has no task in run {request.run_id!r}")
        owners = {"run": request.run_id, "agent": searcher, "global": ""}
        visible = [(scope, owners[scope]) for scope in dict.fromkeys(request.scopes)]
        if request.refs:
            return self.named(request.refs, visible, request.mode)
        return await self.query(request.query, visible, request.limit, request.mode)

    def named(
        self, refs: Sequence[str], visible: list[tuple[MemoryScope, str]], mode: SearchMode
    ) -> MemoryHits:
        """The live entries `refs` name among (scope, owner) pairs, in the order asked;
        a ref that names nothing visible (overwritten, private, another run's) is left out."""
        if len(refs) > MAX_LIMIT:
            raise MalformedMessage(f"at most {MAX_LIMIT} refs at once")
        allowed = set(visible)
        hits = []
        for ref in dict.fromkeys(refs):
            rowid = self._refs.get(ref)
            if rowid is None:
                continue
            entry, _ = self._entries[rowid]
            if (entry.scope, owner_of(entry)) in allowed:
                hits.append(
                    MemoryHit(
                        ref, entry.scope, entry.key, entry.text, entry.agent_id, entry.run_id, 1.0
                    )
                )
        return MemoryHits(hits, mode)

    async def query(
        self, text: str, visible: list[tuple[MemoryScope, str]], limit: int, mode: SearchMode
    ) -> MemoryHits:
        """The best entries among (scope, owner) pairs, unchecked: for trusted callers."""
        if not 1 <= limit <= MAX_LIMIT:
            raise MalformedMessage(f"limit must be between 1 and {MAX_LIMIT}")
        if mode == "lexical":
            ranked = self._lexical.search(text, visible, limit)
        else:
            if self._embedder is None:
                raise MalformedMessage("vector search needs an embeddings endpoint")
            (vector,) = await self._embedder.embed([text])
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            allowed = set(visible)
            candidates = self._vectors.search(vector, max(limit * 8, 32))
            ranked = [
                (rowid, score)
                for rowid, score in candidates
                if rowid in self._entries
                and (self._entries[rowid][0].scope, owner_of(self._entries[rowid][0])) in allowed
            ][:limit]
        hits = []
        for rowid, score in ranked:
            entry, ref = self._entries[rowid]
            hits.append(
                MemoryHit(
                    ref, entry.scope, entry.key, entry.text, entry.agent_id, entry.run_id, score
                )
            )
        return MemoryHits(hits, mode)

    async def _on_search(self, msg: Incoming) -> None:
        try:
            searcher = subjects.memory_searcher(msg.subject)
            request = _search.decode(msg.data)
            if self.elsewhere is not None:  # sharing the runs: the run's owner answers,
                if self.elsewhere(request.run_id):  # having read what the others wrote
                    return
                async with self._lock:
                    await self._catch_up()
            answer: MemoryHits | ErrorReply = await self.search(request, searcher)
        except (BusError, EmbeddingError, EventStoreError) as exc:
            answer = ErrorReply(type(exc).__name__, str(exc))
        await msg.reply(encode(answer))


async def recorded(store: EventStore) -> list[MemoryWrite]:
    """Every recorded memory write, oldest first (for audits and tests)."""
    stored = await store.query(EventQuery(stream=STREAM))
    return [_written.decode(e.data) for e in stored]


def write_event_id(entry: MemoryWrite) -> str:
    """The event id (and so the ref) of a write: one per write, so a re-sent one is a no-op."""
    return f"memory:{entry.run_id}:{entry.task_id}:{entry.attempt}:{entry.write_id}"


async def copy_run_memory(
    store: EventStore, origin: str, until_position: int, run_id: str, attempts: int = 5
) -> dict[str, str]:
    """Give `run_id` (a fork) the `run`-scope memory `origin` had at global position
    `until_position`: each write up to there is recorded again, as a `memory.written`
    event of the new run caused by the original, so replay rebuilds the fork's memory.
    The copies keep the original ids' parts, so copying twice changes nothing. Returns
    each copied write's id in the origin and its copy's id."""
    stored = await store.query(
        EventQuery(stream=STREAM, correlation_id=origin, to_position=until_position)
    )
    copies: list[NewEvent] = []
    ids: dict[str, str] = {}
    for original in stored:
        entry = _written.decode(original.data)
        if entry.scope != "run" or entry.run_id != origin:
            continue
        moved = msgspec.structs.replace(entry, run_id=run_id)
        copies.append(
            NewEvent(
                event_id=write_event_id(moved),
                type=EVENT_TYPE,
                data=encode(moved),
                correlation_id=run_id,
                causation_id=original.event_id,
                actor=original.actor,
                trace_id=original.trace_id,
                span_id=new_span_id(),
            )
        )
        ids[original.event_id] = copies[-1].event_id
    if not copies:
        return ids
    for tried in range(1, attempts + 1):  # a live memory service may append meanwhile
        try:
            await store.append(STREAM, copies, await store.stream_version(STREAM))
            break
        except ConcurrencyError:
            if tried == attempts:
                raise
    return ids
