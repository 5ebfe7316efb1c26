"""The agent's side of shared memory: write to and search the scopes its role contract
allows. The contract is checked here first (a refused call never leaves the process) and
again by the memory service, which trusts the subject a message came on, not its payload.

A write goes through the durable inbox like a result, so it is recorded even across an
orchestrator restart, and in order with the attempt's result: a task that runs after
this one succeeded can read what it wrote.
"""

from __future__ import annotations

import secrets

from agents.errors import AgentError
from agents.outbox import note_inbox_write
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.contracts import RoleContract
from bus.errors import RequestFailed
from bus.protocol import (
    ErrorReply,
    MemoryHit,
    MemoryHits,
    MemoryScope,
    MemorySearch,
    MemoryWrite,
    SearchMode,
)

_hits: Decoder[MemoryHits | ErrorReply] = Decoder(MemoryHits | ErrorReply)


class MemoryDenied(AgentError):
    """A memory read or write outside the role's contract, or refused by the service."""


class Memory:
    """Shared memory as one attempt of one task sees it."""

    def __init__(
        self,
        bus: Bus,
        contract: RoleContract,
        *,
        agent_id: str,
        run_id: str,
        task_id: str,
        attempt: int,
        timeout_s: float = 10.0,
    ) -> None:
        self._bus = bus
        self.contract = contract
        self._where = (agent_id, run_id, task_id, attempt)
        self._timeout_s = timeout_s

    async def write(self, scope: MemoryScope, key: str, text: str) -> str:
        """Remember `text` under `key` (the newest value of a key wins); returns once the
        write is durably queued for recording. Its id is returned for reference."""
        if not self.contract.may_write(scope):
            raise MemoryDenied(f"role {self.contract.name!r} may not write {scope!r} memory")
        agent_id, run_id, task_id, attempt = self._where
        write_id = secrets.token_hex(8)
        entry = MemoryWrite(
            write_id, run_id, task_id, attempt, agent_id, self.contract.name, scope, key, text
        )
        note_inbox_write(write_id)
        await self._bus.publish_durable(
            subjects.inbox(run_id, agent_id),
            encode(entry),
            msg_id=f"{run_id}:{task_id}:{attempt}:memory:{write_id}",
        )
        return write_id

    async def read(
        self, refs: list[str], scopes: list[MemoryScope] | None = None
    ) -> list[MemoryHit]:
        """The entries `refs` name (e.g. `task.memory_refs` after a handoff), in that
        order; those overwritten since, or not readable by this role, are left out."""
        if not refs:
            return []
        return await self._ask(MemorySearch(self._where[1], "", self._scopes(scopes), refs=refs))

    def _scopes(self, scopes: list[MemoryScope] | None) -> list[MemoryScope]:
        wanted = scopes if scopes is not None else list(self.contract.memory.read)
        for scope in wanted:
            if not self.contract.may_read(scope):
                raise MemoryDenied(f"role {self.contract.name!r} may not read {scope!r} memory")
        return wanted

    async def search(
        self,
        query: str,
        scopes: list[MemoryScope] | None = None,
        *,
        limit: int = 5,
        mode: SearchMode = "lexical",
    ) -> list[MemoryHit]:
        """Best matches in `scopes` (default: every scope the contract lets it read)."""
        return await self._ask(
            MemorySearch(self._where[1], query, self._scopes(scopes), limit, mode)
        )

    async def _ask(self, request: MemorySearch) -> list[MemoryHit]:
        agent_id = self._where[0]
        try:
            reply = await self._bus.request(
                subjects.memory_search(agent_id), encode(request), self._timeout_s
            )
        except RequestFailed as exc:
            raise MemoryDenied(f"memory search failed: {exc}") from exc
        answer = _hits.decode(reply)
        if isinstance(answer, ErrorReply):
            raise MemoryDenied(f"{answer.error}: {answer.detail}")
        return answer.hits
