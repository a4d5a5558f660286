"""A response to one cluster: the session that ties observation, detection and the runbook together,
and what the commands and the TUI ask of it (the plan, undo, console output)."""
