"""`baton submit`: hand a workflow file to the orchestrator that serves a bus, as the
person the state directory's credentials name, and print the run id it started."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bus.permissions import inbox_prefix
from orchestrator.cli.reach import me, reach
from orchestrator.core.errors import WorkflowError
from orchestrator.service import serve
from orchestrator.service.bootstrap import state_dir
from orchestrator.service.workflow_files import input_arg, load


async def submit(args: argparse.Namespace) -> int:
    where = reach(args.nats, state_dir(args.state_dir))
    if where is None:
        raise WorkflowError("--nats", "no orchestrator's NATS running for the state directory: "
                            "give its URL (or $BATON_NATS_URL)")  # fmt: skip
    workflow = load(Path(args.workflow))
    run_input = input_arg(args.input)
    answer = await serve.submit(
        where.url,
        workflow,
        run_input,
        requested_by=where.identity or me(),
        request_id=args.request_id,
        timeout=args.timeout,
        inbox_prefix=inbox_prefix(where.identity) if where.identity else "",
    )
    if answer.earlier:
        print(f"baton submit: run {answer.run_id} was started by an earlier try of request "
              f"{args.request_id}; not started again", file=sys.stderr)  # fmt: skip
    print(answer.run_id)
    return 0
