"""The README is executable documentation: every `.venv/bin/...` command in its shell
blocks is run here the way a user would run it (a scratch state directory, the fake
OpenAI server for the LLM agent, placeholders filled with real ids), and each must exit as
documented and print what the README says it shows. A command added to the README without
a case here fails `test_every_readme_command_is_run`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import cli as agent_cli
from bus import blobs
from bus.server import find_binary
from eventstore import SqliteEventStore
from orchestrator.cli import a2a_cli
from orchestrator.cli import main as baton_cli
from orchestrator.cli import tool as tool_cli
from tests.cluster import REPO, baton
from tests.fake_openai import FakeOpenAI

README = REPO / "README.md"
VERDICT = json.dumps({"verdict": "publish", "reason": "clear and short"})


def readme_commands() -> list[str]:
    """Every `.venv/bin/...` line of the README's `sh` blocks, comments dropped."""
    commands, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        if inside and line.startswith(".venv/bin/"):
            commands.append(re.split(r"\s+#", line, maxsplit=1)[0].strip())
    return commands


def argv(command: str, **fill: str) -> list[str]:
    """The command as this checkout runs it, placeholders (`<run-id>`) filled in."""
    for name, value in fill.items():
        command = command.replace(f"<{name.replace('_', '-')}>", value)
    assert "<" not in command.replace("<-", ""), f"unfilled placeholder in {command!r}"
    words = shlex.split(command)
    program = words.pop(0)
    if program == ".venv/bin/baton":
        return baton(*words)
    assert program == ".venv/bin/python", command
    return [sys.executable, *words]


class User:
    """A person at a terminal in a scratch directory, with the README open."""

    def __init__(self, home: Path, fake: FakeOpenAI) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "BATON_STATE_DIR": str(home / ".baton"),
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "test",
            "BATON_LLM_MODEL": "fake-model",
        }
        self.env.pop("BATON_TOOL_APPROVAL", None)
        for shown in ("examples", "bench"):  # the README's paths are relative to the checkout
            (home / shown).symlink_to(REPO / shown)

    def run(
        self,
        command: str,
        *,
        code: int = 0,
        state: Path | None = None,
        timeout: float = 180,
        **fill: str,
    ) -> str:
        env = {**self.env, "BATON_STATE_DIR": str(state)} if state else self.env
        done = subprocess.run(
            argv(command, **fill), cwd=self.home, env=env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == code, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def until_replayed(self, run_id: str, status: str, timeout: float = 60) -> None:
        """Until `baton replay` says the run has `status`."""
        deadline = time.monotonic() + timeout
        while f"status {status}" not in (said := self.run(f".venv/bin/baton replay {run_id}")):
            assert time.monotonic() < deadline, said
            time.sleep(0.2)

    def start(self, command: str, **fill: str) -> Running:
        process = subprocess.Popen(
            argv(command, **fill), cwd=self.home, env=self.env, text=True, bufsize=0,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return Running(process)


class Running:
    """A command left running, its output read as it comes (a prompt ends in no newline)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read(1):
            self.output.append(chunk)

    def until(self, pattern: str, timeout: float = 120, after: int = 0) -> str:
        """The output once `pattern` (a regex) shows in it past character `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = "".join(self.output)
            if re.search(pattern, text[after:]):
                return text
            if self.process.poll() is not None and not re.search(pattern, text[after:]):
                break
            time.sleep(0.05)
        raise AssertionError(f"never printed {pattern!r}:\n{''.join(self.output)}")

    def finish(self, code: int = 0) -> str:
        self.process.wait(timeout=120)
        time.sleep(0.1)  # the reader's last characters
        text = "".join(self.output)
        assert self.process.returncode == code, text
        return text

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def run_id_of(out: str) -> str:
    match = re.search(r"run (\S+) (?:completed|failed|stopped)", out)
    assert match, out
    return match.group(1)


def block(commands: list[str], first: str) -> list[str]:
    """The commands of the README's shell block whose first command is `first`."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.split(r"\s+#", line)[0].strip() == first)
    end = lines.index("```", start)
    return [c for c in commands if any(line.startswith(c) for line in lines[start:end])]


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[User, list[str]]]:
    with FakeOpenAI() as fake:
        for _ in range(8):
            fake.reply(VERDICT)
        yield User(tmp_path_factory.mktemp("newcomer"), fake), readme_commands()


def test_the_governed_example_and_the_tool_commands(readme: tuple[User, list[str]]) -> None:
    user, commands = readme
    policy, human, pending, approve, tools, memory = block(
        commands, ".venv/bin/baton run examples/governed/workflow.toml"
    )
    assert "completed" in user.run(policy)
    asking = user.start(human)  # nobody answers at its prompt: the call is decided elsewhere
    asking.until(r"approve\? \[y/N\] $")
    # the prompt comes on the approval request; the log's "awaiting" record through the
    # durable inbox, a moment later on a loaded machine: ask until the log shows it
    deadline = time.monotonic() + 30
    while not (calls := _json_lines(user.run(pending.replace("pending", "pending --json")))):
        assert time.monotonic() < deadline, "the call asked about never showed as pending"
        time.sleep(0.2)
    [call] = calls
    assert call["tool"] == "publish"
    assert "approved" in user.run(approve, call_id=call["call_id"])
    assert "approved elsewhere" in asking.finish()
    assert "no tool call waits" in user.run(pending)
    audited = user.run(tools)
    assert re.search(r"tool\.call +analyst-", audited), "the LLM agent's word_count call"
    decided = [json.loads(line)["data"] for line in user.run(tools + " --json").splitlines()]
    [approved] = [d for d in decided if d["phase"] == "approved" and d["tool"] == "publish"][-1:]
    assert (approved["by"], approved["detail"]) == ("human:" + getpass.getuser(), "looks fine")
    assert re.search(r"memory\.written +editor-", user.run(memory)), "the editor's draft"


def _json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


LARGE = "a value over the blob threshold. " * 10_000


async def _store_blob(path: Path, value: str) -> str:
    """Store `value` as a blob beside the log at `path`, as a large output would be."""
    store = await SqliteEventStore.open(path)
    try:
        return (await store.blobs.put(value.encode(), blobs.TEXT)).digest
    finally:
        await store.close()


def test_a_run_and_what_the_readme_does_with_its_id(
    readme: tuple[User, list[str]], tmp_path: Path
) -> None:
    user, commands = readme
    run_id = run_id_of(user.run(".venv/bin/baton run examples/research/workflow.toml"))
    shown = block(commands, ".venv/bin/baton replay <run-id>")
    out: dict[str, str] = {}
    for command in shown:
        if command.startswith(".venv/bin/baton audit --agent"):
            lines = user.run(f".venv/bin/baton audit --run {run_id} --json").splitlines()
            agent = next(
                e["actor"] for e in map(json.loads, lines) if e["type"] == "task.succeeded"
            )
            out[command] = user.run(command, agent_id=agent)
        elif "<position>" in command:  # a point in the middle of the run
            lines = user.run(f".venv/bin/baton audit --run {run_id} --json").splitlines()
            position = str(json.loads(lines[len(lines) // 2])["position"])
            out[command] = user.run(command, run_id=run_id, position=position)
        elif command.startswith(".venv/bin/baton audit --why"):
            out[command] = user.run(command.replace("<event-id|pos>", "3"))
        elif command.startswith(".venv/bin/baton resume"):
            fork = re.search(
                r"forked run (\S+)", out[".venv/bin/baton fork <run-id> --at <position>"]
            )
            assert fork
            out[command] = user.run(command, run_id=fork.group(1))
        elif command.startswith(".venv/bin/baton import"):
            out[command] = user.run(command, state=tmp_path / "elsewhere")
        elif command.startswith(".venv/bin/baton blobs get"):
            digest = asyncio.run(_store_blob(user.home / ".baton" / "events.db", LARGE))
            out[command] = user.run(command, digest=digest)
            assert (user.home / "FILE").read_text() == LARGE
        else:
            out[command] = user.run(command, run_id=run_id)
    assert "completed" in out[".venv/bin/baton replay <run-id>"]
    assert "the orchestrator would now" in out[".venv/bin/baton replay <run-id> --until <position>"]
    assert "run.started" in out[".venv/bin/baton audit --run <run-id>"]
    assert "the chain began with" in out[".venv/bin/baton audit --why <event-id|pos>"]
    assert "hash chain: ok" in out[".venv/bin/baton audit verify"]
    assert "completed" in out[".venv/bin/baton resume <run-id>"]
    assert (user.home / "run.jsonl").exists()
    assert f"imported run {run_id}" in out[".venv/bin/baton import run.jsonl"]
    assert "unreferenced blob(s)" in out[".venv/bin/baton blobs gc --dry-run"]


def test_every_example_of_the_patterns_block_and_the_people_block(
    readme: tuple[User, list[str]],
) -> None:
    user, commands = readme
    patterns = block(commands, ".venv/bin/baton run examples/review-loop/workflow.toml")
    people = ".venv/bin/baton approve <run-id> <task> --output '{\"fixed\": true}'"
    approve, reject, retry, cancel = block(commands, people)
    exits = {"budget": 3}  # stopped at a limit
    for command in patterns:
        example = command.split("/")[3]
        if example != "escalation":
            out = user.run(command, code=exits.get(example, 0))
            assert re.search(r"run \S+ (completed|stopped)", out), out
            continue
        # a person decides, as the run prints: approve; retry then reject; cancel
        for decisions, code in (([approve], 0), ([retry, reject], 1), ([cancel], 3)):
            waiting = user.start(command)
            printed = waiting.until(r"baton approve \S+ flaky")
            run_id = re.findall(r"baton approve (\S+) flaky", printed)[-1]
            for decision in decisions:
                if decision is reject:  # the retried task escalates again first
                    waiting.until(r"baton approve \S+ flaky", after=len(printed))
                user.run(decision.replace(" [--task <task>]", ""), run_id=run_id, task="flaky")
            waiting.finish(code)


def test_the_service_block(readme: tuple[User, list[str]], tmp_path: Path) -> None:
    user, commands = readme
    serve_line, admit_line, agent_line, submit_line = block(commands, ".venv/bin/baton serve")
    embedded = user.start(serve_line)
    try:
        address = embedded.until(r"serving on NATS \S+,")
        assert "@" not in address, "it never prints a password"
        user.run(admit_line)
        url_file = user.home / "researcher-1.url"
        assert url_file.stat().st_mode & 0o077 == 0, "the agent's login is private"
        agents = [user.start(agent_line)]
        try:
            submitted = user.run(submit_line)
            found = re.search(r"^(req-\w+|\d{8}-\d{6}-\w+)$", submitted, re.M)
            assert found is not None, submitted
            run_id = found[0]
            status = user.run(".venv/bin/baton status")
            assert re.search(rf"{run_id} +research-brief +running .* 0/5 ", status), status
            for role, handler in (("planner", "plan"), ("writer", "write")):  # as the text says
                user.run(admit_line.replace("researcher", role))
                same_way = agent_line.replace("researcher", role)
                agents.append(user.start(same_way.replace(":research", f":{handler}")))
            user.until_replayed(run_id, "completed")
        finally:
            for agent in agents:
                agent.stop()
    finally:
        embedded.stop()


def test_the_conformance_block(readme: tuple[User, list[str]]) -> None:
    """The bus on a free port instead of 4333 (and its JetStream files in the scratch
    directory): the Python agent passes every case the kit runs without a login."""
    user, commands = readme
    server_line, agent_line, kit_line = block(
        commands, ".venv/bin/nats-server -a 127.0.0.1 -p 4333 -js &"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def here(command: str) -> str:
        return command.replace("4333", str(port)).removesuffix("&").strip()

    words = shlex.split(here(server_line))
    assert words[0] == ".venv/bin/nats-server"
    store = ["-sd", str(user.home / "conformance-js")]
    server = subprocess.Popen([str(find_binary()), *words[1:], *store],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not listen"
                time.sleep(0.05)
        agent = user.start(here(agent_line))
        try:
            out = user.run(here(kit_line))
        finally:
            agent.stop()
    finally:
        server.terminate()
        server.wait(30)
    assert "FAIL" not in out, out
    assert "\nconformant" in out, out
    assert re.search(r"^PASS +drain", out, re.M), out


def test_the_observability_block(readme: tuple[User, list[str]]) -> None:
    user, commands = readme
    run_id = run_id_of(user.run(".venv/bin/baton run examples/research/workflow.toml"))
    trace, html, status, agents = block(commands, ".venv/bin/baton trace <run-id>")
    assert "legend" in user.run(trace, run_id=run_id).lower() or "█" in user.run(
        trace, run_id=run_id
    )
    user.run(html, run_id=run_id)
    assert (user.home / "run.html").read_text().startswith("<!")
    assert "no orchestrator running" in user.run(status)
    assert "no orchestrator running" in user.run(agents, code=2)


def test_every_readme_command_is_run() -> None:
    """Each command of the README belongs to a block one of the tests above runs."""
    covered = [
        ".venv/bin/baton run examples/governed/workflow.toml",
        ".venv/bin/baton tool", ".venv/bin/baton audit", ".venv/bin/baton replay",
        ".venv/bin/baton fork", ".venv/bin/baton resume", ".venv/bin/baton export",
        ".venv/bin/baton import", ".venv/bin/baton run examples/", ".venv/bin/baton approve",
        ".venv/bin/baton reject", ".venv/bin/baton retry", ".venv/bin/baton cancel",
        ".venv/bin/baton serve", ".venv/bin/baton admit", ".venv/bin/baton agent",
        ".venv/bin/baton submit", ".venv/bin/baton conformance", ".venv/bin/nats-server",
        ".venv/bin/baton trace", ".venv/bin/baton status", ".venv/bin/baton agents",
        ".venv/bin/baton blobs",
        ".venv/bin/python -m bench.", ".venv/bin/baton a2a serve",  # tests/test_a2a_serve.py
    ]  # fmt: skip
    assert [c for c in readme_commands() if not c.startswith(tuple(covered))] == []


SUBCOMMANDS = {
    "tool": {"pending", "approve", "deny"},
    "creds": {"issue", "revoke", "list"},
    "contracts": {"show"},
    "a2a": {"serve"},
}
"""Commands whose next word names a subcommand with a `--help` of its own."""


def _uses() -> dict[tuple[str, ...], set[str]]:
    """Each `baton` command (with its subcommand) the README shows, and the options it uses
    there: in its shell blocks and in its inline `baton ...` code spans."""
    lines = [c.removeprefix(".venv/bin/") for c in readme_commands() if "/baton " in c]
    lines += re.findall(r"`(baton [^`]*)`", README.read_text())
    uses: dict[tuple[str, ...], set[str]] = {}
    for line in lines:
        words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
        if not words:
            continue
        command = (
            tuple(words[:2])
            if words[1:2] and words[1] in SUBCOMMANDS.get(words[0], ())
            else tuple(words[:1])
        )
        uses.setdefault(command, set()).update(w.split("=")[0] for w in words if w.startswith("--"))
    return uses


def test_every_option_the_readme_uses_is_in_its_commands_help() -> None:
    uses = _uses()
    assert ("run",) in uses
    assert ("audit",) in uses
    missing = []
    for command, options in sorted(uses.items()):
        help_text = _help(command)
        missing += [
            f"baton {' '.join(command)} {option}"
            for option in sorted(options)
            if not re.search(rf"{re.escape(option)}(?![\w-])", help_text)
        ]
    assert missing == []


def _help(command: tuple[str, ...]) -> str:
    """What `baton <command> --help` prints, from the parsers `baton` itself builds (read in
    this process: a `baton` process per command cost most of a minute of the suite)."""
    parser: argparse.ArgumentParser
    if command[0] == "agent":
        parser, argv = agent_cli.parser(), [*command[1:], "--help"]
    elif command[0] == "tool":
        parser, argv = tool_cli.parser(), [*command[1:], "--help"]
    elif command[0] == "a2a":
        parser, argv = a2a_cli.parser(), [*command[1:], "--help"]
    else:
        parser, argv = baton_cli._parser(), [*command, "--help"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exited:
        parser.parse_args(argv)
    assert exited.value.code == 0, command
    return printed.getvalue()


def test_the_benchmarks_named_in_the_readme_exist_and_answer_help(
    readme: tuple[User, list[str]],
) -> None:
    user, commands = readme
    for command in [c for c in commands if c.startswith(".venv/bin/python -m bench.")]:
        assert "usage" in user.run(command + " --help", timeout=60)
