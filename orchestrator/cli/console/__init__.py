"""The operator's console (`baton ui`): a web page on loopback for the runs, one run live,
approvals, agents, audit search and time travel, read from the same event store and
acting through the same `baton.api.*` subjects as the CLI. Its web stack (Starlette,
uvicorn) is the optional `ui` extra: nothing else in Baton imports this package."""

__all__ = ["app", "command", "guard", "live", "pages", "reads", "streams"]
