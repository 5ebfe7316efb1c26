"""The governed example end to end through `baton run`: role contracts, shared memory
read by another agent, a handoff that passes the receiver the memory refs it needs, a
tool call approved by policy (or by the human at the terminal
with --human-approval), and an LLM agent with a tool, its model being the fake OpenAI
server (the structure is what is checked, as it would be with a real model)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import REPO, baton
from tests.fake_openai import FakeOpenAI

EXAMPLE = REPO / "examples" / "governed" / "workflow.toml"
VERDICT = json.dumps({"verdict": "publish", "reason": "clear and short"})


def run(tmp_path: Path, fake: FakeOpenAI, *extra: str, stdin: str = "") -> str:
    fake.reply(VERDICT)  # the first tool call is made for the model, on the real brief
    env = {
        **os.environ,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "test",
        "BATON_LLM_MODEL": "fake-model",
        "BATON_STATE_DIR": str(tmp_path / "state"),
    }
    env.pop("BATON_TOOL_APPROVAL", None)
    done = subprocess.run(
        baton("run", str(EXAMPLE), *extra), input=stdin, capture_output=True, text=True,
        timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def audit(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        baton("audit", "--json", "--state-dir", str(tmp_path / "state"), *args),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("human", [False, True], ids=["policy", "human"])
def test_the_governed_example_runs(tmp_path: Path, human: bool) -> None:
    with FakeOpenAI() as fake:
        extra = ("--human-approval",) if human else ()
        out = run(tmp_path, fake, *extra, stdin="y\n" if human else "")
        requests = fake.requests

    assert "completed" in out
    assert "run started" in out, "live progress lines were printed"
    assert "task.handed_off  edit editor -> publisher" in out, out
    assert re.search(r"review +finished on analyst-", out), out
    result = json.loads(out[out.index("result:") + len("result:") : out.index("\nreplay it")])
    succeeded = {
        e["data"]["task_id"]: e["data"] for e in audit(tmp_path, "--type", "task.succeeded")
    }
    edit = succeeded["edit"]["output"]
    assert edit["title"] == "Brief: coordination in multi-agent systems"
    assert len(edit["memory_refs"]) == 2, "the editor read both notes from memory"
    assert "published" in edit["receipt"]
    # the editor handed the task to the publisher, passing the ref of its draft
    [handed] = [e["data"] for e in audit(tmp_path, "--type", "task.handed_off")]
    assert (handed["task_id"], handed["from_role"], handed["to_role"]) == (
        "edit",
        "editor",
        "publisher",
    )
    assert handed["output"]["notes"] == edit["memory_refs"]
    assert handed["memory_refs"] == [edit["draft_ref"]], "the receiver got the draft's ref"
    assert edit["handed_off_by"] == "editor"
    assigned = [e["data"] for e in audit(tmp_path, "--type", "task.assigned")]
    owners = [a["agent_id"] for a in assigned if a["task_id"] == "edit"]
    assert len(owners) == 2, "the editor's attempt, then the publisher's"
    assert owners[0] != owners[1]
    # the LLM agent was offered only its contract's tool; its first call was made for it on
    # the real brief (the published text), and the model saw the call and its true result
    assert [t["function"]["name"] for t in requests[0]["tools"]] == ["word_count"]
    assert "tool_choice" not in requests[0]
    [forced] = [m for m in requests[0]["messages"] if m["role"] == "assistant"]
    [call] = forced["tool_calls"]
    assert call["function"]["name"] == "word_count"
    assert json.loads(call["function"]["arguments"]) == {"text": edit["text"]}
    [counted] = [m for m in requests[0]["messages"] if m["role"] == "tool"]
    words = len(re.findall(r"\w+", edit["text"]))
    assert json.loads(counted["content"]) == {"result": words}
    assert [m["content"] for m in requests[0]["messages"] if m["role"] == "user"] == [edit["text"]]
    # the model's verdict, with the count the tool measured (not one the model restated)
    assert result["review"] == {**json.loads(VERDICT), "words": words}
    answer = requests[0]["response_format"]["schema"]["properties"]
    assert answer["verdict"]["enum"] == ["publish", "revise"], "the verdict is constrained"
    calls = [e["data"] for e in audit(tmp_path, "--type", "tool.call")]
    phases = [(c["tool"], c["phase"]) for c in calls]
    assert ("publish", "approved") in phases
    assert ("word_count", "succeeded") in phases
    approved = next(c for c in calls if c["phase"] == "approved")
    if human:
        assert "approve? [y/N]" in out
        assert not str(approved["by"]).startswith("policy:")
    else:
        assert approved["by"] == "policy:risk<=medium"
    written = audit(tmp_path, "--type", "memory.written")
    keys = sorted(str(e["data"]["key"]) for e in written)
    assert keys == ["draft:brief", "note:governance", "note:state"]
    [draft] = [e for e in written if e["data"]["key"] == "draft:brief"]
    assert draft["event_id"] == edit["draft_ref"]
    assert draft["data"]["role"] == "editor"
    assert draft["data"]["text"] == edit["text"], "the publisher published the editor's draft"
