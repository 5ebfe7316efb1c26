"""The analyst's tools: plain async functions; their argument schemas come from the type
hints, and the gateway checks every call against the analyst's contract first."""

from __future__ import annotations

import re

from agents.tools import ToolRegistry

registry = ToolRegistry()


@registry.tool(risk="low")
async def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(re.findall(r"\w+", text))
