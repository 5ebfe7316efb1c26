"""Programs outside Python some tests need (Node.js for the second-language agent,
openssl for test certificates): found on PATH, else the test is skipped and says so,
unless `BATON_REQUIRE_PROGRAMS=1` (CI sets it and installs them: there they always run)."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("BATON_REQUIRE_PROGRAMS") == "1"


def need(program: str, why: str) -> str:
    """The path of `program`; a skip naming it if missing, a failure where required."""
    found = shutil.which(program)
    if found is not None:
        return found
    missing = f"{program} is not installed: {why}"
    if REQUIRED:
        pytest.fail(f"{missing}; BATON_REQUIRE_PROGRAMS=1 says these tests must run")
    pytest.skip(missing)
