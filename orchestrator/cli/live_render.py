"""Text for `baton status` and `baton agents`: aligned tables people read at a glance."""

from __future__ import annotations

from orchestrator.service.api import AgentStatus, RunProgress
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
