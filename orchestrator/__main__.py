"""`python -m orchestrator`: the `baton` command line."""

from orchestrator.cli import main

raise SystemExit(main())
