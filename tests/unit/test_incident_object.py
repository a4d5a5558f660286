"""The Incident in the cluster: its CRD, the snapshot within etcd's limits at 10,000 namespaces,
what may be approved, and what a new leader inherits from the cluster at takeover."""

from __future__ import annotations

import json

import pytest

from responder.actions.breaker import EXEMPTION_NAME, exemption_condition
from responder.cli.approve import object_name
from responder.errors import ConfigError
from responder.guard.takeover import inherited_readopts, inherited_writes, journaled_end, readopt_under_way
from responder.incident.observe import CapsuleTarget
from responder.ops.manifests import incident_crd_yaml, rbac_rules
from responder.response.incident_object import (CONTAINED, RECOVERED, SNAPSHOT_MAX_CHARS, WAITING, approval_refused,
                                                approvals_of, unpack_json, pack_json, incident_crd,
                                                incident_name, is_open)

ETCD_REQUEST_LIMIT = 1_572_864  # bytes (etcd's default --max-request-bytes)


def big_snapshot(namespaces: int = 10_000, tenants: int = 500) -> dict:
    per = namespaces // tenants
    names = {f"tenant-{t:03d}-ns-{i:02d}": f"tenant-{t:03d}" for t in range(tenants) for i in range(per)}
    owners = {ns: {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": t, "controller": True,
                   "blockOwnerDeletion": True} for ns, t in names.items()}
    return {"namespaces": names, "owners": owners, "webhooks": {}, "capsule_replicas": 2,
            "tenants": sorted(set(names.values()))}


def incident(**status) -> dict:
    return {"metadata": {"name": "inc-1", "uid": "u-1"}, "spec": {"approvals": status.pop("approvals", [])},
            "status": status}


def test_the_crd_is_namespaced_with_a_status_subresource_and_the_chart_holds_it_as_generated():
    crd = incident_crd()
    assert crd["metadata"]["name"] == "incidents.responder.dev" and crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"phase", "trigger", "namespaces", "steps", "approvals", "snapshot"} <= set(status)
    from pathlib import Path

    chart = Path(__file__).resolve().parents[2] / "charts" / "responder" / "crds" / "incidents.yaml"
    assert chart.read_text() == incident_crd_yaml(), "regenerate charts/responder/crds/incidents.yaml"


def test_the_role_lets_the_guard_keep_incidents_and_their_snapshots():
    rules = rbac_rules()
    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}
    assert {"get", "list", "watch", "create", "patch"} <= verbs("responder.dev", "incidents")
    assert verbs("responder.dev", "incidents/status") == {"patch"}


def test_the_snapshot_of_10000_namespaces_fits_in_the_incident_and_comes_back_whole():
    snapshot = big_snapshot()
    entry = pack_json(snapshot)
    assert len(json.dumps({"status": {"snapshot": entry}})) < SNAPSHOT_MAX_CHARS + 1000 < ETCD_REQUEST_LIMIT
    assert unpack_json(entry) == snapshot
    print(f"\n10,000 namespaces in 500 Tenants: {len(entry['data'])} bytes in status.snapshot")
    tampered = dict(entry, sha256="0" * 64)
    with pytest.raises(ValueError, match="checksum"):
        unpack_json(tampered)


def test_a_snapshot_too_large_for_the_object_is_refused(monkeypatch):
    monkeypatch.setattr("responder.response.incident_object.SNAPSHOT_MAX_CHARS", 1000)
    with pytest.raises(ValueError, match="more than the Incident holds"):
        pack_json(big_snapshot(2_000, 100))


def test_names_and_open_incidents():
    assert incident_name("inc-20261126T142233Z-1a2b") == "inc-20261126t142233z-1a2b"
    assert object_name("incident/inc-20261126T142233Z-1a2b") == "inc-20261126t142233z-1a2b"
    assert object_name("incidents.responder.dev/inc-1") == "inc-1"
    with pytest.raises(ConfigError):
        object_name("pod/inc-1")
    assert is_open(incident(phase=CONTAINED)) and is_open(incident(phase=WAITING)) and is_open(incident())
    assert not is_open(incident(phase=RECOVERED))


def test_what_may_be_approved():
    waiting = incident(phase=WAITING, approvalSteps=["recreate-tenants", "restore"],
                       steps=[{"id": "recreate-tenants", "status": "finished", "finishedAt": "t"}])
    assert approval_refused(waiting, "restore") is None
    assert "already finished" in str(approval_refused(waiting, "recreate-tenants"))
    refused = approval_refused(waiting, "detach")
    assert refused is not None and "recreate-tenants, restore" in refused.fix
    assert "has ended" in str(approval_refused(incident(phase=RECOVERED, approvalSteps=["restore"]), "restore"))
    approved = incident(approvals=[{"step": "restore", "approver": "alice", "approvedAt": "t1"},
                                   {"step": "restore", "approver": "bob", "approvedAt": "t2"}])
    assert approvals_of(approved)["restore"]["approver"] == "alice"


def _ns(name: str, *owners: str, uid: str = "ns-uid", terminating: bool = False) -> dict:
    meta = {"name": name, "uid": uid, "ownerReferences": [
        {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": o, "uid": f"t-{o}"} for o in owners]}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_a_new_leader_inherits_the_previous_leaders_writes_the_cluster_shows():
    hook_before = {"metadata": {"name": "capsule-validating"}, "webhooks": [
        {"name": "namespaces.capsule.clastix.io", "failurePolicy": "Fail", "matchConditions": [{"name": "x", "expression": "true"}]},
        {"name": "ignored.capsule.clastix.io", "failurePolicy": "Ignore"}]}
    hook_now = json.loads(json.dumps(hook_before))
    hook_now["webhooks"][0]["matchConditions"].append(exemption_condition("sa:guard"))
    owner = {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": "t1"}
    snapshot = {"capsule_replicas": 3, "webhooks": {"ValidatingWebhookConfiguration/capsule-validating": hook_before},
                "owners": {"done": owner, "still": owner, "gone": owner, "dying": owner}}
    writes = inherited_writes(
        snapshot, namespaces={"done": _ns("done"), "still": _ns("still", "t1"), "dying": _ns("dying", terminating=True)},
        deployment={"spec": {"replicas": 0}}, webhooks=[("ValidatingWebhookConfiguration", hook_now)],
        capsule=CapsuleTarget(), identity="sa:guard", breaker_step="breaker", detach_step="detach")
    by_action = {w["action"]: w for w in writes}
    assert [w["target"] for w in writes if w["action"] == "detach"] == ["done"]
    assert by_action["detach"]["undo"]["ownerReferences"] == [owner]
    assert by_action["scale-capsule"]["undo"]["replicas"] == 3
    exempt = by_action["exempt-responder"]["undo"]
    # What recovery puts back: the matchConditions from before the incident, not the exempted ones.
    assert exempt["webhooks"] == {"namespaces.capsule.clastix.io": [{"name": "x", "expression": "true"}]}
    assert EXEMPTION_NAME not in json.dumps(exempt["webhooks"])
    # Capsule still running and nothing exempted: the breaker's writes did not happen; nothing inherited.
    assert inherited_writes(snapshot, namespaces={}, deployment={"spec": {"replicas": 3}},
                            webhooks=[("ValidatingWebhookConfiguration", hook_before)], capsule=CapsuleTarget(),
                            identity="sa:guard", breaker_step="breaker", detach_step="detach") == []


def _tenant(name: str, uid: str, created: str, deleting: bool = False) -> dict:
    meta = {"name": name, "uid": uid, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    return {"metadata": meta}


def _adopted(name: str, tenant: str, tenant_uid: str, *, label: bool = True, uid: str = "ns-uid") -> dict:
    meta = {"name": name, "uid": uid, "ownerReferences": [
        {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": tenant, "uid": tenant_uid,
         "controller": True, "blockOwnerDeletion": True}]}
    if label:
        meta["labels"] = {"capsule.clastix.io/tenant": tenant}
    return {"metadata": meta}


def test_a_new_leader_inherits_the_re_adoptions_the_cluster_shows_and_no_other():
    trigger = 1767225600.0  # 2026-01-01T00:00:00Z, the incident's trigger
    template = {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": "t1", "controller": True,
                "blockOwnerDeletion": True}
    known = {"done": "t1", "detached": "t1", "old-uid": "t1", "no-label": "t1", "gone": "t1", "dying": "t1",
             "kept": "old", "no-tenant": "t9", "deleting-tenant": "t2"}
    tenants = {"t1": _tenant("t1", "new-uid", "2026-01-01T00:05:00Z"),  # recreated in this incident
               "old": _tenant("old", "old-tenant-uid", "2025-12-01T00:00:00Z"),  # outlived the incident
               "t2": _tenant("t2", "t2-uid", "2026-01-01T00:05:00Z", deleting=True)}
    namespaces = {"done": _adopted("done", "t1", "new-uid"),
                  "detached": _ns("detached"),  # not re-adopted yet: the resumed step writes it
                  "old-uid": _adopted("old-uid", "t1", "t1-before"),  # still the dangling reference
                  "no-label": _adopted("no-label", "t1", "new-uid", label=False),  # the patch sets both at once
                  "dying": {"metadata": {**_adopted("dying", "t1", "new-uid")["metadata"],
                                         "deletionTimestamp": "2026-01-01T00:06:00Z"}},
                  "kept": _adopted("kept", "old", "old-tenant-uid"),  # never detached, never re-adopted
                  "no-tenant": _ns("no-tenant"),
                  "deleting-tenant": _adopted("deleting-tenant", "t2", "t2-uid")}
    writes = inherited_readopts(known, templates={n: template for n in known}, namespaces=namespaces,
                                tenants=tenants, since=trigger, step="readopt")
    assert [(w["step"], w["action"], w["target"]) for w in writes] == [("readopt", "readopt", "done")]
    assert writes[0]["request"] == {"method": "PATCH", "path": "/api/v1/namespaces/done"}
    assert writes[0]["undo"] is None  # as the leader's own re-adoption writes: not reverted by undo
    # A Tenant created in the trigger's second counts as recreated (creationTimestamp has whole seconds).
    same_second = {"t1": _tenant("t1", "new-uid", "2026-01-01T00:00:00Z")}
    assert [w["target"] for w in inherited_readopts({"done": "t1"}, templates={}, namespaces=namespaces,
                                                    tenants=same_second, since=trigger + 0.7,
                                                    step="readopt")] == ["done"]
    before = {"t1": _tenant("t1", "new-uid", "2025-12-31T23:59:59Z")}
    assert inherited_readopts({"done": "t1"}, templates={}, namespaces=namespaces, tenants=before, since=trigger,
                              step="readopt") == []


def test_re_adoption_is_inherited_only_while_under_way_and_approved():
    from responder.actions import ACTIONS
    from responder.runbook.schema import load_runbook
    from responder.response.session import DEFAULT_RUNBOOK, REPO_RUNBOOKS

    steps = load_runbook(REPO_RUNBOOKS / DEFAULT_RUNBOOK, {k: v.spec for k, v in ACTIONS.items()}).steps
    running = [{"id": "recreate-tenants", "status": "finished"}, {"id": "readopt", "status": "running"}]
    approved = [{"step": "readopt", "approver": "alice"}]
    assert readopt_under_way(incident(steps=running, approvals=approved), steps) == "readopt"
    assert readopt_under_way(incident(steps=running), steps) is None  # waiting for its approval: nothing written
    auto = incident(steps=running)
    auto["spec"]["recovery"] = "auto"
    assert readopt_under_way(auto, steps) == "readopt"
    finished = [{"id": "readopt", "status": "finished"}]
    assert readopt_under_way(incident(steps=finished, approvals=approved), steps) is None  # not run again
    assert readopt_under_way(incident(steps=running[:1], approvals=approved), steps) is None  # not started
    assert readopt_under_way(incident(steps=running, approvals=approved),
                             [s for s in steps if s.action != "readopt-namespaces"]) is None


async def test_re_adoptions_are_read_from_the_cluster_with_the_backup_s_known_namespaces():
    from types import SimpleNamespace

    from responder.guard.takeover import readopt_writes

    items = {"/api/v1/namespaces": [_adopted("done", "t1", "new-uid"), _adopted("from-backup", "t1", "new-uid"),
                                    _ns("detached"), _adopted("kube-system", "t1", "new-uid")],
             "/apis/capsule.clastix.io/v1beta2/tenants": [_tenant("t1", "new-uid", "2026-01-01T00:05:00Z")]}

    class Client:
        async def get(self, path):
            return {"items": items[path]}

    session = SimpleNamespace(client=Client(), protected=frozenset({"kube-system"}),
                              observer=SimpleNamespace(shadow=SimpleNamespace(namespace_tenants=lambda: {})))
    inc = incident()
    inc["spec"]["trigger"] = {"event_received": 1767225600.0}
    snapshot = {"namespaces": {"done": "t1", "detached": "t1", "kube-system": "t1"}}
    records = [{"kind": "recovery-plan", "known_from_backup": {"from-backup": "t1"}}]
    writes = await readopt_writes(session, inc, snapshot, records, "readopt")
    assert [w["target"] for w in writes] == ["done", "from-backup"]  # protected never; detached not yet
    inc["spec"]["trigger"] = {}
    assert await readopt_writes(session, inc, snapshot, records, "readopt") == []  # no trigger time: none


def test_a_step_the_previous_leader_ended_is_journaled_as_its_engine_journaled_it():
    # The action had nothing to do (no backup to restore): the engine journaled it finished; not run again.
    assert journaled_end({"id": "restore", "status": "skipped", "summary": "no backup: nothing to restore"}) == "finished"
    # A declined confirmation is asked again on resume.
    assert journaled_end({"id": "restore", "status": "skipped", "summary": "not confirmed"}) == "skipped"
    assert journaled_end({"id": "verify", "status": "failed", "summary": "x"}) == "failed"
    assert journaled_end({"id": "readopt", "status": "finished", "summary": "x"}) == "finished"
