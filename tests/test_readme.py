"""The README is executable documentation: every `.venv/bin/...` command in its shell
blocks is run here the way a user would run it (a scratch state directory, the fake
OpenAI server for the LLM agent, placeholders filled with real ids), and each must exit as
documented and print what the README says it shows. A command added to the README without
a case here fails `test_every_readme_command_is_run`."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
        self.ran: list[str] = []
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
        self, command: str, *, code: int = 0, stdin: str = "", timeout: float = 180, **fill: str
    ) -> str:
        self.ran.append(command)
        done = subprocess.run(
            argv(command, **fill), cwd=self.home, env=self.env, input=stdin,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == code, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def start(self, command: str, **fill: str) -> subprocess.Popen[str]:
        self.ran.append(command)
        return subprocess.Popen(
            argv(command, **fill), cwd=self.home, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip


def run_id_of(out: str) -> str:
    match = re.search(r"run (\S+) (?:completed|failed|stopped)", out)
    assert match, out
    return match.group(1)


def first(commands: list[str], prefix: str) -> str:
    return next(c for c in commands if c.startswith(prefix))


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[User, list[str]]]:
    with FakeOpenAI() as fake:
        for _ in range(8):
            fake.reply(VERDICT)
        yield User(tmp_path_factory.mktemp("newcomer"), fake), readme_commands()


def test_the_governed_example_and_its_tool_commands(readme: tuple[User, list[str]]) -> None:
    user, commands = readme
    gov = [c for c in commands if "examples/governed/workflow.toml" in c]
    assert len(gov) == 2
    assert "completed" in user.run(gov[0])
    assert "approve? [y/N]" in user.run(gov[1], stdin="y\n")
    assert "no tool call waits" in user.run(first(commands, ".venv/bin/baton tool pending"))
    out = user.run(first(commands, ".venv/bin/baton tool approve"), code=2, call_id="nosuchcall")
    assert "nosuchcall" in out
    tools = user.run(first(commands, ".venv/bin/baton audit --type 'tool.*'"))
    assert "word_count" in tools
    assert "publish" in tools
    assert "draft:brief" in user.run(first(commands, ".venv/bin/baton audit --type memory"))


def test_a_run_and_what_the_readme_does_with_its_id(readme: tuple[User, list[str]]) -> None:
    user, commands = readme
    research = user.run(".venv/bin/baton run examples/research/workflow.toml")
    run_id = run_id_of(research)
    block = commands[commands.index(".venv/bin/baton replay <run-id>") :][:10]
    out = {}
    for command in block:
        if command.startswith(".venv/bin/baton audit --agent"):
            agent = json.loads(
                user.run(f".venv/bin/baton audit --run {run_id} --json").split("\n")[2]
            )
            out[command] = user.run(command, agent_id=agent["actor"])
        elif command.startswith(".venv/bin/baton audit --why"):
            out[command] = user.run(command, event_id_pos="3")
        elif command.startswith(".venv/bin/baton resume"):
            fork = re.search(
                r"fork(?:ed)? (?:run )?(\S+)", out[first(block, ".venv/bin/baton fork")]
            )
            assert fork, out
            out[command] = user.run(command, run_id=fork.group(1))
        else:
            out[command] = user.run(command, run_id=run_id)
    assert "completed" in out[".venv/bin/baton replay <run-id>"]
    assert "hash chain: ok" in out[".venv/bin/baton audit verify"]
    assert (user.home / "run.jsonl").exists()
    assert "imported" in out[".venv/bin/baton import run.jsonl"]


def test_every_example_of_the_patterns_block(readme: tuple[User, list[str]]) -> None:
    user, commands = readme
    expected = {"budget": 3, "escalation": None}
    for command in [c for c in commands if c.startswith(".venv/bin/baton run examples/")]:
        example = command.split("/")[3]
        if example in ("governed", "research"):
            continue
        if example == "escalation":
            waiting = user.start(command)
            run_id = _wait_for_escalation(user)
            for decision in [c for c in commands if c.startswith(".venv/bin/baton approve")]:
                user.run(decision, run_id=run_id, task="flaky")
            out, _ = waiting.communicate(timeout=120)
            assert waiting.returncode == 0, out
            assert "completed" in out
            continue
        out = user.run(command, code=expected.get(example) or 0)
        assert re.search(r"run \S+ (completed|stopped)", out), out


def _wait_for_escalation(user: User) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = user.run(".venv/bin/baton status --json")
        for run in json.loads(status or "[]"):
            if run.get("workflow") == "escalation" and run.get("escalated"):
                return str(run["run_id"])
        time.sleep(0.2)
    raise AssertionError("the escalation example never escalated")


def test_the_service_block(readme: tuple[User, list[str]]) -> None:
    user, commands = readme
    serve = user.start(".venv/bin/baton serve")
    try:
        line = serve.stdout.readline() if serve.stdout else ""
        url = re.search(r"nats://[\d.]+:\d+", line)
        assert url, line
        port = url.group(0).rsplit(":", 1)[1]
        agent_line = first(commands, ".venv/bin/baton agent").replace(
            "--nats ...", f"--nats {url.group(0)}"
        )
        agents = [user.start(agent_line) for _ in range(3)]
        try:
            out = user.run(first(commands, ".venv/bin/baton submit"), port=port)
            assert re.search(r"\d{8}-\d{6}-\w+", out), out
        finally:
            for agent in agents:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)


SUBCOMMANDS = {"tool": {"pending", "approve", "deny"}}
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
        help_text = subprocess.run(
            baton(*command, "--help"), capture_output=True, text=True, timeout=60
        )
        assert help_text.returncode == 0, (command, help_text.stderr)
        missing += [
            f"baton {' '.join(command)} {option}"
            for option in sorted(options)
            if not re.search(rf"{re.escape(option)}(?![\w-])", help_text.stdout)
        ]
    assert missing == []


def test_the_benchmarks_named_in_the_readme_exist_and_answer_help(
    readme: tuple[User, list[str]],
) -> None:
    user, commands = readme
    for command in [c for c in commands if c.startswith(".venv/bin/python -m bench.")]:
        assert "usage" in user.run(command + " --help", timeout=60)
