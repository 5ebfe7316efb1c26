"""The configuration flags every `baton` command takes (`--store`, `--replicas`, `--nats`)
and `configure`, which merges them over the environment and `baton.toml` (see
`bus.config`) into the one `Config` the command opens its store and bus with."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from bus.config import Config
from orchestrator.service.bootstrap import load_config, state_dir

SERVE_NATS_HELP = (
    "use these NATS servers (comma-separated) instead of starting one (default: "
    "$BATON_NATS_URL, else baton.toml's nats)"
)


STORE_COMMANDS = frozenset(
    ("run", "resume", "serve", "replay", "fork", "export", "import", "audit", "trace", "blobs")
) | {"status", "ui"}
"""The commands that open the event log (and `baton tool pending`); the others only talk
to a running orchestrator over NATS."""
OWN_BUS = frozenset(("agent", "tool", "a2a", "admit", "creds", "nats-users"))
"""Commands that parse their own flags, reach only the state directory's embedded server
(admit, creds), or no bus at all (nats-users): no configuration flags, though a bad
configuration stops them too."""


def add_flags_to(commands: Mapping[str, argparse.ArgumentParser]) -> None:
    """The configuration flags of each `baton` command (by name) that takes them."""
    for name, command in commands.items():
        if name not in OWN_BUS:
            add_flags(command, store=name in STORE_COMMANDS)


def add_flags(parser: argparse.ArgumentParser, *, store: bool = True) -> None:
    """`--store` and `--replicas` (for a command that opens the log), and `--nats` unless
    the command has it already."""
    if store:
        _store_flags(parser)
    if not any("--nats" in action.option_strings for action in parser._actions):
        parser.add_argument(
            "--nats",
            default=None,
            metavar="URLS",
            help="NATS server URLs, comma-separated (default: $BATON_NATS_URL, else "
            "baton.toml's nats, else the state directory's embedded server)",
        )


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        metavar="STORE",
        help="the event log: 'jetstream' (on --nats) or 'sqlite:PATH' (default: $BATON_STORE, "
        "else baton.toml's store, else events.db in the state directory)",
    )
    parser.add_argument(
        "--replicas",
        default=None,
        metavar="N",
        help="replicas of every JetStream stream Baton creates (default: $BATON_REPLICAS, "
        "else baton.toml's replicas, else 1)",
    )


def configure(args: argparse.Namespace) -> Config:
    """The command's configuration, flags over environment over `baton.toml`; `args.nats`
    becomes the servers it names (comma-separated, '' for the embedded server) and the
    login and TLS files it names go into the environment, where the NATS connection (and
    every agent process started from here) reads them."""
    flags = {key: getattr(args, key, None) for key in ("store", "replicas", "nats")}
    config = load_config(state_dir(getattr(args, "state_dir", None)), flags)
    args.nats = config.nats_url
    args.config = config
    os.environ.update({name: value for name, value in config.environ().items() if value})
    return config
