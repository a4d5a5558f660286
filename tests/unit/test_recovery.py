"""Recovery decisions (responder/recovery/decisions.py) and the breaker patches recovery relies on: pure, no cluster."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from responder.recovery import decisions as recovery
from responder.actions.breaker import (EXEMPTION_NAME, exemption_condition, exemption_patch,
                                       restore_match_conditions_patch, widen_exemption_patch)
from tests.unit.test_triage import PatchTestFailed, apply_patch

from .backups import backup_tarball

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)
AVAILABLE = {"default": "Available"}


def backup(name: str, started: str, phase: str = "Completed", *, expiration: str = "2026-12-26T00:00:00Z",
           included: list[str] | None = None, location: str = "default", schedule: str | None = "daily") -> dict:
    labels = {recovery.SCHEDULE_LABEL: schedule} if schedule else {}
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"includedNamespaces": included or ["*"], "storageLocation": location},
            "status": {"phase": phase, "startTimestamp": started, "expiration": expiration, "errors": 2}}


def test_lost_are_the_known_namespaces_gone_or_terminating():
    known = {"a": "t1", "b": "t1", "c": "t2"}
    live = {"a": {"metadata": {"name": "a"}}, "c": {"metadata": {"name": "c", "deletionTimestamp": "x"}}}
    assert recovery.lost_namespaces(known, live) == {"b": "t1", "c": "t2"}


def test_newest_completed_backup_is_chosen():
    backups = [backup("old", "2026-11-25T03:00:00Z"), backup("new", "2026-11-26T03:00:00Z")]
    choice = recovery.choose_backup(backups, ["a"], now=NOW, storage_phases=AVAILABLE)
    assert choice.backup == "new" and choice.rejected == ()


def test_partially_failed_newest_is_refused_with_reason_unless_allowed():
    backups = [backup("good", "2026-11-25T03:00:00Z"), backup("partial", "2026-11-26T03:00:00Z", "PartiallyFailed")]
    choice = recovery.choose_backup(backups, ["a"], now=NOW, storage_phases=AVAILABLE)
    assert choice.backup == "good"
    assert choice.rejected[0][0] == "partial" and "PartiallyFailed" in choice.rejected[0][1]
    allowed = recovery.choose_backup(backups, ["a"], now=NOW, storage_phases=AVAILABLE, allow_partially_failed=True)
    assert allowed.backup == "partial"


def test_expired_backup_is_refused():
    backups = [backup("good", "2026-11-24T03:00:00Z"),
               backup("expired", "2026-11-26T03:00:00Z", expiration="2026-11-26T06:00:00Z")]
    choice = recovery.choose_backup(backups, ["a"], now=NOW, storage_phases=AVAILABLE)
    assert choice.backup == "good" and "expired" in choice.rejected[0][1]


def test_unavailable_location_and_missing_namespace_are_refused():
    backups = [backup("elsewhere", "2026-11-26T03:00:00Z", location="broken"),
               backup("partial-scope", "2026-11-25T03:00:00Z", included=["a"])]
    choice = recovery.choose_backup(backups, ["a", "b"], now=NOW, storage_phases={"default": "Available",
                                                                                 "broken": "Unavailable"})
    assert choice.backup is None
    reasons = dict(choice.rejected)
    assert "Unavailable" in reasons["elsewhere"] and "does not include 1 lost" in reasons["partial-scope"]
    assert "refused" in choice.reason


def test_schedule_and_name_filters():
    backups = [backup("x", "2026-11-26T03:00:00Z", schedule="other"), backup("y", "2026-11-25T03:00:00Z")]
    assert recovery.choose_backup(backups, ["a"], now=NOW, storage_phases=AVAILABLE, schedule="daily").backup == "y"
    assert recovery.choose_backup(backups, ["a"], now=NOW, storage_phases=AVAILABLE, name="x").backup == "x"
    none = recovery.choose_backup([], ["a"], now=NOW, storage_phases=AVAILABLE)
    assert none.backup is None and none.reason == "no Velero backup found"


def test_backup_tarball_counts_once_and_skips_auto_created_and_owned():
    cm = {"metadata": {"name": "settings"}}
    files = {
        "resources/configmaps/namespaces/ns1/settings.json": cm,
        "resources/configmaps/v1-preferredversion/namespaces/ns1/settings.json": cm,
        "resources/configmaps/namespaces/ns1/kube-root-ca.crt.json": {"metadata": {"name": "kube-root-ca.crt"}},
        "resources/pods/namespaces/ns1/app-1.json": {"metadata": {"name": "app-1", "ownerReferences": [{"kind": "ReplicaSet"}]}},
        "resources/deployments.apps/namespaces/ns1/app.json": {"metadata": {"name": "app"}},
        "resources/tenants.capsule.clastix.io/cluster/t1.json": {"metadata": {"name": "t1", "uid": "u"}, "spec": {"x": 1}},
        "resources/customresourcedefinitions.apiextensions.k8s.io/cluster/tenants.capsule.clastix.io.json":
            {"metadata": {"name": "tenants.capsule.clastix.io"}, "spec": {"group": "capsule.clastix.io"}},
        "metadata/version": {},
    }
    contents = recovery.parse_backup_tarball(backup_tarball(files))
    assert contents.counts("ns1") == {"configmaps": 2, "deployments.apps": 1, "pods": 1}
    assert recovery.restorable_counts(contents, "ns1") == {"configmaps": 1, "deployments.apps": 1}
    assert set(contents.tenants) == {"t1"} and contents.tenant_crd["spec"]["group"] == "capsule.clastix.io"


def test_restore_results_in_words():
    doc = {"warnings": {"velero": [], "cluster": ["c1"], "namespaces": {"ns2": ["w2"], "ns1": ["w1"]}},
           "errors": {"namespaces": {"ns1": ["e1"]}}}
    out = recovery.parse_restore_results(gzip.compress(json.dumps(doc).encode()))
    assert out == {"warnings": ["cluster: c1", "ns1: w1", "ns2: w2"], "errors": ["ns1: e1"]}


FULL = {"configmaps": 2, "secrets": 1, "deployments.apps": 1}


def test_rescued_namespaces_come_from_the_rescue_and_only_missing_content_is_filled_in():
    # a: the rescue holds it all; b: the namespace controller deleted its configmaps and secret before the
    # breaker froze it; c: lost while responder was down, from the chosen backup; d: stuck Terminating.
    groups, unrestorable = recovery.plan_restores(
        "responder-inc", lost=["a", "b", "c", "d"], backup="nightly", counts={ns: FULL for ns in "abcd"},
        stuck=["d"], rescue_backup="rescue", rescued=["a", "b", "d"],
        rescue_counts={"a": FULL, "b": {"deployments.apps": 1}, "d": {}})
    assert [(g.name, g.backup, g.namespaces, g.fill) for g in groups] == [
        ("responder-inc-rescue", "rescue", ["a", "b"], 0),  # first: the newest content wins
        ("responder-inc", "nightly", ["c"], 0),
        ("responder-inc-fill", "nightly", ["b"], 3)]
    assert unrestorable == ["d"]
    assert "to fill in 3 objects the rescue backup lacks" in groups[2].describe()
    assert groups[1].describe().startswith("create Velero Restore responder-inc from backup nightly: 1 namespaces")


def test_unknown_rescue_contents_are_filled_in_from_the_backup_and_no_backup_means_no_fill():
    groups, _ = recovery.plan_restores("r", lost=["a"], backup="nightly", counts={"a": FULL}, stuck=[],
                                       rescue_backup="rescue", rescued=["a"], rescue_counts=None)
    assert [(g.name, g.namespaces, g.fill) for g in groups] == [("r-rescue", ["a"], 0), ("r-fill", ["a"], 4)]
    groups, unrestorable = recovery.plan_restores("r", lost=["a", "b"], backup=None, counts={}, stuck=[],
                                                  rescue_backup="rescue", rescued=["a"], rescue_counts={"a": {}})
    assert [(g.name, g.namespaces) for g in groups] == [("r-rescue", ["a"])] and unrestorable == ["b"]
    # No rescue backup: rescued means nothing.
    groups, _ = recovery.plan_restores("r", lost=["a"], backup="nightly", counts={"a": FULL}, stuck=[],
                                       rescue_backup=None, rescued=["a"], rescue_counts={})
    assert [(g.name, g.namespaces, g.fill) for g in groups] == [("r", ["a"], 0)]


def test_tenant_for_create_drops_identity_and_status():
    tenant = {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
              "metadata": {"name": "t1", "uid": "old", "resourceVersion": "9", "finalizers": ["f"],
                           "labels": {"a": "b"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
              "spec": {"owners": [{"kind": "User", "name": "alice"}]}, "status": {"size": 3}}
    out = recovery.tenant_for_create(tenant)
    assert out == {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
                   "metadata": {"name": "t1", "labels": {"a": "b"}},
                   "spec": {"owners": [{"kind": "User", "name": "alice"}]}}


TEMPLATE = {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": "t1", "controller": True,
            "blockOwnerDeletion": True}


def _ns(refs=None, labels=None) -> dict:
    meta = {"name": "ns1", "uid": "ns-uid"}
    if refs is not None:
        meta["ownerReferences"] = refs
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta}


NEW_TENANT = {"metadata": {"name": "t1", "uid": "new-uid"}}


def test_readopt_adds_capsule_form_reference_with_new_uid_and_keeps_other_owners():
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "o"}
    dangling = TEMPLATE | {"uid": "old-uid"}
    ns = _ns([other, dangling], {"capsule.clastix.io/tenant": "t1"})
    out = apply_patch(ns, recovery.readopt_patch(ns, NEW_TENANT, TEMPLATE))
    assert out["metadata"]["ownerReferences"] == [other, TEMPLATE | {"uid": "new-uid"}]
    assert recovery.adopted_by(out, NEW_TENANT)
    assert recovery.readopt_patch(out, NEW_TENANT, TEMPLATE) == []  # idempotent


def test_readopt_of_a_restored_namespace_sets_the_label_and_is_guarded_by_uid():
    ns = _ns()
    patch = recovery.readopt_patch(ns, NEW_TENANT)
    out = apply_patch(ns, patch)
    assert out["metadata"]["labels"] == {"capsule.clastix.io/tenant": "t1"}
    assert out["metadata"]["ownerReferences"][0]["uid"] == "new-uid"
    replaced = {"metadata": {"name": "ns1", "uid": "another"}}
    with pytest.raises(PatchTestFailed):
        apply_patch(replaced, patch)


def test_exemption_widens_to_velero_and_restores_exactly():
    original = [{"name": "other", "expression": "true"}]
    cfg = {"webhooks": [{"name": "namespaces.capsule", "failurePolicy": "Fail", "matchConditions": original},
                        {"name": "pods.capsule", "failurePolicy": "Fail"}]}
    ops, originals = exemption_patch(cfg, "responder")
    tripped = apply_patch(cfg, ops)
    widened = apply_patch(tripped, widen_exemption_patch(tripped, ["responder", "system:serviceaccount:velero:velero"]))
    cond = next(c for c in widened["webhooks"][0]["matchConditions"] if c["name"] == EXEMPTION_NAME)
    assert cond == exemption_condition("responder", "system:serviceaccount:velero:velero")
    assert 'in ["responder", "system:serviceaccount:velero:velero"]' in cond["expression"]
    assert widen_exemption_patch(widened, ["responder", "system:serviceaccount:velero:velero"]) == []
    back = apply_patch(widened, restore_match_conditions_patch(widened, originals))
    assert back == cfg
    assert restore_match_conditions_patch(back, originals) == []


def test_webhook_differences_and_tenant_status():
    before = {"ValidatingWebhookConfiguration/capsule": {"webhooks": [{"name": "a"}]}}
    assert recovery.webhook_differences(before, before) == []
    assert recovery.webhook_differences(before, {}) == ["ValidatingWebhookConfiguration/capsule: missing"]
    changed = {"ValidatingWebhookConfiguration/capsule": {"webhooks": [{"name": "a", "matchConditions": []}]}}
    assert recovery.webhook_differences(before, changed) == ["ValidatingWebhookConfiguration/capsule: webhooks differ"]
    assert recovery.tenant_lists_namespaces({"status": {"namespaces": ["a"], "spaces": [{"name": "b"}]}}) == ["a", "b"]


def test_a_tenant_being_deleted_never_counts_as_reconciled():
    """restore-capsule lifts the namespace hold only once every Tenant owns its namespaces again. A Tenant
    still being deleted lists them too (Capsule 0.14's status.spaces), and its finalizer deletes them the
    moment the hold is lifted: not reconciled."""
    known = {"a-1": "a", "a-2": "a", "b-1": "b", "c-1": "c"}
    namespaces = {"a-1": {}, "a-2": {}, "b-1": {}}  # c-1 does not exist (lost)
    listing = {"status": {"spaces": [{"name": "a-1"}, {"name": "a-2"}]}}
    tenants = {"a": listing, "b": {"status": {"namespaces": []}}, "c": {}}
    assert recovery.tenants_not_reconciled(known, namespaces, tenants) == ["b"]
    dying = {"metadata": {"deletionTimestamp": "2026-12-02T18:41:55Z"}, **listing}
    assert recovery.tenants_not_reconciled(known, namespaces, tenants | {"a": dying}) == ["a", "b"]
    assert recovery.tenants_not_reconciled(known, namespaces, {"b": {"status": {"namespaces": ["b-1"]}}}) == ["a"]
    # Being deleted with none of its namespaces left: nothing for its finalizer to take.
    assert recovery.tenants_not_reconciled({"c-1": "c"}, namespaces, {"c": dying}) == []


def test_namespaces_listed_counts_what_capsule_has_reconciled():
    known = {"a-1": "a", "a-2": "a", "b-1": "b", "c-1": "c"}
    namespaces = {"a-1": {}, "a-2": {}, "b-1": {}}  # c-1 lost: not expected
    tenants = {"a": {"status": {"spaces": [{"name": "a-1"}]}}, "b": {"status": {"namespaces": ["b-1"]}}}
    assert recovery.namespaces_listed(known, namespaces, tenants) == (2, 3)
    dying = {"metadata": {"deletionTimestamp": "2026-12-02T18:41:55Z"}, "status": {"namespaces": ["b-1"]}}
    assert recovery.namespaces_listed(known, namespaces, tenants | {"b": dying}) == (1, 3)
    assert recovery.namespaces_listed(known, namespaces, {}) == (0, 3)


def test_reconcile_clock_times_out_on_no_progress_or_the_cap():
    """Capsule slow but listing more namespaces keeps the wait going; no growth for `idle` seconds, or the
    overall cap, ends it (and the hold stays)."""
    clock = recovery.ReconcileClock(idle=120, cap=recovery.reconcile_cap(120, 1000, 1.0), started=0.0)
    assert clock.cap == 1120
    assert clock.observe(0, 0.0) and not clock.expired(119.0)
    assert clock.expired(120.0)  # nothing listed for 120 s
    for t in range(100, 1100, 100):  # ten more namespaces every 100 s: slow but progressing
        assert clock.observe(t // 10, float(t)) and not clock.expired(t + 99.0)
    assert not clock.observe(100, 1050.0)  # the same count is no progress
    assert clock.expired(1120.0)  # progressing, but the cap is reached
    stalled = recovery.ReconcileClock(idle=120, cap=1120, started=0.0)
    stalled.observe(50, 0.0)
    assert not stalled.observe(40, 100.0)  # fewer listed is no progress either
    assert stalled.expired(120.0)
    # The session's quick wait: 30 s, no allowance per namespace.
    assert recovery.reconcile_cap(30, 1000, 0) == 30
    assert recovery.reconcile_cap(120, -1, 1.0) == 120
