"""Floors under one chain step (not a test): what the parts a step cannot skip cost on
this machine, with no Baton code in the way. A step of a sequential chain needs one
durable commit (the decision's events) and one round trip between two Python processes
through nats-server (assignment out, result back), so their sum bounds `bench_dispatch`'s
chain figure from below.

- SQLite durable commit: one small row, WAL, `synchronous=FULL`, as the event store does;
- nats-server round trip on raw sockets: two connections of one process, no client library;
- nats-py request/reply between two processes, on asyncio's loop and on uvloop.

Each is the median of `--n` round trips, taken back to back and with a 1 ms pause before
each (an idle process wakes up more slowly). Prints figures, then one JSON line.

    python -m bench.bench_floors [--n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bus.server import EmbeddedNats

PAUSES = (0.0, 0.001)


def _median_us(n: int, pause: float, once: Callable[[], None]) -> float:
    took = []
    for _ in range(n):
        if pause:
            time.sleep(pause)
        began = time.perf_counter_ns()
        once()
        took.append(time.perf_counter_ns() - began)
    return round(statistics.median(took) / 1000, 1)


def sqlite_commit(directory: Path, n: int) -> list[float]:
    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
    row = os.urandom(300)

    def commit() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (data) VALUES (?)", (row,))
        conn.execute("COMMIT")

    try:
        return [_median_us(n, pause, commit) for pause in PAUSES]
    finally:
        conn.close()


def _raw_connection(url: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
    return sock


def _until(sock: socket.socket, marker: bytes, buffer: bytes = b"") -> bytes:
    while marker not in buffer:
        buffer += sock.recv(65536)
    return buffer.split(marker, 1)[1]


def raw_round_trip(url: str, n: int) -> list[float]:
    """One process, two sockets: a request out on one, answered on the other, back."""
    asker, answerer = _raw_connection(url), _raw_connection(url)
    answerer.sendall(b"SUB floor 1\r\nPING\r\n")
    _until(answerer, b"PONG\r\n")
    asker.sendall(b"SUB floor.reply 2\r\nPING\r\n")
    _until(asker, b"PONG\r\n")

    def once() -> None:
        asker.sendall(b"PUB floor floor.reply 1\r\nx\r\n")
        _until(answerer, b"\r\nx\r\n")
        answerer.sendall(b"PUB floor.reply 1\r\ny\r\n")
        _until(asker, b"\r\ny\r\n")

    try:
        return [_median_us(n, pause, once) for pause in PAUSES]
    finally:
        asker.close()
        answerer.close()


async def _answer_forever(url: str) -> None:
    nc = await nats.connect(url)

    async def answer(msg: Msg) -> None:
        await msg.respond(b"y")

    await nc.subscribe("floor", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _ask(url: str, n: int) -> list[float]:
    nc = await nats.connect(url)
    figures = []
    for pause in PAUSES:
        took = []
        for _ in range(n):
            if pause:
                time.sleep(pause)
            began = time.perf_counter_ns()
            await nc.request("floor", b"x", timeout=5)
            took.append(time.perf_counter_ns() - began)
        figures.append(round(statistics.median(took) / 1000, 1))
    await nc.close()
    return figures


def nats_py_round_trip(url: str, n: int, loop_name: str) -> list[float]:
    env = {**os.environ, "BATON_LOOP": loop_name}
    answerer = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_floors", "--answer", url],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert answerer.stdout is not None
        answerer.stdout.readline()
        os.environ["BATON_LOOP"] = loop_name
        from bus import loop

        return loop.run(_ask(url, n))
    finally:
        answerer.kill()
        answerer.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--answer", default="", help=argparse.SUPPRESS)  # the answering process
    args = p.parse_args()
    if args.answer:
        from bus import loop

        loop.run(_answer_forever(args.answer))
        return
    with tempfile.TemporaryDirectory(prefix="baton-floors-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        url = asyncio.run(server.start())
        try:
            result = {
                "sqlite_commit_us": sqlite_commit(Path(tmp), args.n),
                "raw_nats_round_trip_us": raw_round_trip(url, args.n),
                "nats_py_round_trip_asyncio_us": nats_py_round_trip(url, args.n, "asyncio"),
                "nats_py_round_trip_uvloop_us": nats_py_round_trip(url, args.n, "uvloop"),
            }
        finally:
            server.stop()
    print("medians in µs: [back to back, after a 1 ms pause]")
    for name, figures in result.items():
        print(f"  {name:<32} {figures}")
    print(json.dumps({"bench": "floors", "n": args.n, **result}))


if __name__ == "__main__":
    main()
