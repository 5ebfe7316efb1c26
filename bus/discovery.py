"""NATS-native discovery: every agent and orchestrator is also a NATS micro service, so
the NATS ecosystem's own tools (`nats micro ls`, `nats micro info`, `nats micro stats`)
list them, with their role, contract digest, load and endpoint statistics.

The micro protocol (nats-io/nats-architecture-and-design, ADR-32) is small: a service
answers `$SRV.<VERB>`, `$SRV.<VERB>.<name>` and `$SRV.<VERB>.<name>.<id>` (built by
`bus.subjects.discovery`) for the verbs PING, INFO and STATS with one JSON object each.
It is spoken here on plain subscriptions of `bus.connection.Bus`, not with nats-py's
`nats.micro`, because a micro `Endpoint` owns its subscription and handler: Baton's
subjects are already served by handlers of their own, and the statistics must count
those very requests. `Service.endpoint` wraps such a handler in a counter (two clock
reads and a few additions per message, nothing awaited), so the counts are the handled
messages themselves.

Discovery tells who is there and how busy; it is no authority. Routing and ownership go
by heartbeats and the sender's NATS login, never by what a discovery reply claims.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import metadata as package_metadata

from bus import subjects
from bus.connection import Bus, Handler, Incoming, Subscription
from bus.protocol import Heartbeat

log = logging.getLogger("baton.bus.discovery")

AGENT = subjects.AGENT_SERVICE
ORCHESTRATOR = subjects.ORCHESTRATOR_SERVICE
PROTOCOL_VERSION = "1"
"""Baton's wire protocol version, in every discovery reply's metadata (`protocol`)."""
PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:[-+][0-9A-Za-z.+-]+)?$")


def baton_version() -> str:
    """The installed Baton's version (a semantic version, as ADR-32 requires)."""
    try:
        version = package_metadata.version("batonbus")
    except package_metadata.PackageNotFoundError:
        return "0.0.0"
    return version if _SEMVER.match(version) else "0.0.0"


def agent_metadata(beat: Heartbeat, state: str) -> dict[str, str]:
    """An agent's discovery metadata, from what its heartbeat says now (and whether it
    is `serving`, `draining`, or `waiting`/`refused` for its id)."""
    return {
        "role": beat.role,
        "agent_id": beat.agent_id,
        "instance": beat.instance,
        "contract_digest": beat.contract_digest,
        "capacity": str(beat.capacity),
        "load": str(beat.load),
        "state": state,
    }


class Endpoint:
    """The statistics of one served subject: requests handled, errors, and the time spent
    in its handler. An error is a handler that raised, or one that answered with Baton's
    `error` reply (a refused request)."""

    __slots__ = (
        "last_error",
        "metadata",
        "name",
        "num_errors",
        "num_requests",
        "processing_ns",
        "subject",
    )

    def __init__(self, name: str, subject: str, metadata: Mapping[str, str]) -> None:
        self.name = name
        self.subject = subject
        self.metadata = dict(metadata)
        self.num_requests = 0
        self.num_errors = 0
        self.processing_ns = 0
        self.last_error = ""

    def track(self, handler: Handler) -> Handler:
        """`handler`, counted: each call is a request, its running time processing time,
        an exception (re-raised, for the subscription's guard to log) or an error reply
        an error."""

        async def counted(msg: Incoming) -> None:
            started = time.perf_counter_ns()
            self.num_requests += 1
            try:
                await handler(msg)
            except Exception as exc:
                self._failed(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                self.processing_ns += time.perf_counter_ns() - started
            if msg.refused:
                self._failed(msg.refused)

        return counted

    def _failed(self, reason: str) -> None:
        self.num_errors += 1
        self.last_error = reason[:500]

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": "",
            "metadata": self.metadata,
        }

    def stats(self) -> dict[str, object]:
        average = self.processing_ns // self.num_requests if self.num_requests else 0
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": "",
            "num_requests": self.num_requests,
            "num_errors": self.num_errors,
            "last_error": self.last_error,
            "processing_time": self.processing_ns,
            "average_processing_time": average,
            "data": None,  # ADR-32 makes it optional; some clients' parsers require the key
        }


Metadata = Callable[[], Mapping[str, str]]


class Service:
    """One process's micro service: its identity, its endpoints, and the answers to
    PING, INFO and STATS. `metadata` is called at each answer, so what it reports (an
    agent's load) is current; `protocol` is always in it."""

    def __init__(
        self,
        name: str,
        service_id: str,
        metadata: Metadata,
        *,
        description: str = "",
        version: str = "",
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"not a micro service name: {name!r}")
        self.name = name
        self.id = subjects.token(service_id)
        self.version = version or baton_version()
        self.description = description
        self._metadata = metadata
        self.endpoints: list[Endpoint] = []
        self.started = datetime.now(UTC)
        self._subscriptions: list[Subscription] = []

    def endpoint(
        self,
        name: str,
        subject: str,
        handler: Handler,
        metadata: Mapping[str, str] | None = None,
    ) -> Handler:
        """Declare `subject` an endpoint of this service; returns `handler` counted
        (subscribe that one). The same name and subject again keep counting on."""
        endpoint = next((e for e in self.endpoints if (e.name, e.subject) == (name, subject)), None)
        if endpoint is None:
            endpoint = Endpoint(name, subject, metadata or {})
            self.endpoints.append(endpoint)
        return endpoint.track(handler)

    async def serve(
        self, bus: Bus, name: str, subject: str, handler: Handler, *, inline: bool = False
    ) -> Subscription:
        """Subscribe `handler` to `subject` on `bus` as an endpoint of this service."""
        return await bus.subscribe(subject, self.endpoint(name, subject, handler), inline=inline)

    def metadata(self) -> dict[str, str]:
        """The service's metadata now (strings only, as ADR-32 wants)."""
        values = {key: str(value) for key, value in self._metadata().items()}
        values["protocol"] = PROTOCOL_VERSION
        return values

    def _identity(self, kind: str) -> dict[str, object]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": self.metadata(),
        }

    def ping(self) -> dict[str, object]:
        return self._identity(PING_TYPE)

    def info(self) -> dict[str, object]:
        return self._identity(INFO_TYPE) | {
            "description": self.description,
            "endpoints": [e.info() for e in self.endpoints],
        }

    def stats(self) -> dict[str, object]:
        started = self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return self._identity(STATS_TYPE) | {
            "started": started,
            "endpoints": [e.stats() for e in self.endpoints],
        }

    async def start(self, bus: Bus) -> list[Subscription]:
        """Answer discovery requests on `bus` (until the subscriptions are dropped, or
        `stop`). A request's payload is ignored, so no request can be malformed; a
        failure building an answer is logged by the subscription's guard, and the next
        request is answered as usual."""
        answers = {"PING": self.ping, "INFO": self.info, "STATS": self.stats}

        def answerer(make: Callable[[], dict[str, object]]) -> Handler:
            async def answer(msg: Incoming) -> None:
                await msg.answer(json.dumps(make(), separators=(",", ":")).encode())

            return answer

        for verb in subjects.DISCOVERY_VERBS:
            handler = answerer(answers[verb])
            for scope in ((), (self.name,), (self.name, self.id)):
                subject = subjects.discovery(verb, *scope)
                self._subscriptions.append(await bus.subscribe(subject, handler, inline=True))
        return list(self._subscriptions)

    async def stop(self) -> None:
        """Stop answering discovery requests: the process is gone from `nats micro ls`."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # a connection already closed has no subscriptions
                log.debug("discovery unsubscribe failed: %s", exc)
