"""`baton contracts show FILE [--role R]`: a role contracts file (TOML) as JSON, each role
as written (the defaults left out stay out), for an agent in another language to read its
contract from and compute the digest it advertises (docs/protocol.md, "Contract digest")."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from bus.contract_files import load_contracts


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("contracts", help="show a role contracts file as JSON")
    actions = p.add_subparsers(dest="contracts_action", required=True)
    show = actions.add_parser(
        "show",
        help="the file's roles (or one role's contract) as JSON, as written",
        description="Checks the contracts file as baton run would, then prints it as JSON: "
        'one role\'s contract with --role, else {"roles": [...]}. Fields left out stay out: '
        "the digest is taken with every default filled in (docs/protocol.md).",
    )
    show.add_argument("file", help="role contracts TOML")
    show.add_argument("--role", default="", help="only this role's contract")


async def contracts(args: argparse.Namespace) -> int:
    path = Path(args.file)
    known = load_contracts(path)  # refuses what `baton run` would refuse
    if args.role:
        known.get(args.role)  # or ContractError: no contract for that role
    roles: list[dict[str, Any]] = tomllib.loads(path.read_text())["roles"]
    shown: Any = {"roles": roles}
    if args.role:
        shown = next(r for r in roles if r["name"] == args.role)
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0
