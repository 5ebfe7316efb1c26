"""Finding and reading `baton.toml` for `bus.config` (the I/O its pure merge leaves out):
the first directory given that has one, read whole, its errors as `ConfigError`s; and
the login files it names (`creds`, `nkey`), each checked to be there and of its kind, so
a wrong one is refused before anything is done, naming where it was given."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bus.config import ENV, Config, ConfigError, FileSource, merge, parse_file

CONFIG_FILE = "baton.toml"
LOGIN_FILES: Mapping[str, tuple[str, tuple[bytes, ...]]] = {
    "creds": ("a NATS creds file", (b"BEGIN NATS USER JWT", b"BEGIN USER NKEY SEED")),
    "nkey": ("a user nkey seed (SU...)", (b"SU",)),
}
"""Each login key: what its file is, and the marks every such file has."""


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
    environ = os.environ if environ is None else environ
    config = merge(source, environ, flags)
    for key in LOGIN_FILES:
        if path := getattr(config, key):
            read_login(key, path, _given_at(key, source, environ))
    return config


def _given_at(key: str, source: FileSource | None, environ: Mapping[str, str]) -> str:
    """Where login `key` was given: no flag sets one, so the environment, else the file."""
    if environ.get(ENV[key]) or source is None:
        return f"${ENV[key]}"
    return parse_file(source)[key][0]


def read_login(key: str, path: str, where: str) -> bytes:
    """The text of the login file `path` given for `key` (creds, nkey) at `where`, or a
    `ConfigError` for one that is missing or not of its kind (nats-py would wait forever
    for a JWT line that never comes)."""
    kind, marks = LOGIN_FILES[key]
    try:
        with open(path, "rb") as f:
            text = f.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(where, key, f"cannot read {path}: {exc.strerror}") from exc
    if not all(mark in text for mark in marks):
        raise ConfigError(where, key, f"{path} is not {kind}")
    return text
