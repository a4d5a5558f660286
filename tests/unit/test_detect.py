"""Detection as pure decisions: the cascade is an incident at its first signal; routine tenant work (an owner
deleting its namespaces, one Tenant offboarded, Capsule restarted or upgraded) never is; odd single events
are notices. Each case is played as the watches deliver it, after the first lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from responder.actions import action_specs
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, TYPE_GONE, WatchEvent
from responder.errors import RunbookError
from responder.incident import triage
from responder.incident.detect import (CRD_DELETING, INCIDENT, NAMESPACE_TERMINATING, NOTICE, ROUTINE,
                                       TENANTS_REBUILT, TENANTS_VANISHED, Detector, late_start, late_start_trigger)
from responder.runbook.schema import DetectionSettings, load_runbook, parse_runbook

CRD = "tenants.capsule.clastix.io"
TS = "2026-12-02T10:00:00Z"
REPO = Path(__file__).resolve().parents[2]


def crd(deleting: bool = False) -> dict:
    meta = {"name": CRD, "uid": "crd-1"}
    if deleting:
        meta["deletionTimestamp"] = TS
    return {"metadata": meta}


def tenant(name: str, uid: str | None = None, deleting: bool = False) -> dict:
    meta = {"name": name, "uid": uid or f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = TS
    return {"metadata": meta}


def namespace(name: str, owner: str | None, owner_uid: str | None = None, terminating: bool = False) -> dict:
    meta: dict = {"name": name, "uid": f"ns-{name}"}
    if owner:
        meta["labels"] = {triage.TENANT_LABEL: owner}
        meta["ownerReferences"] = [{"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": owner,
                                    "uid": owner_uid or f"uid-{owner}"}]
    if terminating:
        meta["deletionTimestamp"] = TS
    return {"metadata": meta}


class Cluster:
    """A detector after the first lists of a healthy cluster: Tenants t1..tN, each with `per` namespaces."""

    def __init__(self, tenants: int = 5, per: int = 3, settings: DetectionSettings = DetectionSettings()) -> None:
        self.detector = Detector(settings)
        self.now = 1_000.0
        self.feed(ADDED, "crd", crd())
        self.feed(ADDED, "deployment", {"metadata": {"name": "capsule-controller-manager"}, "spec": {"replicas": 1}})
        for i in range(1, tenants + 1):
            self.feed(ADDED, "tenants", tenant(f"t{i}"))
            for j in range(1, per + 1):
                self.feed(ADDED, "namespaces", namespace(f"t{i}-ns{j}", f"t{i}"))
        self.feed(ADDED, "namespaces", namespace("kube-system", None))
        for stream in ("crd", "tenants", "namespaces", "deployment", "validatingwebhooks"):
            assert self.feed(SYNCED, stream, {"metadata": {}}).quiet

    def feed(self, kind: str, resource: str, obj: dict, *, after: float = 0.1):
        self.now += after
        return self.detector.decide(WatchEvent(kind, resource, obj, received=self.now))

    def owner_deletes(self, name: str, owner: str):
        self.feed(MODIFIED, "namespaces", namespace(name, owner, terminating=True))
        return self.feed(DELETED, "namespaces", namespace(name, owner, terminating=True))


def verdicts(decisions) -> list[str]:
    return [d.verdict for d in decisions]


# -- routine: never an incident, never a write --------------------------------------------------------------


def test_an_owner_deleting_its_namespace_is_routine_and_says_why():
    c = Cluster()
    d = c.feed(MODIFIED, "namespaces", namespace("t1-ns1", "t1", terminating=True))
    assert d.verdict == ROUTINE and d.kind == "owner-deleted-namespace" and not d.quiet
    assert "Tenant t1 is alive (same UID, not being deleted)" in d.reason
    assert c.feed(DELETED, "namespaces", namespace("t1-ns1", "t1", terminating=True)).verdict == ROUTINE


def test_owners_deleting_many_namespaces_at_once_stay_routine():
    c = Cluster(tenants=10, per=5)
    decisions = [c.feed(MODIFIED, "namespaces", namespace(f"t{i}-ns{j}", f"t{i}", terminating=True), after=0.01)
                 for i in range(1, 11) for j in range(1, 6)]
    assert set(verdicts(decisions)) == {ROUTINE}


def test_offboarding_one_tenant_on_capsule_0_14_is_a_notice_then_routine():
    # 0.14: the Tenant turns Terminating (its finalizer), Capsule deletes its namespaces, the Tenant goes.
    c = Cluster()
    first = c.feed(MODIFIED, "tenants", tenant("t2", deleting=True))
    assert first.verdict == NOTICE and first.kind == "tenant-offboarded" and "1 within 10s" in first.reason
    follow = [c.feed(MODIFIED, "namespaces", namespace(f"t2-ns{j}", "t2", terminating=True)) for j in (1, 2, 3)]
    assert verdicts(follow) == [ROUTINE] * 3 and all(d.kind == "offboarding" for d in follow)
    assert c.feed(DELETED, "tenants", tenant("t2", deleting=True)).verdict == ROUTINE


def test_offboarding_one_tenant_on_capsule_0_12_is_a_notice_then_routine():
    # 0.12: the Tenant vanishes at once; the garbage collector then deletes its namespaces (owner gone).
    c = Cluster()
    assert c.feed(DELETED, "tenants", tenant("t3")).verdict == NOTICE
    follow = [c.feed(MODIFIED, "namespaces", namespace(f"t3-ns{j}", "t3", terminating=True), after=0.05)
              for j in (1, 2, 3)]
    assert verdicts(follow) == [ROUTINE] * 3
    assert "garbage collector" in follow[0].reason


def test_a_few_tenants_spread_over_time_are_notices():
    c = Cluster(tenants=6)
    decisions = [c.feed(DELETED, "tenants", tenant(f"t{i}"), after=11.0) for i in range(1, 7)]
    assert verdicts(decisions) == [NOTICE] * 6


def test_two_tenants_within_the_window_stay_below_the_burst():
    c = Cluster()
    assert verdicts([c.feed(DELETED, "tenants", tenant("t1")), c.feed(DELETED, "tenants", tenant("t2"))]) == [NOTICE] * 2


def test_capsule_restarted_or_upgraded_is_routine():
    c = Cluster()
    deployment = {"metadata": {"name": "capsule-controller-manager"}, "spec": {"replicas": 0}}
    down = c.feed(MODIFIED, "deployment", deployment)
    assert down.verdict == ROUTINE and down.kind == "capsule-scaled" and "1 -> 0" in down.reason
    up = c.feed(MODIFIED, "deployment", {**deployment, "spec": {"replicas": 1}})
    assert up.verdict == ROUTINE and "0 -> 1" in up.reason
    assert c.feed(MODIFIED, "deployment", {**deployment, "spec": {"replicas": 1}}).quiet  # its status
    hooks = c.feed(MODIFIED, "validatingwebhooks", {"metadata": {"name": "capsule-validating-webhook-configuration"}})
    assert hooks.verdict == ROUTINE and hooks.kind == "webhooks-rewritten"
    updated = c.feed(MODIFIED, "crd", crd())  # new schema, a version added: no deletionTimestamp
    assert updated.verdict == ROUTINE and updated.kind == "crd-updated" and "in place" in updated.reason


def test_capsule_deployment_listed_after_the_other_streams_is_not_an_install():
    d = Detector()
    for stream in ("crd", "tenants", "namespaces"):
        d.decide(WatchEvent(SYNCED, stream, {"metadata": {}}))
    listed = d.decide(WatchEvent(ADDED, "deployment", {"metadata": {"name": "capsule-controller-manager"},
                                                       "spec": {"replicas": 1}}))
    assert listed.quiet and listed.kind == "listed"


def test_capsule_deployment_deleted_alone_is_a_notice():
    c = Cluster()
    d = c.feed(DELETED, "deployment", {"metadata": {"name": "capsule-controller-manager"}, "spec": {"replicas": 1}})
    assert d.verdict == NOTICE and d.kind == "capsule-deleted"


def test_namespaces_created_and_labelled_in_bulk_are_quiet_routine():
    c = Cluster()
    created = [c.feed(ADDED, "namespaces", namespace(f"t1-new{i}", "t1"), after=0.001) for i in range(200)]
    labelled = [c.feed(MODIFIED, "namespaces", namespace(f"t1-new{i}", "t1"), after=0.001) for i in range(200)]
    assert {(d.verdict, d.quiet) for d in created + labelled} == {(ROUTINE, True)}


def test_what_the_first_lists_show_is_not_a_change():
    # responder (re)started: a namespace already Terminating, a Tenant already being deleted, no Tenant type
    # yet - for the late-start check, not for the event decisions.
    d = Detector()
    decisions = [d.decide(WatchEvent(ADDED, "namespaces", namespace("a", "gone-tenant", terminating=True))),
                 d.decide(WatchEvent(ADDED, "tenants", tenant("t1", deleting=True))),
                 d.decide(WatchEvent(TYPE_GONE, "tenants", {"metadata": {}}))]
    assert verdicts(decisions) == [ROUTINE] * 3 and d.feed(WatchEvent(SYNCED, "crd", {"metadata": {}})) is None


def test_a_namespace_without_a_tenant_owner_is_routine():
    c = Cluster()
    assert c.feed(MODIFIED, "namespaces", namespace("scratch", None, terminating=True)).verdict == ROUTINE


# -- incidents: at the first signal --------------------------------------------------------------------------


def test_crd_deletion_timestamp_is_an_incident():
    c = Cluster()
    d = c.feed(MODIFIED, "crd", crd(deleting=True))
    assert d.verdict == INCIDENT and d.kind == CRD_DELETING and TS in d.reason
    assert d.trigger().to_json()["kind"] == CRD_DELETING


def test_crd_vanishing_is_an_incident():
    c = Cluster()
    assert c.feed(DELETED, "crd", crd()).kind == CRD_DELETING
    c = Cluster()
    d = c.feed(TYPE_GONE, "tenants", {"metadata": {}})
    assert d.verdict == INCIDENT and d.kind == CRD_DELETING


def test_an_owner_deleting_a_namespace_while_the_crd_is_deleted_is_an_incident():
    c = Cluster()
    c.detector.facts.apply(WatchEvent(MODIFIED, "crd", crd(deleting=True), received=c.now), c.detector.settings)
    d = c.feed(MODIFIED, "namespaces", namespace("t1-ns1", "t1", terminating=True))
    assert d.verdict == INCIDENT and d.kind == NAMESPACE_TERMINATING and "being deleted" in d.reason
    c.feed(DELETED, "crd", crd())
    gone = c.feed(MODIFIED, "namespaces", namespace("t1-ns2", "t1", terminating=True))
    assert gone.verdict == INCIDENT and "Tenant CRD is gone" in gone.reason
    # A Tenant deleted then (by the CRD's finalizer) is part of it, not an offboarding.
    assert c.feed(DELETED, "tenants", tenant("t4")).verdict == INCIDENT


def test_tenants_deleted_in_a_burst_are_an_incident_at_the_threshold():
    c = Cluster()
    first = [c.feed(DELETED, "tenants", tenant(n), after=1.0) for n in ("t1", "t2")]
    third = c.feed(DELETED, "tenants", tenant("t3"), after=1.0)
    assert verdicts(first) == [NOTICE, NOTICE]
    assert third.verdict == INCIDENT and third.kind == TENANTS_VANISHED and set(third.objects) == {"t1", "t2", "t3"}
    assert "3 Tenants deleted within 10s (threshold 3)" in third.reason


def test_a_tenant_turning_terminating_then_vanishing_counts_once():
    c = Cluster()
    c.feed(MODIFIED, "tenants", tenant("t1", deleting=True))
    c.feed(DELETED, "tenants", tenant("t1", deleting=True))
    assert c.feed(MODIFIED, "tenants", tenant("t2", deleting=True)).verdict == NOTICE


def test_burst_threshold_and_window_come_from_the_settings():
    c = Cluster(settings=DetectionSettings(tenant_burst=5, window_seconds=60))
    decisions = [c.feed(DELETED, "tenants", tenant(f"t{i}"), after=10.0) for i in range(1, 6)]
    assert verdicts(decisions) == [NOTICE] * 4 + [INCIDENT]


def test_strict_mode_makes_every_tenant_deletion_an_incident():
    c = Cluster(settings=DetectionSettings(strict=True))
    d = c.feed(MODIFIED, "tenants", tenant("t1", deleting=True))
    assert d.verdict == INCIDENT and d.kind == TENANTS_VANISHED and "strict" in d.reason


def test_crd_rebuilt_tenant_back_with_a_new_uid_under_live_namespaces_is_an_incident():
    c = Cluster()
    d = c.feed(ADDED, "tenants", {"metadata": {"name": "t1", "uid": "uid-t1-new"}})
    assert d.verdict == INCIDENT and d.kind == TENANTS_REBUILT and "3 live namespaces" in d.reason
    # A new Tenant, or the same one listed again, is routine.
    c = Cluster()
    assert c.feed(ADDED, "tenants", tenant("t9")).verdict == ROUTINE
    assert c.feed(ADDED, "tenants", tenant("t1")).verdict == ROUTINE


def test_a_tenant_offboarded_then_recreated_after_its_namespaces_went_is_routine():
    c = Cluster()
    c.feed(DELETED, "tenants", tenant("t2"))
    for j in (1, 2, 3):
        c.owner_deletes(f"t2-ns{j}", "t2")
    assert c.feed(ADDED, "tenants", tenant("t2", uid="uid-t2-new"), after=30).verdict == ROUTINE


def test_namespaces_terminating_because_their_tenant_is_gone_count_to_an_incident():
    # The Tenants went unseen (a watch gap, or their CRD rebuilt): the namespaces the GC deletes say so.
    c = Cluster()
    c.detector.facts.tenants.pop("t1")  # gone without responder seeing it
    c.detector.facts.tenants["t2"] = c.detector.facts.tenants["t2"].__class__("uid-t2-new", False)
    first = c.feed(MODIFIED, "namespaces", namespace("t1-ns1", "t1", terminating=True))
    second = c.feed(MODIFIED, "namespaces", namespace("t2-ns1", "t2", terminating=True))
    third = c.feed(MODIFIED, "namespaces", namespace("t1-ns2", "t1", terminating=True))
    assert verdicts([first, second]) == [NOTICE, NOTICE] and first.kind == "orphaned-namespace"
    assert "t1 (not found)" in first.reason and "t2 (another UID now)" in second.reason
    assert third.verdict == INCIDENT and third.kind == NAMESPACE_TERMINATING
    assert set(third.objects) == {"t1-ns1", "t2-ns1", "t1-ns2"}


def test_orphaned_namespaces_spread_beyond_the_window_stay_notices():
    c = Cluster()
    c.detector.facts.tenants.pop("t1")
    decisions = [c.feed(MODIFIED, "namespaces", namespace(f"t1-ns{j}", "t1", terminating=True), after=11)
                 for j in (1, 2, 3)]
    assert verdicts(decisions) == [NOTICE] * 3
    # A namespace counts once, however many updates it gets while Terminating.
    again = c.feed(MODIFIED, "namespaces", namespace("t1-ns3", "t1", terminating=True))
    assert again.verdict == ROUTINE and again.quiet


def test_the_seed_incident_played_as_the_watches_deliver_it():
    # CRD deleted: its MODIFIED (deletionTimestamp) is first; everything after is part of the same incident.
    c = Cluster(tenants=3)
    decisions = [c.feed(MODIFIED, "crd", crd(deleting=True), after=0.001)]
    decisions += [c.feed(DELETED, "tenants", tenant(f"t{i}"), after=0.001) for i in (1, 2, 3)]
    decisions += [c.feed(MODIFIED, "namespaces", namespace("t1-ns1", "t1", terminating=True), after=0.001)]
    assert verdicts(decisions) == [INCIDENT] * 5 and decisions[0].kind == CRD_DELETING


# -- late start ----------------------------------------------------------------------------------------------


def view(*, crd_present: bool = True, crd_deleting: bool = False, tenants=(), namespaces=()) -> triage.ClusterView:
    return triage.ClusterView(crd_present=crd_present, crd_deleting=crd_deleting,
                              tenants={t["metadata"]["name"]: t for t in tenants},
                              namespaces={n["metadata"]["name"]: n for n in namespaces},
                              protected=triage.protected_namespaces())


def test_late_start_with_the_crd_gone_and_dangling_references_is_an_incident():
    t = late_start_trigger(view(crd_present=False, namespaces=[namespace("a", "t1"), namespace("kube-system", None)]))
    assert t is not None and t.kind == TENANTS_VANISHED and t.objects == ("a",)


def test_late_start_with_stale_references_under_rebuilt_tenants_is_an_incident():
    d = late_start(view(tenants=[tenant("t1", uid="new")], namespaces=[namespace("a", "t1"), namespace("b", "t1")]))
    assert d is not None and d.verdict == INCIDENT and d.kind == TENANTS_REBUILT and d.objects == ("a", "b")


def test_late_start_with_a_namespace_whose_tenant_is_gone_is_a_notice_below_the_threshold():
    d = late_start(view(tenants=[tenant("t2")], namespaces=[namespace("a", "t1"), namespace("b", "t2")]))
    assert d is not None and d.verdict == NOTICE and d.objects == ("a",)
    many = late_start(view(namespaces=[namespace(f"n{i}", "t1") for i in range(3)]))
    assert many is not None and many.verdict == INCIDENT
    assert late_start(view(namespaces=[namespace(f"n{i}", "t1") for i in range(3)]),
                      DetectionSettings(orphaned_namespaces=4)).verdict == NOTICE


def test_late_start_on_a_healthy_cluster_or_during_an_offboarding_decides_nothing():
    assert late_start(view(tenants=[tenant("t1")], namespaces=[namespace("a", "t1")])) is None
    assert late_start(view(tenants=[tenant("t1", deleting=True)], namespaces=[namespace("a", "t1")])) is None


# -- the settings, from the runbook --------------------------------------------------------------------------

RUNBOOK = """\
apiVersion: responder.dev/v1
kind: Runbook
metadata: {name: r}
spec:
%s
  steps:
    - {id: breaker, action: trip-breaker, phase: contain}
"""


def test_the_shipped_runbook_carries_the_default_settings():
    rb = load_runbook(REPO / "runbooks" / "capsule-tenant-crd-deletion.yaml", action_specs())
    assert rb.detection == DetectionSettings()
    assert rb.detection.to_json() == {"tenantBurst": 3, "window": "10s", "orphanedNamespaces": 3, "strict": False}


def test_detection_settings_parse_and_default():
    assert parse_runbook(RUNBOOK % "", action_specs()).detection == DetectionSettings()
    rb = parse_runbook(RUNBOOK % "  detection: {tenantBurst: 5, window: 1m, orphanedNamespaces: 10, strict: true}",
                       action_specs())
    assert rb.detection == DetectionSettings(tenant_burst=5, window_seconds=60.0, orphaned_namespaces=10, strict=True)
    assert parse_runbook(RUNBOOK % "  detection: {window: 30}", action_specs()).detection.window_seconds == 30.0


@pytest.mark.parametrize("detection, message", [
    ("{tenantBurst: 1}", "spec.detection.tenantBurst: expected 2 to 10000, got 1"),
    ("{tenantBurst: three}", "spec.detection.tenantBurst: expected an integer, got 'three'"),
    ("{orphanedNamespaces: 0}", "spec.detection.orphanedNamespaces: expected 1 to 10000, got 0"),
    ("{window: soon}", "spec.detection.window: expected a duration like 30s or 2m, got 'soon'"),
    ("{window: 0s}", "spec.detection.window: window must be more than 0s and at most 600s"),
    ("{window: 11m}", "spec.detection.window: window must be more than 0s and at most 600s"),
    ("{strict: yes please}", "spec.detection.strict: expected true or false"),
    ("{burst: 3}", "spec.detection.burst: unknown field"),
    ("[3]", "spec.detection: expected a mapping"),
])
def test_bad_detection_settings_are_refused_with_the_field(detection, message):
    with pytest.raises(RunbookError) as err:
        parse_runbook(RUNBOOK % f"  detection: {detection}", action_specs(), source="rb.yaml")
    assert f"rb.yaml:5: {message}" in str(err.value), str(err.value)
    assert err.value.fix


# -- after containment: the watch's view from before responder's own detach is not growth -------------------


def test_a_namespace_seen_with_the_references_responder_removed_is_a_stale_view():
    from responder.actions.detach import removed_refs_from_journal, still_shows_removed_refs

    records = [{"kind": "intent", "seq": 1, "action": "detach", "target": "a",
                "undo": {"ownerReferences": [{"name": "t1", "uid": "uid-t1"}]}},
               {"kind": "outcome", "intent": 1, "status": "ok"},
               {"kind": "intent", "seq": 2, "action": "detach", "target": "b",
                "undo": {"ownerReferences": [{"name": "t1", "uid": "uid-t1"}]}},
               {"kind": "outcome", "intent": 2, "status": "failed"},
               {"kind": "intent", "seq": 3, "action": "detach", "target": "c", "dry_run": True,
                "undo": {"ownerReferences": [{"name": "t1", "uid": "uid-t1"}]}},
               {"kind": "outcome", "intent": 3, "status": "ok"}]
    removed = removed_refs_from_journal(records)
    assert removed == {"a": frozenset({"uid-t1"})}
    assert still_shows_removed_refs(namespace("a", "t1"), removed)  # the MODIFIED event is on its way
    assert not still_shows_removed_refs(namespace("a", "t1", owner_uid="uid-other"), removed)  # owned again
    assert not still_shows_removed_refs(namespace("a", None), removed)  # the watch caught up
    assert not still_shows_removed_refs(namespace("b", "t1"), removed)  # its detach failed: at risk
