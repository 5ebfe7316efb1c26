"""`baton serve` and `baton submit` as the README shows them: a serving orchestrator
takes a workflow file (its input read from a file) and records the run; a submit with
nobody serving is a clear error, and so are an input over the bus's message limit and a
second `baton serve` on the same SQLite log."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from bus.server import EmbeddedNats
from tests.cluster import EXAMPLE, REPO, baton


def test_submit_to_a_serving_orchestrator_records_the_run(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        try:
            nobody = subprocess.run(
                baton("submit", str(EXAMPLE), "--nats", url),
                capture_output=True, text=True, cwd=REPO, timeout=60,
            )  # fmt: skip
            assert nobody.returncode == 2
            assert "no orchestrator answered" in nobody.stderr

            serving = subprocess.Popen(
                baton("serve", "--nats", url, "--state-dir", str(state)),
                stdout=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            try:
                assert serving.stdout is not None
                assert "serving on NATS" in serving.stdout.readline()
                given = tmp_path / "input.json"
                given.write_text('{"topic": "x"}')
                submitted = subprocess.run(
                    baton("submit", str(EXAMPLE), "--nats", url, "--input", f"@{given}"),
                    capture_output=True, text=True, cwd=REPO, timeout=60,
                )  # fmt: skip
                assert submitted.returncode == 0, submitted.stderr
                run_id = submitted.stdout.strip()
                audit = subprocess.run(
                    baton("audit", "--run", run_id, "--state-dir", str(state), "--json"),
                    capture_output=True, text=True, cwd=REPO, timeout=60,
                )  # fmt: skip
                assert audit.returncode == 0, audit.stderr
                first = json.loads(audit.stdout.splitlines()[0])
                assert first["type"] == "run.started"
                assert first["data"]["input"]["topic"] == "x", "the input given to submit"
                assert first["data"]["workflow"]["name"] == "research-brief"

                # an input over the bus's message limit is never sent: a clear refusal,
                # not "no answer, retry"
                given.write_text(json.dumps({"topic": "y" * 2_000_000}))
                too_large = subprocess.run(
                    baton("submit", str(EXAMPLE), "--nats", url, "--input", f"@{given}"),
                    capture_output=True, text=True, cwd=REPO, timeout=60,
                )  # fmt: skip
                assert too_large.returncode == 2
                assert "over the bus's 1048576-byte message limit" in too_large.stderr
                assert "retry" not in too_large.stderr

                second = subprocess.run(
                    baton("serve", "--nats", url, "--state-dir", str(state)),
                    capture_output=True, text=True, cwd=REPO, timeout=60,
                )  # fmt: skip
                assert second.returncode == 2, "a SQLite log takes one orchestrator"
                assert "another orchestrator (baton serve, run or resume)" in second.stderr
                assert 'store = "jetstream"' in second.stderr, "and says what takes several"
            finally:
                serving.terminate()
                assert serving.wait(15) == 0, "SIGTERM stops the service cleanly"
        finally:
            server.stop()

    asyncio.run(scenario())


def test_run_and_resume_on_a_state_directory_being_served_are_refused(tmp_path: Path) -> None:
    """`baton run` and `baton resume` start an orchestrator of their own: on the state
    directory of a running `baton serve` (its embedded NATS, its SQLite log) they are
    refused before they start anything, and the serve goes on as it was: its NATS port
    is still the directory's, so `baton submit --state-dir` reaches it."""
    state = tmp_path / "state"
    where = ["--state-dir", str(state)]
    serving = subprocess.Popen(baton("serve", *where), stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert serving.stdout is not None
        assert "serving on NATS" in serving.stdout.readline()
        port = (state / "nats" / "port").read_text()
        first = subprocess.run(
            baton("submit", str(EXAMPLE), *where),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        open_run = first.stdout.strip()  # no agents: it stays open, the serve's to decide
        refused = {
            command: subprocess.run(
                baton(*argv, *where), capture_output=True, text=True, cwd=REPO, timeout=60
            )
            for command, argv in {
                "run": ["run", str(EXAMPLE)],
                "resume": ["resume", open_run],
            }.items()
        }
        submitted = subprocess.run(
            baton("submit", str(EXAMPLE), *where),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
    finally:
        serving.terminate()
        assert serving.wait(15) == 0
    for command, done in refused.items():
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.startswith(
            f"baton {command}: error: another orchestrator (baton serve, run or resume) "
            "already serves the event store"
        ), done.stderr
        assert "baton submit" in done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    assert (state / "nats" / "port").read_text() == port
    assert submitted.returncode == 0, submitted.stderr
