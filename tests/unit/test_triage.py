"""Unit tests for responder.incident.triage: pure decisions over observed objects, no cluster."""

from __future__ import annotations

import copy

import pytest

from responder.incident.triage import (
    BUILTIN_PROTECTED,
    ClusterView,
    NamespaceTriage,
    NsState,
    count_by_state,
    detach_patch,
    detach_patch_for,
    is_tenant_ref,
    owner_status,
    protected_namespaces,
    tenant_refs,
    terminating_action,
    triage,
    triage_namespace,
)

# --------------------------------------------------------------------------- builders

TS = "2024-05-01T10:00:00Z"


def tenant(name: str, uid: str | None = None, *, deleting: bool = False) -> dict:
    meta: dict = {"name": name, "uid": uid or f"uid-tenant-{name}"}
    if deleting:
        meta["deletionTimestamp"] = TS
        meta["finalizers"] = ["controller.projectcapsule.dev/finalize"]
    return {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": meta}


def tref(name: str, uid: str | None = None, version: str = "v1beta2") -> dict:
    return {"apiVersion": f"capsule.clastix.io/{version}", "kind": "Tenant", "name": name,
            "uid": uid or f"uid-tenant-{name}"}


def oref(kind: str = "ConfigMap", name: str = "anchor", api_version: str = "v1", uid: str = "uid-anchor") -> dict:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def namespace(name: str, *owners: dict, finalizers=(), labels=None, terminating: bool = False,
              spec_finalizers=("kubernetes",)) -> dict:
    meta: dict = {"name": name, "uid": f"uid-ns-{name}"}
    if owners:
        meta["ownerReferences"] = [dict(o) for o in owners]
    if finalizers:
        meta["finalizers"] = list(finalizers)
    if labels:
        meta["labels"] = dict(labels)
    if terminating:
        meta["deletionTimestamp"] = TS
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta,
            "spec": {"finalizers": list(spec_finalizers)}}


def view(namespaces=(), tenants=(), *, crd_present=True, crd_deleting=False, protected=None, **kw) -> ClusterView:
    return ClusterView(
        crd_present=crd_present,
        crd_deleting=crd_deleting,
        tenants={t["metadata"]["name"]: t for t in tenants},
        namespaces={n["metadata"]["name"]: n for n in namespaces},
        protected=protected_namespaces() if protected is None else protected,
        **kw,
    )


# --------------------------------------------------------------------------- tiny RFC 6902 applier


class PatchTestFailed(Exception):
    pass


def _walk(doc, path: str):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def apply_patch(doc: dict, ops: list[dict]) -> dict:
    """Apply test/remove/add/replace atomically (on a copy), like the API server does."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _walk(doc, op["path"])
        value = copy.deepcopy(op.get("value"))  # the server decodes each value anew: no shared objects
        if key == "-" and isinstance(parent, list) and op["op"] == "add":  # RFC 6902 append
            parent.append(value)
            continue
        idx = int(key) if isinstance(parent, list) else key
        if op["op"] == "test":
            try:
                actual = parent[idx]
            except (IndexError, KeyError) as e:
                raise PatchTestFailed(f"{op['path']} missing") from e
            if actual != value:
                raise PatchTestFailed(f"{op['path']}: {actual!r} != {op['value']!r}")
        elif op["op"] == "remove":
            del parent[idx]  # raises IndexError/KeyError on a missing target
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list) and op["op"] == "add":
                parent.insert(idx, value)
            else:
                parent[idx] = value
        else:
            raise AssertionError(f"unsupported op {op['op']}")
    return doc


def test_applier_itself_detects_test_failures():
    doc = {"metadata": {"uid": "a", "finalizers": ["x", "y"]}}
    with pytest.raises(PatchTestFailed):
        apply_patch(doc, [{"op": "test", "path": "/metadata/uid", "value": "b"}])
    out = apply_patch(doc, [{"op": "test", "path": "/metadata/finalizers/1", "value": "y"},
                            {"op": "remove", "path": "/metadata/finalizers/0"}])
    assert out["metadata"]["finalizers"] == ["y"]
    assert doc["metadata"]["finalizers"] == ["x", "y"]  # original untouched


# --------------------------------------------------------------------------- refs and protection


def test_is_tenant_ref_any_version_only_capsule_group():
    assert is_tenant_ref(tref("a", version="v1alpha1"))
    assert is_tenant_ref(tref("a", version="v1beta1"))
    assert is_tenant_ref(tref("a", version="v1beta2"))
    assert not is_tenant_ref({"apiVersion": "other.io/v1", "kind": "Tenant", "name": "a", "uid": "u"})
    assert not is_tenant_ref({"apiVersion": "capsule.clastix.io/v1beta2", "kind": "TenantResource",
                              "name": "a", "uid": "u"})
    assert not is_tenant_ref({"apiVersion": "v1", "kind": "Tenant", "name": "a", "uid": "u"})
    assert not is_tenant_ref({"kind": "Tenant", "name": "a"})


def test_tenant_refs_keeps_order_and_skips_others():
    ns = namespace("n", oref(), tref("a"), tref("b", version="v1beta1"))
    assert [r["name"] for r in tenant_refs(ns)] == ["a", "b"]
    assert tenant_refs(namespace("empty")) == []
    assert tenant_refs({"metadata": {"name": "x", "ownerReferences": None}}) == []


def test_protected_namespaces_includes_builtins_capsule_velero_and_extra():
    p = protected_namespaces("capsule", "backup", extra=("monitoring", ""))
    assert BUILTIN_PROTECTED <= p
    assert {"capsule", "backup", "monitoring"} <= p
    assert "" not in p
    assert "capsule-system" not in p
    assert {"capsule-system", "velero"} <= protected_namespaces()
    assert "responder-system" in p  # responder's own: its ServiceAccount and the armed hold's parameter


# --------------------------------------------------------------------------- owner_status


def test_owner_status_alive_dying_gone():
    v = view(tenants=[tenant("a"), tenant("d", deleting=True)])
    assert owner_status(tref("a"), v) == "alive"
    assert owner_status(tref("d"), v) == "dying"
    assert owner_status(tref("missing"), v) == "gone"


def test_uid_mismatch_is_gone_even_if_tenant_recreated():
    v = view(tenants=[tenant("a", uid="uid-new")])
    assert owner_status(tref("a", uid="uid-old"), v) == "gone"
    # and it wins over "dying": a recreated-but-deleting Tenant is still not this owner
    v2 = view(tenants=[tenant("a", uid="uid-new", deleting=True)], crd_deleting=True)
    assert owner_status(tref("a", uid="uid-old"), v2) == "gone"


def test_crd_deleting_makes_same_uid_tenant_dying():
    v = view(tenants=[tenant("a")], crd_deleting=True)
    assert owner_status(tref("a"), v) == "dying"
    row = triage_namespace(namespace("ns-a", tref("a")), v)
    assert row.state is NsState.AT_RISK
    assert row.dying_refs == (tref("a"),)


def test_crd_absent_makes_remaining_tenant_dying():
    v = view(tenants=[tenant("a")], crd_present=False)
    assert owner_status(tref("a"), v) == "dying"


# --------------------------------------------------------------------------- triage_namespace


def test_live_tenant_owner_is_safe():
    v = view(tenants=[tenant("a")])
    row = triage_namespace(namespace("ns-a", tref("a")), v)
    assert row.state is NsState.SAFE
    assert row.tenant == "a"
    assert row.dying_refs == ()


def test_gone_tenant_without_anchor_is_at_risk_and_says_gc():
    v = view(tenants=[])
    row = triage_namespace(namespace("ns-a", tref("a")), v)
    assert row.state is NsState.AT_RISK
    assert row.tenant == "a"
    assert "'a'" in row.reason and "garbage collector will delete" in row.reason


def test_second_non_tenant_owner_is_anchor_but_still_at_risk_and_kept_by_patch():
    anchor = oref("Deployment", "keeper", "apps/v1", "uid-keeper")
    ns = namespace("ns-a", tref("a"), anchor, finalizers=["example.com/keep"])
    v = view([ns], tenants=[tenant("a", deleting=True)])
    row = triage_namespace(ns, v)
    assert row.state is NsState.AT_RISK
    assert row.other_owner_refs == (anchor,)
    assert "anchor" in row.reason and "Deployment 'keeper'" in row.reason
    assert "Capsule's controller still deletes it" in row.reason

    patch = detach_patch(ns)
    assert all(op["path"] != "/metadata/ownerReferences/1" for op in patch)
    out = apply_patch(ns, patch)
    assert out["metadata"]["ownerReferences"] == [anchor]
    assert out["metadata"]["finalizers"] == ["example.com/keep"]


def test_any_dying_tenant_ref_is_at_risk_even_with_a_live_tenant_ref():
    ns = namespace("ns", tref("live"), tref("dead"))
    v = view([ns], tenants=[tenant("live"), tenant("dead", deleting=True)])
    row = triage_namespace(ns, v)
    assert row.state is NsState.AT_RISK
    assert row.dying_refs == (tref("dead"),)
    assert "live Tenant 'live'" in row.reason


def test_protected_never_at_risk_nor_patched_even_with_dying_tenant_ref():
    v = view(tenants=[tenant("a", deleting=True)], crd_deleting=True,
             protected=protected_namespaces(extra=("platform",)))
    for name in ["kube-system", "default", "capsule-system", "velero", "platform"]:
        ns = namespace(name, tref("a"), finalizers=["capsule.clastix.io/x"])
        row = triage_namespace(ns, v)
        assert row.state is NsState.PROTECTED, name
        assert row.dying_refs == () and row.capsule_finalizers == ()
        assert detach_patch_for(ns, v) == []
    # terminating protected namespace is still just protected
    ns = namespace("kube-public", tref("a"), terminating=True)
    assert triage_namespace(ns, v).state is NsState.PROTECTED


def test_already_detached_namespace_is_detached_and_patch_empty():
    ns = namespace("ns-a", oref(), labels={"team": "x"}, finalizers=["example.com/keep"])
    v = view([ns], tenants=[], detached={"ns-a": "a"})
    row = triage_namespace(ns, v)
    assert row.state is NsState.DETACHED
    assert row.tenant == "a"
    assert detach_patch(ns) == []
    assert detach_patch_for(ns, v) == []


def test_tenant_label_without_owner_reference_is_safe_with_reason():
    ns = namespace("ns-l", labels={"capsule.clastix.io/tenant": "acme"})
    row = triage_namespace(ns, view([ns]))
    assert row.state is NsState.SAFE
    assert row.reason == "tenant label without ownerReference"
    assert row.tenant == "acme"


def test_plain_namespace_is_safe_without_tenant():
    row = triage_namespace(namespace("plain"), view())
    assert row.state is NsState.SAFE and row.tenant is None


def test_readopted_requires_live_tenant_ref():
    ns = namespace("ns-a", tref("b"))
    assert triage_namespace(ns, view([ns], tenants=[tenant("b")], readopted={"ns-a": "b"})).state \
        is NsState.READOPTED
    # re-adopted into a Tenant that is itself dying again: at risk, not re-adopted
    v = view([ns], tenants=[tenant("b", deleting=True)], readopted={"ns-a": "b"})
    assert triage_namespace(ns, v).state is NsState.AT_RISK


def test_restored_and_restoring():
    a = namespace("ns-r")
    b = namespace("ns-p")
    v = view([a, b], restored=frozenset({"ns-r"}), restoring=frozenset({"ns-p"}))
    assert triage_namespace(a, v).state is NsState.RESTORED
    assert triage_namespace(b, v).state is NsState.RESTORING


def test_restored_namespace_with_dangling_tenant_ref_is_at_risk():
    # A restored object carrying the old Tenant UID would be collected again by the GC.
    ns = namespace("ns-r", tref("a", uid="uid-old"))
    v = view([ns], tenants=[tenant("a", uid="uid-new")], restored=frozenset({"ns-r"}))
    row = triage_namespace(ns, v)
    assert row.state is NsState.AT_RISK
    assert "restored" in row.reason


# --------------------------------------------------------------------------- terminating


def test_terminating_rows_and_actions():
    gone_content = namespace("t0", tref("a"), terminating=True)
    with_content = namespace("t5", tref("a"), terminating=True)
    unknown = namespace("tn", terminating=True, spec_finalizers=())
    v = view([gone_content, with_content, unknown], tenants=[tenant("a", deleting=True)],
             content_remaining={"t0": 0, "t5": 5})

    r0 = triage_namespace(gone_content, v)
    assert r0.state is NsState.TERMINATING
    assert r0.content_remaining == 0 and r0.spec_finalizers == ("kubernetes",)
    assert terminating_action(r0) == "finalize"
    assert terminating_action(r0, confirmed=True) == "finalize"

    r5 = triage_namespace(with_content, v)
    assert r5.content_remaining == 5
    assert terminating_action(r5) == "wait"
    assert terminating_action(r5, confirmed=True) == "finalize-confirmed"

    rn = triage_namespace(unknown, v)
    assert rn.content_remaining is None and rn.spec_finalizers == ()
    assert terminating_action(rn) == "wait"
    assert terminating_action(rn, confirmed=True) == "finalize-confirmed"

    # terminating namespaces are never detached
    assert detach_patch_for(with_content, v) == []


def test_terminating_action_rejects_non_terminating_rows():
    row = triage_namespace(namespace("x"), view())
    with pytest.raises(ValueError):
        terminating_action(row)
    with pytest.raises(ValueError):
        terminating_action(row, confirmed=True)


# --------------------------------------------------------------------------- triage() and counts


def test_triage_lists_live_and_gone_sorted():
    live_safe = namespace("b-ns", tref("b"))
    at_risk = namespace("a-ns2", tref("a"))
    plain = namespace("zzz")
    v = view([live_safe, at_risk, plain], tenants=[tenant("b")],
             known_namespaces={"a-ns1": "a", "a-ns2": "a", "b-ns": "b"})
    rows = triage(v)
    assert [(r.tenant, r.name, r.state) for r in rows] == [
        (None, "zzz", NsState.SAFE),
        ("a", "a-ns1", NsState.GONE),
        ("a", "a-ns2", NsState.AT_RISK),
        ("b", "b-ns", NsState.SAFE),
    ]
    gone = rows[1]
    assert gone.dying_refs == () and gone.reason


def test_triage_reports_detached_namespace_that_disappeared_as_gone():
    rows = triage(view([], detached={"ns-d": "a"}))
    assert [(r.name, r.state, r.tenant) for r in rows] == [("ns-d", NsState.GONE, "a")]


def test_count_by_state():
    rows = [
        NamespaceTriage("a", NsState.SAFE, None, "r"),
        NamespaceTriage("b", NsState.SAFE, None, "r"),
        NamespaceTriage("c", NsState.AT_RISK, "t", "r"),
        NamespaceTriage("d", NsState.GONE, "t", "r"),
    ]
    counts = count_by_state(rows)
    assert counts["safe"] == 2 and counts["at-risk"] == 1 and counts["gone"] == 1
    assert counts["terminating"] == 0 and counts["re-adopted"] == 0
    assert set(counts) == {s.value for s in NsState}
    assert sum(counts.values()) == 4
    assert count_by_state([]) == {s.value: 0 for s in NsState}


# --------------------------------------------------------------------------- detach_patch


def test_patch_guards_and_descending_order():
    anchor = oref("Deployment", "keeper", "apps/v1", "uid-keeper")
    ns = namespace("n", tref("a"), anchor, tref("b", version="v1beta1"),
                   finalizers=["capsule.clastix.io/ns", "example.com/keep",
                               "controller.projectcapsule.dev/finalize", "projectcapsule.dev/x"])
    patch = detach_patch(ns)
    assert patch[0] == {"op": "test", "path": "/metadata/uid", "value": "uid-ns-n"}
    tests = [op for op in patch if op["op"] == "test"]
    removes = [op for op in patch if op["op"] == "remove"]
    # every test precedes every remove
    assert patch == tests + removes
    assert {"op": "test", "path": "/metadata/ownerReferences/0/uid", "value": "uid-tenant-a"} in tests
    assert {"op": "test", "path": "/metadata/ownerReferences/2/uid", "value": "uid-tenant-b"} in tests
    assert {"op": "test", "path": "/metadata/finalizers/0", "value": "capsule.clastix.io/ns"} in tests
    assert {"op": "test", "path": "/metadata/finalizers/2",
            "value": "controller.projectcapsule.dev/finalize"} in tests
    assert {"op": "test", "path": "/metadata/finalizers/3", "value": "projectcapsule.dev/x"} in tests
    assert len(tests) == 6
    assert [op["path"] for op in removes] == [
        "/metadata/ownerReferences/2",
        "/metadata/ownerReferences/0",
        "/metadata/finalizers/3",
        "/metadata/finalizers/2",
        "/metadata/finalizers/0",
    ]

    out = apply_patch(ns, patch)
    assert out["metadata"]["ownerReferences"] == [anchor]
    assert out["metadata"]["finalizers"] == ["example.com/keep"]
    assert out["metadata"]["uid"] == "uid-ns-n"
    assert tenant_refs(out) == []
    assert detach_patch(out) == []

    # replaying the same patch on the detached object fails on a test op, changing nothing
    with pytest.raises(PatchTestFailed):
        apply_patch(out, patch)


def test_patch_refuses_changed_object():
    ns = namespace("n", tref("a"), finalizers=["capsule.clastix.io/ns"])
    patch = detach_patch(ns)

    recreated = copy.deepcopy(ns)
    recreated["metadata"]["uid"] = "uid-other"
    with pytest.raises(PatchTestFailed):
        apply_patch(recreated, patch)

    reordered = copy.deepcopy(ns)
    reordered["metadata"]["ownerReferences"].insert(0, oref())
    with pytest.raises(PatchTestFailed):
        apply_patch(reordered, patch)

    fin_changed = copy.deepcopy(ns)
    fin_changed["metadata"]["finalizers"].insert(0, "example.com/new")
    with pytest.raises(PatchTestFailed):
        apply_patch(fin_changed, patch)


def test_patch_only_capsule_finalizers_without_tenant_refs():
    ns = namespace("n", oref(), finalizers=["example.com/keep", "capsule.clastix.io/ns"])
    patch = detach_patch(ns)
    assert [op for op in patch if op["op"] == "remove"] == [{"op": "remove", "path": "/metadata/finalizers/1"}]
    out = apply_patch(ns, patch)
    assert out["metadata"]["ownerReferences"] == [oref()]
    assert out["metadata"]["finalizers"] == ["example.com/keep"]


def test_patch_empty_when_nothing_to_remove_and_does_not_touch_lookalikes():
    ns = namespace("n", oref(), {"apiVersion": "other.io/v1", "kind": "Tenant", "name": "t", "uid": "u"},
                   finalizers=["example.com/capsule.clastix.io/x", "kubernetes"])
    assert detach_patch(ns) == []


def test_patch_requires_namespace_uid():
    ns = namespace("n", tref("a"))
    del ns["metadata"]["uid"]
    with pytest.raises(ValueError):
        detach_patch(ns)


def test_detach_patch_for_at_risk_matches_detach_patch():
    ns = namespace("n", tref("a"), oref())
    v = view([ns], tenants=[tenant("a", deleting=True)])
    assert detach_patch_for(ns, v) == detach_patch(ns) != []
    safe = view([ns], tenants=[tenant("a")])
    assert detach_patch_for(ns, safe) == []
