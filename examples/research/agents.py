"""Handlers of the research-brief example: deterministic, offline stand-ins for LLM agents.

`plan` splits the topic into angles, `research` pulls the matching notes from a small local
corpus (taking `work_s` seconds, as real lookups would), `write` joins them into a brief.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from agents import TaskContext, TaskError
from agents.telemetry import llm_call

CORPUS: dict[str, list[str]] = {
    "state": [
        "Shared state kept in one append-only log lets every agent's view be rebuilt.",
        "Fragmented state across agents is the first cause of inconsistent outcomes.",
    ],
    "failure": [
        "A lease with heartbeats turns a silent agent into a detected failure.",
        "Retries on another agent, fenced by attempt numbers, stop duplicate work.",
    ],
    "latency": [
        "Fanning independent work out in parallel avoids compounding sequential latency.",
        "A join waits for all branches, so the slowest branch sets the pace.",
    ],
    "governance": [
        "Tool access checked against a role contract keeps agents inside their mandate.",
        "Budgets enforced by the orchestrator, not prompts, stop runaway loops.",
    ],
}


async def plan(task: TaskContext) -> dict[str, Any]:
    topic = str(task.input.get("input", {}).get("topic", "")).strip()
    if not topic:
        raise TaskError("the run input has no topic", retryable=False)
    angles = sorted(CORPUS)[: int(task.params.get("angles", 3))]
    return {"topic": topic, "angles": angles}


async def research(task: TaskContext) -> dict[str, Any]:
    plan_output = task.deps["plan"]
    index = int(task.input["index"])
    angle = plan_output["angles"][index]
    await asyncio.sleep(float(task.params.get("work_s", 0.0)))
    notes = CORPUS[angle]
    words = sum(len(re.findall(r"\w+", n)) for n in notes)
    # an offline stand-in for a model call: traced and charged like one (GenAI conventions)
    with llm_call(system="offline", model="corpus-lookup") as call:
        call.record(input_tokens=len(angle) + len(plan_output["topic"]), output_tokens=words)
    return {"angle": angle, "notes": notes, "words": words, "by": task.agent_id}


async def write(task: TaskContext) -> dict[str, Any]:
    findings = [task.deps[k] for k in sorted(task.deps)]
    sections = [f"{f['angle']}: {' '.join(f['notes'])}" for f in findings]
    return {
        "title": f"Brief: {task.input.get('input', {}).get('topic', '')}",
        "sections": sections,
        "sources": sorted({f["by"] for f in findings}),
        "words": sum(f["words"] for f in findings),
    }
