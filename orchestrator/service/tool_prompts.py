"""Agents' requests for a human's approval of a tool call, checked before anyone is asked.

An agent asks on its own approval subject (`baton.tool.approval.<run>.<agent>`, which on a
embedded server only it may publish to). A person must only ever be asked about a call
that an agent makes for an attempt it holds: so the request is passed on to whoever
watches the run (`baton.tool.prompt.<run>`) only if the sender is the agent the record
names and holds that attempt of that task, now; anything else (another run, another
agent's task, an attempt that ended, not a request at all) is refused and audited as a
rejected message, within the sender's audit rate.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.errors import BusError
from bus.protocol import ToolCallRecord
from orchestrator.core.state import RunState

log = logging.getLogger("baton.tool_prompts")
_record: Decoder[ToolCallRecord] = Decoder(ToolCallRecord)

Refuse = Callable[[str, str, int, str], Awaitable[None]]
"""`SystemJournal.reject(subject, reason, size, sender)`: audits a refused message."""
Check = Callable[[str, str, ToolCallRecord], str]
"""(sender, run id of the subject, request) -> why it is refused, '' if it is not."""


def refusal(runs: dict[str, RunState], sender: str, run_id: str, record: ToolCallRecord) -> str:
    """Why `sender`'s approval request on run `run_id`'s subject is refused ('' if not)."""
    if record.agent_id != sender:
        return f"approval request for {record.agent_id} sent by {sender}"
    if record.run_id != run_id:
        return f"approval request for run {record.run_id} sent on run {run_id}'s subject"
    if record.phase != "awaiting":
        return f"approval request in phase {record.phase!r}, not 'awaiting'"
    state = runs.get(run_id)
    task = state.tasks.get(record.task_id) if state is not None else None
    held = (
        task is not None
        and task.status == "running"
        and task.agent_id == sender
        and task.attempt == record.attempt
    )
    if not held:
        return f"{sender} holds no attempt {record.attempt} of {record.task_id!r} in {run_id!r}"
    return ""


class ToolPrompts:
    """Passes checked approval requests on to the run's watchers; refuses the rest."""

    def __init__(self, bus: Bus, check: Check, refuse: Refuse) -> None:
        self._bus = bus
        self._check = check
        self._refuse = refuse
        self.elsewhere: Callable[[str], bool] | None = None
        """Sharing the runs: whether a run is another orchestrator's (it passes it on)."""

    async def on_request(self, msg: Incoming) -> None:
        """One agent's approval request (never raises: a bad one is refused)."""
        try:
            run_id, sender = subjects.tool_approval_sender(msg.subject)
            record = _record.decode(msg.data)
        except BusError as exc:
            await self._refuse(msg.subject, str(exc), len(msg.data), "")
            return
        if self.elsewhere is not None and self.elsewhere(run_id):
            return
        reason = self._check(sender, run_id, record)
        if reason:
            await self._refuse(msg.subject, reason, len(msg.data), sender)
            return
        try:
            await self._bus.publish(subjects.tool_prompt(run_id), encode(record), msg.trace)
        except BusError as exc:
            log.warning("could not pass on tool call %s for approval: %s", record.call_id, exc)
