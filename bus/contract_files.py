"""Role contracts files on disk (TOML), read into the pure `bus.contracts.Contracts`, with
errors that name the file and the location in it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from bus.contracts import Contracts
from bus.errors import ContractError


def load_contracts(path: str | Path) -> Contracts:
    """Contracts from a TOML file; errors name the file and the location in it."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ContractError(str(path), "no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ContractError(str(path), f"not valid TOML: {exc}") from exc
    try:
        return Contracts.parse(data)
    except ContractError as exc:
        raise ContractError(f"{path}: {exc.location}", exc.message) from exc
