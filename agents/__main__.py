"""`python -m agents`: run one agent process as a service (what `baton agent` runs)."""

from agents.cli import main

raise SystemExit(main())
