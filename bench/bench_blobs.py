"""Large payloads by reference (not a test): the log's size and replay speed of a run whose
agents exchange a 20 MB output and a 5 MB transcript, against the same run with small
payloads (a 1 KiB report, a 3-turn transcript). Real stack: embedded nats-server, the
SQLite log (or `--store jetstream`), a producer and a consumer agent process.

Runs of both kinds alternate (`--runs` each); then each run is replayed from its first
event (`journal.load_run`, no snapshots) `--replays` times, the kinds interleaved, and the
medians compared. Target: the large run's log bytes and replay time within 10 % of the
small run's (ratios ≤ 1.10). The run's wall time (uploads included) is shown too.

    python -m bench.bench_blobs [--runs 3] [--replays 15] [--store sqlite|jetstream]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.sdk import TaskContext
from bus import loop
from bus.config import Config
from bus.protocol import Payload
from bus.server import EmbeddedNats
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.bootstrap import Stack, bootstrap
from orchestrator.service.launcher import AgentProcesses

REPORT_BYTES = 20 * 1024 * 1024
TRANSCRIPT_BYTES = 5 * 1024 * 1024


def _values(large: bool) -> tuple[str, list[dict[str, Any]]]:
    if not large:
        return "r" * 1024, [{"turn": n, "role": "user", "text": "t" * 100} for n in range(3)]
    turn = os.urandom(500).hex()
    transcript = [{"turn": n, "role": "assistant", "text": turn} for n in range(5000)]
    return os.urandom(REPORT_BYTES // 2).hex(), transcript


async def produce(task: TaskContext) -> Payload:
    """The producer agent's handler: a report and a transcript, large or small."""
    report, transcript = _values(bool(task.params.get("large")))
    return {"report": report, "transcript": transcript}


async def consume(task: TaskContext) -> Payload:
    """The consumer agent's handler: reads both whole, passes the transcript on."""
    given = task.deps["produce"]
    digest = hashlib.sha256(given["report"].encode()).hexdigest()
    return {"report_sha": digest, "turns": len(given["transcript"]),
            "transcript": given["transcript"]}  # fmt: skip


def workflow(large: bool) -> WorkflowSpec:
    return WorkflowSpec(
        "large" if large else "small",
        [
            StepSpec("produce", role="producer", params={"large": large}),
            StepSpec("consume", role="consumer", needs=["produce"]),
        ],
    )


async def one_run(stack: Stack, large: bool) -> tuple[str, float]:
    started = time.perf_counter()
    run_id = await stack.orchestrator.start_run(workflow(large), requested_by="bench")
    state = await stack.orchestrator.wait(run_id, timeout=600)
    took = time.perf_counter() - started
    if state.status != "completed":
        raise SystemExit(f"run {run_id} ended {state.status}: {state.reason}")
    return run_id, took


async def replay_s(stack: Stack, run_id: str) -> float:
    started = time.perf_counter()
    await journal.load_run(stack.store, run_id, snapshots=False)
    return time.perf_counter() - started


async def log_bytes(stack: Stack, run_id: str) -> int:
    """What the log holds of the run: every envelope's payload bytes."""
    return sum(len(s.data) for s in await stack.store.read_stream(journal.run_stream(run_id)))


async def bench(directory: Path, runs: int, replays: int, store: str) -> dict[str, Any]:
    server: EmbeddedNats | None = None
    config = Config()
    url = ""
    if store == "jetstream":
        server = EmbeddedNats(directory / "nats")
        url = await server.start()
        config = Config(store="jetstream", nats=(url,))
    stack = await bootstrap(directory / "state", url, config=config)
    agents = AgentProcesses(directory / "logs")
    specs = [
        AgentSpec(role="producer", handler="bench.bench_blobs:produce"),
        AgentSpec(role="consumer", handler="bench.bench_blobs:consume"),
    ]
    try:
        for spec in specs:
            agents.start(spec, stack.nats_url, Path.cwd(), url_for_agent=stack.agent_url)
        await stack.orchestrator.wait_for_agents(AgentProcesses.roles(specs), timeout=60)
        await one_run(stack, False)  # warm: connections, imports, the blob file
        ids: dict[bool, list[str]] = {False: [], True: []}
        wall: dict[bool, list[float]] = {False: [], True: []}
        for n in range(2 * runs):
            large = bool(n % 2)
            run_id, took = await one_run(stack, large)
            ids[large].append(run_id)
            wall[large].append(took)
        replay: dict[bool, list[float]] = {False: [], True: []}
        for n in range(replays):
            for large in (n % 2 == 0, n % 2 == 1):
                for run_id in ids[large]:
                    replay[large].append(await replay_s(stack, run_id))
        size = {
            k: statistics.median([await log_bytes(stack, r) for r in v]) for k, v in ids.items()
        }
        events = len(await stack.store.read_stream(journal.run_stream(ids[True][0])))
        stored = await stack.store.blobs.list()
    finally:
        agents.stop()
        await stack.close()
        if server is not None:
            server.stop()
    med = {k: statistics.median(v) for k, v in replay.items()}
    return {
        "bench": "blobs",
        "store": store,
        "runs_each": runs,
        "events_per_run": events,
        "log_bytes_small": size[False],
        "log_bytes_large": size[True],
        "log_ratio": round(size[True] / size[False], 3),
        "replay_ms_small": round(med[False] * 1000, 3),
        "replay_ms_large": round(med[True] * 1000, 3),
        "replay_ratio": round(med[True] / med[False], 3),
        "run_s_small": round(statistics.median(wall[False]), 3),
        "run_s_large": round(statistics.median(wall[True]), 3),
        "payload_bytes_large": REPORT_BYTES + TRANSCRIPT_BYTES,
        "blobs_stored": len(stored),
        "blob_bytes_stored": sum(b.size for b in stored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Large payloads by reference: log and replay.")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--replays", type=int, default=15, help="replays of each run")
    parser.add_argument("--store", choices=["sqlite", "jetstream"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-blobs-") as tmp:
        result = loop.run(bench(Path(tmp), args.runs, args.replays, args.store))
    print(f"store: {result['store']}, {result['runs_each']} runs of each kind, "
          f"{result['events_per_run']} events a run")  # fmt: skip
    print(f"payload of the large run: {result['payload_bytes_large'] / 2**20:.0f} MiB "
          f"({result['blobs_stored']} blobs, {result['blob_bytes_stored'] / 2**20:.1f} MiB "
          "stored beside the log)")  # fmt: skip
    small, large = result["log_bytes_small"], result["log_bytes_large"]
    print(f"log bytes per run: small {small:.0f}, large {large:.0f} "
          f"(ratio {result['log_ratio']}, target <= 1.10)")  # fmt: skip
    small, large = result["replay_ms_small"], result["replay_ms_large"]
    print(f"replay (median): small {small} ms, large {large} ms "
          f"(ratio {result['replay_ratio']}, target <= 1.10)")  # fmt: skip
    print(f"run wall time (median): small {result['run_s_small']} s, large "
          f"{result['run_s_large']} s (uploads and downloads included)")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
