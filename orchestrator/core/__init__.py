"""The pure coordination core: `decide(state, command, ctx) -> events`,
`evolve(state, event) -> state` and `effects(state, events) -> effects`, with the
vocabularies they speak (commands in, events out), the workflow model and the patterns.

Nothing here awaits, reads a clock, draws randomness or touches a file or the network:
time, ids and randomness come in through the command's context, and every decision that
needs the outside world comes in as a command. It may import `bus.protocol` and
`bus.contracts` (the wire vocabulary) and the standard library's pure parts; nothing of
`orchestrator.service`, `orchestrator.cli` or `eventstore` (checked by import-linter).
"""
