"""A run's waterfall on its console page: the same timeline `baton trace` draws
(`trace_model.build`, from the run's own events), as an SVG of one row per attempt, a
bar from its start to its end coloured by how it ended, and a tick per mark (rejected
results, handoffs, escalations, limits). Geometry is in attributes and colours in the
style sheet, so the page needs no inline style (its CSP allows none)."""

from __future__ import annotations

from html import escape

from orchestrator.cli.trace_model import Timeline

WIDTH = 900
LABEL = 220
ROW = 16
ROWS_MAX = 400
"""At most this many attempt rows are drawn (the table below lists every task)."""
FAILED = ("error", "timeout", "agent_lost", "undeliverable", "failed")


def _outcome(outcome: str) -> str:
    if outcome in ("succeeded", "running", "cancelled", "handed_off", "delegated"):
        return outcome
    return "failed" if outcome in FAILED or outcome else "running"


def render(t: Timeline) -> str:
    origin = t.origin
    span = max(t.end - origin, 1e-6)
    scale = (WIDTH - LABEL - 10) / span

    def x(moment: float) -> float:
        return LABEL + max(0.0, moment - origin) * scale

    rows: list[str] = []
    drawn = 0
    for task in t.tasks:
        for a in task.attempts:
            if drawn >= ROWS_MAX:
                break
            y = drawn * ROW
            end = a.end if a.end is not None else t.end
            width = max(2.0, x(end) - x(a.start))
            why = f" ({a.error})" if a.error else ""
            title = (
                f"{task.task_id}#{a.attempt} on {a.agent_id}: {a.outcome}{why}, "
                f"{end - a.start:.3f}s" + (" (retried)" if a.retried else "")
            )
            rows.append(
                f'<g class="{_outcome(a.outcome)}" data-task="{escape(task.task_id)}">'
                f"<title>{escape(title)}</title>"
                f'<text x="4" y="{y + 12}">{escape(task.task_id)}#{a.attempt}</text>'
                f'<rect x="{x(a.start):.1f}" y="{y + 3}" width="{width:.1f}" height="{ROW - 5}"/>'
                "</g>"
            )
            drawn += 1
    height = drawn * ROW + 20
    ticks = "".join(
        f'<g class="mark"><title>{escape(f"{m.kind} {m.task_id}: {m.text}")}</title>'
        f'<line x1="{x(m.at):.1f}" x2="{x(m.at):.1f}" y1="0" y2="{height - 16}"/></g>'
        for m in t.marks[:200]
    )
    axis = (
        f'<text x="{LABEL}" y="{height - 4}">0s</text>'
        f'<text x="{WIDTH - 60}" y="{height - 4}">{span:.3f}s</text>'
    )
    more = (
        f"<p>first {ROWS_MAX} attempts drawn; every task is in the table below</p>"
        if drawn >= ROWS_MAX
        else ""
    )
    legend = (
        '<p class="legend"><span class="succeeded">succeeded</span> '
        '<span class="failed">failed</span> <span class="running">running</span> '
        '<span class="cancelled">cancelled</span> <span class="handed_off">passed on</span> '
        '<span class="mark">| mark</span></p>'
    )
    return (
        legend + f'<svg class="waterfall" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="attempts on a time axis">'
        + "".join(rows)
        + ticks
        + axis
        + "</svg>"
        + more
    )
