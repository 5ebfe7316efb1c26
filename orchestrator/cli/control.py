"""`baton approve|reject|retry <run> <task>` and `baton cancel <run> [--task T]`: a
person's decision, sent to the running orchestrator through its API subject (so the core
decides it and records the person as the actor), never written to the log directly."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.protocol import ErrorReply
from orchestrator.core.errors import ControlRefused, OrchestratorError
from orchestrator.service.api import ControlAccepted, RunControlRequest
from orchestrator.service.bootstrap import state_dir
from orchestrator.service.workflow_files import parse_input

_reply: Decoder[ControlAccepted | ErrorReply] = Decoder(ControlAccepted | ErrorReply)
ACTIONS = ("approve", "reject", "retry", "cancel")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = {
        "approve": "approve an escalated task (it succeeds with --output)",
        "reject": "reject an escalated task (it fails, and so may the run)",
        "retry": "give an escalated task a fresh round of attempts",
        "cancel": "cancel a run, or one task of it with --task",
    }
    for action in ACTIONS:
        p = sub.add_parser(action, help=helps[action])
        p.add_argument("run_id")
        if action == "cancel":
            p.add_argument("--task", default="", help="cancel only this task")
        else:
            p.add_argument("task_id")
        if action == "approve":
            p.add_argument("--output", default="{}", help="the task's output, a JSON object")
        p.add_argument("--note", default="", help="why (recorded with the decision)")
        p.add_argument("--as", dest="actor", default="",
                       help="who decides (default human:<login name>)")  # fmt: skip
        p.add_argument("--nats", default=os.environ.get("BATON_NATS_URL", ""),
                       help="orchestrator NATS (default: that of --state-dir)")  # fmt: skip
        p.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def nats_of(directory: Path) -> str:
    """The URL of the embedded NATS a `baton run` serves from `directory`."""
    for ports in sorted((directory / "nats" / "ports").glob("*.ports")):
        try:
            return str(json.loads(ports.read_text())["nats"][0])
        except (ValueError, KeyError, IndexError, OSError):
            continue
    raise OrchestratorError(f"no running orchestrator's NATS under {directory} (see --nats)")


def request_of(args: argparse.Namespace) -> RunControlRequest:
    output = parse_input(getattr(args, "output", "{}"), "--output")
    task_id = args.task if args.command == "cancel" else args.task_id
    actor = args.actor or f"human:{getpass.getuser()}"
    return RunControlRequest(args.run_id, args.command, actor, task_id, args.note, output)


async def send(args: argparse.Namespace) -> int:
    request = request_of(args)
    url = args.nats or nats_of(state_dir(args.state_dir))
    bus = await Bus.connect(url, name=f"baton-{args.command}")
    try:
        data = await bus.request(subjects.API_RUN_CONTROL, encode(request), args.timeout)
    finally:
        await bus.close()
    reply = _reply.decode(data)
    if isinstance(reply, ErrorReply):
        raise ControlRefused(reply.detail or reply.error)
    what = f"task {request.task_id}" if request.task_id else "the run"
    print(f"{args.command} of {what} recorded by {request.actor}; "
          f"run {reply.run_id} is {reply.status}")  # fmt: skip
    return 0
