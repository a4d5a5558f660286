"""The shadow copy forgets routine deletions after a while, and nothing while an incident is open: a namespace
an owner deleted last week must not be "lost" in today's incident (restored, or making every backup that never
held it unusable), and a guard's copy must not grow with churn. No cluster: watch events are fed to the
observer as its streams would."""

from __future__ import annotations

from responder.cluster.watch import ADDED, DELETED, MODIFIED, WatchEvent
from responder.incident.observe import ClusterObserver
from responder.incident.shadow import FORGET_DELETED_AFTER_S, Shadow
from responder.runbook.schema import MAX_DETECTION_WINDOW


def _tenant(name: str, uid: str = "u1", deleting: bool = False) -> dict:
    meta = {"name": name, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": meta,
            "spec": {"owners": [{"kind": "User", "name": f"owner-{name}"}]}}


def _namespace(name: str, tenant: str, terminating: bool = False) -> dict:
    meta = {"name": name, "uid": f"uid-{name}", "labels": {"capsule.clastix.io/tenant": tenant},
            "ownerReferences": [{"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": tenant,
                                 "uid": "u1", "controller": True}]}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"metadata": meta}


def _observer() -> ClusterObserver:
    observer = ClusterObserver(client=None, velero_namespace=None)  # type: ignore[arg-type]
    for name, obj in (("tenants", _tenant("t1")), ("tenants", _tenant("t2")),
                      ("namespaces", _namespace("t1-a", "t1")), ("namespaces", _namespace("t1-b", "t1")),
                      ("namespaces", _namespace("t2-a", "t2"))):
        observer._update_shadow(name, WatchEvent(ADDED, name, obj))
    return observer


def test_deleted_objects_are_kept_for_the_retention_then_forgotten():
    shadow = _observer().shadow
    shadow.observe_gone("namespace", "t1-a", at=1000.0)
    shadow.observe_gone("tenant", "t2", at=1100.0)
    assert shadow.forget_gone(before=1000.0) == []  # not yet: kept while an incident could still open on it
    assert "t1-a" in shadow.namespaces and "t2" in shadow.tenants
    assert shadow.forget_gone(before=1050.0) == ["namespace/t1-a"]
    assert "t1-a" not in shadow.namespaces and "t1-b" in shadow.namespaces and shadow.dirty
    assert shadow.forget_gone(before=2000.0) == ["tenant/t2"]
    assert sorted(shadow.tenants) == ["t1"] and shadow.gone == {}
    assert "t2-a" in shadow.namespaces  # its own deletion was never seen: it stays


def test_the_observer_marks_deletions_and_terminating_namespaces_and_a_comeback_clears_the_mark():
    observer = _observer()
    observer._update_shadow("namespaces", WatchEvent(MODIFIED, "namespaces", _namespace("t1-a", "t1", terminating=True)))
    observer._update_shadow("namespaces", WatchEvent(DELETED, "namespaces", _namespace("t1-b", "t1")))
    observer._update_shadow("tenants", WatchEvent(MODIFIED, "tenants", _tenant("t2", deleting=True)))
    observer._update_shadow("tenants", WatchEvent(DELETED, "tenants", _tenant("t2", deleting=True)))
    assert sorted(observer.shadow.gone) == ["namespace/t1-a", "namespace/t1-b", "tenant/t2"]
    # Recreated under the same names (a namespace created again, a Tenant re-applied): not gone any more.
    observer._update_shadow("namespaces", WatchEvent(ADDED, "namespaces", _namespace("t1-b", "t1")))
    observer._update_shadow("tenants", WatchEvent(ADDED, "tenants", _tenant("t2", uid="u2")))
    assert sorted(observer.shadow.gone) == ["namespace/t1-a"]
    # A deletion the copy never knew (not a tenant namespace) is not tracked.
    observer._update_shadow("namespaces", WatchEvent(DELETED, "namespaces", {"metadata": {"name": "kube-public"}}))
    assert sorted(observer.shadow.gone) == ["namespace/t1-a"]


def test_a_copy_loaded_from_disk_forgets_nothing_it_did_not_see_deleted(tmp_path):
    observer = _observer()
    observer._update_shadow("tenants", WatchEvent(DELETED, "tenants", _tenant("t2")))
    path = tmp_path / "shadow.json"
    observer.shadow.save(path)
    loaded = Shadow.load(path)
    assert loaded.gone == {} and loaded.forget_gone(before=float("inf")) == []
    assert sorted(loaded.tenants) == ["t1", "t2"]  # what a later `run` recovers from


def test_the_retention_outlasts_any_detection_window():
    # An incident opening on its last signal still finds what its first signals deleted (the freeze while an
    # incident is open: tests/unit/test_session_open.py).
    assert FORGET_DELETED_AFTER_S >= 2 * MAX_DETECTION_WINDOW
