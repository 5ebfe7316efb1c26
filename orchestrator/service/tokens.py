"""Lease tokens: 128 random bits each, from the operating system's CSPRNG.

A busy orchestrator hands out thousands of leases a second; reading the randomness 4 KiB
at a time instead of with one system call per token keeps that off the hot path, and the
tokens are exactly as unguessable as `secrets.token_hex(16)`'s.
"""

from __future__ import annotations

import os

_TOKEN_BYTES = 16
_POOL_BYTES = 4096


class LeaseTokens:
    """A callable that returns a fresh 32-hex-digit lease token each time."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        if self._at + _TOKEN_BYTES > len(self._pool):
            self._pool, self._at = os.urandom(_POOL_BYTES), 0
        token = self._pool[self._at : self._at + _TOKEN_BYTES].hex()
        self._at += _TOKEN_BYTES
        return token
