"""Workflow files on disk: strict TOML, or YAML for `.yaml`/`.yml` (a key given twice is
refused), parsed into the core's validated `WorkflowSpec`, with errors that name the file;
and a run's `--input` JSON. Nesting too deep for the parsers (or deeper than the wire
allows) is a `WorkflowError` like any other, never a `RecursionError`."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from bus.codec import MAX_DEPTH
from orchestrator.core import bounds
from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import WorkflowSpec, parse


class _StrictYaml(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (plain YAML keeps the last, silently)."""


def _mapping(loader: _StrictYaml, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node))


_StrictYaml.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _read(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                data = yaml.load(text, Loader=_StrictYaml)
            except yaml.YAMLError as exc:
                raise WorkflowError(str(path), f"not valid YAML: {exc}") from exc
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise WorkflowError(str(path), f"not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise WorkflowError(str(path), f"nested more than {MAX_DEPTH} deep") from exc
    bounds.nesting(str(path), data)
    return data


MAX_INPUT_FILE_BYTES = 256 * 1024 * 1024
"""The largest JSON file `@FILE` may name (a run's large values become blobs of at most
this size)."""


def input_arg(value: str, where: str = "--input") -> dict[str, Any]:
    """A JSON object given on the command line, or read from the file `@PATH` (`@-`:
    standard input): an input too large for a command line (its limit is 128 KiB)."""
    if not value.startswith("@"):
        return parse_input(value, where)
    path = value[1:]
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_FILE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT_FILE_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(where, f"cannot read {path}: {exc}") from exc
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise WorkflowError(where, f"{path} is over {MAX_INPUT_FILE_BYTES} bytes")
    return parse_input(text, f"{where} {value}")


def parse_input(text: str, where: str = "--input") -> dict[str, Any]:
    """A run's input from JSON text: an object, nested at most `MAX_DEPTH` deep."""
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise WorkflowError(where, f"nested more than {MAX_DEPTH} deep") from exc
    except ValueError as exc:
        raise WorkflowError(where, f"must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise WorkflowError(where, "must be a JSON object: not an object")
    bounds.nesting(where, value)
    return value


def contracts_file(path: str | Path) -> str:
    """The absolute path of the role contracts file a workflow file names, or ''."""
    path = Path(path)
    try:
        data = _read(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(str(path), f"cannot read: {exc}") from exc
    named = data.get("contracts", "") if isinstance(data, dict) else ""
    if not isinstance(named, str):
        raise WorkflowError(f"{path}: contracts", "must be the path of a role contracts file")
    return str((path.parent / named).resolve()) if named else ""


def load(path: str | Path) -> WorkflowSpec:
    """A validated spec from a workflow file: TOML, or YAML for `.yaml`/`.yml`."""
    path = Path(path)
    try:
        data = _read(path)
    except FileNotFoundError as exc:
        raise WorkflowError(str(path), "no such file") from exc
    except UnicodeDecodeError as exc:
        raise WorkflowError(str(path), f"not text: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowError(str(path), "a workflow file holds a mapping at the top")
    try:
        return parse(data)
    except WorkflowError as exc:
        raise WorkflowError(f"{path}: {exc.location}", exc.message) from exc
