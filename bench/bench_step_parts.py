"""Where a chain step's time goes, busy and after idle (not a test): issue 18 asks why a
chain of 100 ms steps costs Baton about twice the overhead per step of a no-op chain.

A chain of `--steps` tasks runs on 4 agent processes whose handler stamps the wall clock
when it starts and ends (and sleeps the step's seconds in between); the log says when
each decision was recorded. Each step's overhead splits at the orchestrator's decision:

- back: the handler returned -> the decision holding its result was recorded (the
  agent's report, NATS, the orchestrator reading and deciding, the writer thread taking
  the append);
- out: recorded -> the next handler started (the commit with its fsync, the assignment
  sent, the agent woken and starting the handler).

Both are measured with no-op steps (busy: the processes never idle) and with `--idle-s`
steps (each process idles that long between two steps), interleaved over `--rounds`.
Next to them, the same fixed CPU work (msgpack encoding and decoding and SHA-256 of a
step-sized message, no I/O at all) is timed in this process back to back and after
`--idle-s` of sleep: what idling costs any code on this machine, Baton or not.

    python -m bench.bench_step_parts [--rounds 5] [--steps 20] [--idle-s 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from agents.sdk import TaskContext
from bench._stack import agents_stack
from bench.compare import _chain
from bus import loop
from orchestrator.service import journal
from orchestrator.service.bootstrap import Stack

_ASSIGNED = "task.assigned"
_SUCCEEDED = "task.succeeded"
_MESSAGE = {"run_id": "20261205-000000-abcdef", "task_id": "s1", "output": list(range(60))}


async def stamped(task: TaskContext) -> dict[str, float]:
    """The agents' handler: when it started and ended (wall clock), around the step's
    `params.seconds` of sleep."""
    started = time.time()
    await asyncio.sleep(float(task.params.get("seconds", 0.0)))
    return {"started": started, "ended": time.time()}


def _body(data: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(data)
    return decoded


async def parts(stack: Stack, steps: int, seconds: float) -> tuple[list[float], list[float]]:
    """(back, out) in ms for each step boundary of one chain run."""
    run_id = await stack.orchestrator.start_run(_chain(steps, seconds), requested_by="bench")
    state = await stack.orchestrator.wait(run_id, timeout=600)
    if state.status != "completed":
        raise SystemExit(f"run {run_id} ended {state.status}: {state.reason}")
    assigned: dict[str, float] = {}
    stamps: dict[str, dict[str, float]] = {}
    for event in await stack.store.read_stream(journal.run_stream(run_id)):
        if event.type == _ASSIGNED:
            assigned[_body(event.data)["task_id"]] = event.recorded_at
        elif event.type == _SUCCEEDED:
            body = _body(event.data)
            stamps[body["task_id"]] = body["output"]
    back, out = [], []
    for n in range(steps - 1):
        now, after = f"s{n}", f"s{n + 1}"
        decided = assigned[after]  # recorded with s{n}'s result, in one decision
        back.append((decided - stamps[now]["ended"]) * 1e3)
        out.append((stamps[after]["started"] - decided) * 1e3)
    return back, out


def cpu_probe(idle_s: float, samples: int = 30) -> tuple[float, float]:
    """Median µs of the same fixed CPU work, back to back and after `idle_s` of sleep."""
    data = msgspec.msgpack.encode(_MESSAGE)

    def work() -> None:
        for _ in range(40):
            hashlib.sha256(msgspec.msgpack.encode(msgspec.msgpack.decode(data))).digest()

    figures = []
    for pause in (0.0, idle_s):
        took = []
        for _ in range(samples):
            time.sleep(pause)
            began = time.perf_counter_ns()
            work()
            took.append((time.perf_counter_ns() - began) / 1000)
        figures.append(statistics.median(took))
    return figures[0], figures[1]


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {
        k: [] for k in ("busy_back", "busy_out", "idle_back", "idle_out", "cpu_busy", "cpu_idle")
    }
    handler = "bench.bench_step_parts:stamped"
    async with agents_stack(directory, "worker", handler, 4, 64) as stack:
        await parts(stack, args.steps, 0.0)  # warm-up
        for r in range(args.rounds):
            kinds = [("busy", 0.0), ("idle", args.idle_s)]
            for name, seconds in kinds if r % 2 == 0 else reversed(kinds):
                back, out = await parts(stack, args.steps, seconds)
                figures[f"{name}_back"].append(statistics.median(back))
                figures[f"{name}_out"].append(statistics.median(out))
            busy, idle = await asyncio.to_thread(cpu_probe, args.idle_s)
            figures["cpu_busy"].append(busy)
            figures["cpu_idle"].append(idle)
            print(
                f"  round {r + 1}: busy {figures['busy_back'][-1]:.2f} + "
                f"{figures['busy_out'][-1]:.2f} ms, after idle {figures['idle_back'][-1]:.2f} + "
                f"{figures['idle_out'][-1]:.2f} ms; CPU probe {busy:.0f} / {idle:.0f} µs",
                flush=True,
            )
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--idle-s", type=float, default=0.1, help="seconds each slow step takes")
    args = p.parse_args()
    os.environ.setdefault("BATON_TELEMETRY", "off")  # as `baton run` with no exporter
    print(f"a chain step's two halves, 4 agents, SQLite FULL; {args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="baton-step-parts-") as tmp:
        figures = loop.run(measure(args, Path(tmp)))
    m = {k: round(statistics.median(v), 3) for k, v in figures.items()}
    idle_ms = args.idle_s * 1000
    busy, idle = m["busy_back"] + m["busy_out"], m["idle_back"] + m["idle_out"]
    print("\nmedians, ms         back    out   step")
    print(f"no-op steps       {m['busy_back']:6.2f} {m['busy_out']:6.2f} {busy:6.2f}")
    print(f"{idle_ms:.0f} ms steps      {m['idle_back']:6.2f} {m['idle_out']:6.2f} {idle:6.2f}"
          f"   ({idle / busy:.2f}x)")  # fmt: skip
    print(f"CPU probe, µs     back to back {m['cpu_busy']:.0f}, after {idle_ms:.0f} ms idle "
          f"{m['cpu_idle']:.0f} ({m['cpu_idle'] / m['cpu_busy']:.2f}x)")  # fmt: skip
    print(json.dumps({"bench": "step_parts", "rounds": args.rounds, "steps": args.steps,
                      "idle_s": args.idle_s, **m,
                      "step_ratio": round(idle / busy, 3),
                      "cpu_ratio": round(m["cpu_idle"] / m["cpu_busy"], 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
