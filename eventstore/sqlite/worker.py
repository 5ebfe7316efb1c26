"""The threads that own the store's two connections.

Each is a daemon thread with its own connection that runs the work queued to it, one item
at a time, and hands every outcome back to the event loop that waits for it: a call
crosses from the loop to the thread once. As it is here, a `Worker` is the reader thread;
`writer.LogWriter` extends it with appends committed in groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from eventstore._common import check_open, closed_error
from eventstore.errors import EventStoreError, StorageError
from eventstore.model import NewEvent, StoredEvent
from eventstore.sqlite.sql import DRIVER_ERRORS, storage_error

T = TypeVar("T")

Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]
"""A waiting future, and the result or the error it gets."""


def _settle(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def post(loop: asyncio.AbstractEventLoop, outcomes: list[Outcome]) -> None:
    """Hand outcomes back to the loop that waits for them; a closed loop has no waiter."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, outcomes)


@dataclass(slots=True)
class Request:
    """One append, queued to the writer thread."""

    stream: str
    events: tuple[NewEvent, ...]
    expected_version: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[StoredEvent]]


@dataclass(slots=True)
class Job:
    """Any other work for a thread: `run(conn)` in one hop."""

    run: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    stop: bool = field(default=False)


class Worker:
    """A daemon thread that owns one connection and runs queued jobs on it, in order.

    `is_closed` is the store's state: once it is true, no new call is taken.
    """

    role: ClassVar[str] = "reader"
    action: ClassVar[str] = "read"  # what a failure is called in its `StorageError`

    def __init__(
        self, file_name: str, conn: sqlite3.Connection, is_closed: Callable[[], bool]
    ) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[Request | Job] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self.serve, name=f"eventstore-{self.role}:{file_name}", daemon=True
        )
        self.is_closed = is_closed

    def start(self) -> None:
        self.thread.start()

    def check_alive(self) -> None:
        if not self.thread.is_alive():
            raise StorageError(f"the event store's {self.role} has stopped")

    def check(self) -> None:
        """Refuse a call once the store is closed or this thread has stopped."""
        check_open(self.is_closed())
        self.check_alive()

    def submit(
        self, run: Callable[[sqlite3.Connection], T], *, stop: bool = False
    ) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.queue.put(Job(run, loop, future, stop))
        return future

    async def call(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run(conn)` on this thread, in one hop."""
        self.check()
        return await self.submit(run)

    def serve(self) -> None:
        """The thread: run each job until the stop job."""
        source = self.queue
        while True:
            item = source.get()
            assert isinstance(item, Job)  # only the writer takes appends
            if item.stop:
                break
            self.run_job(item)
        self.finish(item)

    def run_job(self, job: Job) -> None:
        if job.future.cancelled():
            return
        try:
            result = job.run(self.conn)
        except EventStoreError as e:
            post(job.loop, [(job.future, None, e)])
        except DRIVER_ERRORS as e:
            post(job.loop, [(job.future, None, storage_error(self.action, e))])
        except Exception as e:  # a bug, not a storage failure: answer, keep serving
            post(job.loop, [(job.future, None, storage_error("store call", e))])
        else:
            post(job.loop, [(job.future, result, None)])

    def finish(self, stopping: Job) -> None:
        """Answer anything queued after the stop job, close the connection, then the stop
        job itself: the thread ends."""
        while True:
            try:
                late = self.queue.get_nowait()
            except queue.Empty:
                break
            post(late.loop, [(late.future, None, closed_error())])
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        post(stopping.loop, [(stopping.future, None, None)])

    async def stop(self) -> None:
        """Let the queued work finish, stop the thread and close its connection."""
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                await self.submit(lambda conn: None, stop=True)
        self.thread.join(timeout=5)
