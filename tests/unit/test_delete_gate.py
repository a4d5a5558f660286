"""The delete gate's decision: which namespace DELETEs by the garbage collector or Capsule wait, and why."""

from __future__ import annotations

from typing import Any

import pytest

from responder.cluster.watch import DELETED, MODIFIED, SYNCED, WatchEvent
from responder.incident import delete_gate as gate
from responder.incident.delete_gate import (CAPSULE_USER, GARBAGE_COLLECTOR, GatePicture, GateRequest, GateSettings,
                                            TenantSeen, decide, picture_from_facts)
from responder.incident.detect import Detector

T0 = 1_000_000.0  # when the picture was listed
SETTINGS = GateSettings()  # 10 s window, the garbage collector and Capsule's ServiceAccount


def namespace(name: str, *, tenant: str | None = "t1", uid: str = "uid-t1", label: str | None = "t1",
              extra_owner: bool = False) -> dict[str, Any]:
    """A Namespace as the AdmissionReview's oldObject shows it (Capsule's label, its Tenant ownerReference)."""
    owners: list[dict[str, Any]] = []
    if tenant is not None:
        owners.append({"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": tenant, "uid": uid,
                       "controller": True, "blockOwnerDeletion": True})
    if extra_owner:
        owners.append({"apiVersion": "example.com/v1", "kind": "Project", "name": "p", "uid": "uid-p"})
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "labels": {"kubernetes.io/metadata.name": name}}
    if label is not None:
        meta["labels"][gate.triage.TENANT_LABEL] = label
    if owners:
        meta["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}}


def delete(ns: dict[str, Any], user: str = GARBAGE_COLLECTOR) -> GateRequest:
    return GateRequest(username=user, operation="DELETE", resource="namespaces", name=ns["metadata"]["name"],
                       namespace=ns)


def picture(tenants: dict[str, TenantSeen] | None = None, deleted_at: dict[str, float] | None = None, *,
            incident: str = "", listed_at: float | None = T0) -> GatePicture:
    return GatePicture(listed_at, tenants or {}, deleted_at or {}, incident)


# --- offboarding: one Tenant deleted by an admin -------------------------------------------------------------

def test_offboarding_within_the_window_is_held_with_the_time_left() -> None:
    # Capsule 0.12: the Tenant is gone, the garbage collector deletes its namespace 0.2 s later.
    d = decide(delete(namespace("t1-ns")), picture(deleted_at={"uid-t1": T0 + 5}), SETTINGS, now=T0 + 5.2)
    assert not d.allowed and d.kind == gate.DENY_RECENT
    assert d.retry_after_seconds == pytest.approx(9.8)
    assert "responder" in d.why and "t1" in d.why and "9.8s more" in d.why and "offboarding proceeds" in d.why


def test_offboarding_after_the_window_proceeds() -> None:
    d = decide(delete(namespace("t1-ns")), picture(deleted_at={"uid-t1": T0 + 5}), SETTINGS, now=T0 + 15.1)
    assert d.allowed and d.kind == gate.ALLOW_OFFBOARDED
    assert "10.1s ago" in d.why and "no incident open" in d.why


def test_capsule_014_tenant_present_and_deleting_is_held_then_allowed() -> None:
    # Capsule 0.14: the Tenant is still there with a deletionTimestamp (its finalizer deletes the namespaces).
    tenants = {"t1": TenantSeen("uid-t1", deleting=True)}
    held = decide(delete(namespace("t1-ns"), CAPSULE_USER), picture(tenants, {"uid-t1": T0 + 1}), SETTINGS, T0 + 1.05)
    assert not held.allowed and held.kind == gate.DENY_RECENT
    later = decide(delete(namespace("t1-ns"), CAPSULE_USER), picture(tenants, {"uid-t1": T0 + 1}), SETTINGS, T0 + 11)
    assert later.allowed and later.kind == gate.ALLOW_OFFBOARDED


def test_capsule_014_deleting_without_a_recorded_start_counts_from_the_listing() -> None:
    # The detector records every deletion it sees, at the latest when it lists; should one be missing, the
    # listing bounds it, so the hold still ends.
    tenants = {"t1": TenantSeen("uid-t1", deleting=True)}
    held = decide(delete(namespace("t1-ns"), CAPSULE_USER), picture(tenants), SETTINGS, T0 + 4)
    assert not held.allowed and held.kind == gate.DENY_NOT_SEEN and "start not recorded" in held.why
    assert decide(delete(namespace("t1-ns"), CAPSULE_USER), picture(tenants), SETTINGS, T0 + 50).allowed


def test_capsule_012_tenant_gone_and_seen_deleted() -> None:
    d = decide(delete(namespace("t1-ns")), picture({}, {"uid-t1": T0 + 2}), SETTINGS, T0 + 2.009)
    assert not d.allowed and d.kind == gate.DENY_RECENT


# --- the burst -----------------------------------------------------------------------------------------------

def test_burst_first_tenants_namespaces_are_held_before_the_threshold() -> None:
    # Three Tenants deleted within 100 ms; the garbage collector deletes the first one's namespaces 9 ms after
    # it, before detection could open (at the third). Every one is held: none lost before the incident.
    deleted = {"uid-a": T0 + 1.000, "uid-b": T0 + 1.050}
    for ns, tenant, at in (("a-ns-1", "a", T0 + 1.009), ("a-ns-2", "a", T0 + 1.060), ("b-ns-1", "b", T0 + 1.080)):
        d = decide(delete(namespace(ns, tenant=tenant, uid=f"uid-{tenant}", label=tenant)),
                   picture({"c": TenantSeen("uid-c")}, deleted), SETTINGS, at)
        assert not d.allowed and d.kind == gate.DENY_RECENT, d


def test_burst_becomes_an_incident_and_everything_stays_held() -> None:
    # Once the incident is open, even a deletion older than the window waits.
    d = decide(delete(namespace("a-ns-1", tenant="a", uid="uid-a", label="a")),
               picture(deleted_at={"uid-a": T0}, incident="capsule-tenant-crd-deletion-x1"), SETTINGS, T0 + 60)
    assert not d.allowed and d.kind == gate.DENY_INCIDENT
    assert "capsule-tenant-crd-deletion-x1" in d.why and "a-ns-1" in d.why


# --- the picture behind ---------------------------------------------------------------------------------------

def test_tenant_alive_in_the_picture_means_the_picture_is_behind() -> None:
    # The garbage collector deletes only once the owner is gone: the guard has not seen the deletion yet.
    d = decide(delete(namespace("t1-ns")), picture({"t1": TenantSeen("uid-t1")}), SETTINGS, T0 + 30)
    assert not d.allowed and d.kind == gate.DENY_NOT_SEEN
    assert "picture is behind" in d.why and d.retry_after_seconds is None


def test_tenant_gone_never_seen_deleted_shortly_after_listing_is_held() -> None:
    d = decide(delete(namespace("t1-ns")), picture(), SETTINGS, T0 + 3)
    assert not d.allowed and d.kind == gate.DENY_NOT_SEEN and "listed 3.0s ago" in d.why


def test_tenant_gone_before_the_picture_was_listed_long_enough_ago_proceeds() -> None:
    # Gone before the guard listed (a restart during an offboarding): its deletion is at least that old.
    d = decide(delete(namespace("t1-ns")), picture(), SETTINGS, T0 + 10)
    assert d.allowed and d.kind == gate.ALLOW_OFFBOARDED


def test_rebuilt_tenant_other_uid_never_seen_deleted_is_held() -> None:
    d = decide(delete(namespace("t1-ns")), picture({"t1": TenantSeen("uid-new")}), SETTINGS, T0 + 1)
    assert not d.allowed and d.kind == gate.DENY_NOT_SEEN and "gone, not seen deleted" in d.why


def test_picture_not_listed_allows_like_a_guard_that_is_down() -> None:
    d = decide(delete(namespace("t1-ns")), picture(listed_at=None), SETTINGS, T0)
    assert d.allowed and d.kind == gate.ALLOW_NOT_LISTED


def test_open_incident_wins_over_an_unlisted_picture() -> None:
    d = decide(delete(namespace("t1-ns")), picture(listed_at=None, incident="inc"), SETTINGS, T0)
    assert not d.allowed and d.kind == gate.DENY_INCIDENT


# --- outside the gate ------------------------------------------------------------------------------------------

def test_non_tenant_namespace_is_allowed() -> None:
    d = decide(delete(namespace("plain", tenant=None, label=None)), picture(incident="inc"), SETTINGS, T0)
    assert d.allowed and d.kind == gate.ALLOW_NOT_TENANT


@pytest.mark.parametrize("user", ["owner-tenant-001", "kubernetes-admin", "system:serviceaccount:responder-system:responder",
                                  "system:serviceaccount:kube-system:namespace-controller"])
def test_other_users_are_never_held(user: str) -> None:
    d = decide(delete(namespace("t1-ns"), user), picture(deleted_at={"uid-t1": T0}, incident="inc"), SETTINGS, T0)
    assert d.allowed and d.kind == gate.ALLOW_NOT_GATED and user in d.why


def test_capsule_user_is_configurable() -> None:
    other = "system:serviceaccount:capsule:capsule-controller"
    settings = GateSettings(users=frozenset({GARBAGE_COLLECTOR, other}))
    p = picture(deleted_at={"uid-t1": T0})
    assert not decide(delete(namespace("t1-ns"), other), p, settings, T0 + 1).allowed
    assert decide(delete(namespace("t1-ns"), CAPSULE_USER), p, settings, T0 + 1).allowed


def test_other_operations_and_resources_are_not_gated() -> None:
    ns = namespace("t1-ns")
    p = picture(incident="inc")
    update = GateRequest(GARBAGE_COLLECTOR, "UPDATE", "namespaces", "t1-ns", ns)
    tenant = GateRequest(GARBAGE_COLLECTOR, "DELETE", "capsule.clastix.io/tenants", "t1", {})
    assert decide(update, p, SETTINGS, T0).kind == gate.ALLOW_NOT_GATED
    assert decide(tenant, p, SETTINGS, T0).kind == gate.ALLOW_NOT_GATED


@pytest.mark.parametrize("deleted_at", [{}, {"uid-t1": T0 + 1}])
def test_label_only_namespace_gc_acts_for_another_owner(deleted_at: dict[str, float]) -> None:
    # No Tenant ownerReference: whatever the Tenant's state, the collector is not deleting for it.
    ns = namespace("t1-ns", tenant=None, label="t1", extra_owner=True)
    d = decide(delete(ns), picture({"t1": TenantSeen("uid-t1")}, deleted_at), SETTINGS, T0 + 1.5)
    assert d.allowed and d.kind == gate.ALLOW_OTHER_OWNER
    assert not decide(delete(ns), picture(incident="inc"), SETTINGS, T0 + 1.5).allowed


def test_label_only_namespace_deleted_by_capsule_with_its_tenant_alive_is_held() -> None:
    ns = namespace("t1-ns", tenant=None, label="t1")
    d = decide(delete(ns, CAPSULE_USER), picture({"t1": TenantSeen("uid-t1")}), SETTINGS, T0 + 1)
    assert not d.allowed and d.kind == gate.DENY_NOT_SEEN


def test_label_only_namespace_of_a_deleting_tenant_uses_its_recorded_deletion() -> None:
    ns = namespace("t1-ns", tenant=None, label="t1")
    p = picture({"t1": TenantSeen("uid-t1", deleting=True)}, {"uid-t1": T0 + 1})
    assert not decide(delete(ns, CAPSULE_USER), p, SETTINGS, T0 + 2).allowed
    assert decide(delete(ns, CAPSULE_USER), p, SETTINGS, T0 + 11).allowed


def test_two_tenant_owners_wait_for_the_latest_deletion() -> None:
    ns = namespace("shared", tenant="a", uid="uid-a", label="a")
    ns["metadata"]["ownerReferences"].append({"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
                                              "name": "b", "uid": "uid-b"})
    p = picture(deleted_at={"uid-a": T0, "uid-b": T0 + 8})
    d = decide(delete(ns), p, SETTINGS, T0 + 12)
    assert not d.allowed and d.retry_after_seconds == pytest.approx(6) and "b deleted 4.0s ago" in d.why
    assert decide(delete(ns), p, SETTINGS, T0 + 18).allowed


# --- the clock ---------------------------------------------------------------------------------------------------

def test_exactly_the_window_old_is_allowed() -> None:
    d = decide(delete(namespace("t1-ns")), picture(deleted_at={"uid-t1": T0}), SETTINGS, T0 + 10.0)
    assert d.allowed and d.kind == gate.ALLOW_OFFBOARDED


def test_just_inside_the_window_is_held() -> None:
    d = decide(delete(namespace("t1-ns")), picture(deleted_at={"uid-t1": T0}), SETTINGS, T0 + 9.999)
    assert not d.allowed and d.retry_after_seconds == pytest.approx(0.001)


def test_clock_behind_the_recorded_deletion_reads_as_just_deleted() -> None:
    d = decide(delete(namespace("t1-ns")), picture(deleted_at={"uid-t1": T0 + 5}), SETTINGS, T0 + 4)
    assert not d.allowed and d.retry_after_seconds == pytest.approx(10) and "deleted 0.0s ago" in d.why


def test_zero_window_only_waits_for_the_picture() -> None:
    settings = GateSettings(window_seconds=0.0)
    assert decide(delete(namespace("t1-ns")), picture(deleted_at={"uid-t1": T0}), settings, T0).allowed
    assert not decide(delete(namespace("t1-ns")), picture({"t1": TenantSeen("uid-t1")}), settings, T0).allowed


def test_every_decision_says_why() -> None:
    cases = [
        decide(delete(namespace("x"), "someone"), picture(), SETTINGS, T0),
        decide(delete(namespace("x", tenant=None, label=None)), picture(), SETTINGS, T0),
        decide(delete(namespace("x")), picture(listed_at=None), SETTINGS, T0),
        decide(delete(namespace("x")), picture(incident="i"), SETTINGS, T0),
        decide(delete(namespace("x")), picture(deleted_at={"uid-t1": T0}), SETTINGS, T0 + 1),
        decide(delete(namespace("x")), picture(deleted_at={"uid-t1": T0}), SETTINGS, T0 + 100),
        decide(delete(namespace("x")), picture({"t1": TenantSeen("uid-t1")}), SETTINGS, T0),
    ]
    assert len({d.kind for d in cases}) == len(cases)
    for d in cases:
        assert d.why and d.line().startswith(("ALLOW ", "DENY ")) and d.to_json()["why"] == d.why


# --- the picture from the detector's facts ----------------------------------------------------------------------

def _tenant(name: str, uid: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": meta}


def test_picture_from_the_detectors_facts() -> None:
    detector = Detector()
    for resource in ("crd", "tenants", "namespaces"):
        detector.decide(WatchEvent(SYNCED, resource, {}, received=T0))
    assert picture_from_facts(Detector().facts, listed_at=T0).listed_at is None  # nothing listed yet
    detector.decide(WatchEvent(MODIFIED, "tenants", _tenant("t1", "uid-t1", deleting=True), received=T0 + 1))
    detector.decide(WatchEvent(DELETED, "tenants", _tenant("t2", "uid-t2"), received=T0 + 2))
    p = picture_from_facts(detector.facts, listed_at=T0)
    assert p.listed_at == T0 and p.incident == ""
    assert p.tenants["t1"] == TenantSeen("uid-t1", True) and "t2" not in p.tenants
    assert p.deleted_at == {"uid-t1": T0 + 1, "uid-t2": T0 + 2}
    d = decide(delete(namespace("t2-ns", tenant="t2", uid="uid-t2", label="t2")), p, SETTINGS, T0 + 2.01)
    assert not d.allowed and d.kind == gate.DENY_RECENT
