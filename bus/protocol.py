"""The wire vocabulary agents and the orchestrator share, and nothing else.

Each message is a frozen, tagged msgspec Struct: the tag (not the class name) is the wire
identity, unknown fields are refused, and each subject has one decoder for exactly the
messages that may arrive on it. An agent written in another language needs only this.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
"""The protocol these messages are: v1 is the `baton.` subjects and the messages below.
An incompatible change is a new version on subjects of its own (see docs/protocol.md)."""

Payload = dict[str, Any]
"""Task input or output: user data, any msgpack/JSON value under string keys."""


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class HeldTask(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An attempt an agent is working on, as its heartbeats list it (shown by `baton
    agents`). Listing it does not extend it: the attempt still ends at its `timeout_s`."""

    run_id: str
    task_id: str
    attempt: int


class Heartbeat(_Message, frozen=True, tag="agent.heartbeat"):
    """Agent → registry, periodically: I am alive, this is what I serve and hold."""

    agent_id: str
    role: str
    capabilities: list[str]
    capacity: int
    load: int
    held: list[HeldTask] = []
    contract_digest: str = ""
    """sha256 of the role contract the agent enforces on itself (`bus.contracts`)."""
    instance: str = ""
    """A random id of this agent process, new at each start, the same in all its heartbeats:
    one process owns an agent id while it is live, and another with the same id is
    refused (see `agent.heartbeat.ack`). Empty: the sender cannot be told apart from
    another process with its id, and gets assignments sent to any of them."""


IdVerdict = Literal["owner", "waiting", "refused"]
"""`owner`: the id is this process's, it is routed to. `waiting`: another live process
owns the id; nothing is routed to this one, it keeps heartbeating, and gets the id once
the owner has been silent for the TTL. `refused`: the owner is alive too, so this process
must stop (finish what it holds, take nothing new, exit)."""


class HeartbeatAck(_Message, frozen=True, tag="agent.heartbeat.ack"):
    """Orchestrator → agent, for each heartbeat: whether this process owns its agent id,
    and the heartbeat interval and TTL the orchestrator keeps."""

    instance: str
    """The `instance` of the heartbeat this answers; a process ignores the others'."""
    verdict: IdVerdict
    heartbeat_s: float
    """Send heartbeats at least this often (unless the agent was given an interval)."""
    ttl_s: float
    """Silent for longer than this (while the orchestrator is connected), an agent is
    lost and its attempts are given to others."""
    detail: str = ""


class Assignment(_Message, frozen=True, tag="task.assign", omit_defaults=True):
    """Orchestrator → the chosen agent: run this attempt, fenced by its lease token.

    The optional fields are left out when unset (an agent that sends no `instance` never
    sees one)."""

    run_id: str
    task_id: str
    attempt: int
    lease_token: str
    step: str
    role: str
    input: Payload
    timeout_s: float
    traceparent: str = ""
    """The W3C context of this assignment's dispatch span, when several travel in one
    message (a lone assignment's is in the message's headers too)."""
    instance: str = ""
    """The `instance` that owns the agent id: any other process with that id must not
    take it, nor answer (it answers nothing). Empty: whoever has the id takes it."""


class AssignAck(_Message, frozen=True, tag="task.assign.ack"):
    """Agent's reply to an assignment: taken (or already taken, for a re-send)."""

    accepted: bool
    reason: str = ""


class AssignBatch(_Message, frozen=True, tag="task.assign.batch"):
    """Orchestrator → one agent: the assignments one decision gave it, in one message."""

    assignments: list[Assignment]


class AssignAcks(_Message, frozen=True, tag="task.assign.acks"):
    """Agent's reply to an `AssignBatch`: one `AssignAck` per assignment, in order."""

    acks: list[AssignAck]


class Control(_Message, frozen=True, tag="agent.control", omit_defaults=True):
    """Orchestrator → agent: cancel one attempt, or drain."""

    action: Literal["cancel", "drain"]
    run_id: str = ""
    task_id: str = ""
    attempt: int = 0
    instance: str = ""
    """As an assignment's: only that process of the agent id acts on it ('' any)."""


class Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an attempt consumed, as its agent reports it; charged to the run's budget."""

    input_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class SubtaskRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A result's request for one more task, done by `role` with `params`."""

    role: str
    params: Payload = {}


class TaskResult(_Message, frozen=True, tag="task.result", omit_defaults=True):
    """Agent → orchestrator's durable inbox: the attempt succeeded.

    The optional fields are left out of the encoding when unset, so an agent that never
    sets them speaks the protocol older orchestrators know. A result may ask for
    subtasks (the task completes when they have) or hand the task to another role."""

    run_id: str
    task_id: str
    attempt: int
    lease_token: str
    agent_id: str
    output: Payload
    elapsed_s: float
    usage: Usage | None = None
    subtasks: list[SubtaskRequest] = []
    handoff_to: str = ""


class TaskFailure(_Message, frozen=True, tag="task.failure", omit_defaults=True):
    """Agent → orchestrator's durable inbox: the attempt failed."""

    run_id: str
    task_id: str
    attempt: int
    lease_token: str
    agent_id: str
    error: str
    retryable: bool = True
    escalate: bool = False
    """The attempt needs a person (a remote A2A agent asked for input): the task is
    escalated at once, whatever its step's `on_exhausted`, and waits for a decision."""


class CallForProposals(_Message, frozen=True, tag="task.cfp"):
    """Orchestrator → every agent of a role (contract net): bid for this attempt before
    `deadline_s` passes; the best bid wins it, no bids means plain routing."""

    run_id: str
    task_id: str
    attempt: int
    step: str
    role: str
    input: Payload
    deadline_s: float


class Bid(_Message, frozen=True, tag="task.bid"):
    """Agent → orchestrator: an offer for an attempt put out to tender. Lower cost wins,
    then shorter time, then higher confidence."""

    run_id: str
    task_id: str
    attempt: int
    agent_id: str
    cost: float
    time_s: float
    confidence: float


ToolPhase = Literal["requested", "refused", "awaiting", "approved", "denied", "succeeded", "failed"]


class ToolCallRecord(_Message, frozen=True, tag="tool.call"):
    """Agent → orchestrator's durable inbox: one step of one governed tool call (its
    request, the gateway's or approver's decision, its outcome), recorded as an event."""

    run_id: str
    task_id: str
    attempt: int
    agent_id: str
    call_id: str
    tool: str
    phase: ToolPhase
    risk: str = ""
    arguments: str = ""
    """The arguments as the caller sent them (JSON text, cut to 2 KiB)."""
    detail: str = ""
    by: str = ""
    """Who decided (`policy:<name>` or a human's name), for approved/denied."""


class ToolInvocation(_Message, frozen=True, tag="tool.invoke"):
    """Agent's gateway → a tool served on the bus (request/reply on `baton.tool.call.<tool>`),
    sent only after the gateway's checks and approval; the server lets only roles whose
    contract lists the tool publish there."""

    run_id: str
    task_id: str
    attempt: int
    agent_id: str
    call_id: str
    arguments: str
    """The arguments object as JSON text (validated again by the service)."""


class ToolOutcome(_Message, frozen=True, tag="tool.outcome"):
    """The tool service's reply: the result, or why the call failed."""

    call_id: str
    ok: bool
    result: Any = None
    error: str = ""


class ToolDecision(_Message, frozen=True, tag="tool.decision"):
    """A human (`baton tool approve|deny`) → the agent waiting on a tool call."""

    call_id: str
    approve: bool
    by: str
    reason: str = ""


class ToolDecisionAck(_Message, frozen=True, tag="tool.decision.ack"):
    """The waiting agent's reply: the decision was taken (False: it came too late)."""

    call_id: str
    taken: bool
    detail: str = ""


MemoryScope = Literal["run", "agent", "global"]
SearchMode = Literal["lexical", "vector"]


class MemoryWrite(_Message, frozen=True, tag="memory.write"):
    """Agent → orchestrator's durable inbox: remember `text` under `key` in a scope.
    Recorded as an event (memory is rebuilt by replay) only if the role may write there."""

    write_id: str
    run_id: str
    task_id: str
    attempt: int
    agent_id: str
    role: str
    scope: MemoryScope
    key: str
    text: str


class MemorySearch(_Message, frozen=True, tag="memory.search"):
    """Agent → memory service (request/reply on the agent's own search subject). With
    `refs` (e.g. those a handoff passed on), the entries they name instead of a search."""

    run_id: str
    query: str
    scopes: list[MemoryScope]
    limit: int = 5
    mode: SearchMode = "lexical"
    refs: list[str] = []


class MemoryHit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One remembered entry; `ref` (its event id) is the reference a handoff passes on."""

    ref: str
    scope: MemoryScope
    key: str
    text: str
    agent_id: str
    run_id: str
    score: float


class MemoryHits(_Message, frozen=True, tag="memory.hits"):
    """The memory service's answer, best first."""

    hits: list[MemoryHit]
    mode: SearchMode


class ReportBatch(_Message, frozen=True, tag="task.reports"):
    """Agent → orchestrator: several outcomes of one run in one message, so one durable
    (fsynced) inbox write carries every result that finished while the last was stored."""

    reports: list[TaskResult | TaskFailure]
    traceparents: list[str] = []
    """Each report's W3C context (its attempt's span), in order; '' where none."""


REPORT_CODES: dict[str, str] = {
    "": "accepted: the report is the attempt's outcome",
    "duplicate": "accepted earlier: this copy changed nothing (accepted stays true)",
    "forged": "the payload's agent_id is not the sender's (its subject's) agent id",
    "unknown_task": "the run has no task with this id",
    "attempt_ended": "the attempt already ended another way (the other kind of report, "
    "its timeout, its agent lost, undeliverable, handed off)",
    "run_ended": "the run has ended",
    "stale_attempt": "not the task's current attempt (it timed out, or was retried)",
    "not_running": "the task is not running (waiting for a retry, cancelled, ended)",
    "lease_mismatch": "the lease token is not the attempt's",
    "not_holder": "the sender does not hold the attempt",
}
"""Every `ReportVerdict.code`, with its meaning. A code not listed here (a newer
orchestrator's) is read by its `accepted` flag."""


class ReportVerdict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the orchestrator made of one report. `accepted` false: the report was refused
    (and audited as `result.rejected`); the agent must not send it again."""

    accepted: bool = True
    code: str = ""
    """Machine-readable: one of `REPORT_CODES` ('' for a plain acceptance)."""
    reason: str = ""
    """For people: why it was refused, or that it was a duplicate."""


class ReportAck(_Message, frozen=True, tag="task.report.ack", omit_defaults=True):
    """Orchestrator's reply to a fast report, once what it caused is durable in the log:
    whether it was accepted. Unset fields are left out, so a plain acceptance is the same
    bytes as before these fields existed.

    For a `task.reports` batch, `verdicts` has one entry per report, in order, and
    `accepted` is false if any report was refused (`code`/`reason` then repeat the first
    refusal's)."""

    accepted: bool = True
    code: str = ""
    """As `ReportVerdict.code`."""
    reason: str = ""
    verdicts: list[ReportVerdict] = []


class ErrorReply(_Message, frozen=True, tag="error"):
    """Any request's reply when the request itself was refused."""

    error: str
    detail: str = ""


class Progress(_Message, frozen=True, tag="run.progress"):
    """Orchestrator → watchers: one line of a run's live progress."""

    run_id: str
    event: str
    task_id: str = ""
    agent_id: str = ""
    attempt: int = 0
    elapsed_s: float = 0.0
    detail: str = ""


class ProgressBatch(_Message, frozen=True, tag="run.progress.batch"):
    """Orchestrator → watchers: the progress lines of one decision, in order (one message
    per decision, not per event: a big fan-out decides hundreds of events at once)."""

    lines: list[Progress]


BLOB_KEY = "$blob"
"""The key that makes a map in a payload a `BlobRef` (see `bus.blobs`)."""
BLOB_THRESHOLD = 256 * 1024
"""The default size (bytes, encoded) above which a value in a payload travels as a
`BlobRef` (Baton's agent: `BATON_BLOB_THRESHOLD`, `AgentRuntime(blob_threshold=)`)."""
BLOB_CHUNK_BYTES = 512 * 1024
"""The most bytes one `blob.put` carries or one `blob.get` is answered with."""


class BlobRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"digest": BLOB_KEY}):
    """A large value stored once in the blob store, by content, in place of the value in
    a payload (a task's input or output, anywhere inside it, or the whole of it): a map
    with exactly these three keys, `{"$blob": "sha256:<hex>", "size": n, "media_type":
    t}`. The SDK swaps values above the threshold for these on the way out and back on
    the way in (`bus.blobs`); the log keeps the map, so the hash chain covers the digest."""

    digest: str
    """`sha256:` and the 64 lowercase hex digits of the SHA-256 of the stored bytes."""
    size: Annotated[int, msgspec.Meta(ge=0)]
    """The stored bytes' length."""
    media_type: str
    """How the bytes encode the value: `text/plain; charset=utf-8` (a string, UTF-8),
    `application/octet-stream` (bytes), `application/msgpack` (any other value, which may
    hold more references)."""


class BlobPut(_Message, frozen=True, tag="blob.put"):
    """Agent → orchestrator (request/reply on `baton.blob.<agent_id>.put`): one chunk of an
    upload of a blob for a run the agent has work in, in order, each at most
    `BLOB_CHUNK_BYTES`. The last chunk's ack holds the reference once the blob is durable;
    content that does not hash to `digest` is refused (`BlobMismatch`), nothing stored."""

    run_id: str
    upload_id: str
    """Chosen by the agent, unique among its open uploads."""
    offset: Annotated[int, msgspec.Meta(ge=0)]
    """Where `data` starts in the blob: the bytes acknowledged so far."""
    data: bytes
    size: Annotated[int, msgspec.Meta(ge=0)]
    """The whole blob's length (the same in every chunk)."""
    digest: str
    """The whole blob's `sha256:<hex>` (the same in every chunk)."""
    media_type: str


class BlobPutAck(_Message, frozen=True, tag="blob.put.ack", omit_defaults=True):
    """The orchestrator's reply to a `blob.put`: the bytes it holds of the upload and,
    after the last chunk, the stored blob's reference."""

    received: int
    ref: BlobRef | None = None


class BlobGet(_Message, frozen=True, tag="blob.get", omit_defaults=True):
    """Agent → orchestrator (request/reply on `baton.blob.<agent>.get`): up to `length`
    bytes (at most `BLOB_CHUNK_BYTES`; 0: that many) of a blob from `offset`. Answered
    only if a run the agent has been assigned work in (`run_id`) refers to the blob."""

    run_id: str
    digest: str
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    length: Annotated[int, msgspec.Meta(ge=0)] = 0


class BlobChunk(_Message, frozen=True, tag="blob.chunk"):
    """The orchestrator's reply to a `blob.get`: the bytes from `offset`, with the whole
    blob's size and media type (a read is done at `offset + len(data) == size`)."""

    digest: str
    offset: int
    size: int
    media_type: str
    data: bytes


BLOB_ERRORS: dict[str, str] = {
    "BlobMismatch": "the uploaded content does not hash to the digest it came with (nothing "
    "was stored), or a stored blob no longer does (it is not served)",
    "BlobNotFound": "no blob with this digest is stored",
    "BlobRefused": "not the sender's: it has no task in the run, or the run's log refers to "
    "no such blob (nor does a blob it refers to)",
    "BlobTooLarge": "over the orchestrator's largest blob, or too many uploads (or bytes of "
    "uploads) open at once",
    "BlobUploadBroken": "a chunk that does not continue its upload (no such upload, another "
    "offset, size or digest, or the upload expired): start it again from offset 0",
    "BlobUnavailable": "the blob store failed: try again",
    "BadBlobRequest": "a digest that is not `sha256:<64 hex>`, or a media type that is not "
    "1 to 127 printable ASCII characters",
    "MalformedMessage": "the request does not decode",
}
"""Every `ErrorReply.error` a blob request may get, with its meaning."""


AgentInbound = Assignment | AssignBatch | Control
InboxMessage = TaskResult | TaskFailure | ReportBatch | ToolCallRecord | MemoryWrite
AssignReply = AssignAck | AssignAcks | ErrorReply
ReportReply = ReportAck | ErrorReply
BlobRequest = BlobPut | BlobGet
BlobReply = BlobPutAck | BlobChunk | ErrorReply
