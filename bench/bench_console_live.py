"""Console live-update benchmark (not a test): the delay from an event's append to its
appearance in a real browser. A chain of `--tasks` steps (each sleeps `--step-s` on one
agent) runs on the real stack while headless Chromium (Debian's, through Playwright)
follows the run's page; for each state the page receives after it opened, the page
records its clock minus the `recorded_at` of the newest event in that state (both
clocks are this machine's); the same for the event lines pushed after each state (the
page's events table), `event_lines_*`. Needs the ui extra, playwright and /usr/bin/chromium.

    python -m bench.bench_console_live [--tasks 200] [--step-s 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench._stack import agents_stack
from orchestrator.cli.console.command import serving
from orchestrator.cli.reach import reach
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service.bootstrap import open_store

CHROMIUM = "/usr/bin/chromium"


async def measure(tasks: int, step_s: float, directory: Path) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    steps = [
        StepSpec(id=f"s{i}", role="w", needs=[f"s{i - 1}"] if i else [], params={"seconds": step_s})
        for i in range(tasks)
    ]
    workflow = WorkflowSpec(name="chain", steps=steps)
    async with agents_stack(directory, "w", "agents.builtin:sleep", 1, 1) as stack:
        store = await open_store(directory)
        where = reach("", directory)
        actor = where.identity if where is not None else "human:bench"
        try:
            async with (
                serving(store, where, actor, shown_store="bench") as running,
                async_playwright() as p,
            ):
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = await browser.new_page()
                await page.goto(running.login_url)
                run_id = await stack.orchestrator.start_run(workflow, requested_by="bench")
                await page.goto(f"{running.base}/runs/{run_id}")
                await page.wait_for_selector('#run[data-live="following"]')
                await stack.orchestrator.wait(run_id, timeout=600)
                await page.wait_for_selector('#run[data-status="completed"]', timeout=60_000)
                delays = [float(d) for d in await page.evaluate("window.batonDelays")]
                lines = [float(d) for d in await page.evaluate("window.batonLineDelays")]
                await browser.close()
        finally:
            await store.close()
    delays.sort()
    return {
        "tasks": tasks,
        "pushes_measured": len(delays),
        "median_ms": round(statistics.median(delays) * 1000, 1),
        "p90_ms": round(delays[int(len(delays) * 0.9)] * 1000, 1),
        "max_ms": round(delays[-1] * 1000, 1),
        "event_lines_median_ms": round(statistics.median(lines) * 1000, 1),
        "event_lines_p90_ms": round(sorted(lines)[int(len(lines) * 0.9)] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Append-to-browser delay of the console.")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--step-s", type=float, default=0.02)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-console-live-") as directory:
        result = asyncio.run(measure(args.tasks, args.step_s, Path(directory)))
    for key, value in result.items():
        print(f"{key:>16}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
