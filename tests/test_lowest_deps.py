"""The other end of the dependency ranges: pyproject.toml claims every runtime dependency
from a lower bound up. A fresh install takes the newest releases (the main test run);
this tier installs Baton in a new venv with each runtime dependency held at its lowest
supported release (`constraints/lowest.txt`) and runs the suite there.

    python -m pytest -m lowest_deps

The `ui` extra (the console) is installed there too, at its newest: it is optional, so
its floors are not held here. The tests of the `interop` extra (marked `interop`) are left
out of the inner run: `mcp` needs a newer opentelemetry-api than Baton's floor, so the
extra is not installed there. The linters are left out of the inner run too: ruff and mypy
(test tools, newest in both venvs) check the code against the newest type stubs, which is
what `test_lint` does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.cluster import REPO

CONSTRAINTS = REPO / "constraints" / "lowest.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip()):
            found[match.group(1).lower()] = match.group(2)
    return found


def test_the_constraints_hold_every_runtime_floor_of_pyproject() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for requirement in declared:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([^,;\s]+)", requirement)
        assert match, f"{requirement!r} has no lower bound"
        floors[match.group(1).lower()] = match.group(2)
    pinned = pins()
    for name, floor in floors.items():
        assert pinned.get(name) == floor, (
            f"{name}: pyproject says >={floor}, lowest.txt {pinned.get(name)}"
        )


@pytest.mark.lowest_deps
@pytest.mark.timeout(2400)  # a new venv, then the whole suite
def test_the_suite_passes_on_the_lowest_supported_releases(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), f"{REPO}[test,ui]"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    for name, version in pins().items():
        assert installed.get(name) == version, (
            f"{name}: wanted {version}, got {installed.get(name)}"
        )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    suite = subprocess.run(
        [
            python, "-m", "pytest", "-q", "-x", "-n", "4", "-p", "no:cacheprovider",
            "-m", "not local_llm and not lowest_deps and not interop and not cluster",
            "--deselect", "tests/test_lint.py",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    print(suite.stdout[-2000:])
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-3000:]
