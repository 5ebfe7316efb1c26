"""Renders `docs/protocol.md` from the message types themselves, so the document an agent
author in another language reads cannot drift from the code (a test compares them).

    python -m bus.protocol_doc > docs/protocol.md
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import msgspec

from bus import discovery, protocol, protocol_guide, subjects
from bus.codec import ENCODING_HEADER, MAX_DEPTH, MAX_MESSAGE_BYTES
from bus.protocol_doc_governed import LOGGING_IN, contract_digest

# (message type, who sends it, on which subject)
MESSAGES: list[tuple[type[msgspec.Struct], str, str]] = [
    (protocol.Heartbeat, "agent → orchestrator", "`baton.registry.heartbeat.<agent_id>`"),
    (protocol.HeartbeatAck, "orchestrator → agent", "`baton.agent.<agent_id>.registry`"),
    (protocol.Assignment, "orchestrator → agent (request)", "`baton.agent.<agent_id>.assign`"),
    (protocol.AssignAck, "agent → orchestrator (reply)", "reply to an assignment"),
    (protocol.AssignBatch, "orchestrator → agent (request)", "`baton.agent.<agent_id>.assign`"),
    (protocol.AssignAcks, "agent → orchestrator (reply)", "reply to an assignment batch"),
    (protocol.Control, "orchestrator → agent", "`baton.agent.<agent_id>.control`"),
    (protocol.TaskResult, "agent → orchestrator, durable", "`baton.inbox.<run_id>.<agent_id>`"),
    (protocol.TaskFailure, "agent → orchestrator, durable", "`baton.inbox.<run_id>.<agent_id>`"),
    (
        protocol.ReportBatch,
        "agent → orchestrator",
        "`baton.report.<run_id>.<agent_id>` or the inbox",
    ),
    (
        protocol.ReportAck,
        "orchestrator → agent (reply)",
        "reply to a direct report: it is durable, accepted or refused",
    ),
    (
        protocol.ToolCallRecord,
        "agent → orchestrator, durable; for approval: agent → orchestrator → watchers",
        "`baton.inbox.<run_id>.<agent_id>`; `baton.tool.approval.<run_id>.<agent_id>`, "
        "passed on to `baton.tool.prompt.<run_id>`",
    ),
    (protocol.MemoryWrite, "agent → orchestrator, durable", "`baton.inbox.<run_id>.<agent_id>`"),
    (protocol.CallForProposals, "orchestrator → agents of a role", "`baton.cfp.<role>`"),
    (protocol.Bid, "agent → orchestrator", "`baton.bids.<run_id>.<agent_id>`"),
    (protocol.MemorySearch, "agent → memory service (request)", "`baton.memory.<agent_id>.search`"),
    (protocol.MemoryHits, "memory service → agent (reply)", "reply to a memory search"),
    (protocol.BlobPut, "agent → orchestrator (request)", "`baton.blob.<agent_id>.put`"),
    (protocol.BlobPutAck, "orchestrator → agent (reply)", "reply to a blob put"),
    (protocol.BlobGet, "agent → orchestrator (request)", "`baton.blob.<agent_id>.get`"),
    (protocol.BlobChunk, "orchestrator → agent (reply)", "reply to a blob get"),
    (protocol.ToolInvocation, "agent → tool service (request)", "`baton.tool.call.<tool>`"),
    (protocol.ToolOutcome, "tool service → agent (reply)", "reply to a tool invocation"),
    (
        protocol.ToolDecision,
        "human → agent (request)",
        "`baton.tool.decision.<agent_id>.<call_id>`",
    ),
    (protocol.ToolDecisionAck, "agent → human (reply)", "reply to a tool decision"),
    (protocol.ErrorReply, "any replier", "reply to a refused request"),
    (protocol.ProgressBatch, "orchestrator → watchers", "`baton.events.<run_id>`"),
    (
        protocol.Progress,
        "orchestrator → watchers",
        "one line of a `run.progress.batch`; alone on `baton.agents.changed`",
    ),
]

INTRO = f"""# Baton wire protocol

Generated from `bus/protocol.py` and `bus/protocol_guide.py` by `python -m
bus.protocol_doc`; a test fails when this file and the code disagree. Everything an agent
needs to join a Baton bus with an ordinary NATS client, in any language, is here.

## Encoding

- Every message is one object whose `kind` field names its type (the tags below). Unknown
  fields, missing required fields and wrong types are refused, never guessed.
- Baton sends **msgpack**. It accepts **msgpack or JSON**: set the NATS header
  `{ENCODING_HEADER}: json` on a JSON message (absent or `msgpack` means msgpack). A reply
  to a JSON request is JSON and carries the same header.
- A message over {MAX_MESSAGE_BYTES} bytes is refused.
- Every message may carry a W3C `traceparent` header; Baton propagates it.
- A message nested more than {MAX_DEPTH} deep (maps, arrays) is refused.
- A refused request gets an `error` reply; a refused inbox message is recorded as a
  `message.rejected` event (past a per-sender rate, counted in a `messages.suppressed`
  event instead) and never redelivered. An inbox message whose handling keeps failing
  is recorded as a `message.dead_lettered` event after a few deliveries, and removed.

## Subjects

| subject | from → to | what |
| --- | --- | --- |
| `baton.registry.heartbeat.<agent_id>` | agent → orchestrator | liveness, role, capacity, load, held attempts, contract digest |
| `baton.agent.<agent_id>.registry` | orchestrator → agent | the answer to each heartbeat: whether this process (its `instance`) owns the agent id, and the heartbeat interval and TTL to keep |
| `baton.agent.<agent_id>.assign` | orchestrator → agent | an attempt, or a batch of them, to run (request/reply) |
| `baton.agent.<agent_id>.control` | orchestrator → agent | cancel an attempt, or drain |
| `baton.inbox.<run_id>.<agent_id>` | agent → orchestrator | results, failures, tool-call records, memory writes: a JetStream stream (`BATON_INBOX`); set `Nats-Msg-Id` to an id no one else can know before you send: for a lone result or failure `<run>:<task>:<attempt>:<kind>:<agent_id>:<lease_token>`, for anything else one with a random part, so a re-send is deduplicated and no one can take the id first. A publish acknowledged as a duplicate on its first try means someone did: send it again under a new id |
| `baton.report.<run_id>.<agent_id>` | agent → orchestrator | the fast way back for results and failures (request/reply): the `task.report.ack` reply means the outcome is durable in the log, and says whether it was accepted (`accepted`, `code`, `reason`; per report of a batch in `verdicts`): a refused outcome is recorded as rejected, do not send it again; with no such reply in time, send it to the inbox instead. Tool-call records and memory writes, and the outcome of an attempt that made any, go to the inbox only |
| `baton.cfp.<role>` | orchestrator → agents of a role | contract net: a call for proposals |
| `baton.bids.<run_id>.<agent_id>` | agent → orchestrator | contract net: a bid |
| `baton.memory.<agent_id>.search` | agent → memory service | shared-memory search (request/reply) |
| `baton.blob.<agent_id>.put` | agent → orchestrator | one chunk of an upload of a large value (request/reply; see *Large values by reference*) |
| `baton.blob.<agent_id>.get` | agent → orchestrator | a range of a large value a run of the agent's refers to (request/reply) |
| `baton.tool.call.<tool>` | agent → tool service | a governed tool served on the bus |
| `baton.tool.approval.<run_id>.<agent_id>` | agent → orchestrator | a tool call waits for a human (a `tool.call` record in phase `awaiting`): passed on to the run's watchers only if the agent holds that attempt of that task now; else refused and recorded as a `message.rejected` event |
| `baton.tool.prompt.<run_id>` | orchestrator → watchers | a checked tool call that waits for a human (of every run: `baton.tool.prompt.*`) |
| `baton.tool.decision.<agent_id>.<call_id>` | human → agent | approve or deny that agent's call (request/reply); on the embedded server an agent receives only its own |
| `baton.events.<run_id>` | orchestrator → watchers | live progress of a run (of every run: `baton.events.*`) |
| `baton.agents.changed` | orchestrator → watchers | an agent joined, was lost or was refused, once the `system` stream records it: one `run.progress` line, `event` `agent.joined`, `agent.lost` or `agent.refused`, with its `agent_id` and a `detail` (role, silence, or why) |

An agent id is owned by one process at a time. Send a random `instance` (new at each
start) in every heartbeat, subscribe to `baton.agent.<agent_id>.registry`, and act on the
`agent.heartbeat.ack` that names your instance: `waiting` means another live process has
the id (take nothing, keep heartbeating: you get the id once it has been silent for the
TTL), `refused` means it is alive too (finish what you hold, take nothing new, exit).
Ignore (and do not answer) an assignment or control whose `instance` is not yours; one
with no `instance` is for whoever has the id. An agent that sends no `instance` works as
before but cannot be told apart from a second process with its id.

Subject tokens are `[A-Za-z0-9_:-]+`. The orchestrator checks the `<agent_id>` of the
subject a report came on, not the payload's claim.
"""  # noqa: E501
MESSAGES_HEADING = "\n## Messages\n"
ENCODING_HEADING = "\n## Encoding\n"


CONFORMANCE = f"""
## Checking an agent: the conformance kit

`baton conformance --role <role> --nats <url>` plays the orchestrator's side of this
protocol against one agent on a real bus and prints, for each case, `PASS`, `FAIL` or
`SKIP` and the reason (what the agent did instead); `--json` prints one JSON object.
It exits 0 only if no case failed, 1 if one did, 2 on an error (no bus, a bad option).

1. Start a NATS server (with JetStream) that **no orchestrator serves**: the kit answers
   the heartbeats and reports an orchestrator would. It creates the `BATON_INBOX` stream
   if there is none, and purges what its own runs (`conf-<hex>-<case>`) left in it.
2. Start your agent on it, serving `<role>`, with a handler that waits
   `params.seconds` (absent: none) before it answers, as `agents.builtin:sleep` does:
   the cancel, lease and drain cases need an attempt that is still running. Each
   assignment's `input` is `{{"input": {{}}, "params": {{...}}, "index": 0, "deps": {{}}}}`.
3. `baton conformance --role <role> --nats <url>` (`--agent <id>` to pick one agent,
   `--case <case>` to run some cases only, `--contracts FILE` to require the role's
   contract digest, `--login FILE` for the credentials case). Drain runs last and ends
   the agent.

The kit answers each heartbeat with `heartbeat_s` 0.5 and `ttl_s` 2.0, waits 5 s for the
answer to an assignment and 5 s for an outcome, and checks every message against the
{MAX_MESSAGE_BYTES}-byte limit itself (a server with a larger `max_payload` lets it see
an oversized one).

| case | passes when |
| --- | --- |
| `join` | a heartbeat comes within `--join-timeout` (10 s), on the subject of its `agent_id`, with the role asked for and a capacity of at least 1 (with `--contracts`: the role's `contract_digest`) |
| `heartbeat` | no silence between heartbeats (or since the last) is longer than `ttl_s`; and no one but the kit answers them (an orchestrator on the same bus fails it) |
| `single` | a `task.assign` is acked (`accepted`), and its result echoes `run_id`, `task_id`, `attempt`, `lease_token` and the sender's `agent_id`, on the report subject or the inbox; the same assignment sent again is acked and not run again |
| `batch` | a `task.assign.batch` of 3 gets one `task.assign.acks` with 3 accepted acks, and 3 results (alone or in a `task.reports`) |
| `json` | a JSON assignment (`{ENCODING_HEADER}: json`) gets a JSON ack with that header, and a result |
| `blobs` | an assignment whose `params.document` is a blob reference (one and a half times `BLOB_CHUNK_BYTES` of bytes, `application/octet-stream`): the agent fetches all of it on `baton.blob.<agent_id>.get` (the kit answers there) and reports a result; a second one, whose served bytes do not hash to its digest, gets a `task.failure`, never a result |
| `cancel` | after `agent.control` cancel, the attempt is no longer in the heartbeats' `held` (within `ttl_s`) and no result comes: nothing should (a `task.failure` sent anyway is refused, `attempt_ended`, and must not be sent again) |
| `lease-expiry` | an attempt given `timeout_s` 0.5 and asked to take 1.5 s is no longer held soon after its timeout (the kit sends a cancel one tick after it, as the orchestrator does; the reason says whether the agent stopped by itself); an outcome sent for it is refused (`task.report.ack` with `accepted` false, code `stale_attempt`) and not sent again |
| `refused-report` | a result refused in its `task.report.ack` (code `run_ended`) is not sent again, neither to the report subject nor to the inbox |
| `credentials` | with `--login FILE` (the agent's `baton admit` URL file, creds or nkey seed file): the server refuses a client without a login, and the agent's requests want their answers under `_INBOX_<agent_id>`; skipped without `--login` |
| `reply-size` | nothing the agent sent (heartbeats, acks, reports) was over {MAX_MESSAGE_BYTES} bytes |
| `drain` | after `agent.control` drain, the attempt it held still reports its result, and a new assignment is refused (`accepted` false) or finds no one |

An outcome may come twice at most (a direct report, then its durable copy when the
report was unanswered or answered with an `error`); after a refusal, never again.
"""  # noqa: E501


DISCOVERY = f"""
## Discovery (NATS micro services)

Every agent process and every orchestrator is also a NATS micro service (NATS ADR-32,
`io.nats.micro.v1`, subjects under `{subjects.DISCOVERY_PREFIX}`), named
`{subjects.AGENT_SERVICE}` and `{subjects.ORCHESTRATOR_SERVICE}`, so the NATS ecosystem's
own tools list them. `<VERB>` is one of
{", ".join(f"`{v}`" for v in subjects.DISCOVERY_VERBS)}; a request's payload is ignored;
each service replies once, in JSON whatever `{ENCODING_HEADER}` says, with a
`{discovery.PING_TYPE}`, `{discovery.INFO_TYPE}` or `{discovery.STATS_TYPE}`.

| subject | who answers |
| --- | --- |
| `$SRV.<VERB>` | every service on the bus, Baton's and others' |
| `$SRV.<VERB>.{subjects.AGENT_SERVICE}` | every agent process |
| `$SRV.<VERB>.{subjects.AGENT_SERVICE}.<agent_id>` | that agent: its service id is its agent id |
| `$SRV.<VERB>.{subjects.ORCHESTRATOR_SERVICE}` | every orchestrator |
| `$SRV.<VERB>.{subjects.ORCHESTRATOR_SERVICE}.<id>` | that orchestrator: a random id per process |

`version` is Baton's release. `metadata` (strings only) always holds `protocol`:
`"{discovery.PROTOCOL_VERSION}"`, the version of this document's protocol; and

- an agent's: `role`, `agent_id`, `instance` (as in its heartbeats), `contract_digest`
  (`""` without contracts), `capacity`, `load` (attempts it holds now) and `state`
  (`serving`, `draining`, or `waiting` / `refused` while another process owns its id);
- an orchestrator's: `role` (`orchestrator`), `runs` (the unfinished runs it serves)
  and `agents` (the live agents it routes to).

`load`, `state`, `runs` and `agents` are read at each answer: ADR-32 calls metadata
immutable, and these four are live on purpose; the rest never change in a process's life.

`INFO` and `STATS` list as endpoints the subjects the process really serves, with
`queue_group` `""` (plain subscriptions): an agent's `assign`, `control` and `cfp`; an
orchestrator's `report`, `heartbeat`, `run-start`, `run-control`, `bids`,
`tool-approval`, `status`, `health` and `agents`. Their statistics count the messages
the handler took (`num_requests`), those it failed on or answered with an `error` reply
(`num_errors`, `last_error`), and the nanoseconds spent in the handler
(`processing_time`): for an assignment until its ack, not the attempt's work; for a
report until it is queued (its `task.report.ack` follows once it is durable). Counts
start at zero with the process.

Discovery says who is there and how busy; it is no authority. Routing and ownership go
by heartbeats and by the login a message came from, never by a discovery reply.

On Baton's embedded server an agent's login may subscribe to `$SRV.<VERB>`,
`$SRV.<VERB>.{subjects.AGENT_SERVICE}` and `$SRV.<VERB>.{subjects.AGENT_SERVICE}.<its own agent_id>`, and answer
what comes there; the person's login may ask `$SRV.<VERB>`, and
`$SRV.<VERB>.{subjects.AGENT_SERVICE}` or `$SRV.<VERB>.{subjects.ORCHESTRATOR_SERVICE}`, each with or without
an `.<id>`. An agent in another language should answer discovery the same way; one that
does not still joins and works. With the person's login (the `url` in
`.baton/nats/person.json`; its inbox prefix is `_INBOX_human_<login>`):

```sh
nats --server "$URL" --inbox-prefix _INBOX_human_<login> micro ls
nats --server "$URL" --inbox-prefix _INBOX_human_<login> micro info {subjects.AGENT_SERVICE} <agent_id>
nats --server "$URL" --inbox-prefix _INBOX_human_<login> micro stats {subjects.ORCHESTRATOR_SERVICE}
```
"""  # noqa: E501
"""The Discovery section, rendered after the messages."""


def _normalised(node: Any) -> Any:
    """The schema in one form whatever msgspec or Python release made it: descriptions
    cleaned as `inspect.cleandoc` does (releases strip docstring indentation differently),
    and the alternatives of an `anyOf` in a fixed order (releases list them differently)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                out[key] = inspect.cleandoc(value)
            elif key == "anyOf" and isinstance(value, list):
                out[key] = sorted(_normalised(value), key=lambda v: json.dumps(v, sort_keys=True))
            else:
                out[key] = _normalised(value)
        return out
    if isinstance(node, list):
        return [_normalised(item) for item in node]
    return node


def _schema(message: type[msgspec.Struct]) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([message], ref_template="#/$defs/{name}")
    name = ref["$ref"].rsplit("/", 1)[-1]
    schema = dict(components.pop(name))
    if components:
        schema["$defs"] = components
    normalised: dict[str, Any] = _normalised(schema)
    return normalised


def render() -> str:
    """The whole document."""
    head, rest = INTRO.split(ENCODING_HEADING, 1)
    parts = [
        head,
        protocol_guide.VERSION,
        ENCODING_HEADING,
        rest,
        protocol_guide.render(),
        LOGGING_IN,
        contract_digest(),
        MESSAGES_HEADING,
    ]
    for message, direction, subject in MESSAGES:
        tag = message.__struct_config__.tag
        doc = inspect.cleandoc(message.__doc__ or "").splitlines()[0]
        schema = json.dumps(_schema(message), indent=2, sort_keys=True, ensure_ascii=False)
        parts.append(
            f"\n### `{tag}` ({message.__name__})\n\n{doc}\n\n"
            f"- {direction}, on {subject}\n\n```json\n{schema}\n```\n"
        )
    parts.append(DISCOVERY)
    parts.append(CONFORMANCE)
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
