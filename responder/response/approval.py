"""Approving a recovery step the guard waits on: one write, the Incident's spec.approvals, with the approver
the API server says the caller is (SelfSubjectReview). `responder approve` and the TUI attached to a guard's
incident both approve through `approve_step`.

It writes only responder's own record (the guard leading the cluster reads it), so it takes no writer Lease.
Bad input (no such Incident, an ended one, a step that does not wait for approval or has finished) raises
ConfigError before anything is written.
"""

from __future__ import annotations

from typing import Any

from responder.cluster.client import KubeClient
from responder.errors import ConfigError
from responder.names import RESPONDER_NAMESPACE
from responder.response.incident_object import INCIDENT_RESOURCE, IncidentStore, approval_refused, approvals_of
from responder.response.session import whoami


async def approve_step(client: KubeClient, name: str, step: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Approve `step` of the Incident `name`; what was approved, by whom and when (`already`: an earlier
    approval of that step stands, nothing written)."""
    store = IncidentStore(client)
    incident = await store.get(name)
    if incident is None:
        raise ConfigError(f"no Incident {name} in {RESPONDER_NAMESPACE}",
                          fix=f"kubectl get {INCIDENT_RESOURCE} -n {RESPONDER_NAMESPACE} lists them")
    refused = approval_refused(incident, step)
    if refused is not None:
        raise refused
    earlier = approvals_of(incident).get(step)
    if earlier is not None:
        return {"incident": name, "step": step, "approver": earlier.get("approver"),
                "approvedAt": earlier.get("approvedAt"), "already": True, "dry_run": dry_run}
    approver = await whoami(client)
    if not approver:
        raise ConfigError("the API server did not say who you are (SelfSubjectReview)",
                          fix="check the kubeconfig's credentials")
    updated = await store.add_approval(name, step, approver, dry_run=dry_run)
    approval = approvals_of(updated).get(step) or {}
    return {"incident": name, "step": step, "approver": approver, "approvedAt": approval.get("approvedAt"),
            "already": False, "dry_run": dry_run}
