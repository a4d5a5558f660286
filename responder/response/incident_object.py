"""The Incident in the cluster: `incidents.responder.dev`, one namespaced object per incident in
responder-system, kept current by the guard's leader (responder.guard.incident_keeper).

spec: the incident's id, its trigger, how recovery runs (`approval` or `auto`) and `approvals` (step id,
approver identity from SelfSubjectReview, time), added by `responder approve`. status (a subresource): phase,
trigger, the leader writing it, namespaces per triage state, each step with its start and end time and
result, who approved what, and where the pre-incident snapshot is.

The snapshot (what recovery returns to: namespace -> Tenant, each namespace's Tenant ownerReference,
Capsule's webhook configurations and replicas, the Tenant names) is gzip'd JSON in status.snapshot, written
once; what each finished recovery step journaled for the steps after it (recovery-* records: the backup chosen,
the Tenants recreated, the restore) goes in status.recoveryRecords the same way: 10,000 namespaces in 500 Tenants take ~63 KB of the object, well under etcd's 1.5 MiB request limit,
and no other object (nor permission) is needed. A standby that takes over mid-incident reads it here.

The Incident is responder's own record, like the writer Lease: it is not a write to what an incident
protects, so it is not journaled, and it stays after the incident as its history.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import gzip
import hashlib
import json
import re
from typing import Any

from responder.cluster.client import JSON_PATCH, MERGE_PATCH, KubeClient
from responder.errors import ApiError, Conflict, ConfigError, NotFound
from responder.names import RESPONDER_NAMESPACE

INCIDENT_GROUP = "responder.dev"
INCIDENT_VERSION = "v1alpha1"
INCIDENT_KIND = "Incident"
INCIDENT_RESOURCE = "incidents"
INCIDENT_CRD = f"{INCIDENT_RESOURCE}.{INCIDENT_GROUP}"
INCIDENT_API_VERSION = f"{INCIDENT_GROUP}/{INCIDENT_VERSION}"
INCIDENTS_PATH = f"/apis/{INCIDENT_API_VERSION}/namespaces/{RESPONDER_NAMESPACE}/{INCIDENT_RESOURCE}"

DETECTED, CONTAINING, CONTAINED = "Detected", "Containing", "Contained"
WAITING, RECOVERING, RECOVERED, FAILED = "WaitingForApproval", "Recovering", "Recovered", "Failed"
PHASES = (DETECTED, CONTAINING, CONTAINED, WAITING, RECOVERING, RECOVERED, FAILED)
ENDED = frozenset({RECOVERED, FAILED})  # an incident in any other phase is open: a new leader resumes it
RECOVERY_MODES = ("approval", "auto")

# status.snapshot.data at most (base64 of gzip'd JSON): the whole object stays under etcd's 1.5 MiB request limit.
# 10,000 namespaces in 500 Tenants take ~63 KB (tests/unit/test_incident_object.py).
SNAPSHOT_MAX_CHARS = 1_200_000
LABELS = {"app.kubernetes.io/name": "responder", "app.kubernetes.io/component": "incident"}
_NAME = re.compile(r"[^a-z0-9-]+")


def _open_object(properties: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if properties:
        schema["properties"] = properties
    return schema


def incident_crd() -> dict[str, Any]:
    """The CustomResourceDefinition (installed by the chart, `responder protect` and `responder lab up`)."""
    string, time = {"type": "string"}, {"type": "string", "format": "date-time"}
    packed = {"type": "object", "properties": {"data": string, "bytes": {"type": "integer"}, "sha256": string}}
    approval = {"type": "object", "required": ["step", "approver", "approvedAt"],
                "properties": {"step": string, "approver": string, "approvedAt": time}}
    step = {"type": "object", "required": ["id"],
            "properties": {"id": string, "phase": string, "status": string, "summary": string,
                           "startedAt": time, "finishedAt": time, "leader": string}}
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "incidentId": string,
            "trigger": _open_object(),
            "recovery": {"type": "string", "enum": list(RECOVERY_MODES)},
            "approvals": {"type": "array", "items": approval}}},
        "status": {"type": "object", "properties": {
            "phase": {"type": "string", "enum": list(PHASES)},
            "reason": string,
            "leader": string,
            "takeovers": {"type": "integer"},
            "trigger": _open_object(),
            "namespaces": {"type": "object", "additionalProperties": {"type": "integer"}},
            "steps": {"type": "array", "items": step},
            "waitingFor": string,
            "approvalSteps": {"type": "array", "items": string},
            "approvals": {"type": "array", "items": approval},
            "snapshot": packed,
            "recoveryRecords": packed,
            "updatedAt": time}}}}
    columns = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
               {"name": "Trigger", "type": "string", "jsonPath": ".status.trigger.kind"},
               {"name": "Waiting-For", "type": "string", "jsonPath": ".status.waitingFor"},
               {"name": "Leader", "type": "string", "jsonPath": ".status.leader", "priority": 1},
               {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": INCIDENT_CRD, "labels": {"app.kubernetes.io/name": "responder"}},
            "spec": {"group": INCIDENT_GROUP, "scope": "Namespaced",
                     "names": {"plural": INCIDENT_RESOURCE, "singular": "incident", "kind": INCIDENT_KIND,
                               "listKind": f"{INCIDENT_KIND}List", "shortNames": ["inc"]},
                     "versions": [{"name": INCIDENT_VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}}, "additionalPrinterColumns": columns,
                                   "schema": {"openAPIV3Schema": schema}}]}}


def incident_name(incident_id: str) -> str:
    """The object's name for a journal's incident id (`inc-20261126T142233Z-1a2b` -> `inc-20261126t142233z-1a2b`)."""
    name = _NAME.sub("-", incident_id.lower()).strip("-")[:253]
    if not name:
        raise ValueError(f"no object name for incident id {incident_id!r}")
    return name


def now_rfc3339(epoch: float | None = None) -> str:
    moment = _dt.datetime.now(_dt.timezone.utc) if epoch is None else _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_incident(incident_id: str, trigger: dict[str, Any], *, recovery: str) -> dict[str, Any]:
    return {"apiVersion": INCIDENT_API_VERSION, "kind": INCIDENT_KIND,
            "metadata": {"name": incident_name(incident_id), "namespace": RESPONDER_NAMESPACE, "labels": dict(LABELS)},
            "spec": {"incidentId": incident_id, "trigger": trigger, "recovery": recovery, "approvals": []}}


def is_open(incident: dict[str, Any]) -> bool:
    return ((incident.get("status") or {}).get("phase") or DETECTED) not in ENDED


def approvals_of(incident: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """step id -> its first approval in spec.approvals."""
    out: dict[str, dict[str, Any]] = {}
    for approval in (incident.get("spec") or {}).get("approvals") or []:
        if isinstance(approval, dict) and approval.get("step"):
            out.setdefault(str(approval["step"]), approval)
    return out


def approval_refused(incident: dict[str, Any], step: str) -> ConfigError | None:
    """Why `step` cannot be approved on this Incident (None: it can)."""
    name = incident["metadata"]["name"]
    status = incident.get("status") or {}
    if not is_open(incident):
        return ConfigError(f"the Incident {name} has ended ({status.get('phase')}): there is nothing left to approve",
                           fix=f"kubectl get incidents -n {RESPONDER_NAMESPACE} lists the open ones")
    steps = list(status.get("approvalSteps") or [])
    if step not in steps:
        listed = ", ".join(steps) if steps else "none yet (the guard lists them once the Incident is written)"
        return ConfigError(f"{step!r} is not a recovery step of the Incident {name} that waits for approval",
                           fix=f"approve one of: {listed}")
    done = next((s for s in status.get("steps") or [] if s.get("id") == step and s.get("status") == "finished"), None)
    if done is not None:
        return ConfigError(f"the step {step!r} of the Incident {name} has already finished ({done.get('finishedAt')})",
                           fix="nothing to approve: it ran")
    return None


# ---- the snapshot, in the Incident's status -----------------------------------------------------------------


def pack_json(value: Any) -> dict[str, Any]:
    """`value` as status holds it: gzip'd JSON (base64), its size and checksum; ValueError when it would not fit
    in the object (etcd's request limit)."""
    data = gzip.compress(json.dumps(value, sort_keys=True, separators=(",", ":")).encode(), mtime=0)
    text = base64.b64encode(data).decode()
    if len(text) > SNAPSHOT_MAX_CHARS:
        raise ValueError(f"{len(text)} bytes encoded, more than the Incident holds ({SNAPSHOT_MAX_CHARS})")
    return {"data": text, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def unpack_json(entry: dict[str, Any]) -> Any:
    """The value back from pack_json's entry; ValueError when its checksum does not match."""
    data = base64.b64decode(entry.get("data") or "")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError("the checksum does not match the data")
    return json.loads(gzip.decompress(data))


# ---- reading and writing ------------------------------------------------------------------------------------


class IncidentStore:
    """Incidents and their snapshots in responder-system, through one client (the guard gives it a small
    one of its own, so these writes never queue behind containment's)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    @staticmethod
    def path(name: str) -> str:
        return f"{INCIDENTS_PATH}/{name}"

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self.client.get_or_none(self.path(name))

    async def open_incidents(self) -> list[dict[str, Any]]:
        """Open incidents, oldest first (NotFound when the CRD is not installed: none)."""
        try:
            items = (await self.client.get(INCIDENTS_PATH)).get("items") or []
        except NotFound:
            return []
        return sorted((i for i in items if is_open(i)), key=lambda i: i["metadata"].get("creationTimestamp", ""))

    async def create(self, incident: dict[str, Any]) -> dict[str, Any]:
        """Create it, or return the one already there (a leader before this one created it)."""
        try:
            return await self.client.create(INCIDENTS_PATH, incident, dry_run=False)
        except Conflict:
            existing = await self.get(incident["metadata"]["name"])
            if existing is None:
                raise
            return existing

    async def write_packed(self, name: str, field: str, value: Any) -> None:
        """status.<field> = pack_json(value), on its own: status flushes never resend it."""
        entry = await asyncio.to_thread(pack_json, value)  # 10,000 namespaces: not on the loop
        await self.patch_status(name, {field: entry})

    @staticmethod
    def read_packed(incident: dict[str, Any], field: str) -> Any:
        entry = (incident.get("status") or {}).get(field)
        return unpack_json(entry) if entry and entry.get("data") else None

    async def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self.client.patch(f"{self.path(name)}/status", {"status": status}, patch_type=MERGE_PATCH,
                                       dry_run=False)

    async def add_approval(self, name: str, step: str, approver: str, *, dry_run: bool = False,
                           at: str | None = None) -> dict[str, Any]:
        """Append an approval to spec.approvals, guarded by the list as read (retried when another approval
        landed meanwhile). The guard rewrites the status about once a second: a guard on the resourceVersion
        would fail on each of those, spec.approvals changes only with an approval."""
        approval = {"step": step, "approver": approver, "approvedAt": at or now_rfc3339()}
        for _ in range(10):
            incident = await self.client.get(self.path(name))
            approvals = (incident.get("spec") or {}).get("approvals")
            if isinstance(approvals, list):
                ops = [{"op": "test", "path": "/spec/approvals", "value": approvals},
                       {"op": "add", "path": "/spec/approvals/-", "value": approval}]
            else:  # not written by responder (its Incidents start with a list): the whole object as read
                ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": incident["metadata"]["resourceVersion"]},
                       {"op": "add", "path": "/spec/approvals", "value": [approval]}]
            try:
                return await self.client.patch(self.path(name), ops, patch_type=JSON_PATCH, dry_run=dry_run)
            except Conflict:
                continue
            except ApiError as exc:
                # A failed test op is a 422 naming no cause ("an error in our request"): retried when what it
                # tested has changed, else the refusal is the server's own (a schema it does not accept).
                now = await self.client.get(self.path(name))
                if exc.status == 422 and ((now.get("spec") or {}).get("approvals") != approvals if isinstance(approvals, list)
                                          else now["metadata"]["resourceVersion"] != incident["metadata"]["resourceVersion"]):
                    continue
                raise
        raise ConfigError(f"the Incident {name} kept changing while the approval was added",
                          fix="run the command again")
