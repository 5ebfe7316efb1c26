"""Shared memory: scopes and the memory contract enforced on both sides, every write an
event, lexical (FTS5/BM25) and vector (usearch) retrieval, rebuilt by replay. The
integration tests run real agent processes on a governed stack."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import subjects
from bus.codec import encode
from bus.protocol import MemorySearch, MemoryWrite
from orchestrator.core.events import MessageRejected
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal, memory
from orchestrator.service.memory import LexicalIndex, MemoryRefused, VectorIndex
from tests.cluster import REPO, cluster
from tests.fake_openai import FakeOpenAI, embed

HANDLERS = REPO / "tests" / "memory_handlers.py"
ROLES = """
[[roles]]
name = "scribe"
memory = { read = ["run"], write = ["run"] }

[[roles]]
name = "reader"
memory = { read = ["run", "global"], write = [] }
"""


def entry(scope: str, key: str, text: str, run: str = "r1", agent: str = "a1") -> MemoryWrite:
    return MemoryWrite("w", run, "t", 1, agent, "scribe", scope, key, text)  # type: ignore[arg-type]


def test_lexical_search_ranks_by_bm25_and_sees_only_visible_scopes() -> None:
    index = LexicalIndex()
    index.add(1, entry("run", "k1", "nats jetstream keeps the inbox durable"), "e1")
    index.add(2, entry("run", "k2", "sqlite keeps the log; nats nats nats"), "e2")
    index.add(3, entry("run", "k3", "nats in another run", run="r2"), "e3")
    index.add(4, entry("agent", "k4", "nats private note", agent="a2"), "e4")
    index.add(5, entry("global", "k5", "unrelated words"), "e5")
    found = index.search("NATS?", [("run", "r1"), ("global", "")], 10)
    assert [rowid for rowid, _ in found] == [2, 1], "more matches rank higher; other runs unseen"
    assert found[0][1] > found[1][1] > 0
    assert index.search("nats", [("agent", "a2")], 10)[0][0] == 4
    assert index.search("nats", [("agent", "a1")], 10) == []
    assert index.search('" OR 1=1 --', [("run", "r1")], 10) == [], "query syntax is not passed"
    index.remove(2)
    assert [r for r, _ in index.search("nats", [("run", "r1")], 10)] == [1]


def test_vector_search_finds_the_nearest_texts() -> None:
    index = VectorIndex()
    texts = ["the cat sat on the mat", "stock markets fell sharply", "a cat on a mat"]
    for i, text in enumerate(texts):
        index.add(i, embed(text))
    nearest = index.search(embed("cat mat"), 3)
    assert {nearest[0][0], nearest[1][0]} == {0, 2}
    assert nearest[-1][0] == 1
    index.remove(0)
    assert 0 not in [k for k, _ in index.search(embed("cat mat"), 3)]


@pytest.fixture
def embeddings(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("BATON_EMBEDDINGS_MODEL", "fake-embed")
        yield server


def test_agents_share_run_memory_within_their_contracts(
    tmp_path: Path, embeddings: FakeOpenAI
) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text(ROLES)
    notes = {
        "transport": "NATS carries every message between agents",
        "storage": "SQLite holds the append-only event log",
    }
    workflow = WorkflowSpec(
        "mem",
        [
            StepSpec("note", "scribe", params={"notes": notes}),
            StepSpec("ask", "reader", needs=["note"], params={"query": "event log"}),
            StepSpec(
                "ask_vector",
                "reader",
                needs=["note"],
                params={"query": "which log holds events", "mode": "vector", "scopes": ["run"]},
            ),
        ],
    )
    state_dir = tmp_path / "state"

    async def scenario() -> tuple[dict[str, object], list[MemoryWrite], list[MessageRejected]]:
        async with cluster(state_dir, contracts=str(roles)) as c:
            await c.add_agents(
                [
                    AgentSpec("scribe", f"{HANDLERS}:remember"),
                    AgentSpec("reader", f"{HANDLERS}:recall"),
                ]
            )
            run_id = await c.orchestrator.start_run(workflow)
            state = await c.orchestrator.wait(run_id, timeout=60)
            assert state.status == "completed", state.reason
            # the service enforces the contract too: a forged global write by the reader
            reader = next(a.agent_id for a in c.orchestrator.agents() if a.role == "reader")
            forged = MemoryWrite("x", run_id, "ask", 1, reader, "reader", "global", "k", "evil")
            await c.stack.bus.publish_durable(
                subjects.inbox(run_id, reader), encode(forged), msg_id="forged-memory"
            )
            async with asyncio.timeout(30):
                while True:
                    system = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
                    rejected = [
                        e for e in map(journal.decode_any, system) if isinstance(e, MessageRejected)
                    ]
                    if rejected:
                        break
                    await asyncio.sleep(0.05)
            written = await memory.recorded(c.stack.store)
            result = dict(state.result or {})
        # memory is rebuilt by replay: a new orchestrator over the same log finds it again
        async with cluster(state_dir, contracts=str(roles)) as again:
            (reader_again,) = await again.add_agents([AgentSpec("reader", f"{HANDLERS}:recall")])
            service = again.orchestrator.memory
            replayed = await service.query("event log", [("run", run_id)], 5, "lexical")
            assert [h.key for h in replayed.hits] == ["storage"]
            rebuilt = await service.query("which log holds events", [("run", run_id)], 5, "vector")
            assert rebuilt.hits[0].key == "storage", "vectors rebuilt from the replayed writes"
            # an agent cannot read the run memory of a run it has no task in
            with pytest.raises(MemoryRefused, match="has no task in run"):
                await service.search(MemorySearch(run_id, "event log", ["run"]), reader_again)
        return result, written, rejected

    result, written, rejected = asyncio.run(scenario())
    ask = result["ask"]
    assert isinstance(ask, dict)
    assert [h["key"] for h in ask["hits"]] == ["storage"]
    assert ask["hits"][0]["text"] == notes["storage"]
    assert ask["hits"][0]["ref"].startswith("memory:")
    assert "may not write 'global' memory" in ask["refused"]
    vector = result["ask_vector"]
    assert isinstance(vector, dict)
    assert vector["hits"][0]["key"] == "storage"
    assert {w.key for w in written} == {"transport", "storage"}, "only allowed writes recorded"
    assert all(w.scope == "run" and w.role == "scribe" for w in written)
    assert "role 'reader' may not write 'global' memory" in rejected[0].reason
    assert embeddings.embedding_requests, "vectors came from the embeddings endpoint"
