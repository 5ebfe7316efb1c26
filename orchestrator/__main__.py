"""`python -m orchestrator`: the `baton` command line."""

from orchestrator.cli.main import main

raise SystemExit(main())
