"""Triage: decide, from observed objects only, what state each namespace is in.

Everything here is pure (plain dicts in, plain values out, stdlib only) so the
decisions that matter most during the incident can be unit-tested without a
cluster and replayed from a journal.

The incident: deleting Capsule's Tenant CRD deletes every Tenant.  A Namespace
owned by a Tenant (an ownerReference with apiVersion capsule.clastix.io/*, kind
Tenant) is then deleted by the garbage collector once *all* its owners dangle
(owner not found, or the owner's UID differs), and Capsule >= 0.13 deletes the
namespaces of a Tenant that is being finalized even when another owner would
keep the garbage collector off.  Responder saves a namespace by removing only
its Tenant ownerReferences and Capsule's own metadata.finalizers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

TENANT_GROUP = "capsule.clastix.io"
TENANT_KIND = "Tenant"
CAPSULE_FINALIZER_PREFIXES = (
    "capsule.clastix.io/",
    "projectcapsule.dev/",
    "controller.projectcapsule.dev/",
)
# The control plane's own, and responder's (its ServiceAccount, the armed namespace hold's parameter).
BUILTIN_PROTECTED = frozenset({"kube-system", "kube-public", "kube-node-lease", "default", "responder-system"})
TENANT_LABEL = "capsule.clastix.io/tenant"

ALIVE = "alive"
DYING = "dying"
GONE = "gone"


class NsState(str, Enum):
    PROTECTED = "protected"
    SAFE = "safe"
    AT_RISK = "at-risk"
    DETACHED = "detached"
    TERMINATING = "terminating"
    GONE = "gone"
    RESTORING = "restoring"
    RESTORED = "restored"
    READOPTED = "re-adopted"


def protected_namespaces(
    capsule_namespace: str = "capsule-system",
    velero_namespace: str = "velero",
    extra: Iterable[str] = (),
) -> frozenset[str]:
    """Namespaces responder must never patch: the control plane's own, Capsule's and Velero's.

    Touching these could break the very tools the recovery depends on.
    """
    names = set(BUILTIN_PROTECTED)
    names.update(n for n in (capsule_namespace, velero_namespace) if n)
    names.update(n for n in extra if n)
    return frozenset(names)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _api_group(api_version: str) -> str:
    # "group/version" for named groups; a bare "v1" is the core group ("").
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def is_tenant_ref(ref: Mapping[str, Any]) -> bool:
    """True for an ownerReference to a Capsule Tenant, whatever the API version.

    Capsule served several versions (v1alpha1, v1beta1, v1beta2); all point at the
    same Tenants and all dangle together when the CRD goes.
    """
    return ref.get("kind") == TENANT_KIND and _api_group(ref.get("apiVersion") or "") == TENANT_GROUP


def tenant_refs(ns: Mapping[str, Any]) -> list[dict]:
    """The namespace's Tenant ownerReferences, in their original order."""
    return [r for r in _meta(ns).get("ownerReferences") or [] if is_tenant_ref(r)]


def _other_owner_refs(ns: Mapping[str, Any]) -> list[dict]:
    return [r for r in _meta(ns).get("ownerReferences") or [] if not is_tenant_ref(r)]


def is_capsule_finalizer(name: str) -> bool:
    """True for finalizers Capsule owns (and which would block a detached namespace forever)."""
    return name.startswith(CAPSULE_FINALIZER_PREFIXES)


def capsule_finalizers(ns: Mapping[str, Any]) -> list[str]:
    """Capsule's own metadata.finalizers on the namespace, in order."""
    return [f for f in _meta(ns).get("finalizers") or [] if is_capsule_finalizer(f)]


@dataclass(frozen=True)
class ClusterView:
    """One consistent observation of the cluster plus responder's own records."""

    crd_present: bool
    crd_deleting: bool
    tenants: Mapping[str, dict]
    namespaces: Mapping[str, dict]
    protected: frozenset[str]
    known_namespaces: Mapping[str, str] = field(default_factory=dict)
    detached: Mapping[str, str] = field(default_factory=dict)
    readopted: Mapping[str, str] = field(default_factory=dict)
    restoring: frozenset[str] = frozenset()
    restored: frozenset[str] = frozenset()
    content_remaining: Mapping[str, int | None] = field(default_factory=dict)


def owner_status(ref: Mapping[str, Any], view: ClusterView) -> str:
    """"alive", "dying" or "gone" for the Tenant a Tenant ownerReference points at.

    "gone" mirrors the garbage collector: an owner that is not found, or found with
    another UID (a re-created Tenant of the same name), is absent to it.  "dying" is
    a same-UID Tenant that is being deleted, or any Tenant while its CRD is deleting
    or missing: it will be gone soon and Capsule's finalizer deletes its namespaces.
    """
    tenant = view.tenants.get(ref.get("name") or "")
    if tenant is None:
        return GONE
    if _meta(tenant).get("uid") != ref.get("uid"):
        return GONE
    if _meta(tenant).get("deletionTimestamp") or view.crd_deleting or not view.crd_present:
        return DYING
    return ALIVE


@dataclass(frozen=True)
class NamespaceTriage:
    """The verdict for one namespace and the facts it rests on."""

    name: str
    state: NsState
    tenant: str | None
    reason: str
    dying_refs: tuple[dict, ...] = ()
    other_owner_refs: tuple[dict, ...] = ()
    capsule_finalizers: tuple[str, ...] = ()
    content_remaining: int | None = None
    spec_finalizers: tuple[str, ...] = ()


def _owner_label(ref: Mapping[str, Any]) -> str:
    return f"{ref.get('kind') or '?'} {ref.get('name') or '?'!r}"


def _names(refs: Iterable[Mapping[str, Any]]) -> str:
    return ", ".join(repr(r.get("name") or "?") for r in refs)


def _tenant_of(name: str, ns: Mapping[str, Any] | None, view: ClusterView) -> str | None:
    if ns is not None:
        refs = tenant_refs(ns)
        if refs and refs[0].get("name"):
            return refs[0]["name"]
        label = (_meta(ns).get("labels") or {}).get(TENANT_LABEL)
        if label:
            return label
    for mapping in (view.detached, view.readopted, view.known_namespaces):
        if mapping.get(name):
            return mapping[name]
    return None


def _at_risk_reason(dying: list[dict], alive: list[dict], others: list[dict], view: ClusterView,
                    restore_note: str) -> str:
    statuses = {id(r): owner_status(r, view) for r in dying}
    gone = [r for r in dying if statuses[id(r)] == GONE]
    still_dying = [r for r in dying if statuses[id(r)] == DYING]
    parts = []
    if still_dying:
        parts.append(f"Tenant {_names(still_dying)} is being deleted")
    if gone:
        parts.append(f"Tenant {_names(gone)} is gone (not found or UID differs)")
    what = " and ".join(parts)
    anchors = [_owner_label(r) for r in others] + [f"live Tenant {r.get('name')!r}" for r in alive]
    if anchors:
        tail = (f"; it has anchor owner(s) {', '.join(anchors)} that keep the garbage collector off"
                + (", but Capsule's controller still deletes it" if still_dying else
                   ", but the dangling Tenant ownerReference should be removed"))
    else:
        tail = "; no other owner anchors it, so the garbage collector will delete it"
    return f"{what}{tail}{restore_note}."


def triage_namespace(ns: dict, view: ClusterView) -> NamespaceTriage:
    """Classify one live namespace; see the module docstring for why each rule exists.

    Order: protected, terminating, re-adopted, at-risk, restored/restoring, detached, safe.
    A namespace with a dying or dangling Tenant ownerReference is reported at-risk even
    if responder restored it, because the GC or Capsule would delete it again.
    """
    meta = _meta(ns)
    name = meta.get("name") or ""
    t_refs = tenant_refs(ns)
    others = _other_owner_refs(ns)
    statuses = [owner_status(r, view) for r in t_refs]
    dying = [r for r, s in zip(t_refs, statuses) if s != ALIVE]
    alive = [r for r, s in zip(t_refs, statuses) if s == ALIVE]
    cap_fins = capsule_finalizers(ns)
    tenant = _tenant_of(name, ns, view)

    def row(state: NsState, reason: str, **kw: Any) -> NamespaceTriage:
        base = dict(name=name, state=state, tenant=tenant, reason=reason,
                    dying_refs=tuple(dying), other_owner_refs=tuple(others),
                    capsule_finalizers=tuple(cap_fins))
        base.update(kw)
        return NamespaceTriage(**base)

    # 1. Protected wins over everything, and its row carries nothing actionable.
    if name in view.protected:
        note = f" (it has Tenant ownerReference(s) {_names(t_refs)} that responder leaves alone)" if t_refs else ""
        return row(NsState.PROTECTED, f"Protected namespace, never touched by responder{note}.",
                   dying_refs=(), capsule_finalizers=())

    # 2. Terminating cannot be saved; only its finalization can be managed.
    if meta.get("deletionTimestamp"):
        remaining = view.content_remaining.get(name)
        spec_fins = tuple((ns.get("spec") or {}).get("finalizers") or ())
        left = "unknown content" if remaining is None else f"{remaining} object(s)"
        return row(NsState.TERMINATING,
                   f"Namespace is terminating (deletionTimestamp set) with {left} still inside; it cannot be saved.",
                   content_remaining=remaining, spec_finalizers=spec_fins)

    # 3a. Re-adopted: only while the new owner is really alive.
    if name in view.readopted and alive and not dying:
        return row(NsState.READOPTED,
                   f"Re-adopted into live Tenant {_names(alive)}.")

    # 4. Any dying/gone Tenant owner: the GC (no anchor) or Capsule's finalizer (dying) deletes it.
    if dying:
        restore_note = ""
        if name in view.restored:
            restore_note = " (it was restored, but still carries the old Tenant ownerReference)"
        elif name in view.restoring:
            restore_note = " (a restore is in progress, but it carries a dying Tenant ownerReference)"
        elif name in view.readopted:
            restore_note = f" (it was re-adopted into {view.readopted[name]!r})"
        return row(NsState.AT_RISK, _at_risk_reason(dying, alive, others, view, restore_note))

    # 3b. Restored / restoring (after the at-risk check, see docstring).
    if name in view.restored:
        return row(NsState.RESTORED, "Restored from backup and not owned by a dying Tenant.")
    if name in view.restoring:
        return row(NsState.RESTORING, "A restore into this namespace is in progress.")

    # 5. No Tenant owner at all.
    if not t_refs:
        if name in view.detached:
            return row(NsState.DETACHED,
                       f"Detached by responder from Tenant {view.detached[name]!r}; no Tenant ownerReference left.")
        if (meta.get("labels") or {}).get(TENANT_LABEL):
            return row(NsState.SAFE, "tenant label without ownerReference")
        return row(NsState.SAFE, "No Tenant ownerReference.")

    # 6. Every Tenant owner alive.
    return row(NsState.SAFE, f"Owned by live Tenant {_names(alive)}.")


def triage(view: ClusterView) -> list[NamespaceTriage]:
    """Every live namespace, plus a GONE row for each namespace responder knew of that no longer exists.

    Known names come from the pre-incident shadow copy and from responder's own records
    (detached, re-adopted, restored, restoring), so a loss is never silently dropped.
    """
    rows = [triage_namespace(ns, view) for ns in view.namespaces.values()]
    live = {r.name for r in rows}
    missing = (set(view.known_namespaces) | set(view.detached) | set(view.readopted)
               | set(view.restored) | set(view.restoring)) - live
    for name in missing:
        if name in view.restoring:
            rows.append(NamespaceTriage(name=name, state=NsState.RESTORING, tenant=_tenant_of(name, None, view),
                                        reason="A restore is in progress; it has not recreated this namespace yet."))
            continue
        if name in view.detached:
            reason = "Namespace no longer exists although responder had detached it."
        else:
            reason = "Namespace no longer exists; it was deleted."
        rows.append(NamespaceTriage(name=name, state=NsState.GONE, tenant=_tenant_of(name, None, view),
                                    reason=reason))
    rows.sort(key=lambda r: (r.tenant or "", r.name))
    return rows


def count_by_state(rows: Iterable[NamespaceTriage]) -> dict[str, int]:
    """Rows per state value; every state is present (0 if none) in NsState order, for stable summaries."""
    counts = {s.value: 0 for s in NsState}
    for r in rows:
        counts[NsState(r.state).value] += 1
    return counts


def detach_patch(ns: dict) -> list[dict]:
    """RFC 6902 patch removing the Tenant ownerReferences and Capsule finalizers, and nothing else.

    Guarded by test ops (namespace UID, each removed owner's UID, each removed finalizer)
    so it fails instead of removing the wrong element from a changed object, and fails
    harmlessly when replayed.  Removes go in descending index order so earlier removes
    do not shift the indexes of later ones.  [] when there is nothing to remove.
    """
    meta = _meta(ns)
    refs = meta.get("ownerReferences") or []
    fins = meta.get("finalizers") or []
    ref_idx = [i for i, r in enumerate(refs) if is_tenant_ref(r)]
    fin_idx = [i for i, f in enumerate(fins) if is_capsule_finalizer(f)]
    if not ref_idx and not fin_idx:
        return []
    uid = meta.get("uid")
    if not uid:
        raise ValueError(f"namespace {meta.get('name')!r} has no metadata.uid; cannot build a guarded patch")
    ops: list[dict] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
    for i in ref_idx:
        ref_uid = refs[i].get("uid")
        if ref_uid:
            ops.append({"op": "test", "path": f"/metadata/ownerReferences/{i}/uid", "value": ref_uid})
        else:  # no uid to pin: pin the whole reference instead
            ops.append({"op": "test", "path": f"/metadata/ownerReferences/{i}", "value": refs[i]})
    for i in fin_idx:
        ops.append({"op": "test", "path": f"/metadata/finalizers/{i}", "value": fins[i]})
    ops.extend({"op": "remove", "path": f"/metadata/ownerReferences/{i}"} for i in reversed(ref_idx))
    ops.extend({"op": "remove", "path": f"/metadata/finalizers/{i}"} for i in reversed(fin_idx))
    return ops


def detach_patch_for(ns: dict, view: ClusterView) -> list[dict]:
    """The detach patch only if triage says AT_RISK; [] for protected, terminating and everything else."""
    if NsState(triage_namespace(ns, view).state) is not NsState.AT_RISK:
        return []
    return detach_patch(ns)


def terminating_action(row: NamespaceTriage, *, confirmed: bool = False) -> str:
    """What to do with a terminating namespace: "finalize", "wait" or "finalize-confirmed".

    Clearing spec.finalizers while content remains orphans that content in etcd, so it
    happens only when the content is known to be gone or the operator confirmed it.
    """
    if NsState(row.state) is not NsState.TERMINATING:
        raise ValueError(f"namespace {row.name!r} is {NsState(row.state).value}, not terminating")
    remaining = row.content_remaining
    if remaining is not None and remaining < 0:
        raise ValueError(f"namespace {row.name!r} has a negative content count: {remaining}")
    if remaining == 0:
        return "finalize"
    return "finalize-confirmed" if confirmed else "wait"
