"""The commands' `--timeout`: a number of seconds above 0. argparse refuses anything else
as it refuses any other bad argument, naming the option (exit status 2, one line): a
zero or negative timeout used to be taken, and end the command at once with a message
about something else (agents that "did not all register in 0.0s")."""

from __future__ import annotations

import argparse
import math


def seconds(text: str) -> float:
    """`text` as a number of seconds above 0 (argparse's `type=`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value
