"""Programs outside Python some tests need (Node.js for the second-language agent,
openssl for test certificates): found on PATH, else the test is skipped and says so,
unless `BATON_REQUIRE_PROGRAMS=1` (CI sets it and installs them: there they always run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("BATON_REQUIRE_BROWSER") == "1"


def need_browser() -> Path:
    """Debian's Chromium; a skip naming it if missing, a failure under
    `BATON_REQUIRE_BROWSER=1` (CI installs it and sets that)."""
    if CHROMIUM.exists():
        return CHROMIUM
    missing = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    if REQUIRE_BROWSER:
        pytest.fail(f"{missing}; BATON_REQUIRE_BROWSER=1 says the browser tests must run")
    pytest.skip(f"{missing} to run the browser tests")
