"""The imperative shell around the core: it reads commands from the bus, decides them
with `orchestrator.core`, appends the events to the store with the expected version and
only then performs the effects (assignments, timers, progress).

One job per module: `intake` and `reports` (agents' reports in, answered once durable),
`run_requests` (start, control, bids), `liveness` (ticks, heartbeats), `pipeline`
(decide, append, act), `outbound` (effects on the bus), `recovery` (runs rebuilt from the
log), `system_journal` (the `system` stream); `telemetry`, `metrics` and `spans` observe.
`service.Orchestrator` wires them; `bootstrap.py` is the composition root that wires
configuration, bus, store and the orchestrator.

It may import `orchestrator.core`, `bus` and `eventstore`; never `orchestrator.cli`.
"""
