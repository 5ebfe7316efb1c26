"""docs/deploy.md's systemd units (section 5), read from the page: `systemd-analyze verify`
accepts them (where systemd is installed), and each unit's `ExecStart`, run as systemd
would (its `WorkingDirectory`, the page's paths replaced by the test's, `%i` by an
instance), keeps what the unit's comments promise: SIGTERM on `baton serve` hands its
partitions over (their leases deleted) and exits 0; SIGTERM on `baton agent` lets it
finish the task it holds, take no more, and exit 0. Systemd itself does not run here:
one nats-server stands for the cluster (the units do not depend on its shape)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import nats.js.errors

from bus.leases import LEASES_BUCKET
from tests.cluster import baton
from tests.nats_cluster import deploy_blocks, nats_server
from tests.programs import need

BATON = "/opt/baton/.venv/bin/baton"
"""Where the page's units find `baton`."""


def _units(work: Path, state: Path) -> dict[str, str]:
    """The page's two units by file name, `baton` and the directories made the test's."""
    serve, agent = deploy_blocks("5. systemd units", "```ini")
    names = ("baton-serve.service", "baton-agent@.service")
    mine = str(Path(sys.executable).parent / "baton")
    return {
        name: unit.replace(BATON, mine)
        .replace("/etc/baton", str(work))
        .replace("/var/lib/baton", str(state))
        for name, unit in zip(names, (serve, agent), strict=True)
    }


def _service(unit: str, instance: str = "") -> tuple[list[str], Path]:
    """The unit's `ExecStart` (split as systemd does for a plain command line, `%i` the
    instance) and `WorkingDirectory`."""
    found = dict(re.findall(r"^(ExecStart|WorkingDirectory)=(.+)$", unit, re.M))
    assert set(found) == {"ExecStart", "WorkingDirectory"}, unit
    return shlex.split(found["ExecStart"].replace("%i", instance)), Path(found["WorkingDirectory"])


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "the units cannot be checked by systemd here")
    units = _units(tmp_path, tmp_path / "state")
    for name, unit in units.items():
        assert BATON not in unit
        assert "/etc/baton" not in unit
        (tmp_path / name).write_text(unit)
    for name in ("baton-serve.service", "baton-agent@worker.service"):  # an instance
        done = subprocess.run(
            [analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", done.stderr  # not even a warning (an unknown key, a typo)


def _baton(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        baton(*args), cwd=work, capture_output=True, text=True, timeout=60, env=_env(work)
    )


def _env(work: Path) -> dict[str, str]:
    """The environment a unit gives: none of the test's BATON_ settings; the handler's
    package importable (on a real machine it is installed in the venv)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**clean, "PYTHONPATH": str(work)}


def _events(work: Path, run_id: str) -> list[dict[str, object]]:
    done = _baton(work, "audit", "--run", run_id, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def _leases(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(LEASES_BUCKET)
        try:
            return [key for key in await kv.keys() if key.startswith("p.")]
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


def test_sigterm_on_the_units_commands_drains_the_agent_and_hands_the_partitions_over(
    tmp_path: Path,
) -> None:
    work, state = tmp_path / "etc-baton", tmp_path / "state"
    work.mkdir()
    units = _units(work, state)
    (work / "mypackage").mkdir()
    (work / "mypackage" / "__init__.py").write_text("")
    (work / "mypackage" / "worker.py").write_text("from agents.builtin import sleep as handle\n")
    (work / "wf.toml").write_text(
        'name = "one"\n[[agents]]\nrole = "worker"\nhandler = "mypackage.worker:handle"\n'
        '[[steps]]\nid = "slow"\nrole = "worker"\nparams = { seconds = 3 }\n'
    )
    with nats_server(tmp_path / "nats") as url:
        (work / "baton.toml").write_text(f'store = "jetstream"\nnats = ["{url}"]\n')
        started: list[subprocess.Popen[bytes]] = []
        try:
            for name, instance in (("baton-serve.service", ""), ("baton-agent@.service", "worker")):
                argv, cwd = _service(units[name], instance)
                assert argv[0] == str(Path(sys.executable).parent / "baton"), argv
                with (work / f"{name}.log").open("wb") as log:
                    started.append(
                        subprocess.Popen(
                            argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=_env(work)
                        )
                    )
                if name == "baton-serve.service":
                    deadline = time.monotonic() + 60
                    while "serving on NATS" not in (work / f"{name}.log").read_text():
                        assert started[0].poll() is None, (work / f"{name}.log").read_text()
                        assert time.monotonic() < deadline, "baton serve did not serve"
                        time.sleep(0.1)
            serve, agent = started
            submitted = _baton(work, "submit", "wf.toml", "--timeout", "30")
            assert submitted.returncode == 0, submitted.stderr
            run_id = submitted.stdout.strip().splitlines()[-1]
            deadline = time.monotonic() + 30
            while not any(e["type"] == "task.assigned" for e in _events(work, run_id)):
                assert time.monotonic() < deadline, "the task was never assigned"
                time.sleep(0.1)
            assert asyncio.run(_leases(url)), "baton serve holds no partition"

            # the agent unit's stop: it holds a 3 s task; it finishes it, then exits 0
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, (work / "baton-agent@.service.log").read_text()
            types = [e["type"] for e in _events(work, run_id)]
            assert types.count("task.succeeded") == 1, types
            assert types.count("task.assigned") == 1, types  # finished, not given up
            assert "run.completed" in types, types

            # the serve unit's stop: the partitions handed over (leases deleted), exit 0
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(30) == 0, (work / "baton-serve.service.log").read_text()
            said = (work / "baton-serve.service.log").read_text()
            assert re.search(r"stepped down from partitions [\d,]+ \(stopping\)", said), said
            assert asyncio.run(_leases(url)) == []
            for name in units:
                assert "Traceback" not in (work / f"{name}.log").read_text()
        finally:
            for process in started:
                if process.poll() is None:
                    process.kill()
                    process.wait()
