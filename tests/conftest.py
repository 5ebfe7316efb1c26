"""Hypothesis profiles for the pattern state machine (tests/test_pattern_properties.py):
`ci` (the default) runs 1,500 stateful examples, `dev` (HYPOTHESIS_PROFILE=dev) a quick
sample while editing, `mutants` the same examples as `ci` without shrinking (a mutant that
makes a decision hang fails each shrink step only after its 5 s guard). They are registered,
not loaded, so no other test's settings change."""

from __future__ import annotations

from hypothesis import Phase, settings

settings.register_profile("ci", max_examples=1500, deadline=None)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "mutants", max_examples=1500, deadline=None, phases=[Phase.generate, Phase.target]
)
