"""`baton approve|reject|retry <run> <task>` and `baton cancel <run> [--task T]`: a
person's decision, sent to the running orchestrator on that person's own API subject (so
the core decides it and records the person as the actor), never written to the log
directly. On the embedded server the person is who the state directory's credentials
say; on a bus given with `--nats`, `--as` (default `human:<login>`)."""

from __future__ import annotations

import argparse

from bus import subjects
from bus.codec import Decoder, encode
from bus.protocol import ErrorReply
from orchestrator.cli.durations import seconds
from orchestrator.cli.observe import NoOrchestrator, connect
from orchestrator.cli.reach import Reach, me, reach
from orchestrator.core.errors import ControlRefused, WorkflowError
from orchestrator.service.api import ControlAccepted, RunControlRequest
from orchestrator.service.bootstrap import state_dir
from orchestrator.service.workflow_files import input_arg

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
            p.add_argument(
                "--output",
                default="{}",
                help="the task's output, a JSON object "
                "(or @FILE to read it from a file, @- standard input)",
            )
        p.add_argument("--note", default="", help="why (recorded with the decision)")
        p.add_argument("--as", dest="actor", default="",
                       help="who decides (default human:<login name>); on the embedded "
                            "server, always who its credentials name")  # fmt: skip
        p.add_argument("--nats", default=None,
                       help="orchestrator NATS (default: $BATON_NATS_URL, else "
                            "baton.toml's nats, else that of --state-dir)")  # fmt: skip
        p.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)")
        p.add_argument("--timeout", type=seconds, default=10.0, help="seconds (default 10)")


def actor_of(args: argparse.Namespace, where: Reach) -> str:
    """Who decides: the identity the embedded server's credentials name (`--as` may only
    repeat it), else `--as`, else this login as `human:<login>`."""
    if where.identity and args.actor and args.actor != where.identity:
        raise WorkflowError(
            "--as",
            f"this orchestrator's server knows you: you decide as {where.identity}, the "
            f"person its credentials name, and cannot decide as {args.actor}",
        )
    return where.identity or args.actor or me()


def request_of(args: argparse.Namespace) -> RunControlRequest:
    output = input_arg(getattr(args, "output", "{}"), "--output")
    task_id = args.task if args.command == "cancel" else args.task_id
    return RunControlRequest(args.run_id, args.command, task_id, args.note, output)


async def send(args: argparse.Namespace) -> int:
    request = request_of(args)
    directory = state_dir(args.state_dir)
    where = reach(args.nats, directory)
    if where is None:
        raise NoOrchestrator(f"no running orchestrator's NATS under {directory} (see --nats)")
    subject = subjects.run_control(actor_of(args, where))
    bus = await connect(where, f"baton-{args.command}", args.timeout)
    try:
        data = await bus.request(subject, encode(request), args.timeout)
    finally:
        await bus.close()
    reply = _reply.decode(data)
    if isinstance(reply, ErrorReply):
        raise ControlRefused(reply.detail or reply.error)
    what = f"task {request.task_id}" if request.task_id else "the run"
    print(f"{args.command} of {what} recorded by {reply.actor}; "
          f"run {reply.run_id} is {reply.status}")  # fmt: skip
    return 0
