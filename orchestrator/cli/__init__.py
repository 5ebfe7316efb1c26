"""The `baton` command line (`main.py`) and the views it prints: the commands people run
and what they read. It may import everything else of the orchestrator; nothing imports it.
"""
