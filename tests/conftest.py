"""Hypothesis profiles: `ci` (the default) runs a few thousand stateful examples across the
property modules; `dev` (HYPOTHESIS_PROFILE=dev) a quick sample while editing."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=1500, deadline=None)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
