"""The configuration flags every `baton` command takes (`--store`, `--replicas`, `--nats`)
and `configure`, which merges them over the environment and `baton.toml` (see
`bus.config`) into the one `Config` the command opens its store and bus with."""

from __future__ import annotations

import argparse
import os

from bus.config import Config
from orchestrator.service.bootstrap import load_config, state_dir

SERVE_NATS_HELP = (
    "use these NATS servers (comma-separated) instead of starting one (default: "
    "$BATON_NATS_URL, else baton.toml's nats)"
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`--store` and `--replicas`, and `--nats` unless the command has it already."""
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
    if not any("--nats" in action.option_strings for action in parser._actions):
        parser.add_argument(
            "--nats",
            default=None,
            metavar="URLS",
            help="NATS server URLs, comma-separated (default: $BATON_NATS_URL, else "
            "baton.toml's nats, else the state directory's embedded server)",
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
