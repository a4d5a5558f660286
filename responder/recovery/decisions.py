"""Recovery decisions as pure functions over observed objects: which namespaces were lost, which
Velero backup to restore from (and why the others were refused), what a backup holds, how a
namespace is re-adopted by its recreated Tenant, and whether the end state matches what was known.

No I/O here: the recovery actions (responder/actions/recover.py) fetch, call these, and write.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from responder.incident import triage

TENANT_API_VERSION = "capsule.clastix.io/v1beta2"
SCHEDULE_LABEL = "velero.io/schedule-name"

# Objects controllers make on their own in every namespace: their presence proves nothing about a restore.
AUTO_CREATED = {("configmaps", "kube-root-ca.crt"), ("serviceaccounts", "default")}
# Kinds whose objects belong to a controller (pods of a ReplicaSet, ...): counted only when unowned.
_SKIP_RESOURCES = {"events", "events.events.k8s.io"}


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- lost namespaces -------------------------------------------------------------------------------

def lost_namespaces(known: Mapping[str, str], live: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Namespaces responder knew before the incident (name -> tenant) that are gone or terminating."""
    lost = {}
    for name, tenant in known.items():
        ns = live.get(name)
        if ns is None or (ns.get("metadata") or {}).get("deletionTimestamp"):
            lost[name] = tenant
    return dict(sorted(lost.items()))


# -- choosing the backup ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupChoice:
    backup: str | None
    rejected: tuple[tuple[str, str], ...] = ()  # (backup name, reason), newest first
    reason: str = ""  # why no backup was chosen

    def to_json(self) -> dict[str, Any]:
        return {"backup": self.backup, "rejected": [{"name": n, "reason": r} for n, r in self.rejected],
                "reason": self.reason}


def _covers(backup: Mapping[str, Any], namespace: str) -> bool:
    spec = backup.get("spec") or {}
    included = spec.get("includedNamespaces") or ["*"]
    excluded = spec.get("excludedNamespaces") or []
    return namespace not in excluded and ("*" in included or namespace in included)


def candidate_backups(backups: Iterable[Mapping[str, Any]], *, schedule: str | None = None,
                      name: str | None = None) -> list[Mapping[str, Any]]:
    """Backups to consider, newest first by status.startTimestamp (Velero's own order)."""
    chosen = []
    for b in backups:
        meta = b.get("metadata") or {}
        if name and meta.get("name") != name:
            continue
        if schedule and (meta.get("labels") or {}).get(SCHEDULE_LABEL) != schedule:
            continue
        chosen.append(b)
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return sorted(chosen, key=lambda b: parse_time((b.get("status") or {}).get("startTimestamp")) or epoch,
                  reverse=True)


def backup_refusal(backup: Mapping[str, Any], lost: Iterable[str], *, now: dt.datetime,
                   storage_phases: Mapping[str, str], allow_partially_failed: bool = False) -> str | None:
    """Why this backup must not be used, or None. Velero does not check the phase of a named backup
    itself (no released version does), so this is responder's own check."""
    status = backup.get("status") or {}
    spec = backup.get("spec") or {}
    phase = status.get("phase") or "New"
    if phase == "PartiallyFailed" and not allow_partially_failed:
        return (f"phase PartiallyFailed ({status.get('errors', '?')} errors); pass allowPartiallyFailed to use it")
    if phase not in ("Completed", "PartiallyFailed"):
        return f"phase {phase}, not Completed"
    expiration = parse_time(status.get("expiration"))
    if expiration is not None and expiration <= now:
        return f"expired at {status['expiration']} (Velero's garbage collector may delete it at any moment)"
    location = spec.get("storageLocation") or "default"
    location_phase = storage_phases.get(location)
    if location_phase != "Available":
        return f"its storage location {location!r} is {location_phase or 'missing'}, not Available"
    missing = [ns for ns in lost if not _covers(backup, ns)]
    if missing:
        return f"does not include {len(missing)} lost namespaces (e.g. {', '.join(missing[:3])})"
    return None


def choose_backup(backups: Iterable[Mapping[str, Any]], lost: Iterable[str], *, now: dt.datetime,
                  storage_phases: Mapping[str, str], schedule: str | None = None, name: str | None = None,
                  allow_partially_failed: bool = False) -> BackupChoice:
    """The newest usable backup that covers every lost namespace; every refusal comes with its reason."""
    lost = list(lost)
    candidates = candidate_backups(backups, schedule=schedule, name=name)
    if not candidates:
        what = f"backup {name!r}" if name else f"backup of schedule {schedule!r}" if schedule else "Velero backup"
        return BackupChoice(None, (), f"no {what} found")
    rejected = []
    for b in candidates:
        reason = backup_refusal(b, lost, now=now, storage_phases=storage_phases,
                                allow_partially_failed=allow_partially_failed)
        if reason is None:
            return BackupChoice(b["metadata"]["name"], tuple(rejected))
        rejected.append((b["metadata"]["name"], reason))
    return BackupChoice(None, tuple(rejected), f"all {len(rejected)} backups were refused")


# -- what a backup holds ---------------------------------------------------------------------------

@dataclass
class BackupContents:
    """Objects in a Velero backup tarball: namespaced ones by namespace and resource, plus the
    cluster-scoped Tenants and the Tenant CRD when the backup includes cluster resources."""

    namespaces: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    tenant_crd: dict[str, Any] | None = None
    namespace_objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # the Namespace objects themselves

    def counts(self, namespace: str) -> dict[str, int]:
        return {resource: len(items) for resource, items in sorted((self.namespaces.get(namespace) or {}).items())}


def parse_backup_tarball(data: bytes) -> BackupContents:
    """Velero's layout: resources/<resource[.group]>/namespaces/<ns>/<name>.json and
    resources/<resource>/cluster/<name>.json, each possibly repeated under a
    `<version>-preferredversion/` folder (kept once)."""
    contents = BackupContents()
    seen: set[tuple[str, str, str]] = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            parts = member.name.lstrip("./").split("/")
            if len(parts) < 4 or parts[0] != "resources":
                continue
            resource = parts[1]
            rest = [p for p in parts[2:] if not p.endswith("-preferredversion")]
            fh = tar.extractfile(member)
            if fh is None:
                continue
            if rest[0] == "namespaces" and len(rest) == 3:
                ns, name = rest[1], rest[2][:-5]
                key = (resource, ns, name)
                if key in seen or resource in _SKIP_RESOURCES:
                    continue
                seen.add(key)
                obj = json.loads(fh.read())
                contents.namespaces.setdefault(ns, {}).setdefault(resource, []).append(obj)
            elif rest[0] == "cluster" and len(rest) == 2:
                name = rest[1][:-5]
                if resource == "tenants.capsule.clastix.io":
                    contents.tenants[name] = json.loads(fh.read())
                elif resource == "customresourcedefinitions.apiextensions.k8s.io" and name == "tenants.capsule.clastix.io":
                    contents.tenant_crd = json.loads(fh.read())
                elif resource == "namespaces":
                    contents.namespace_objects[name] = json.loads(fh.read())
    return contents


def tenant_namespaces_in(contents: BackupContents) -> dict[str, str]:
    """What a backup says existed: each tenant namespace it holds (a Tenant ownerReference, else
    Capsule's tenant label) -> its Tenant."""
    out = {}
    for name, ns in contents.namespace_objects.items():
        refs = triage.tenant_refs(ns)
        tenant = (refs[0].get("name") if refs else None) or \
            ((ns.get("metadata") or {}).get("labels") or {}).get(triage.TENANT_LABEL)
        if tenant:
            out[name] = tenant
    return dict(sorted(out.items()))


def owner_templates_in(contents: BackupContents) -> dict[str, dict[str, Any]]:
    """Per tenant namespace in a backup, its Tenant ownerReference as Capsule wrote it, less the UID:
    re-adoption writes the same form, with the live Tenant's UID."""
    out = {}
    for name, ns in contents.namespace_objects.items():
        refs = triage.tenant_refs(ns)
        if refs:
            out[name] = {k: v for k, v in refs[0].items() if k != "uid"}
    return dict(sorted(out.items()))


def merge_known(witnessed: Mapping[str, str], from_backup: Mapping[str, str],
                protected: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """What existed before the incident: what responder witnessed (its journal and shadow copy) first,
    then what the backup adds (namespaces responder never saw: it was not running when they went).
    Returns (everything known, the part only the backup knows). Protected namespaces are never
    restored by responder."""
    skip = set(protected)
    added = {ns: t for ns, t in from_backup.items() if ns not in witnessed and ns not in skip}
    known = {ns: t for ns, t in witnessed.items() if ns not in skip} | added
    return dict(sorted(known.items())), dict(sorted(added.items()))


def evidence_refusal(backup: Mapping[str, Any], contents: BackupContents) -> str | None:
    """Why a backup cannot tell what existed before the incident, or None."""
    labels = (backup.get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") == "responder":
        return "responder's own rescue backup (of frozen namespaces only), not a record of the cluster"
    if not tenant_namespaces_in(contents):
        return "holds no tenant namespace (taken before there were any, or after they were lost)"
    return None


def restorable_counts(contents: BackupContents, namespace: str) -> dict[str, int]:
    """Per resource, the objects a restore must bring back: not auto-created, not owned by a
    controller (those are recreated by their owners, with new names)."""
    counts: dict[str, int] = {}
    for resource, items in (contents.namespaces.get(namespace) or {}).items():
        n = sum(1 for o in items if (resource, o["metadata"]["name"]) not in AUTO_CREATED
                and not o["metadata"].get("ownerReferences"))
        if n:
            counts[resource] = n
    return dict(sorted(counts.items()))


def counts_short(have: Mapping[str, int], want: Mapping[str, int]) -> dict[str, int]:
    """Per resource, how many objects `have` lacks of `want`."""
    return {r: n - have.get(r, 0) for r, n in sorted(want.items()) if have.get(r, 0) < n}


@dataclass(frozen=True)
class RestoreGroup:
    """One Velero Restore: `namespaces` from `backup`. A fill restore runs after the rescue one and brings
    back only what the rescue backup lacks (existing objects are never overwritten)."""
    name: str
    backup: str
    namespaces: list[str]
    fill: int = 0  # objects the rescue backup lacks in these namespaces (fill restores only)

    def describe(self) -> str:
        shown = f"{', '.join(self.namespaces[:3])}{', ...' if len(self.namespaces) > 3 else ''}"
        if self.fill:
            return (f"create Velero Restore {self.name} from backup {self.backup} to fill in {self.fill} objects "
                    f"the rescue backup lacks (deleted before the breaker held) in {len(self.namespaces)} "
                    f"namespaces ({shown}); existing objects are never overwritten")
        return (f"create Velero Restore {self.name} from backup {self.backup}: {len(self.namespaces)} namespaces "
                f"({shown}); existing objects are never overwritten")


def plan_restores(base: str, *, lost: Iterable[str], backup: str | None, counts: Mapping[str, Mapping[str, int]],
                  stuck: Iterable[str], rescue_backup: str | None, rescued: Iterable[str],
                  rescue_counts: Mapping[str, Mapping[str, int]] | None) -> tuple[list[RestoreGroup], list[str]]:
    """The Restores to create, in order, and the lost namespaces no backup holds.

    Namespaces the rescue backup holds come from it (their content as of the incident); the rest from
    the chosen backup. The namespace controller may have deleted part of a rescued namespace's content
    before the breaker froze it, so where the rescue holds fewer objects than the chosen backup (or its
    contents are unknown), a second Restore from the chosen backup fills in the rest after it."""
    lost, stuck = set(lost), set(stuck)
    rescued = set(rescued) - stuck if rescue_backup else set()
    groups: list[RestoreGroup] = []
    if rescued:
        groups.append(RestoreGroup(f"{base}-rescue", rescue_backup or "", sorted(rescued)))
    others = sorted(lost - stuck - rescued)
    if others and backup:
        groups.append(RestoreGroup(base, backup, others))
    if rescued and backup:
        known = rescue_counts or {}
        # Unknown rescue contents: fill in all the chosen backup holds (nothing existing is overwritten).
        short = {ns: sum(counts_short(known.get(ns) or {}, counts.get(ns) or {}).values()) for ns in sorted(rescued)}
        short = {ns: n for ns, n in short.items() if n}
        if short:
            groups.append(RestoreGroup(f"{base}-fill", backup, sorted(short), fill=sum(short.values())))
    covered = {ns for g in groups for ns in g.namespaces}
    return groups, sorted(lost - covered)


def parse_restore_results(data: bytes) -> dict[str, list[str]]:
    """Velero's restore results file (gzip JSON {warnings, errors} each {velero, cluster, namespaces})
    as flat lists of messages in words: "<namespace>: <message>"."""
    doc = json.loads(gzip.decompress(data))
    out: dict[str, list[str]] = {}
    for kind in ("warnings", "errors"):
        result = doc.get(kind) or {}
        lines = [f"velero: {m}" for m in result.get("velero") or []]
        lines += [f"cluster: {m}" for m in result.get("cluster") or []]
        for ns, messages in sorted((result.get("namespaces") or {}).items()):
            lines += [f"{ns}: {m}" for m in messages]
        out[kind] = lines
    return out


# -- Tenants and re-adoption -----------------------------------------------------------------------

_TENANT_META_KEEP = ("name", "labels", "annotations")


def tenant_for_create(tenant: Mapping[str, Any]) -> dict[str, Any]:
    """A Tenant as it is created again: spec, name, labels and annotations; no UID, status,
    finalizers or owner references (the new object gets a new UID)."""
    meta = tenant.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    out: dict[str, Any] = {"apiVersion": tenant.get("apiVersion") or TENANT_API_VERSION, "kind": "Tenant",
                           "metadata": {k: copy.deepcopy(meta[k]) for k in _TENANT_META_KEEP if meta.get(k)},
                           "spec": copy.deepcopy(tenant.get("spec") or {})}
    if annotations:
        out["metadata"]["annotations"] = annotations
    else:
        out["metadata"].pop("annotations", None)
    return out


def crd_for_create(crd: Mapping[str, Any]) -> dict[str, Any]:
    meta = crd.get("metadata") or {}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {k: copy.deepcopy(meta[k]) for k in _TENANT_META_KEEP if meta.get(k)},
            "spec": copy.deepcopy(crd.get("spec") or {})}


def owner_reference(tenant: Mapping[str, Any], template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ownerReference Capsule writes on a tenant namespace, pointing at this Tenant's UID. The
    template is the reference recorded before the incident (same fields, old UID)."""
    meta = tenant["metadata"]
    ref = {"apiVersion": TENANT_API_VERSION, "kind": "Tenant", "name": meta["name"],
           "controller": True, "blockOwnerDeletion": True}
    if template:
        ref = {k: v for k, v in template.items() if k != "uid"} | {"name": meta["name"]}
    ref["uid"] = meta["uid"]
    return ref


def readopt_patch(ns: Mapping[str, Any], tenant: Mapping[str, Any],
                  template: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """JSON patch that makes `tenant` the namespace's owner again and sets the tenant label; guarded
    by the namespace's UID. Empty when it is already adopted. Other owners are kept; references to
    a Tenant of another UID (dangling) are replaced."""
    meta = ns.get("metadata") or {}
    name = tenant["metadata"]["name"]
    ref = owner_reference(tenant, template)
    refs = list(meta.get("ownerReferences") or [])
    labels = meta.get("labels") or {}
    already = any(triage.is_tenant_ref(r) and r.get("uid") == ref["uid"] for r in refs)
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]}]
    if not already:
        kept = [r for r in refs if not triage.is_tenant_ref(r)]
        ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": kept + [ref]})
    if labels.get(triage.TENANT_LABEL) != name:
        if not labels:
            ops.append({"op": "add", "path": "/metadata/labels", "value": {triage.TENANT_LABEL: name}})
        else:
            ops.append({"op": "add", "path": "/metadata/labels/" + triage.TENANT_LABEL.replace("/", "~1"),
                        "value": name})
    return ops if len(ops) > 1 else []


def dangling_tenant_references(namespaces: Iterable[Mapping[str, Any]],
                               tenants: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per namespace, its Tenant ownerReferences that match no live Tenant by name and UID: once Capsule
    and the garbage collector run freely, the garbage collector deletes a namespace whose only owners
    these are. The invariant a recovery must end on is that this is empty, cluster-wide."""
    out: dict[str, list[str]] = {}
    for ns in namespaces:
        meta = ns.get("metadata") or {}
        bad = []
        for ref in triage.tenant_refs(ns):
            tenant = tenants.get(ref.get("name") or "")
            live_uid = ((tenant or {}).get("metadata") or {}).get("uid")
            if tenant is None or ((tenant.get("metadata") or {}).get("deletionTimestamp")):
                bad.append(f"Tenant {ref.get('name')!r} (uid {ref.get('uid')}): no such live Tenant")
            elif live_uid != ref.get("uid"):
                bad.append(f"Tenant {ref.get('name')!r} (uid {ref.get('uid')}): the live one has uid {live_uid}")
        if bad:
            out[meta.get("name", "")] = bad
    return dict(sorted(out.items()))


def adopted_by(ns: Mapping[str, Any], tenant: Mapping[str, Any]) -> bool:
    uid = tenant["metadata"]["uid"]
    meta = ns.get("metadata") or {}
    return (any(triage.is_tenant_ref(r) and r.get("uid") == uid for r in meta.get("ownerReferences") or [])
            and (meta.get("labels") or {}).get(triage.TENANT_LABEL) == tenant["metadata"]["name"])


# -- bringing Capsule back -------------------------------------------------------------------------

def webhook_spec(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What must compare equal before and after an incident: every webhook as configured."""
    return copy.deepcopy(list(obj.get("webhooks") or []))


def webhook_differences(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of webhook configurations ("<Kind>/<name>") that differ or are missing."""
    diffs = []
    for key, obj in sorted(before.items()):
        now = after.get(key)
        if now is None:
            diffs.append(f"{key}: missing")
        elif webhook_spec(now) != webhook_spec(obj):
            diffs.append(f"{key}: webhooks differ")
    return diffs


def tenants_not_reconciled(known: Mapping[str, str], namespaces: Mapping[str, Any],
                           tenants: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The Tenants (of `known`: namespace -> Tenant) that do not own their namespaces again: absent, being
    deleted, or whose status does not list every known namespace of theirs that exists (`namespaces`, by
    name). A Tenant being deleted never counts, whatever its status lists: Capsule >= 0.13's finalizer
    deletes every namespace it lists, the moment nothing refuses the DELETE any more."""
    pending = []
    for name in sorted(set(known.values())):
        tenant = tenants.get(name) or {}
        expected = {ns for ns, t in known.items() if t == name and ns in namespaces}
        deleting = bool((tenant.get("metadata") or {}).get("deletionTimestamp"))
        if (deleting and expected) or not expected <= set(tenant_lists_namespaces(tenant)):
            pending.append(name)
    return pending


def namespaces_listed(known: Mapping[str, str], namespaces: Mapping[str, Any],
                      tenants: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """(listed, expected): of the known namespaces that exist (`namespaces`, by name), how many their Tenant's
    status lists, a Tenant being deleted listing none. Capsule reconciling makes `listed` grow."""
    expected = [ns for ns in known if ns in namespaces]
    listed = 0
    by_tenant: dict[str, set[str]] = {}
    for ns in expected:
        name = known[ns]
        if name not in by_tenant:
            tenant = tenants.get(name) or {}
            deleting = bool((tenant.get("metadata") or {}).get("deletionTimestamp"))
            by_tenant[name] = set() if deleting else set(tenant_lists_namespaces(tenant))
        listed += ns in by_tenant[name]
    return listed, len(expected)


@dataclass
class ReconcileClock:
    """When to stop waiting for Capsule to reconcile: after `idle` seconds with no progress (the count of
    namespaces listed never grew), or after `cap` seconds in all, whichever comes first."""

    idle: float
    cap: float
    started: float
    best: int = -1
    progressed_at: float = 0.0

    def observe(self, listed: int, now: float) -> bool:
        """Record a count; True when it is higher than any seen before (progress)."""
        if listed > self.best:
            self.best, self.progressed_at = listed, now
            return True
        return False

    def expired(self, now: float) -> bool:
        since = self.progressed_at if self.best >= 0 else self.started
        return now - since >= self.idle or now - self.started >= self.cap


def reconcile_cap(idle: float, expected: int, per_namespace: float) -> float:
    """The overall limit on waiting for Capsule: the idle timeout plus an allowance per namespace to list."""
    return idle + max(0, expected) * max(0.0, per_namespace)


def tenant_lists_namespaces(tenant: Mapping[str, Any]) -> list[str]:
    """The namespaces a Tenant's status lists (Capsule 0.12: status.namespaces; 0.14 also status.spaces)."""
    status = tenant.get("status") or {}
    names = list(status.get("namespaces") or [])
    for space in status.get("spaces") or []:
        if isinstance(space, Mapping) and space.get("name") and space["name"] not in names:
            names.append(space["name"])
    return names
