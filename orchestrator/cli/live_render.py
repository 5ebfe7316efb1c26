"""Text for `baton status` and `baton agents`: aligned tables people read at a glance."""

from __future__ import annotations

from orchestrator.service.api import AgentStatus, RunProgress


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_table(runs: list[RunProgress], source: str) -> str:
    if not runs:
        return f"no live runs ({source})"
    lines = [
        f"{'run':<24} {'workflow':<18} {'status':<10} {'progress':<22} {'done':>7} "
        f"{'run':>4} {'fail':>4} {'wait':>4} {'att':>4} {'elapsed':>9}"
    ]
    for r in runs:
        lines.append(
            f"{r.run_id:<24} {r.workflow[:18]:<18} {r.status:<10} "
            f"{_bar(r.succeeded, r.tasks):<22} {f'{r.succeeded}/{r.tasks}':>7} "
            f"{r.running:>4} {r.failed:>4} {r.pending:>4} {r.attempts:>4} {r.elapsed_s:>8.1f}s"
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
