"""Recovery after the fact (responder was not running): whether the breaker has anything to save, what a
backup says existed, the invariant verify checks, and whether Capsule was left at 0. Pure, no cluster."""

from __future__ import annotations

from responder.actions.breaker import something_to_save
from responder.incident import triage
from responder.recovery import decisions as recovery
from responder.report import build_report, capsule_left_down, render_markdown

from .backups import backup_tarball

PROTECTED = frozenset({"kube-system", "default", "keep"})


def tenant(name: str, uid: str, *, deleting: bool = False) -> dict:
    meta = {"name": name, "uid": uid} | ({"deletionTimestamp": "2026-12-01T00:00:00Z"} if deleting else {})
    return {"metadata": meta, "spec": {"owners": [{"name": name, "kind": "User"}]}}


def ref(tenant_name: str, uid: str) -> dict:
    return {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": tenant_name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def ns(name: str, *refs: dict, tenant_label: str | None = None, terminating: bool = False) -> dict:
    meta: dict = {"name": name, "uid": f"uid-{name}"}
    if refs:
        meta["ownerReferences"] = list(refs)
    if tenant_label:
        meta["labels"] = {triage.TENANT_LABEL: tenant_label}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta}


def view(namespaces: list[dict], tenants: list[dict] = (), *, crd_present: bool = True,
         crd_deleting: bool = False) -> triage.ClusterView:
    return triage.ClusterView(crd_present=crd_present, crd_deleting=crd_deleting,
                              tenants={t["metadata"]["name"]: t for t in tenants},
                              namespaces={n["metadata"]["name"]: n for n in namespaces}, protected=PROTECTED)


SYSTEM = [ns("kube-system"), ns("default"), ns("velero")]


# -- the breaker: something alive to save? -------------------------------------------------------

def test_nothing_to_save_when_every_tenant_namespace_is_gone_and_the_crd_too():
    assert something_to_save(view(SYSTEM, crd_present=False)) is None


def test_nothing_to_save_after_a_rebuild_when_every_namespace_is_owned_by_a_live_tenant():
    t1 = tenant("t1", "new")
    assert something_to_save(view(SYSTEM + [ns("t1-a", ref("t1", "new"))], [t1])) is None


def test_an_owner_deleting_its_namespace_is_routine_work_not_an_incident():
    t1 = tenant("t1", "u1")
    assert something_to_save(view(SYSTEM + [ns("t1-a", ref("t1", "u1"), terminating=True)], [t1])) is None


def test_a_live_namespace_whose_tenant_is_dying_is_at_risk():
    t1 = tenant("t1", "u1")
    reason = something_to_save(view(SYSTEM + [ns("t1-a", ref("t1", "u1"))], [t1], crd_deleting=True))
    assert reason and "t1-a" in reason


def test_a_stale_reference_to_a_rebuilt_tenant_is_at_risk():
    # The pipeline re-applied Tenant t1 (new UID): the garbage collector deletes t1-a once it notices.
    reason = something_to_save(view(SYSTEM + [ns("t1-a", ref("t1", "old"))], [tenant("t1", "new")]))
    assert reason and "dangling" in reason


def test_a_terminating_namespace_of_a_gone_tenant_is_worth_freezing():
    reason = something_to_save(view(SYSTEM + [ns("t1-a", tenant_label="t1", terminating=True)], crd_present=False))
    assert reason and "Terminating" in reason


def test_a_protected_namespace_with_a_dangling_tenant_reference_counts():
    reason = something_to_save(view(SYSTEM + [ns("keep", ref("t1", "u1"))], crd_present=False))
    assert reason and "protected namespace keep" in reason
    assert something_to_save(view(SYSTEM + [ns("keep", ref("t1", "u1"))], [tenant("t1", "u1")])) is None


# -- what a backup says existed --------------------------------------------------------------------

def backup_contents() -> recovery.BackupContents:
    return recovery.parse_backup_tarball(backup_tarball({
        "resources/namespaces/cluster/t1-a.json": ns("t1-a", ref("t1", "old1")),
        "resources/namespaces/v1-preferredversion/cluster/t1-a.json": ns("t1-a", ref("t1", "old1")),
        "resources/namespaces/cluster/t2-a.json": ns("t2-a", tenant_label="t2"),
        "resources/namespaces/cluster/plain.json": ns("plain"),
        "resources/namespaces/cluster/keep.json": ns("keep", ref("t1", "old1")),
        "resources/configmaps/namespaces/t1-a/settings.json": {"metadata": {"name": "settings"}},
        "resources/tenants.capsule.clastix.io/cluster/t1.json": tenant("t1", "old1"),
    }))


def test_a_backup_names_the_tenant_namespaces_and_their_owner_references():
    contents = backup_contents()
    assert recovery.tenant_namespaces_in(contents) == {"keep": "t1", "t1-a": "t1", "t2-a": "t2"}
    templates = recovery.owner_templates_in(contents)
    assert templates["t1-a"]["name"] == "t1" and "uid" not in templates["t1-a"] and "t2-a" not in templates


def test_what_responder_witnessed_comes_first_the_backup_adds_the_rest_never_protected():
    known, added = recovery.merge_known({"t1-a": "t1-witnessed", "t3-a": "t3"},
                                        recovery.tenant_namespaces_in(backup_contents()), PROTECTED)
    assert known == {"t1-a": "t1-witnessed", "t2-a": "t2", "t3-a": "t3"}
    assert added == {"t2-a": "t2"}


def test_a_backup_without_tenant_namespaces_or_made_by_responder_is_no_evidence():
    contents = backup_contents()
    assert recovery.evidence_refusal({"metadata": {"name": "b"}}, contents) is None
    rescue = {"metadata": {"name": "r", "labels": {"app.kubernetes.io/managed-by": "responder"}}}
    assert "rescue" in recovery.evidence_refusal(rescue, contents)
    after_rebuild = recovery.parse_backup_tarball(backup_tarball({
        "resources/namespaces/cluster/plain.json": ns("plain"),
        "resources/tenants.capsule.clastix.io/cluster/t1.json": tenant("t1", "new")}))
    assert "no tenant namespace" in recovery.evidence_refusal({"metadata": {"name": "b"}}, after_rebuild)


# -- verify: no dangling Tenant reference, cluster-wide ----------------------------------------------

def test_dangling_references_are_those_no_live_tenant_matches_by_name_and_uid():
    tenants = {"t1": tenant("t1", "new"), "t2": tenant("t2", "u2", deleting=True)}
    namespaces = [ns("ok", ref("t1", "new")), ns("stale", ref("t1", "old")), ns("dying", ref("t2", "u2")),
                  ns("orphan", ref("t9", "u9")), ns("plain")]
    dangling = recovery.dangling_tenant_references(namespaces, tenants)
    assert set(dangling) == {"stale", "dying", "orphan"}
    assert "the live one has uid new" in dangling["stale"][0]


# -- Capsule left at 0 -----------------------------------------------------------------------------

def _intent(seq: int, action: str, **kw) -> dict:
    return {"seq": seq, "kind": "intent", "step": "s", "action": action, "target": "capsule", **kw}


def _ok(seq: int, intent: int) -> dict:
    return {"seq": seq, "kind": "outcome", "intent": intent, "status": "ok"}


def test_capsule_is_left_down_until_its_replicas_are_put_back_or_undone():
    scaled = [_intent(1, "scale-capsule", undo={"op": "scale", "replicas": 2}), _ok(2, 1)]
    assert capsule_left_down(scaled) == 2
    assert capsule_left_down(scaled + [_intent(3, "restore-replicas"), _ok(4, 3)]) is None
    assert capsule_left_down(scaled + [{"seq": 3, "kind": "undone", "intent": 1}]) is None
    assert capsule_left_down(scaled + [_intent(3, "restore-replicas")]) == 2  # never answered
    assert capsule_left_down([_intent(1, "scale-capsule", dry_run=True), _ok(2, 1)]) is None
    assert capsule_left_down([]) is None


def test_the_report_says_so_in_its_first_line():
    records = [{"seq": 1, "kind": "incident-opened", "incident": "inc-x", "meta": {}},
               _intent(2, "scale-capsule", undo={"op": "scale", "replicas": 1}), _ok(3, 2)]
    md = render_markdown(build_report(records, journal_path="/j/inc-x.jsonl"))
    assert md.splitlines()[0].startswith("> **CAPSULE IS AT 0 REPLICAS (it had 1)")
    assert "`responder undo /j/inc-x.jsonl`" in md.splitlines()[0]


# -- protected namespaces owned by a Tenant: a conflict doctor and plan name ---------------------------

def test_doctor_and_plan_name_a_protected_namespace_owned_by_a_tenant():
    from responder.ops.doctor import protected_conflict_result
    from responder.response.plan import protected_conflicts

    namespaces = SYSTEM + [ns("keep", ref("t1", "u1")), ns("t1-a", ref("t1", "u1")), ns("other")]
    result = protected_conflict_result(namespaces, PROTECTED)
    assert result.status == "finding" and result.details == ["keep"]
    assert protected_conflict_result(SYSTEM + [ns("keep")], PROTECTED).status == "ok"
    conflicts = protected_conflicts(view(namespaces, [tenant("t1", "u1")]))
    assert [c["namespace"] for c in conflicts] == ["keep"] and conflicts[0]["tenants"] == "t1"
