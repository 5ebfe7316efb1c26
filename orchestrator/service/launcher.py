"""Starts and stops agent processes for `baton run`: each is `python -m agents ...`, a
separate OS process that dies with its parent and logs to the state directory."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import private
from bus.server import PARENT_ENV, die_with_parent
from orchestrator.core.workflow import AgentSpec


def resolve_handler(ref: str, base: Path) -> str:
    """A `file.py:function` ref (or an LLM agent's `agent.toml`) made absolute relative to
    the workflow's folder."""
    if ref.endswith(".toml") and not Path(ref).is_absolute():
        return str((base / ref).resolve())
    target, sep, name = ref.rpartition(":")
    if sep and target.endswith(".py") and not Path(target).is_absolute():
        return f"{(base / target).resolve()}:{name}"
    return ref


class AgentProcesses:
    """The agent processes one `baton run` owns."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        spec: AgentSpec,
        nats_url: str,
        base: Path,
        heartbeat_s: float = 0.5,
        contracts: str = "",
        url_for_agent: Callable[[str, str], str] | None = None,
    ) -> list[str]:
        """Start `spec.count` agents; `url_for_agent(agent_id, role)` gives each its own
        NATS URL (its credentials), passed in the environment, never on the command line."""
        private.make_dir(self.log_dir)
        started = []
        for n in range(spec.count):
            agent_id = f"{spec.role}-{n + 1}-{secrets.token_hex(2)}"
            command = [
                sys.executable, "-m", "agents",
                "--role", spec.role,
                "--id", agent_id,
                "--handler", resolve_handler(spec.handler, base),
                "--capacity", str(spec.capacity),
                "--heartbeat", str(heartbeat_s),
            ]  # fmt: skip
            if spec.bidder:
                command += ["--bidder", resolve_handler(spec.bidder, base)]
            if spec.capabilities:
                command += ["--capabilities", ",".join(spec.capabilities)]
            if contracts:
                command += ["--contracts", contracts]
            url = url_for_agent(agent_id, spec.role) if url_for_agent else nats_url
            env = {**os.environ, "BATON_NATS_URL": url, PARENT_ENV: str(os.getpid())}
            with private.append(self.log_dir / f"{agent_id}.log") as log:
                self.processes[agent_id] = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    env=env,
                    umask=private.CHILD_UMASK,
                )
            started.append(agent_id)
        return started

    def exited(self) -> dict[str, int]:
        """Agents whose process has ended, with its exit code."""
        codes = {a: p.poll() for a, p in self.processes.items()}
        return {a: code for a, code in codes.items() if code is not None}

    @staticmethod
    def roles(specs: list[AgentSpec]) -> Counter[str]:
        return Counter({s.role: s.count for s in specs})

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every agent at once (they drain), then SIGKILL those still running
        `timeout` seconds later: all of it takes `timeout` at most, however many."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        for process in self.processes.values():
            process.wait()
