"""One line per leader failover of the log's stream, and per pause of the appends.

In a cluster the log's stream has a leader; when its node dies the others elect another
after 4-9 s (nats-server's raft election timeout, which its configuration does not
expose). Meanwhile appends find no leader and the writer tries them again (see
`writer`). The server announces each election on
`$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>`; the store listens there and says
it in one line, with how long appends waited for it. A pause with no election (a
reconnect to another node) gets its own line when appends resume. A client whose login
may not subscribe to the advisory still rides the failover out, only without the line.

A client that was reconnecting to another node when the announcement went out does not
hear it: the writer asks for the stream's leader before its first append after each
reconnect (`reconnected`), and a leader other than the last one known is said the same
way. An announcement of the leader already said is not said again.

The announcement also ends the wait of an append sent to the leader before it stepped
down (a node stopped in order hands its leaderships over at once, but what its old
leader had not stored gets no reply): the writer sends it again at once instead of
waiting for the reply's timeout (`next_election`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventstore.jetstream.log import NATS_ERRORS, log

ELECTED: Final = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}"
"""The subject on which nats-server announces a new leader of a stream."""
GRACE_S: Final = 1.0
"""How long after appends resumed an election announcement still belongs to that pause
(the announcement and the first accepted append race)."""


class FailoverNotes:
    """What the writer and the server's announcements say about the log's leader, turned
    into one line per failover or pause (logger `baton.eventstore`)."""

    def __init__(self, stream_name: str) -> None:
        self._name = stream_name
        self._paused_at: float | None = None
        self._told = False
        """An election was said during the pause under way."""
        self._unsaid: asyncio.TimerHandle | None = None
        self._last_pause = 0.0
        self._subscription: Subscription | None = None
        self._election: asyncio.Future[None] | None = None
        self._leader = ""
        """The stream's leader last heard of ('' before the first)."""
        self._reconnects = 0
        """The client's reconnect count when the leader was last asked for."""
        self._asking: asyncio.Future[None] | None = None

    async def listen(self, nc: NATS, leader: Callable[[], Awaitable[str]]) -> None:
        """Hear the server's election announcements for the stream (best effort), and
        learn its leader now."""
        with contextlib.suppress(*NATS_ERRORS):
            self._subscription = await nc.subscribe(ELECTED.format(self._name), cb=self._announced)
        self._reconnects = nc.stats["reconnects"]
        self._leader = await leader()

    def reconnected(self, nc: NATS, leader: Callable[[], Awaitable[str]]) -> None:
        """If the client reconnected since the leader was last asked for, ask again (in a
        task of its own: during an election the answer can take the request's timeout,
        which no append should wait for): an election announced meanwhile was not heard."""
        if nc.stats["reconnects"] == self._reconnects:
            return
        self._reconnects = nc.stats["reconnects"]
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._ask(leader))

    async def _ask(self, leader: Callable[[], Awaitable[str]]) -> None:
        now = await leader()
        if now and self._leader and now != self._leader:
            self._leader = now
            log.warning(
                "event log %s: leader failover, %s leads it now; announced while this "
                "client reconnected",
                self._name, now,
            )  # fmt: skip

    async def close(self) -> None:
        if self._asking is not None:
            self._asking.cancel()
        if self._unsaid is not None:
            self._unsaid.cancel()
            self._say_pause()
        if self._subscription is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._subscription.unsubscribe()

    def next_election(self) -> asyncio.Future[None]:
        """Done when the server announces the next election of the stream's leader."""
        if self._election is None or self._election.done():
            self._election = asyncio.get_running_loop().create_future()
        return self._election

    def paused(self) -> None:
        """An append found no leader, or had no reply: the pause begins (if it had not)."""
        if self._paused_at is None:
            self._paused_at = time.monotonic()
            self._told = False

    def resumed(self) -> None:
        """An append worked: the pause, if any, ends; said now unless an election was,
        or comes within `GRACE_S`."""
        if self._paused_at is None:
            return
        self._last_pause = time.monotonic() - self._paused_at
        self._paused_at = None
        if not self._told:
            self._unsaid = asyncio.get_running_loop().call_later(GRACE_S, self._say_pause)

    async def _announced(self, msg: Msg) -> None:
        if self._election is not None and not self._election.done():
            self._election.set_result(None)
        try:
            leader = str(json.loads(msg.data).get("leader", "?"))
        except (ValueError, AttributeError):
            leader = "?"
        if leader == self._leader:
            return  # said already (asked for after a reconnect)
        self._leader = leader
        if self._unsaid is not None:  # the pause just ended: this election was its cause
            self._unsaid.cancel()
            self._unsaid = None
            waited = f"appends paused {self._last_pause:.2f}s, resumed"
        elif self._paused_at is not None:
            self._told = True
            waited = f"appends waiting {time.monotonic() - self._paused_at:.2f}s, resuming"
        else:
            waited = "no append was waiting"
        log.warning(
            "event log %s: leader failover, %s leads it now; %s", self._name, leader, waited
        )

    def _say_pause(self) -> None:
        self._unsaid = None
        log.warning(
            "event log %s: no leader or no connection, appends paused %.2fs, resumed",
            self._name, self._last_pause,
        )  # fmt: skip
