"""The console's connection to the running orchestrator's bus, as the person who started
it: progress pushed on `baton.events.<run>` wakes the pages that watch that run (no
polling), and every action goes out exactly as the CLI sends it (`baton approve|reject|
retry|cancel` on the person's `baton.api.run.control.<person>`, `baton tool approve|deny`
to the waiting agent, `baton agents` on `baton.api.agents`), so the orchestrator decides
it, validates it and records the person as its actor."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.errors import BusError, RequestFailed
from bus.protocol import ErrorReply, ToolCallRecord, ToolDecision, ToolDecisionAck
from orchestrator.cli.console.errors import NotReachable
from orchestrator.cli.observe import connect
from orchestrator.cli.reach import Reach, shown
from orchestrator.core.errors import ControlRefused, OrchestratorError
from orchestrator.service.api import AgentsReply, AgentsRequest, ControlAccepted, RunControlRequest

_control: Decoder[ControlAccepted | ErrorReply] = Decoder(ControlAccepted | ErrorReply)
_agents: Decoder[AgentsReply | ErrorReply] = Decoder(AgentsReply | ErrorReply)
_ack: Decoder[ToolDecisionAck | ErrorReply] = Decoder(ToolDecisionAck | ErrorReply)
_prompt: Decoder[ToolCallRecord] = Decoder(ToolCallRecord)
TIMEOUT_S = 10.0
PROMPTED_MAX = 1000
"""Tool calls passed on for approval that the console remembers (the oldest are dropped:
the log's awaiting record of each still shows it)."""


class Changes:
    """What the bus said moved since a page's live stream last looked: the runs that
    progressed, whether a tool call was passed on for approval, whether an agent joined,
    was lost or refused."""

    def __init__(self) -> None:
        self.runs: set[str] = set()
        self.calls = False
        self.agents = False
        self.moved = asyncio.Event()

    def take(self) -> tuple[set[str], bool, bool]:
        """What moved, forgotten now (the next change sets `moved` again)."""
        taken = (self.runs, self.calls, self.agents)
        self.runs, self.calls, self.agents = set(), False, False
        self.moved.clear()
        return taken


class Live:
    """The bus side of the console; without a reachable orchestrator (`where` None, or
    the connection refused) the console still shows the log, and says that actions and
    live updates need `baton serve` or `baton run` running."""

    def __init__(
        self, where: Reach | None, actor: str, find: Callable[[], Reach | None] | None = None
    ) -> None:
        self.where = where
        self._find = find
        """Looks for the orchestrator's bus again (`reach`), for a console started
        before the orchestrator was."""
        self.actor = actor
        """Who the console acts as: the person the server's credentials name."""
        self.bus: Bus | None = None
        self.problem = "" if where is not None else "no running orchestrator found"
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._followers: set[Changes] = set()
        self._subscriptions: list[Subscription] = []
        self.prompted: OrderedDict[str, ToolCallRecord] = OrderedDict()
        """Tool calls passed on for approval (`baton.tool.prompt.*`), newest last: the
        approvals inbox shows one at once, before its awaiting record reaches the log."""
        self.decided: OrderedDict[str, None] = OrderedDict()
        """Tool calls decided from this console: gone from its inbox at once, before the
        agent's record of the decision reaches the log."""

    @property
    def url(self) -> str:
        return shown(self.where.url) if self.where is not None else ""

    async def start(self) -> None:
        if self.where is None:
            return
        try:
            self.bus = await connect(self.where, "baton-ui", TIMEOUT_S)
            self._subscriptions = [
                await self.bus.subscribe(subjects.PROGRESS_ALL, self._on_progress, inline=True),
                await self.bus.subscribe(subjects.TOOL_PROMPT_ALL, self._on_prompt, inline=True),
                await self.bus.subscribe(subjects.AGENT_CHANGES, self._on_agents, inline=True),
            ]
        except (BusError, OrchestratorError, OSError) as exc:
            self.problem = f"cannot reach the orchestrator's NATS at {self.url}: {exc}"
            self.bus = None

    async def ensure(self) -> None:
        """Connect now if the console is not connected yet and the bus can be found (an
        orchestrator started after the console): actions and live pages then work."""
        if self.bus is not None or self._find is None:
            return
        found = self._find()
        if found is None:
            return
        self.where = found
        self.actor = found.identity or self.actor
        self.problem = ""
        await self.start()

    async def close(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        if self.bus is not None:
            await self.bus.close()

    async def _on_progress(self, msg: Incoming) -> None:
        run_id = msg.subject.rpartition(".")[2]
        watchers = self._watchers.get(run_id)
        if watchers:
            for changed in watchers:
                changed.set()
        for follower in self._followers:
            follower.runs.add(run_id)
            follower.moved.set()

    async def _on_prompt(self, msg: Incoming) -> None:
        try:
            record = _prompt.decode(msg.data)
        except BusError:
            return  # only the orchestrator publishes here; nothing to show of a bad one
        self.prompted[record.call_id] = record
        while len(self.prompted) > PROMPTED_MAX:
            self.prompted.popitem(last=False)
        for follower in self._followers:
            follower.calls = True
            follower.moved.set()

    async def _on_agents(self, msg: Incoming) -> None:
        for follower in self._followers:
            follower.agents = True
            follower.moved.set()

    @contextlib.contextmanager
    def follow(self) -> Iterator[Changes]:
        """What moves anywhere (runs, tool calls for approval, agents), while the block
        runs: the runs list, the approvals inbox and the agents page follow it."""
        changes = Changes()
        self._followers.add(changes)
        try:
            yield changes
        finally:
            self._followers.discard(changes)

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever progress of `run_id` arrives, while the block runs."""
        changed = asyncio.Event()
        self._watchers[run_id].add(changed)
        try:
            yield changed
        finally:
            self._watchers[run_id].discard(changed)
            if not self._watchers[run_id]:
                del self._watchers[run_id]

    def _bus(self) -> Bus:
        if self.bus is None:
            raise NotReachable(
                f"{self.problem or 'not connected'}: actions need the orchestrator "
                "(baton serve, or baton run) running on this state directory or --nats"
            )
        return self.bus

    async def control(self, request: RunControlRequest) -> ControlAccepted:
        """A person's decision on a run, as `baton approve|reject|retry|cancel` sends it."""
        await self.ensure()
        subject = subjects.run_control(self.actor)
        try:
            data = await self._bus().request(subject, encode(request), TIMEOUT_S)
        except RequestFailed as exc:
            raise NotReachable(f"no orchestrator answered: {exc}") from exc
        reply = _control.decode(data)
        if isinstance(reply, ErrorReply):
            raise ControlRefused(reply.detail or reply.error)
        return reply

    async def decide_tool(
        self, agent_id: str, call_id: str, approve: bool, reason: str
    ) -> ToolDecisionAck:
        """A tool call's decision, to the agent waiting on it (`baton tool approve|deny`)."""
        await self.ensure()
        decision = ToolDecision(call_id, approve, self.actor, reason)
        subject = subjects.tool_decision(subjects.token(agent_id), subjects.token(call_id))
        try:
            data = await self._bus().request(subject, encode(decision), TIMEOUT_S)
        except RequestFailed as exc:
            raise NotReachable(f"no agent is waiting on tool call {call_id}: {exc}") from exc
        reply = _ack.decode(data)
        if isinstance(reply, ErrorReply):
            raise ControlRefused(f"{reply.error}: {reply.detail}")
        if not reply.taken:
            raise ControlRefused(f"{call_id}: {reply.detail}")
        self.prompted.pop(call_id, None)
        self.decided[call_id] = None
        while len(self.decided) > PROMPTED_MAX:
            self.decided.popitem(last=False)
        for follower in self._followers:  # the inboxes open elsewhere drop it at once
            follower.calls = True
            follower.moved.set()
        return reply

    async def agents(self) -> AgentsReply:
        await self.ensure()
        try:
            data = await self._bus().request(
                subjects.API_AGENTS, encode(AgentsRequest()), TIMEOUT_S
            )
        except RequestFailed as exc:
            raise NotReachable(f"no orchestrator answered: {exc}") from exc
        reply = _agents.decode(data)
        if isinstance(reply, ErrorReply):
            raise NotReachable(f"{reply.error}: {reply.detail}")
        return reply
