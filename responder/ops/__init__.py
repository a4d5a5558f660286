"""The operator's commands before an incident: RBAC manifests, doctor, protect."""
