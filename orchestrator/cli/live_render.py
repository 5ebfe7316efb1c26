"""Text for `baton status`, `baton health` and `baton agents`: aligned tables people read
at a glance."""

from __future__ import annotations

import time

from orchestrator.service.api import AgentStatus, HealthIssue, RunProgress
from orchestrator.service.live_api import TASK_STATUSES

SHORT = {
    "pending": "wait",
    "running": "run",
    "active": "actv",
    "escalated": "esc",
    "failed": "fail",
    "cancelled": "canc",
    "skipped": "skip",
}
"""Column heads for task statuses; a status the core adds later gets a column of its own,
headed by its first four letters."""
COLUMNS = [s for s in TASK_STATUSES if s != "succeeded"]
"""One column per task status but `succeeded` (the `done` column), in the core's order."""


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_table(runs: list[RunProgress], source: str) -> str:
    if not runs:
        return f"no live runs ({source})"
    heads = " ".join(f"{SHORT.get(s, s[:4]):>4}" for s in COLUMNS)
    lines = [
        f"{'run':<24} {'workflow':<18} {'status':<10} {'progress':<22} {'done':>7} "
        f"{heads} {'att':>4} {'elapsed':>9}"
    ]
    for r in runs:
        counts = " ".join(f"{r.by_status.get(s, 0):>4}" for s in COLUMNS)
        lines.append(
            f"{r.run_id:<24} {r.workflow[:18]:<18} {r.status:<10} "
            f"{_bar(r.succeeded, r.tasks):<22} {f'{r.succeeded}/{r.tasks}':>7} "
            f"{counts} {r.attempts:>4} {r.elapsed_s:>8.1f}s"
        )
    lines.append(f"({source})")
    return "\n".join(lines)


def _clock_time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def health_text(issues: list[HealthIssue], now: float) -> str:
    """`health: ok`, or DEGRADED and one line per issue with since-when (and issues that
    ended recently, as recovered)."""
    going = [i for i in issues if not i.until]
    if not issues:
        return "health: ok"
    lines = ["health: DEGRADED" if going else "health: ok (recovered recently)"]
    for i in issues:
        if i.until:
            when = f"recovered {_clock_time(i.until)}, after {_span(i.until - i.since)}"
        else:
            when = f"since {_clock_time(i.since)} ({_span(now - i.since)})"
        count = f", {i.count} failures" if i.count > 1 and i.kind == "storage" else ""
        lines.append(f"  {i.kind:<8} {i.subject:<26} {when}{count}: {i.detail}")
    return "\n".join(lines)


def agents_table(agents: list[AgentStatus], source: str) -> str:
    if not agents:
        return f"no live agents ({source})"
    lines = [f"{'agent':<28} {'role':<14} {'load':>9} {'heartbeat':>10}  holds"]
    for a in agents:
        held = ", ".join(f"{h.task_id}#{h.attempt} ({h.run_id})" for h in a.held) or "-"
        lines.append(
            f"{a.agent_id:<28} {a.role:<14} {f'{a.load}/{a.capacity}':>9} "
            f"{f'{a.heartbeat_age_s:.1f}s ago':>10}  {held}"
        )
    lines.append(f"({source})")
    return "\n".join(lines)
