"""Where a server the CLI starts may listen: on loopback, unless the person says otherwise
(`baton ui --allow-remote`, `baton a2a serve --allow-remote`)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether `host` reaches this machine only: `localhost` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
