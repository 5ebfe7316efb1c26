"""Lease tokens stay 128-bit, hex, and never repeat, across refills of their pool."""

from __future__ import annotations

import string

from orchestrator.service.tokens import LeaseTokens


def test_tokens_are_distinct_32_hex_digits_across_pool_refills() -> None:
    tokens = LeaseTokens()
    drawn = [tokens() for _ in range(1000)]  # 16 kB: four refills of the 4 kB pool
    assert len(set(drawn)) == len(drawn)
    assert all(len(t) == 32 and set(t) <= set(string.hexdigits.lower()) for t in drawn)
    assert LeaseTokens()() not in drawn, "a second source does not replay the first"
