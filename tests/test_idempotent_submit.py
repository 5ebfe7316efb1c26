"""A start request with a request id is idempotent: tried again (at once, after a timeout
while the orchestrator was paused, after a restart, once the run ended and left memory)
it is answered with the run it started, never a second run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.server import EmbeddedNats
from eventstore import SqliteEventStore
from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal, serve
from orchestrator.service.bootstrap import store_path
from orchestrator.service.service import Orchestrator
from tests.cluster import EXAMPLE, REPO, baton, cluster

WORKFLOW = WorkflowSpec(name="pair", steps=[StepSpec(id="t", role="worker", fan_out=2)])
WORKERS = [AgentSpec(role="worker", handler="agents.builtin:noop", count=1, capacity=4)]


def test_a_retried_request_is_answered_with_the_run_it_started(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            await c.add_agents(WORKERS)
            start = c.orchestrator.start_run
            both = await asyncio.gather(
                start(WORKFLOW, request_id="r-1"), start(WORKFLOW, request_id="r-1")
            )
            first = both[0]
            assert list(both) == [first, first], "two tries at once: one run"
            assert await start(WORKFLOW, request_id="r-1") == first
            assert await start(WORKFLOW, request_id="r-2") != first
            with pytest.raises(WorkflowError, match="another workflow or input"):
                await start(WORKFLOW, {"other": True}, request_id="r-1")

            # over the API, as `baton submit` sends it
            sent = await serve.submit(c.stack.nats_url, WORKFLOW, request_id="r-3")
            again = await serve.submit(c.stack.nats_url, WORKFLOW, request_id="r-3")
            assert (sent.earlier, again.earlier) == (False, True)
            assert again.run_id == sent.run_id
            assert (await c.orchestrator.wait(first, timeout=30)).status == "completed"
            await c.orchestrator.stop()

            # a restarted orchestrator that keeps no finished run in memory still knows
            bus = await Bus.connect(c.stack.nats_url, name="orchestrator-2")
            second = Orchestrator(bus, c.stack.store, keep_finished=0)
            await second.start()
            try:
                assert await second.start_run(WORKFLOW, request_id="r-1") == first
            finally:
                await second.stop()
                await bus.close()
            store = c.stack.store
            runs = await store.streams(journal.RUN_PREFIX)
            assert len(runs) == 3, runs  # r-1, r-2, r-3
            started = (await store.read_stream(journal.run_stream(first)))[0]
            assert started.causation_id == "request:r-1", "the request is recorded"

    asyncio.run(scenario())


def test_submit_that_timed_out_on_a_paused_orchestrator_is_retried_safely(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        serving = subprocess.Popen(
            baton("serve", "--nats", url, "--state-dir", str(state)),
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        try:
            assert serving.stdout is not None
            assert "serving on NATS" in serving.stdout.readline()
            submit = baton("submit", str(EXAMPLE), "--nats", url, "--request-id", "retry-me")
            os.kill(serving.pid, signal.SIGSTOP)  # paused: requests queue up unanswered
            try:
                timed_out = subprocess.run(
                    [*submit, "--timeout", "1.5"],
                    capture_output=True, text=True, cwd=REPO, timeout=60,
                )  # fmt: skip
            finally:
                os.kill(serving.pid, signal.SIGCONT)
            assert timed_out.returncode == 2
            assert "retry with --request-id retry-me" in timed_out.stderr, timed_out.stderr

            retried = subprocess.run(submit, capture_output=True, text=True, cwd=REPO, timeout=60)
            assert retried.returncode == 0, retried.stderr
            run_id = retried.stdout.strip()
            assert "not started again" in retried.stderr, "the paused try started it"
        finally:
            serving.terminate()
            serving.wait(15)
            server.stop()
        store = await SqliteEventStore.open(store_path(state))
        try:
            assert await store.streams(journal.RUN_PREFIX) == [journal.run_stream(run_id)]
        finally:
            await store.close()

    asyncio.run(scenario())
