"""Finding and reading `baton.toml` for `bus.config` (the I/O its pure merge leaves out):
the first directory given that has one, read whole, its errors as `ConfigError`s."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bus.config import Config, ConfigError, FileSource, merge

CONFIG_FILE = "baton.toml"


def find(directories: Sequence[Path]) -> Path | None:
    """The `baton.toml` of the first of `directories` that has one (None: none has)."""
    for directory in directories:
        if (candidate := directory / CONFIG_FILE).is_file():
            return candidate
    return None


def load(
    directories: Sequence[Path],
    flags: Mapping[str, str | None],
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The configuration of the first `baton.toml` in `directories`, then `environ`
    (the process's by default), then `flags`."""
    found = find(directories)
    source = None
    if found is not None:
        try:
            source = FileSource(str(found), found.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(found), "", f"cannot read it: {exc}") from exc
    return merge(source, os.environ if environ is None else environ, flags)
