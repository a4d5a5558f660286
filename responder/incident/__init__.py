"""The incident's core: observe the cluster, keep the shadow copy, detect, triage (pure), run the
runbook's steps (engine) and journal every write."""
