"""`baton creds issue|revoke|list` and `baton admit`: credentials for agents a person
starts by hand on the embedded server, which lets no one in without a login of their own.

Asked of the orchestrator that owns the server, as the person the state directory's
credentials name; each issue and revoke is recorded in the log as that person's
(`credentials.issued`, `credentials.revoked`: see `baton audit --type 'credentials.*'`).

- `baton creds issue <agent-id> --role R --out FILE` makes a user nkey here, writes its
  seed (`SU...`, the private half) to FILE, private (0600) from birth and never sent
  anywhere, and asks the server to let the public half in as that agent: FILE is what
  nats-py (`nkeys_seed`), the `nats` CLI (`--nkey`), the Node client
  (`nkeyAuthenticator`) and `baton agent --nats-file FILE` log in with.
- `baton admit <agent-id> --role R -o FILE` writes a `nats://user:password@host:port`
  URL instead (`baton agent --nats-file FILE`, or `BATON_NATS_URL`).
- `baton creds revoke <agent-id>` takes either away: the server reloads its users and
  closes that agent's connections; `baton creds list` names who has which.

Either login acts only as that agent id (under contracts, only in that role)."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import private
from bus import subjects
from bus.codec import Decoder, encode
from bus.nkey import new_user_seed, public_key
from bus.protocol import ErrorReply
from orchestrator.cli.durations import seconds
from orchestrator.cli.observe import NoOrchestrator, ask
from orchestrator.cli.reach import Reach, reach
from orchestrator.service.api import AdmitRequest, Admitted, CredsReply, CredsRequest
from orchestrator.service.bootstrap import state_dir
from orchestrator.service.logins import AdmissionRefused

_admitted: Decoder[Admitted | ErrorReply] = Decoder(Admitted | ErrorReply)
_creds: Decoder[CredsReply | ErrorReply] = Decoder(CredsReply | ErrorReply)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait (default 5)")


def _login_for_one(p: argparse.ArgumentParser, writes: str) -> None:
    """The arguments of a command that makes one agent's login and writes it to a file."""
    p.add_argument("agent_id", help="the id the agent will run as (baton agent --id)")
    p.add_argument("--role", required=True, help="the role it serves")
    p.add_argument("-o", "--out", required=True, metavar="FILE",
                   help=f"write its {writes} here (created 0600; must not exist)")  # fmt: skip
    _common(p)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _login_for_one(
        sub.add_parser("admit", help="a login URL for an agent you start by hand (see creds)"),
        "NATS URL",
    )
    creds = sub.add_parser("creds", help="issue, revoke, list agents' credentials (nkeys)")
    actions = creds.add_subparsers(dest="creds_action", required=True, metavar="ACTION")
    _login_for_one(
        actions.add_parser("issue", help="a user nkey seed file for an agent started by hand"),
        "nkey seed",
    )
    revoke = actions.add_parser("revoke", help="take an agent's credentials away")
    revoke.add_argument("agent_id", help="the agent whose login to revoke")
    _common(revoke)
    _common(actions.add_parser("list", help="the agents let in by hand, and how"))


def _embedded(args: argparse.Namespace) -> Reach:
    where = reach("", state_dir(args.state_dir))
    if where is None or not where.identity:
        raise NoOrchestrator(f"no embedded server running for {state_dir(args.state_dir)} "
                             "(baton run or baton serve without --nats starts one)")  # fmt: skip
    return where


def _new_file(out: Path) -> int:
    try:
        return private.create(out)  # never over an existing file
    except FileExistsError:
        raise AdmissionRefused(
            f"{out} exists; credentials are written to a new file only"
        ) from None


async def admit(args: argparse.Namespace) -> int:
    where = _embedded(args)
    out = Path(args.out)
    if out.exists():
        raise AdmissionRefused(f"{out} exists; credentials are written to a new file only")
    request = encode(AdmitRequest(args.agent_id, args.role))
    reply = _admitted.decode(await ask(where, subjects.API_ADMIT, request, args.timeout))
    if isinstance(reply, ErrorReply):
        raise AdmissionRefused(reply.detail or reply.error)
    with os.fdopen(_new_file(out), "w") as f:
        f.write(reply.url + "\n")
    print(f"admitted agent {reply.agent_id} (role {args.role}); its NATS URL is in {out}: baton "
          f"agent --id {reply.agent_id} --role {args.role} --nats-file {out} ...")  # fmt: skip
    return 0


async def _ask(where: Reach, request: CredsRequest, timeout: float) -> CredsReply:
    payload = await ask(where, subjects.creds(where.identity), encode(request), timeout)
    reply = _creds.decode(payload)
    if isinstance(reply, ErrorReply):
        raise AdmissionRefused(reply.detail or reply.error)
    return reply


async def creds(args: argparse.Namespace) -> int:
    where = _embedded(args)
    if args.creds_action == "issue":
        return await _issue(args, where)
    if args.creds_action == "revoke":
        reply = await _ask(where, CredsRequest("revoke", args.agent_id), args.timeout)
        for c in reply.credentials:
            print(f"revoked the {c.login} login of agent {c.agent_id} (role {c.role}): the "
                  "server lets it in no more and closed its connections")  # fmt: skip
        return 0
    reply = await _ask(where, CredsRequest("list"), args.timeout)
    print(f"{'agent':<24} {'role':<16} {'login':<8} public key")
    for c in reply.credentials:
        print(f"{c.agent_id:<24} {c.role:<16} {c.login:<8} {c.public_key or '-'}")
    return 0


async def _issue(args: argparse.Namespace, where: Reach) -> int:
    """The seed is written first, to a new 0600 file, and only its public key is sent;
    the file is removed again if the orchestrator refuses (or cannot be asked)."""
    out = Path(args.out)
    seed = new_user_seed()
    with os.fdopen(_new_file(out), "wb") as f:
        f.write(seed)  # no newline: nats-py before 2.16 passes it on to nkeys, which refuses it
    request = CredsRequest("issue", args.agent_id, args.role, public_key(seed))
    try:
        reply = await _ask(where, request, args.timeout)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        raise
    (issued,) = reply.credentials
    agent, role = issued.agent_id, issued.role
    print(f"issued agent {agent} (role {role}) the user nkey {issued.public_key}; its seed "
          f"is in {out} (0600): baton agent --id {agent} --role {role} --nats {reply.url} "
          f"--nats-file {out} ...")  # fmt: skip
    return 0
