"""`baton admit <agent-id> --role R -o FILE`: credentials for an agent a person starts by
hand on the embedded server, which lets no one in without a login of their own.

Asked of the orchestrator that owns the server, as the person the state directory's
credentials name; written to FILE, private (0600) from birth, as the one line the agent
needs: its `nats://user:password@host:port` URL (`baton agent --nats-file FILE`, or
`BATON_NATS_URL` for an agent in another language). The server lets that login act only
as that agent id (under contracts, only in that role)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import private
from bus import subjects
from bus.codec import Decoder, encode
from bus.protocol import ErrorReply
from orchestrator.cli.observe import NoOrchestrator, ask
from orchestrator.cli.reach import reach
from orchestrator.service.api import AdmitRequest, Admitted
from orchestrator.service.bootstrap import state_dir
from orchestrator.service.logins import AdmissionRefused

_reply: Decoder[Admitted | ErrorReply] = Decoder(Admitted | ErrorReply)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("admit", help="credentials for an agent you start by hand")
    p.add_argument("agent_id", help="the id the agent will run as (baton agent --id)")
    p.add_argument("--role", required=True, help="the role it serves")
    p.add_argument("-o", "--out", required=True, metavar="FILE",
                   help="write its NATS URL here (created 0600; must not exist)")  # fmt: skip
    p.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")


async def admit(args: argparse.Namespace) -> int:
    directory = state_dir(args.state_dir)
    where = reach("", directory)
    if where is None or not where.identity:
        raise NoOrchestrator(f"no embedded server running for {directory} (baton run or "
                             "baton serve without --nats starts one)")  # fmt: skip
    out = Path(args.out)
    if out.exists():
        raise AdmissionRefused(f"{out} exists; credentials are written to a new file only")
    request = encode(AdmitRequest(args.agent_id, args.role))
    reply = _reply.decode(await ask(where, subjects.API_ADMIT, request, args.timeout))
    if isinstance(reply, ErrorReply):
        raise AdmissionRefused(reply.detail or reply.error)
    with os.fdopen(private.create(out), "w") as f:  # never over an existing file
        f.write(reply.url + "\n")
    print(f"admitted agent {reply.agent_id} (role {args.role}); its NATS URL is in {out}: baton "
          f"agent --id {reply.agent_id} --role {args.role} --nats-file {out} ...")  # fmt: skip
    return 0
