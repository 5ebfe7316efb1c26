"""The imperative shell around the core: it reads commands from the bus, decides them
with `orchestrator.core`, appends the events to the store with the expected version and
only then performs the effects (assignments, timers, progress).

It may import `orchestrator.core`, `bus` and `eventstore`; never `orchestrator.cli`.
`bootstrap.py` is the composition root that wires configuration, bus, store and services.
"""
