"""The wire protocol document is generated from the message types and must match them;
and an agent that speaks only JSON, with a plain NATS client, can join a run."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from bus import protocol, protocol_doc, subjects
from bus.codec import ENCODING_HEADER, Decoder, from_msgpack, to_msgpack
from bus.errors import MalformedMessage
from bus.protocol import Assignment, TaskResult, Usage
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from tests.cluster import REPO, cluster

DOC = REPO / "docs" / "protocol.md"


def test_docs_protocol_md_is_generated_from_the_code() -> None:
    assert DOC.read_text() == protocol_doc.render(), (
        "docs/protocol.md is stale: python -m bus.protocol_doc > docs/protocol.md"
    )


def test_the_document_has_a_json_schema_for_every_message() -> None:
    text = DOC.read_text()
    for message, _, _ in protocol_doc.MESSAGES:
        assert f"### `{message.__struct_config__.tag}` ({message.__name__})" in text
    messages = text.split("\n## Messages\n")[1]  # the JSON before it is not a schema
    schemas = [json.loads(block.split("```")[0]) for block in messages.split("```json\n")[1:]]
    assert len(schemas) == len(protocol_doc.MESSAGES)
    result = next(s for s in schemas if s.get("title") == "TaskResult")
    assert result["properties"]["kind"] == {"enum": ["task.result"]}
    assert result["additionalProperties"] is False
    assert "usage" in result["properties"]


def test_every_message_type_is_documented() -> None:
    """A message an agent may be sent or must send cannot be left out of the document."""
    defined = {
        value
        for name, value in vars(protocol).items()
        if isinstance(value, type) and issubclass(value, protocol._Message) and name[0] != "_"
    }
    documented = {message for message, _, _ in protocol_doc.MESSAGES}
    assert defined == documented, sorted(t.__name__ for t in defined ^ documented)


def test_json_transcodes_to_the_same_strict_decoding() -> None:
    result = TaskResult("r", "t", 1, "lease", "a", {"x": [1, 2]}, 0.5, Usage(3))
    as_json = msgspec.json.encode(result)
    decoder: Decoder[TaskResult] = Decoder(TaskResult)
    assert decoder.decode(to_msgpack(as_json, "json")) == result
    assert json.loads(from_msgpack(msgspec.msgpack.encode(result), "json"))["kind"] == "task.result"
    with pytest.raises(MalformedMessage, match="not JSON"):
        to_msgpack(b"{nope", "json")
    with pytest.raises(MalformedMessage, match="unknown Baton-Encoding 'xml'"):
        to_msgpack(b"<a/>", "xml")
    with pytest.raises(MalformedMessage, match="unknown field `extra`"):
        decoder.decode(to_msgpack(as_json[:-1] + b',"extra":1}', "json"))


def test_an_agent_speaking_only_json_runs_a_task(tmp_path: Path) -> None:
    """A 'foreign' agent written against docs/protocol.md with the plain nats-py client:
    its own login (as `baton admit` gives it) and reply inboxes under `_INBOX_<id>`, JSON
    heartbeats, a JSON reply to its assignment, a JSON result on its inbox."""
    json_header = {ENCODING_HEADER: "json"}

    async def scenario() -> dict[str, object]:
        async with cluster(tmp_path) as c:
            agent_id = "polyglot-1"
            assert c.stack.logins is not None
            login = c.stack.logins.admit(agent_id, "polyglot")
            acked: list[object] = []  # the stream's acks reach only its own reply inboxes
            nc = await nats.connect(login, inbox_prefix="_INBOX_polyglot_1")

            async def on_assign(msg: Msg) -> None:
                a = msgspec.msgpack.decode(msg.data, type=Assignment)  # Baton sends msgpack
                await nc.publish(
                    msg.reply,
                    json.dumps({"kind": "task.assign.ack", "accepted": True}).encode(),
                    headers=json_header,
                )
                result = {
                    "kind": "task.result", "run_id": a.run_id, "task_id": a.task_id,
                    "attempt": a.attempt, "lease_token": a.lease_token, "agent_id": agent_id,
                    "output": {"said": f"hello {a.input['params']['name']}"}, "elapsed_s": 0.01,
                }  # fmt: skip
                # the id the protocol asks for: attempt, sender and lease token
                msg_id = f"{a.run_id}:{a.task_id}:{a.attempt}:result:{agent_id}:{a.lease_token}"
                acked.append(
                    await nc.jetstream().publish(
                        subjects.inbox(a.run_id, agent_id),
                        json.dumps(result).encode(),
                        headers={**json_header, "Nats-Msg-Id": msg_id},
                    )
                )

            await nc.subscribe(subjects.assign(agent_id), cb=on_assign)
            beat = {"kind": "agent.heartbeat", "agent_id": agent_id, "role": "polyglot",
                    "capabilities": ["polyglot"], "capacity": 1, "load": 0}  # fmt: skip

            async def heartbeat() -> None:
                while True:
                    await nc.publish(
                        subjects.heartbeat(agent_id), json.dumps(beat).encode(), headers=json_header
                    )
                    await asyncio.sleep(0.2)

            beating = asyncio.create_task(heartbeat())
            try:
                await c.orchestrator.wait_for_agents(Counter(polyglot=1), 30)
                workflow = WorkflowSpec("w", [StepSpec("s", "polyglot", params={"name": "json"})])
                run_id = await c.orchestrator.start_run(workflow)
                state = await c.orchestrator.wait(run_id, timeout=30)
                async with asyncio.timeout(10):  # the stream's ack comes back to its inbox
                    while not acked:
                        await asyncio.sleep(0.01)
            finally:
                beating.cancel()
                await nc.close()
            return dict(state.result or {})

    assert asyncio.run(scenario()) == {"s": {"said": "hello json"}}


def test_the_document_does_not_depend_on_how_docstrings_are_indented() -> None:
    """msgspec 0.23 and Python 3.13 strip docstring indentation differently from older
    releases; the generated text is cleaned so every release renders the same document."""
    text = protocol_doc.render()
    assert "\\n    " not in text, "a description kept its docstring indentation"
    assert protocol_doc._normalised(
        {"description": "First line.\n\n        More, indented.", "items": [{"description": " x"}]}
    ) == {"description": "First line.\n\nMore, indented.", "items": [{"description": "x"}]}
    # msgspec 0.18 lists an Optional's `null` after the type, 0.23 before it
    either = [{"type": "null"}, {"$ref": "#/$defs/Usage"}]
    assert protocol_doc._normalised({"anyOf": either}) == protocol_doc._normalised(
        {"anyOf": either[::-1]}
    )
