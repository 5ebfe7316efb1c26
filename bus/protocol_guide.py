# ruff: noqa: E501, RUF001  (Markdown table rows are one line; the text uses math signs)
"""The prose of `docs/protocol.md`: what the message schemas cannot say (the version and
what may change within it, every timing, what each field means to the other side, the
error codes, the inbox's ids, an assignment's `input`, the `baton.api.*` requests).

`bus.protocol_doc` renders it between the subject table and the schemas. Values that
live in this package are written from the code; the timings the orchestrator and the
agent runtime keep are written here, and `tests/test_protocol_doc.py` checks each against
the constant it names, as it checks that every subject, message, field, error code and
input key in the code appears in the document.
"""

from __future__ import annotations

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES
from bus.leases import LEASES_BUCKET
from bus.model_capability import MODEL_CAPABILITY
from bus.protocol import (
    BLOB_CHUNK_BYTES,
    BLOB_ERRORS,
    BLOB_KEY,
    BLOB_THRESHOLD,
    PROTOCOL_VERSION,
    REPORT_CODES,
)


def _report_codes() -> str:
    rows = [f"| `{code or '(empty)'}` | {what} |" for code, what in REPORT_CODES.items()]
    return "\n".join(["| `code` | meaning |", "| --- | --- |", *rows])


VERSION = f"""
## Protocol version

This document is **Baton protocol v{PROTOCOL_VERSION}** (`bus.protocol.PROTOCOL_VERSION`).

- **How a peer knows it:** v1 is the `baton.` subject namespace described here; no message
  carries a version number. A protocol that is not compatible with v1 will use subjects of
  its own (`baton.v2.…`), so a v1 agent and a later orchestrator never misread each
  other's messages, and an orchestrator can serve both at once.
- **Compatible changes (still v1):** a new optional field with a default that is left
  out of the encoding while unset (`task.report.ack`'s `accepted`, `code`, `reason` and
  `verdicts` were added this way: an accepted report's ack is the same bytes as before);
  a new message kind on a new subject; a new value of an open string (an `error` code, a
  report `code`, an `AssignAck.reason`); new keys in the open maps (`input`, `output`,
  `params`).
- **Unknown fields:** Baton's own decoders are strict: a message with a field they do not
  know is refused (an `error` reply to a request, a `message.rejected` audit event for
  anything else). So Baton sets a new optional field only where a peer that cannot read
  it loses nothing: an older agent that cannot decode a refusal in `task.report.ack`
  takes it for no answer and sends the report to the durable inbox, where it changes
  nothing (its refusal is already audited). An agent in another language should ignore
  fields it does not know, so it keeps working with every v1 orchestrator.
- **Incompatible changes (a new version):** removing or renaming a field, a message kind
  or a subject; changing a field's type, meaning or default, or making an optional field
  required; changing an id format (`Nats-Msg-Id`, subject tokens), a timing's meaning,
  or who creates the inbox stream.
"""

TIMINGS = """
## Timings

Every time below is in seconds. The orchestrator measures on its monotonic clock (the
run's clock, see `run.clock_rebased`), never on the wall clock.

| what | default | set by | meaning |
| --- | --- | --- | --- |
| heartbeat interval | 0.5 | `--heartbeat` / `BATON_HEARTBEAT_S` of `baton run`, `serve`, `resume`; `baton agent --heartbeat` | send `agent.heartbeat` at least this often. The orchestrator says its interval in every `agent.heartbeat.ack` (`heartbeat_s`); Baton's agent follows it unless given its own |
| agent TTL (drop-out) | 2.0 | `--agent-ttl` / `BATON_AGENT_TTL` | an agent silent for longer is lost: an `agent.lost` event, no more routing to it, and each attempt it holds ends as `agent_lost` (and is cancelled, see below). Must be longer than the interval; three intervals or more are advised. Said in every ack (`ttl_s`) |
| grace after the orchestrator (re)connects | TTL + interval | derived | after the orchestrator starts or its own bus connection comes back, no agent is lost and no attempt times out until every live agent has had time to be heard |
| tick | 0.2 | the orchestrator (`tick_s`) | how often timeouts, lost agents, backoffs and waiting tasks are looked at: a timeout fires up to one tick late |
| attempt timeout | `timeout_s` of the step (60.0 by default) | the workflow | see *Leases and timeouts* |
| retry backoff | 0.25 × 2^(attempt − 1), at most 5.0, × a random 0.5–1.5 | the orchestrator | how long a failed attempt's task waits before its next attempt |
| assignment reply | 5.0 | the orchestrator | an assignment (or batch) not answered within this is undeliverable |
| assignment ack wait | 0.002 | Baton's agent (`agents.outbox.ACK_WAIT_S`) | an accepted assignment's `task.assign.ack` waits at most this long to leave in the same write as the agent's next outcome (a quick task's ack and result cost one write, and one wake-up of the orchestrator); a refusal goes at once. Any agent may answer at once; the orchestrator only needs the ack within the assignment reply time |
| report reply | 2.0 | the agent (Baton's: `agents.outbox.REPORT_TIMEOUT_S`) | how long a direct report waits for `task.report.ack` before the agent sends it to the durable inbox. The orchestrator answers only once what the report caused is durable, so under load the answer can take a while: do not choose less than about a second |
| inbox redelivery | ack wait 5, kept alive after 2 while its orchestrator works on it, for at most 120; 0.5 after a failed append; 0.1 × 2^(n − 1), at most 5.0, after a failed handling | the orchestrator's inbox consumer | a durable message is redelivered until recorded; after 5 failed handlings it is dead-lettered (`message.dead_lettered`) |
| inbox duplicate window | 120 | JetStream's default for `BATON_INBOX` | a second message with the same `Nats-Msg-Id` within it is dropped as a duplicate |
| contract-net bid window | `bid_window_s` of the step (0.5) | the workflow | bids are taken this long after `task.cfp` |
| drain, bus down | 1.0 | Baton's agent (`OFFLINE_DRAIN_S`) | a draining agent whose bus is down gives held work up after this |

**Batching windows.** No side waits to fill a batch. The orchestrator sends one agent the
assignments of one decision in one `task.assign.batch` (cut under half the size limit),
and one `run.progress.batch` per decision. Baton's agent sends an outcome at once; the
outcomes that finish while up to 2 direct reports (1 durable message) are on their way
leave together in the next `task.reports` (at most 256 per message, one run per message).
The orchestrator decides what arrived together in one batch (up to 512 inbox messages).
Baton's agent holds an accepted assignment's ack up to the *assignment ack wait*, to send
it in one write with the outcome; it never holds an outcome.
"""

JOINING = f"""
## Joining: heartbeats

- The first `agent.heartbeat` that is accepted makes the agent routable: the orchestrator
  routes to it from its next decision (within a tick). There is no other registration.
- The payload's `agent_id` must equal the `<agent_id>` of the subject it is sent on
  (`baton.registry.heartbeat.<agent_id>`); otherwise it is refused (`message.rejected`).
- `role`: the role it serves; routing sends a task only to agents of the task's role.
- `capacity`: how many attempts it runs at once; routing never gives it more.
- `load`: what the agent says it runs now. Routing does **not** use it: it counts the
  attempts it has out on the agent itself (`baton agents` shows both).
- `capabilities`: recorded (in `agent.joined`) and shown; routing does **not** use them
  in v1 (it routes by role, then liveness, then the least load by its own count).
- **The model** an agent calls is the capability `{MODEL_CAPABILITY}<name>` (e.g.
  `{MODEL_CAPABILITY}gpt-4o-mini`; the first such capability counts). It is an open string, so
  it is v1: an orchestrator that does not read it routes as before, and nothing else in
  the message changes. The orchestrator records it with the join, when an agent id is
  first heard or another process (`instance`) takes it over, not at each heartbeat: to
  change its model an agent restarts. Each attempt's usage (the `usage` of its
  `task.result`) is counted against the model its agent announced, and priced by the
  configured table (`prices`, docs/operations.md); an agent that announces none has its
  tokens shown with no cost. Baton's LLM agent announces its configured model.
- `held`: the attempts the agent is working on, shown by `baton agents`. Listing an
  attempt does not extend it (see below).
- `contract_digest`: the role contract the agent enforces on itself; with role contracts
  (governed mode) a heartbeat whose digest is not the role's is refused (`agent.refused`
  in the `system` stream) and gets no `agent.heartbeat.ack`.
- `instance`: see the subject table above.
"""

ASSIGNMENTS = """
## Assignments

- `task.assign` (or `task.assign.batch`) is a request: answer each assignment with a
  `task.assign.ack` (`task.assign.acks`, one per assignment, in order) within the
  assignment reply time. An assignment already taken (same `run_id`, `task_id`,
  `attempt`) is answered `accepted=true` again (Baton's agent says `already taken`);
  deduplicate by `(run_id, task_id, attempt)`.
- **`accepted=false` costs an attempt.** A refusal (Baton's agent refuses with `draining`
  while it drains), no answer in time, no responder or an `error` reply makes the attempt
  undeliverable: it ends as `task.attempt_failed` with reason `undeliverable`, counts
  against the step's `max_attempts`, and the task is retried after the backoff, on
  another agent if one is free. The agent is also sent a cancel for it (the ack may have
  been lost while it took the work).
- **Re-sent after a restart.** An orchestrator that starts (or takes runs over) sends
  each running attempt again, from the log, to the agent holding it. No answer or no
  responder from an agent whose heartbeat it has not heard yet costs nothing: the
  attempt is sent again when the agent's heartbeat comes (answer `already taken` if you
  hold it), and fails as `agent_lost` only if none comes within the agent TTL and one
  heartbeat interval of the orchestrator's start.
- `traceparent` (field) is the W3C context of this assignment's dispatch span. Every
  assignment carries it; a lone `task.assign` also has it in the message's
  `traceparent` header. Make the attempt's span a child of the field (in a batch the
  header, if any, is the batch's, not the assignment's).
- `timeout_s`: the attempt's time, see below. `instance`: the process that owns the
  agent id, see the subject table.
- `step`, `role`: the workflow step and the role the attempt is for.

### The `input` of an assignment

Always an object with:

- `input`: the run's input (what `baton run --input` or `run.start` gave).
- `params`: the step's `params` (a subtask's own params merged over them).
- `index`: the task's index in its step's fan-out (0 when not fanned out).
- `deps`: each dependency's output, by task id (e.g. `{"research[0]": {...}}`).

Tasks made by a pattern (a later loop round, a chat turn, a subtask, a replan) and a
task handed off have more, `round` in all of them:

- `round`: the loop round, chat turn or subtask depth (1 first).
- a task handed off to it: `context`, everything said before, in order, each
  `{"role", "agent_id", "output"}` (and `memory_refs` when the attempt shared memory),
  and `memory_refs`, all those refs in one list (read them with `memory.search` `refs`).
- a group chat turn (and its selector): `transcript`, the turns so far, each
  `{"turn", "role", "agent_id", "output"}`; `turn`; `participants`.
- a planner's replan task: `failed` (`{"task", "step", "error"}`), `failed_step` (the
  step, as in the workflow), `done` (the outputs so far, by task id) and `remaining`
  (the steps not started, as in the workflow).
- a subtask: `parent` (the task that asked for it) and `parent_output`.

## Leases and timeouts

- An attempt is fenced by its `attempt` number and its `lease_token`: a report must carry
  both, from the agent the attempt was given to, on that agent's own subject.
- There is no lease to renew and no separate lease length: an attempt lasts until its
  agent reports, its agent is lost (TTL), or its `timeout_s` passes, counted by the
  orchestrator from the moment it decided the assignment (so it includes delivery and
  any wait for a free slot at the agent). Heartbeats listing the attempt do not extend it.
- When `timeout_s` passes, the attempt ends as `task.attempt_failed` (reason `timeout`),
  the task is retried after the backoff if attempts are left, and the agent is sent an
  `agent.control` **cancel** for that attempt, so it stops and drops it from its load. A
  result sent after that is refused (`code` `attempt_ended` or `stale_attempt`).
- An agent should stop by itself at `timeout_s` too: Baton's agent stops the handler at
  `timeout_s` (or its role's `budget.seconds`, if shorter) after it started it, and
  reports a retryable failure. Cancels are plain NATS messages (at most once): an agent
  must not rely on getting one.
- A `task.failure` with `escalate` true says the attempt needs a person, not a retry (an
  A2A agent behind a bridge asked for input): the task is escalated at once
  (`task.escalated`, whatever its step's `on_exhausted`) and waits for `baton approve`,
  `reject` or `retry`; a subtask's fails instead. `retryable` is then ignored.
"""

CONTROL = """
## Control: cancel and drain

- `cancel` (`run_id`, `task_id`, `attempt`): stop that attempt and drop it. It comes when a
  person cancels the task or run (`baton cancel`), when the run ends with the attempt
  still out, and when the orchestrator ends the attempt without the agent's word (its
  timeout, its agent lost, its assignment undeliverable). **A cancelled attempt reports
  nothing**: Baton's agent sends no result or failure for it, and one sent anyway is
  refused (the attempt is over). An unknown or finished attempt makes a cancel a no-op.
- `drain` (no other field): take nothing new (answer assignments `accepted=false`,
  `draining`, which costs those attempts, as above), finish what is held and report it,
  then exit. Baton's agent drains the same way on SIGTERM/SIGINT; a second signal gives
  held work up (the orchestrator runs it again once the agent is lost or the attempt's
  timeout passes). Baton's
  orchestrator does not send `drain` itself in v1: it is for operators' tools.
"""

REPORTS = f"""
## Reports and their answers

- A report (`task.result`, `task.failure`, or several of one run in `task.reports`) goes
  either way: as a request on `baton.report.<run_id>.<agent_id>`, answered by
  `task.report.ack` once what it caused is durable, or to the durable inbox
  `baton.inbox.<run_id>.<agent_id>` (answered by JetStream's publish ack only).
- The payload's `agent_id` must be the agent the attempt was given to, and the subject's
  `<agent_id>` must be it too: the sender is the subject's agent, never the payload's.
- `task.report.ack`: `accepted` true means the report is the attempt's outcome (or, with
  `code` `duplicate`, a copy of one already recorded: still accepted, nothing changed).
  `accepted` false means it was refused and audited (`result.rejected`): do not send it
  again, by either way. `reason` says why, for people; `code` is one of:

{_report_codes()}

- For a `task.reports` batch, `verdicts` has one `{{accepted, code, reason}}` per report,
  in order; the ack's own `accepted` is false if any report was refused (`code` and
  `reason` then repeat the first refusal). An ack without `verdicts` (an orchestrator
  older than these fields) accepted them all.
- An `error` reply (`NotRecorded`, `HandlingFailed`, `MalformedMessage`…), or no answer in
  time, means nothing is known: send the report to the durable inbox.
- `ReportBatch.traceparents`: each report's W3C context (its attempt's span), in order;
  for an entry that is `''` or missing, the message's `traceparent` header is used.
- Tool-call records and memory writes go to the inbox only, and the outcome of an attempt
  that made any goes to the inbox too, after them, so it is recorded after them.

## The durable inbox

- The stream `{subjects.INBOX_STREAM}` (subjects `{subjects.INBOX_ALL}`, work-queue
  retention, file storage, messages up to {MAX_MESSAGE_BYTES} bytes) is created by the
  orchestrator when it starts (`ensure_inbox`); an agent only publishes to it.
- `Nats-Msg-Id`, per message:
  - a lone result or failure: `<run_id>:<task_id>:<attempt>:<kind>:<agent_id>:<lease_token>`,
    where `<kind>` is exactly `result` or `failure` (not the message's `kind` tag);
  - a `task.reports` batch: `<agent_id>:batch:<random>` (Baton uses 16 hex digits);
  - a memory write: `<run_id>:<task_id>:<attempt>:memory:<write_id>`;
  - a tool-call record: `<run_id>:<task_id>:<attempt>:tool:<call_id>:<phase>`.
- JetStream drops a message whose id it has seen within its duplicate window, and says so
  in the publish ack (`duplicate`). A corrected re-send under the same id is therefore
  dropped, and even under a new id the orchestrator treats a second report of the same
  run, task, attempt, kind, sender and lease as a copy of the first: an attempt's outcome
  cannot be corrected, only reported once. A duplicate ack on the first try means
  someone else took the id: send the message again under a new id.
"""


def _blob_errors() -> str:
    return "\n".join(
        f"| `{code}` | `baton.blob.*` | {what} |"
        for code, what in BLOB_ERRORS.items()
        if code != "MalformedMessage"
    )


LARGE_VALUES = f"""
## Large values by reference

A value too large for a message (an LLM transcript, a tool's output, a document) travels
as a **blob**: stored once, named by its SHA-256, kept beside the log (the SQLite store's
`events.blobs.db`, or the JetStream Object Store bucket `BATON_BLOBS` with the log's
replicas). In a payload (an assignment's `input`, a result's `output`, anywhere inside
them, or the whole of one) it is replaced by a **reference**, a map of exactly three keys:

```json
{{"{BLOB_KEY}": "sha256:<64 lowercase hex>", "size": 20971520, "media_type": "text/plain; charset=utf-8"}}
```

(`BlobRef` below). The log records the map, so the hash chain covers the digest, and
the digest pins the content; replay, fork, audit and export keep the reference, and
`baton export` carries the blobs along (`baton import` checks each against its digest).

- **Which values.** Baton's agent replaces a value whose msgpack encoding is over
  {BLOB_THRESHOLD} bytes (`BLOB_THRESHOLD`; `BATON_BLOB_THRESHOLD` or
  `AgentRuntime(blob_threshold=)` to change it): first the large values inside a map or
  list, then the map or list itself if it is still over. Below it, values stay inline.
  A value the orchestrator must read to decide (a planner's plan, a router's choice)
  must stay under the threshold.
- **Inputs the orchestrator assembles.** An assignment's `input` is made of the run's
  values (the run's input, the dependencies' outputs, a handed-off context, a chat's
  transcript), each of which may be under the threshold while together they are far over
  the message limit (a join over many outputs). When an assignment would be over half
  the limit, the orchestrator stores the large parts of its input as blobs and sends
  references instead, the same walk as above; the log keeps the values where they were
  recorded. Only the agent the assignment is for may read those blobs (the grant lives
  in the orchestrator that sent it; an orchestrator that serves the run next sends the
  assignment again, with the grant). Nothing is asked of an agent beyond reading
  references.
- **The bytes of a value**, by `media_type`: a string is its UTF-8 bytes
  (`text/plain; charset=utf-8`); bytes are themselves (`application/octet-stream`);
  anything else is its msgpack (`application/msgpack`), which may hold references of its
  own. Any other media type is bytes.
- **Reading one** (`baton.blob.<agent_id>.get`, request/reply): send `blob.get` with the
  attempt's `run_id`, the `digest`, `offset` 0 and `length` 0; the `blob.chunk` reply
  carries up to {BLOB_CHUNK_BYTES} bytes (`BLOB_CHUNK_BYTES`) from `offset`, and the whole
  blob's `size` and `media_type`. Ask again from `offset + len(data)` until `size`.
  **Check the SHA-256 of what you assembled against the digest** and refuse the value if
  it differs (Baton's agent fails the attempt for good: `BlobForged`).
- **Writing one** (`baton.blob.<agent_id>.put`, request/reply): compute the SHA-256 of
  the whole value, choose an `upload_id`, and send it in order in `blob.put` chunks of at
  most {BLOB_CHUNK_BYTES} bytes, each with the whole `size`, `digest` and `media_type`
  and its `offset` (the `received` of the previous ack). The ack of the last chunk holds
  `ref` once the blob is durable: put that map in your output. A chunk sent again is
  acknowledged again (`received` unchanged). A blob of 0 bytes is one empty chunk. The
  orchestrator hashes what arrives and refuses content that does not hash to `digest`
  (`BlobMismatch`, nothing stored); an upload with no chunk for 60 s is forgotten.
  Storing a value already stored costs the upload and stores nothing new. Baton's agent
  does the same for the `params` of the subtasks a result asks for. A result whose
  output (or a subtask's `params`) refers to a blob the store lacks (or holds at another
  size) is recorded
  as a retryable failure of the attempt (`result refused: ...`), never as its result;
  its `task.report.ack` is an acceptance of that failure. In JSON
  (`Baton-Encoding: json`) `data` is base64 text, both ways.
- **Who may.** Only the agent itself, on its own subjects (on the embedded server no
  other login may publish there); the orchestrator takes the sender from the subject.
  An agent may upload for a run in which it holds (or held last) a task, and read a blob
  the run's log refers to (or a blob so referred to refers to): its input, a
  dependency's output, a transcript, a handed-off context; and the blobs of an input
  assembled for it (above). Not another run's blob, not a
  digest it guessed: `BlobRefused`. Sharing the runs, the owner of the run answers.
- **Errors** (`error` replies, see *Error codes*): `BlobMismatch`, `BlobNotFound`,
  `BlobRefused`, `BlobTooLarge` (over the orchestrator's largest blob, 256 MiB by
  default, or 4 uploads of the agent open at once, or 1 GiB of uploads open in all), `BlobUploadBroken` (start again from 0),
  `BlobUnavailable`, `BadBlobRequest`, `MalformedMessage`.
- **Keeping them.** The log is append-only, so a run's blobs stay as long as its log.
  Uploads whose event never came (a refused or lost result), and assembled inputs (their
  values are in the log already), are collected by `baton blobs gc` once older than its
  `--grace` (default one hour).
"""

ERRORS = """
## Error codes

A refused request is answered `{"kind": "error", "error": <code>, "detail": <text>}`.
`error` is the name of what refused it (an exception class of Baton's code); `detail`
says why, for people. The codes:

| `error` | where | meaning |
| --- | --- | --- |
| `MalformedMessage` | any request | it does not decode (not msgpack/JSON, unknown `kind`, unknown or missing field, wrong type, nested too deep), or it is not allowed where it was sent (a report for another run than its subject's, a run this orchestrator does not serve, a tool record on the fast path) |
| `OversizedMessage` | any request | over the size limit |
| `InvalidSubjectToken` | any request | the subject is not one of the protocol's (a token with a dot or wildcard, a wrong shape) |
| `NotRecorded` | `baton.report.*` | the event store refused the append: send the report to the inbox |
| `HandlingFailed` | `baton.report.*` | handling the report failed (a bug, logged): send it to the inbox |
| `MemoryRefused` | `baton.memory.*.search` | the searcher is not a live agent of its role, its role may not read that scope, or it has no task in that run |
| `EmbeddingError` | `baton.memory.*.search` | a vector search could not embed the query |
| `WorkflowError` | `baton.api.run.start.*` | the workflow is not valid (the detail names the field) |
| `RunNotRecorded` | `baton.api.run.start.*` | the event store refused the new run: retry with the same `request_id` |
| `UnknownRun` | `baton.api.run.control.*` | no such run |
| `ControlRefused` | `baton.api.run.control.*` | the decision does not apply (no such task, not escalated, the run already over) |
| `AdmissionRefused` | `baton.api.admit`, `baton.api.creds.*` | not a valid agent id, the id already has credentials, or no role contract for the role |
| `ConcurrencyError`, `StorageError` | `baton.api.run.control.*` | the event store refused the decision: retry |
BLOB_ROWS

Other names can appear because they share a base class with the above, though no
request path raises them in v1: `BusError`, `RequestFailed`, `NoResponders`, `ConnectionClosed`,
`ConnectRefused`, `MessageIdTaken`, `ServerStartError`, `SubmitUnanswered`, `ContractError`, `NotAnNkey`, `ConfigError`,
`LeaseLost`, `BlobMismatch` (bus errors; a bad key in `baton.api.creds.*` is answered `AdmissionRefused`);
`OrchestratorError`, `UnknownEvent`, `VersionGap`, `UnknownStore`, `AgentStartError`,
`LivenessConfigError`, `RunRefused`, `StateDirNotPrivate`, `StateDirUnwritable`,
`AlreadyServed` (a second orchestrator on a SQLite log: `baton serve`, `run` or `resume`), `RunElsewhere` (an in-process start of a run whose partition another orchestrator
serves; on the bus that one answers instead)
(orchestrator errors); `EventStoreError`, `DuplicateEventError`, `InvalidEventError`,
`AnchorError`, `CheckpointConflictError`, `BlobMismatchError`, `BlobNotFoundError` (event
store errors); `BlobRequestRefused` (the root of the `baton.blob.*` refusals above). `baton.api.status` and
`baton.api.agents` answer any unexpected failure with the exception's class name (a bug,
logged). Treat an unknown code as a refusal with its `detail`.
"""

API = f"""
## The `baton.api.*` subjects (people and tools → orchestrator)

Request/reply, the same encodings; on the embedded server only people's logins may
publish here (agents may not). Each reply is the listed kind or an `error`.

| subject | request `kind` | reply `kind` | what |
| --- | --- | --- | --- |
| `baton.api.run.start.<requester>` | `run.start` (`workflow`, `input`, `run_id`, `request_id`) | `run.accepted` (`run_id`, `earlier`) | start a run (`baton submit`); idempotent by `request_id`; the requester recorded is the subject's |
| `baton.api.run.control.<person>` | `run.control` (`run_id`, `action`: approve, reject, retry, cancel; `task_id`, `note`, `output`) | `run.control.accepted` (`run_id`, `status`, `actor`) | a person's decision, recorded as that person |
| `{subjects.API_STATUS}` | `status` (`all`) | `status.reply` (`runs`, `health`) | `baton status` |
| `{subjects.API_HEALTH}` | `health` | `health.reply` (`healthy`, `issues`, `at`) | `baton health` |
| `{subjects.API_AGENTS}` | `agents` | `agents.reply` (`agents`: `agent_id`, `role`, `capacity`, `load`, `reported_load`, `heartbeat_age_s`, `held`, `contract_digest`) | `baton agents`, the console |
| `{subjects.API_ADMIT}` | `admit` (`agent_id`, `role`) | `admitted` (`agent_id`, `url`) | `baton admit`: an agent's own login on the embedded server |
| `baton.api.creds.<person>` | `creds` (`action`: issue, revoke, list; `agent_id`, `role`, `public_key`) | `creds.reply` (`action`, `credentials`: `agent_id`, `role`, `login`, `public_key`; `url`) | `baton creds`: an outside agent's nkey login, issued or revoked as that person, recorded in the log |

The orchestrator itself listens on `{subjects.HEARTBEAT_ALL}`, `{subjects.REPORT_ALL}`,
`{subjects.BIDS_ALL}`, `{subjects.TOOL_APPROVALS_ALL}`, `{subjects.MEMORY_SEARCH_ALL}`,
`{subjects.BLOB_PUT_ALL}`, `{subjects.BLOB_GET_ALL}`,
`{subjects.API_START_RUN_ALL}`, `{subjects.API_RUN_CONTROL_ALL}`, `{subjects.API_CREDS_ALL}` and consumes
`{subjects.INBOX_ALL}`; agents listen on their own `baton.agent.<agent_id>.>`,
`{subjects.CFP_ALL}` (their role's) and `{subjects.TOOL_DECISIONS_ALL}` (their own);
tool services on `{subjects.TOOL_CALL_ALL}`.
"""

SHARING = f"""
## Several orchestrators on one bus

With the event log on JetStream, several orchestrators (`baton serve` on several
machines) share the runs; nothing changes for an agent, and this is what it sees:

- The runs are split by the first 8 bytes of the SHA-256 of the run id (big-endian,
  modulo 16) into 16 partitions; one orchestrator owns each partition at a time, through
  a lease in the JetStream key-value bucket `{LEASES_BUCKET}` (keys `p.<partition>`, and
  `m.<orchestrator id>` for each one present), renewed by compare-and-set every 0.5 s
  and taken over by another once it went 3.0 s unrenewed. Only orchestrators use the
  bucket.
- Every orchestrator hears `baton.report.*`, `baton.bids.*`, `baton.tool.approval.*`,
  `baton.memory.*.search`, `baton.blob.*` and `baton.api.run.*`; only the owner of the run's partition
  answers or acts (a start request that names no run is answered by the owner of the run
  id derived from its `request_id`, or else from its reply subject). `baton.api.status`
  is answered by each with every unfinished run, its own and the others' (from the log);
  `baton.api.health` and `baton.api.agents` by each for itself. No answer in time (an owner just died) is what it always was: send the
  report to the durable inbox. The inbox's one consumer is shared: an orchestrator hands
  a message of another's run back (`nak`, redelivered within a second), and its owner
  takes it.
- A run taken over records `run.taken_over` (`owner`, `partition`, `lease`), published as
  progress like any event; its new owner re-sends the assignments still running, which
  an agent deduplicates by `(task_id, attempt)` as always. Reports for an attempt go to
  `baton.report.<run_id>.<agent_id>` whoever owns the run: the lease token and attempt
  still fence them.
"""


def render() -> str:
    """The prose sections after the subjects and logins (`VERSION` goes first)."""
    errors = ERRORS.replace("BLOB_ROWS\n", _blob_errors() + "\n")
    sections = [TIMINGS, JOINING, ASSIGNMENTS, CONTROL, REPORTS, LARGE_VALUES, SHARING, errors, API]
    return "".join(sections)
