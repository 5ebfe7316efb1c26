"""`baton trace <run>`: a run's waterfall in the terminal, one row per attempt on a
shared time axis, with retries, failures, handoffs, cancellations and other marks shown."""

from __future__ import annotations

from orchestrator.cli.trace_model import PASSED_ON, Attempt, Timeline

BAR = {
    "succeeded": "█",
    "handed_off": "▚",
    "delegated": "▚",
    "running": "▒",
    "cancelled": "░",
}
"""Bar fill per outcome; every failed ending (error, timeout, agent_lost, undeliverable)
is drawn with `FAILED`."""
FAILED = "▓"
END = {
    "succeeded": "",
    "running": "…",
    "cancelled": " cancelled",
}
LEGEND = (
    f"legend: {BAR['succeeded']} succeeded  {BAR['handed_off']} passed on (handed off or "
    f"delegated)  {FAILED}✗ failed attempt  {BAR['cancelled']} cancelled  "
    f"{BAR['running']} still running"
)
QUIET = ("succeeded", "running", "pending")
"""Task statuses a row says nothing more about (its attempts show them)."""


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _axis(width: int, span: float) -> str:
    """Tick labels at the start, middle and end of the bar area."""
    left, mid, right = "0", f"+{_seconds(span / 2)}", f"+{_seconds(span)}"
    line = [" "] * width
    for pos, text in ((0, left), (width // 2 - len(mid) // 2, mid), (width - len(right), right)):
        for i, ch in enumerate(text):
            if 0 <= pos + i < width:
                line[pos + i] = ch
    return "".join(line)


def _outcome(a: Attempt) -> str:
    if a.outcome in END:
        return END[a.outcome]
    if a.outcome in PASSED_ON:
        return f" → {a.outcome.replace('_', ' ')} {a.error}"
    then = ", retried" if a.retried else ""
    return f" ✗ {a.outcome}: {a.error[:60]}{then}"


def render(t: Timeline, width: int = 60) -> str:
    """The waterfall as text; `width` is the number of columns of the time axis."""
    width = max(width, 20)
    origin = t.origin
    span = max(t.end - origin, 1e-6)
    took = f" in {_seconds(t.finished - t.started)}" if t.finished is not None else ""
    lines = [
        f"run {t.run_id}  workflow {t.workflow}  {t.status}{took}  "
        f"{len(t.tasks)} tasks  {t.events} events",
        f"trace {t.trace_id}" + (f"  forked from {t.forked_from}" if t.forked_from else ""),
        "",
    ]
    label_w = max([len(f"{r.task_id} #{a.attempt}") for r in t.tasks for a in r.attempts] + [8])
    agent_w = max([len(a.agent_id) for r in t.tasks for a in r.attempts] + [5])
    pad = " " * (label_w + agent_w + 4)
    lines.append(f"{pad}{_axis(width, span)}")
    lines.append(f"{pad}{'┬' + '─' * (width - 2) + '┬'}")

    def col(moment: float) -> int:
        return min(width - 1, max(0, int((moment - origin) / span * (width - 1) + 0.5)))

    for row in t.tasks:
        if not row.attempts:
            label = f"{row.task_id}"
            lines.append(f"  {label:<{label_w}} {'-':<{agent_w}} {'':<{width}} {row.status}")
            continue
        for a in row.attempts:
            start = col(a.start)
            stop = col(a.end if a.end is not None else t.end)
            fill = BAR.get(a.outcome, FAILED)
            bar = [" "] * width
            for i in range(start, max(stop, start) + 1):
                bar[i] = fill
            if a.outcome not in BAR:
                bar[max(stop, start)] = "✗"
            took_s = _seconds((a.end or t.end) - a.start)
            tokens = f" {a.tokens} tok" if a.tokens else ""
            label = f"{row.task_id} #{a.attempt}"
            lines.append(
                f"  {label:<{label_w}} {a.agent_id:<{agent_w}} {''.join(bar)} "
                f"{took_s}{tokens}{_outcome(a)}"
            )
        if row.status not in QUIET:
            said = f": {row.error[:80]}" if row.error else ""
            lines.append(f"  {'':<{label_w}} {'':<{agent_w}} task {row.status}{said}")
    if t.marks:
        lines += ["", "marks:"]
        for m in t.marks:
            where = f" {m.task_id}" if m.task_id else ""
            at = _seconds(max(0.0, m.at - origin))
            lines.append(f"  +{at:>8}  {m.kind}{where}: {m.text}")
    if t.reason:
        lines += ["", f"{t.status}: {t.reason}"]
    lines += ["", LEGEND]
    return "\n".join(lines)
