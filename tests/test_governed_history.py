"""The log tools on the README's first example, governed (role contracts, shared memory, a
handoff, tool calls, an LLM agent on the fake OpenAI server): a run's audit and export hold
everything that happened in it (its agents' tool calls and memory writes, which live in
other streams), `audit --why` walks from any event id `audit --json` prints back to the
request that began it, an edited export is refused whichever field was edited, and a
fork of the governed run resumes under the run's own contracts, its time counted from
the fork, or is refused before anything is dispatched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.cluster import REPO, baton
from tests.fake_openai import FakeOpenAI

EXAMPLE = REPO / "examples" / "governed" / "workflow.toml"
VERDICT = json.dumps({"verdict": "publish", "reason": "clear and short"})


class Governed(NamedTuple):
    state: Path
    roles: Path
    run_id: str
    env: dict[str, str]


def _baton(g: Governed, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        baton(*args), capture_output=True, text=True, cwd=g.state.parent, env=g.env,
        timeout=240,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _audit(g: Governed, *args: str) -> list[dict[str, Any]]:
    out = _baton(g, "audit", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Governed]:
    directory = tmp_path_factory.mktemp("governed")
    roles = directory / "roles.toml"
    shutil.copy(EXAMPLE.parent / "roles.toml", roles)
    with FakeOpenAI() as fake:
        for _ in range(3):  # the run, and a resumed fork of it (one spare)
            fake.reply(VERDICT)  # the word count is made for the model
        env = {
            **os.environ,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "test",
            "BATON_LLM_MODEL": "fake-model",
            "BATON_STATE_DIR": str(directory / "state"),
        }
        env.pop("BATON_TOOL_APPROVAL", None)
        env.pop("BATON_CONTRACTS", None)
        g = Governed(directory / "state", roles, "", env)
        out = _baton(g, "run", str(EXAMPLE), "--contracts", str(roles)).stdout
        yield g._replace(run_id=out.split("baton replay ")[1].split()[0])


def test_a_runs_audit_holds_its_tool_calls_and_memory_writes(governed: Governed) -> None:
    events = _audit(governed, "--run", governed.run_id)
    streams = {e["stream"] for e in events}
    assert streams == {f"run-{governed.run_id}", f"agents-{governed.run_id}", "memory"}
    tools = _audit(governed, "--run", governed.run_id, "--type", "tool.*")
    assert {(t["data"]["tool"], t["data"]["phase"]) for t in tools} >= {
        ("publish", "approved"),
        ("word_count", "succeeded"),
    }
    written = _audit(governed, "--run", governed.run_id, "--type", "memory.written")
    assert len(written) == 3
    nothing = _baton(governed, "audit", "--run", "nosuchrun", check=False)
    assert nothing.returncode == 2
    assert "no run 'nosuchrun' in the event store" in nothing.stderr


def test_why_walks_a_tool_call_and_a_memory_write_back_to_the_request(
    governed: Governed,
) -> None:
    tool = _audit(governed, "--run", governed.run_id, "--type", "tool.*")[-1]
    written = _audit(governed, "--run", governed.run_id, "--type", "memory.written")[0]
    for event in (tool, written):
        chain = _audit(governed, "--why", event["event_id"])
        types = [c["type"] for c in chain]
        assert types[0] == event["type"]
        assert types[1] == "task.assigned", types
        assigned = chain[1]["data"]
        assert (assigned["task_id"], assigned["attempt"]) == (
            event["data"]["task_id"],
            event["data"]["attempt"],
        )
        assert types[-1] == "run.started"
        assert chain[-1]["causation_id"] == f"start:{governed.run_id}"
        by_position = _audit(governed, "--why", str(event["position"]))
        assert by_position == chain


def test_an_export_holds_the_whole_run_and_an_edit_anywhere_is_refused(
    governed: Governed, tmp_path: Path
) -> None:
    dump = tmp_path / "run.jsonl"
    _baton(governed, "export", governed.run_id, "-o", str(dump))
    lines = dump.read_text().splitlines()
    assert len(lines) == 1 + len(_audit(governed, "--run", governed.run_id))
    elsewhere = governed._replace(env={**governed.env, "BATON_STATE_DIR": str(tmp_path / "b")})
    assert f"imported run {governed.run_id}" in _baton(elsewhere, "import", str(dump)).stdout
    here = [(e["type"], e["event_id"]) for e in _audit(governed, "--run", governed.run_id)]
    there = [(e["type"], e["event_id"]) for e in _audit(elsewhere, "--run", governed.run_id)]
    assert here == there
    assert _baton(elsewhere, "import", str(dump)).returncode == 0, "twice changes nothing"

    types = [json.loads(line)["type"] for line in lines[1:]]
    started, completed = 1, 1 + types.index("run.completed")
    tool = 1 + types.index("tool.call")
    edits: list[tuple[int, Callable[[dict[str, Any]], None]]] = [
        (started, lambda r: r["event"]["workflow"].update(name="forged")),
        (completed, lambda r: r["event"].update(result={"forged": True})),
        (tool, lambda r: r["event"].update(by="mallory")),
        (tool, lambda r: r.update(actor="mallory")),
    ]
    third = governed._replace(env={**governed.env, "BATON_STATE_DIR": str(tmp_path / "c")})
    for n, edit in edits:
        record = json.loads(lines[n])
        edit(record)
        forged = tmp_path / f"forged{n}.jsonl"
        forged.write_text("\n".join([*lines[:n], json.dumps(record), *lines[n + 1 :]]))
        refused = _baton(third, "import", str(forged), check=False)
        assert refused.returncode == 2, (n, refused.stdout)
        assert "was changed" in refused.stderr
    assert not (tmp_path / "c").exists(), "nothing of a refused export is stored, no store made"


def _fork(g: Governed, new_id: str) -> tuple[str, list[dict[str, Any]]]:
    events = _audit(g, "--run", g.run_id)
    edit = next(
        e for e in events if e["type"] == "task.assigned" and e["data"]["task_id"] == "edit"
    )
    _baton(g, "fork", g.run_id, "--at", str(edit["position"] - 1), "--new-id", new_id)
    return new_id, events


def test_a_fork_of_a_governed_run_resumes_under_its_contracts(governed: Governed) -> None:
    fork_id, origin = _fork(governed, "fork-governed")
    copied = len(_audit(governed, "--run", fork_id))
    resumed = _baton(governed, "resume", fork_id, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"run {fork_id} completed" in resumed.stdout
    forked = _audit(governed, "--run", fork_id)
    started, linked = (
        next(e for e in forked if e["type"] == t) for t in ("run.started", "run.forked")
    )
    assert started["data"]["at"] == linked["data"]["at"], "the fork starts when it is made"
    assert started["data"]["at"] > origin[-1]["recorded_at"]
    completed = next(e for e in forked if e["type"] == "run.completed")
    took = completed["data"]["at"] - started["data"]["at"]
    shown = resumed.stdout.split("run completed in ")[1].split("s")[0]
    assert abs(float(shown) - took) < 0.01, "elapsed time counts from the fork"
    after_fork = forked[copied:]
    for e in after_fork:
        if e["type"] == "task.assigned":
            d = e["data"]
            line = f"started  on {d['agent_id']} (attempt {d['attempt']})"
            assert any(d["task_id"] in x and line in x for x in resumed.stdout.splitlines()), d
    assert {e["data"]["task_id"] for e in after_fork if e["type"] == "task.succeeded"} == {
        "edit",
        "review",
    }


def test_a_governed_fork_without_its_contracts_is_refused_before_dispatch(
    governed: Governed,
) -> None:
    fork_id, _ = _fork(governed, "fork-unsure")
    before = _audit(governed, "--run", fork_id)
    original = governed.roles.read_text()
    try:
        governed.roles.write_text(original.replace("concurrency = 1", "concurrency = 2", 1))
        changed = _baton(governed, "resume", fork_id, check=False)
        governed.roles.unlink()
        missing = _baton(governed, "resume", fork_id, check=False)
    finally:
        governed.roles.write_text(original)
    assert changed.returncode == 2
    assert f"{governed.roles}, which no longer says what it said" in changed.stderr
    assert missing.returncode == 2
    assert f"governed by the role contracts in {governed.roles}: no such file" in missing.stderr
    assert _audit(governed, "--run", fork_id) == before, "nothing was dispatched"


def test_replay_and_fork_before_the_first_event_say_the_run_had_not_started(
    governed: Governed,
) -> None:
    first = _audit(governed, "--run", governed.run_id)[0]["position"]
    early = str(first - 1)
    for command in (("replay", governed.run_id, "--until", early),
                    ("fork", governed.run_id, "--at", early)):  # fmt: skip
        done = _baton(governed, *command, check=False)
        assert done.returncode == 2
        assert f"run {governed.run_id} had not started yet at position {early}" in done.stderr
