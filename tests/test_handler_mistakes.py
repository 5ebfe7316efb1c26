"""A handler written wrong fails its attempts with a message that says what is wrong,
once: a plain `def` is refused when the agent starts; one whose result is not awaitable
(a callable object, say) or that returns something other than a dict or a Reply fails
its attempt as not retryable, naming what it returned (it used to fail every attempt
with an empty `AssertionError:` or a `TypeError` from deep in the runtime), and so does
one whose output holds a value JSON has no form for (it was tried `max_attempts` times)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.sdk import HandlerNotFound, load_handler
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import cluster

HANDLERS = """\
async def returns_a_list(task):
    return [1, 2]


async def returns_nothing(task):
    pass


class NotAwaiting:
    def __call__(self, task):
        return {"x": 1}


not_awaiting = NotAwaiting()


def plain(task):
    return {"x": 1}


async def returns_an_object(task):
    return {"x": object()}
"""


def test_a_plain_function_is_refused_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    with pytest.raises(HandlerNotFound, match=r"plain'.*a handler is an async function"):
        load_handler(f"{tmp_path / 'handlers.py'}:plain")


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("returns_a_list", "the handler returned list: it returns a dict"),
        ("returns_nothing", "the handler returned NoneType: it returns a dict"),
        ("not_awaiting", "the handler returned dict, not an awaitable"),
        ("returns_an_object", "the handler's output cannot be sent: Encoding objects of type"),
    ],
)
def test_a_handler_returning_the_wrong_thing_fails_once_saying_what(
    tmp_path: Path, name: str, said: str
) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    workflow = WorkflowSpec(name="w", steps=[StepSpec(id="a", role="worker", max_attempts=3)])

    async def scenario() -> tuple[str, str, int]:
        async with cluster(tmp_path / "stack") as c:
            handler = f"{tmp_path / 'handlers.py'}:{name}"
            await c.add_agents([AgentSpec(role="worker", handler=handler, count=1)])
            run_id = await c.orchestrator.start_run(workflow)
            async with asyncio.timeout(30):
                state = await c.orchestrator.wait(run_id)
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
            assigned = sum(e.type == "task.assigned" for e in stored)
            return state.status, state.reason, assigned

    status, reason, assigned = asyncio.run(scenario())
    assert status == "failed"
    assert said in reason, reason
    assert assigned == 1, "a handler written wrong is not tried again"
