"""Hypothesis profiles for the pattern state machine (tests/test_pattern_properties.py):
`ci` (the default) runs 1,500 stateful examples, `dev` (HYPOTHESIS_PROFILE=dev) a quick
sample while editing. They are registered, not loaded, so no other test's settings change."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("ci", max_examples=1500, deadline=None)
settings.register_profile("dev", max_examples=60, deadline=None)
