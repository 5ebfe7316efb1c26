"""The agent's side of large values: an attempt's input arrives with references where the
orchestrator kept large values as blobs, and its output leaves with references where its
values are large. `AgentBlobs` does both swaps for the runtime, so a handler gets whole
values and returns whole values (`bus.blobs` says which values travel by reference).

Every blob goes over the bus in chunks of `BLOB_CHUNK_BYTES` (request/reply on the agent's
own `baton.blob.<agent_id>.put|get`), and every blob read is checked against its digest
here as well as by the orchestrator, so a forged or damaged blob never reaches a handler.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from agents.errors import AgentError
from bus import blobs, subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.errors import BusError
from bus.protocol import (
    BLOB_CHUNK_BYTES,
    BLOB_THRESHOLD,
    BlobChunk,
    BlobGet,
    BlobPut,
    BlobPutAck,
    BlobRef,
    ErrorReply,
    Payload,
)

_put_reply: Decoder[BlobPutAck | ErrorReply] = Decoder(BlobPutAck | ErrorReply)
_get_reply: Decoder[BlobChunk | ErrorReply] = Decoder(BlobChunk | ErrorReply)
THRESHOLD_ENV = "BATON_BLOB_THRESHOLD"
STORE_BYTES_PER_S = 10_000_000
"""The slowest store a whole blob's last chunk waits for (it is stored before its ack)."""


class BlobError(AgentError):
    """A blob that could not be stored or read; `code` is the orchestrator's error code
    (`bus.protocol.BLOB_ERRORS`), or `BlobUnavailable` when the bus failed."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class BlobForged(BlobError):
    """A blob whose bytes do not hash to the digest that names them: refused, never used."""


class BlobConfigError(AgentError):
    """A blob threshold that is not a whole number of bytes of at least 1."""


def threshold_from_env(default: int = BLOB_THRESHOLD) -> int:
    """`$BATON_BLOB_THRESHOLD` (bytes, at least 1), else `default`: an agent's output
    values encoded larger than this leave as blob references (`AgentRuntime`'s
    `blob_threshold` when none is given)."""
    text = os.environ.get(THRESHOLD_ENV, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BlobError(
            "BadBlobRequest", f"{THRESHOLD_ENV}={text!r} is not a number of bytes"
        ) from None
    if value < 1:
        raise BlobError("BadBlobRequest", f"{THRESHOLD_ENV} must be at least 1, got {value}")
    return value


def _refused(reply: ErrorReply) -> BlobError:
    kind = BlobForged if reply.error == "BlobMismatch" else BlobError
    return kind(reply.error, reply.detail)


class AgentBlobs:
    """One agent's blob traffic for one run: puts and gets over its own subjects."""

    def __init__(
        self,
        bus: Bus,
        agent_id: str,
        run_id: str,
        *,
        threshold: int = BLOB_THRESHOLD,
        timeout_s: float = 10.0,
    ) -> None:
        self._bus = bus
        self._put_subject = subjects.blob_put(agent_id)
        self._get_subject = subjects.blob_get(agent_id)
        self._run_id = run_id
        self.threshold = threshold
        self._timeout_s = timeout_s

    async def put(self, data: bytes, media_type: str) -> BlobRef:
        """Upload `data` in chunks; its reference once the orchestrator has it durably."""
        digest = blobs.digest_of(data)
        upload_id = secrets.token_hex(8)
        offset = 0
        while True:
            chunk = data[offset : offset + BLOB_CHUNK_BYTES]
            message = BlobPut(self._run_id, upload_id, offset, chunk, len(data), digest, media_type)
            last = offset + len(chunk) >= len(data)  # stored whole before it is answered
            wait = self._timeout_s + (len(data) / STORE_BYTES_PER_S if last else 0.0)
            reply = await self._ask(self._put_subject, encode(message), _put_reply, wait)
            if isinstance(reply, ErrorReply):
                raise _refused(reply)
            if reply.ref is not None:
                if reply.ref.digest != digest or reply.ref.size != len(data):
                    raise BlobForged("BlobMismatch", f"stored as {reply.ref}, sent {digest}")
                ref: BlobRef = reply.ref
                return ref
            if reply.received <= offset or reply.received >= len(data):
                raise BlobError("BlobUploadBroken", f"acknowledged {reply.received} of {len(data)}")
            offset = reply.received

    async def get(self, ref: BlobRef) -> bytes:
        """The bytes `ref` names, downloaded in chunks and checked against its digest."""
        parts: list[bytes] = []
        offset = 0
        while True:
            message = BlobGet(self._run_id, ref.digest, offset, BLOB_CHUNK_BYTES)
            reply = await self._ask(self._get_subject, encode(message), _get_reply, self._timeout_s)
            if isinstance(reply, ErrorReply):
                raise _refused(reply)
            if reply.offset != offset or reply.digest != ref.digest:
                raise BlobError("BlobUploadBroken", f"asked for {offset}, got {reply.offset}")
            parts.append(reply.data)
            offset += len(reply.data)
            if offset >= reply.size or not reply.data:
                break
        data = b"".join(parts)
        try:
            return blobs.check(ref, data)
        except blobs.BlobMismatch as exc:
            raise BlobForged("BlobMismatch", str(exc)) from exc

    async def _ask(
        self, subject: str, payload: bytes, decoder: Decoder[Any], timeout_s: float
    ) -> Any:
        try:
            return decoder.decode(await self._bus.request(subject, payload, timeout_s))
        except BusError as exc:
            raise BlobError("BlobUnavailable", f"{subject}: {exc}") from exc

    async def inflate(self, payload: Payload) -> Payload:
        """`payload` with each reference replaced by its value."""
        value = await blobs.internalize(payload, self.get)
        if not isinstance(value, dict):
            raise BlobError("BadBlobRequest", "a payload whose blob is not a map")
        return value

    async def deflate(self, payload: Payload) -> Payload:
        """`payload` with each value over the threshold stored and replaced by a reference."""
        value = await blobs.externalize(payload, self.put, self.threshold)
        assert isinstance(value, dict)
        return value
