"""Detection: tell the cascade from routine tenant work, event by event, and say why.

Every watch event gets a Decision:
- `incident`: the cascade has started; the incident opens now (first write within 50 ms);
- `notice`: odd but not the cascade (one Tenant deleted, one namespace whose Tenant is gone): reported,
  nothing written;
- `routine`: what owners and admins do every day: reported (or only counted, for plain updates),
  nothing written.

Incidents, earliest signal first:
- crd-deleting: the Tenant CRD got a deletionTimestamp, or vanished (the Tenant type is gone);
- tenants-rebuilt: a Tenant came back under the name of a dead one (new UID) while live namespaces still
  reference the old UID: the CRD was deleted and re-applied, and the garbage collector now deletes them;
- tenants-vanished: Tenants deleted in a burst (tenantBurst within window; strict: every one);
- namespace-terminating: a tenant namespace turned Terminating while the CRD is deleting or gone, or
  namespaces turned Terminating because their Tenant is gone (orphanedNamespaces within window) while
  responder never saw that Tenant being deleted.
Routine: an owner deleting its namespaces (Tenant alive: same UID, not deleting); the namespaces of a
Tenant being offboarded (Capsule >= 0.13 or the garbage collector deletes them); Capsule restarted or
upgraded (replicas, webhook configurations, the CRD updated in place); namespaces created or labelled.

The Detector keeps what the watches have shown (the CRD's state, each Tenant's UID and whether it is being
deleted, each live namespace's Tenant references, recent deletions) current in O(1) per event, with no
request: detection sits on the hot path. `classify` decides from those facts alone (pure).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from responder.cluster.watch import ADDED, DELETED, SYNCED, TYPE_GONE, WatchEvent
from responder.incident import triage
from responder.runbook.schema import DetectionSettings

CRD_DELETING = "crd-deleting"
TENANTS_VANISHED = "tenants-vanished"
TENANTS_REBUILT = "tenants-rebuilt"
NAMESPACE_TERMINATING = "namespace-terminating"

INCIDENT, NOTICE, ROUTINE = "incident", "notice", "routine"
DETECTION_LOGGER = "responder.detection"  # every notable decision; INFO (routine) shown without -v
# The streams whose first list must be in before a change can be told apart from what was already there.
DECIDING_STREAMS = frozenset({"crd", "tenants", "namespaces"})
# How long a Tenant seen deleted explains the loss of its namespaces (the GC takes seconds; a slow
# namespace controller, minutes).
OFFBOARDING_MEMORY_S = 900.0


@dataclass(frozen=True)
class Trigger:
    kind: str
    reason: str
    event_received: float  # epoch seconds the triggering event arrived
    objects: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "event_received": self.event_received,
                "objects": list(self.objects)}


@dataclass(frozen=True)
class Decision:
    verdict: str  # incident | notice | routine
    kind: str  # for an incident the trigger kind; else what was seen (owner-deleted-namespace, ...)
    reason: str
    event_received: float
    objects: tuple[str, ...] = ()
    quiet: bool = False  # a plain update: counted, not listed one by one

    @property
    def is_incident(self) -> bool:
        return self.verdict == INCIDENT

    def trigger(self) -> Trigger:
        return Trigger(self.kind, self.reason, self.event_received, self.objects)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "kind": self.kind, "reason": self.reason,
                "event_received": self.event_received, "objects": list(self.objects)}

    def line(self) -> str:
        return f"{self.verdict.upper()} {self.kind}: {self.reason}"


@dataclass(frozen=True)
class TenantFact:
    uid: str
    deleting: bool


@dataclass
class Facts:
    """What the watches have shown so far; `apply` keeps it current, `classify` only reads it."""

    synced: set[str] = field(default_factory=set)
    crd_present: bool | None = None  # None until the CRD stream has listed
    crd_deleting: bool = False
    tenants: dict[str, TenantFact] = field(default_factory=dict)
    # Live (not Terminating) namespace -> its Tenant references as (name, uid).
    namespace_refs: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # Tenant name -> uid -> how many live namespaces reference it (the rebuilt CRD's fingerprint).
    live_refs: dict[str, Counter] = field(default_factory=dict)
    deleting_tenants: set[str] = field(default_factory=set)  # UIDs whose deletion was counted
    terminating_namespaces: set[str] = field(default_factory=set)  # UIDs already decided on
    tenant_deletions: deque = field(default_factory=deque)  # (received, name), the burst window
    offboarded: dict[str, float] = field(default_factory=dict)  # Tenant UID -> when seen being deleted
    orphaned: deque = field(default_factory=deque)  # (received, namespace), the orphaned window
    capsule_replicas: int | None = None

    @property
    def deciding(self) -> bool:
        """Every first list is in: a change is a change, not what was there before responder looked."""
        return DECIDING_STREAMS <= self.synced

    def apply(self, event: WatchEvent, settings: DetectionSettings) -> None:
        meta = event.object.get("metadata") or {}
        now = event.received
        if event.type == SYNCED:
            self.synced.add(event.resource)
            if event.resource == "crd" and self.crd_present is None:
                self.crd_present = False
            return
        if event.resource == "crd":
            self.crd_present = event.type != DELETED
            self.crd_deleting = event.type != DELETED and bool(meta.get("deletionTimestamp"))
        elif event.resource == "tenants":
            if event.type == TYPE_GONE:
                self.synced.add("tenants")  # nothing to list: the type is gone
                return
            name, uid = meta.get("name", ""), meta.get("uid", "")
            if _going(event):
                if uid not in self.deleting_tenants:
                    if self.deciding:
                        self.tenant_deletions.append((now, name))
                    self.offboarded[uid] = now  # even one being deleted at start: its namespaces follow it
                self.deleting_tenants.add(uid)
            if event.type == DELETED:
                self.tenants.pop(name, None)
                self.deleting_tenants.discard(uid)
            else:
                self.tenants[name] = TenantFact(uid, bool(meta.get("deletionTimestamp")))
            _trim(self.tenant_deletions, now, settings.window_seconds)
            for old_uid, at in list(self.offboarded.items()):
                if now - at > OFFBOARDING_MEMORY_S:
                    del self.offboarded[old_uid]
        elif event.resource == "namespaces":
            name, uid = meta.get("name", ""), meta.get("uid", "")
            self._forget_refs(name)
            if event.type == DELETED:
                self.terminating_namespaces.discard(uid)
            elif meta.get("deletionTimestamp"):
                if self.deciding and uid not in self.terminating_namespaces and _orphaned_by(event, self):
                    self.orphaned.append((now, name))
                self.terminating_namespaces.add(uid)
            else:
                refs = tuple((r.get("name", ""), r.get("uid", "")) for r in triage.tenant_refs(event.object))
                if refs:
                    self.namespace_refs[name] = refs
                    for tenant, ref_uid in refs:
                        self.live_refs.setdefault(tenant, Counter())[ref_uid] += 1
            _trim(self.orphaned, now, settings.window_seconds)
        elif event.resource == "deployment" and event.type != DELETED:
            self.capsule_replicas = int((event.object.get("spec") or {}).get("replicas", 1))
        elif event.resource == "deployment":
            self.capsule_replicas = None

    def _forget_refs(self, namespace: str) -> None:
        for tenant, ref_uid in self.namespace_refs.pop(namespace, ()):
            counts = self.live_refs.get(tenant)
            if counts is not None:
                counts[ref_uid] -= 1
                if counts[ref_uid] <= 0:
                    del counts[ref_uid]
                if not counts:
                    del self.live_refs[tenant]


def _trim(window: deque, now: float, seconds: float) -> None:
    while window and now - window[0][0] > seconds:
        window.popleft()


def _going(event: WatchEvent) -> bool:
    """The object is being deleted: DELETED, or a deletionTimestamp."""
    return event.type == DELETED or bool((event.object.get("metadata") or {}).get("deletionTimestamp"))


def _owner_status(name: str, uid: str, facts: Facts) -> str:
    """As the garbage collector sees a Tenant reference: alive, dying (same UID, being deleted) or gone
    (not found, or found with another UID)."""
    tenant = facts.tenants.get(name)
    if tenant is None or tenant.uid != uid:
        return triage.GONE
    return triage.DYING if tenant.deleting else triage.ALIVE


def _orphaned_by(event: WatchEvent, facts: Facts) -> list[tuple[str, str]]:
    """The namespace's Tenant references that are gone and whose Tenant responder never saw being
    deleted (a Tenant seen deleted explains the loss of its namespaces: offboarding). [] when any Tenant
    owner is alive or dying: its owner, an admin or Capsule deletes it."""
    refs = [(r.get("name", ""), r.get("uid", "")) for r in triage.tenant_refs(event.object)]
    statuses = [_owner_status(n, u, facts) for n, u in refs]
    if not refs or any(s != triage.GONE for s in statuses):
        return []
    return [(n, u) for n, u in refs if u not in facts.offboarded]


def classify(event: WatchEvent, facts: Facts, settings: DetectionSettings) -> Decision:
    """The decision on one watch event, from the facts as they were before it (pure)."""
    if event.type == SYNCED:
        return _routine(event, "listed", f"{event.resource} listed", quiet=True)
    if event.resource == "crd":
        return _classify_crd(event, facts)
    if event.resource == "tenants":
        return _classify_tenant(event, facts, settings)
    if event.resource == "namespaces":
        return _classify_namespace(event, facts, settings)
    if event.resource == "deployment":
        return _classify_deployment(event, facts)
    if event.resource in ("validatingwebhooks", "mutatingwebhooks") and facts.deciding and event.type != ADDED:
        kind = event.resource.removesuffix("webhooks")
        why = "Capsule uninstalled?" if event.type == DELETED else "Capsule reconciling or upgraded"
        return _routine(event, "webhooks-rewritten", f"{kind} webhook configuration {event.name} {event.type.lower()} "
                        f"({why} Not the cascade by itself)")
    return _routine(event, "update", f"{event.resource} {event.type.lower()}", quiet=True)


def _decision(verdict: str, event: WatchEvent, kind: str, reason: str, objects: tuple[str, ...] = (),
              quiet: bool = False) -> Decision:
    return Decision(verdict, kind, reason, event.received, objects or ((event.name,) if event.name else ()), quiet)


def _routine(event: WatchEvent, kind: str, reason: str, *, quiet: bool = False) -> Decision:
    return _decision(ROUTINE, event, kind, reason, quiet=quiet)


def _classify_crd(event: WatchEvent, facts: Facts) -> Decision:
    meta = event.object.get("metadata") or {}
    name = meta.get("name", "")
    if event.type == DELETED:
        return _decision(INCIDENT, event, CRD_DELETING, f"the Tenant CRD {name} vanished (deleted)")
    if meta.get("deletionTimestamp"):
        return _decision(INCIDENT, event, CRD_DELETING, f"the Tenant CRD {name} is being deleted "
                         f"(deletionTimestamp {meta['deletionTimestamp']})")
    if "crd" not in facts.synced:
        return _routine(event, "crd-present", f"the Tenant CRD {name} is installed", quiet=True)
    if event.type == ADDED:
        return _routine(event, "crd-installed", f"the Tenant CRD {name} was created (Capsule installed)")
    return _routine(event, "crd-updated", f"the Tenant CRD {name} was updated in place, no deletionTimestamp "
                    "(an upgrade or a re-apply)")


def _classify_tenant(event: WatchEvent, facts: Facts, settings: DetectionSettings) -> Decision:
    meta = event.object.get("metadata") or {}
    name, uid = meta.get("name", ""), meta.get("uid", "")
    if event.type == TYPE_GONE:
        if "tenants" not in facts.synced:
            return _routine(event, "no-tenant-type", "no Tenant resource type at start (Capsule not installed, "
                            "or the CRD already gone: the late-start check decides)")
        return _decision(INCIDENT, event, CRD_DELETING, "the Tenant resource type disappeared (CRD deleted)")
    if not facts.deciding:
        return _routine(event, "listed", f"Tenant {name} listed", quiet=True)
    if _going(event):
        if uid in facts.deleting_tenants:
            if event.type == DELETED:
                return _routine(event, "tenant-finalized", f"Tenant {name} is gone (its deletion was decided on "
                                "when it began)")
            return _routine(event, "tenant-deleting", f"Tenant {name} still being deleted", quiet=True)
        how = "deleted" if event.type == DELETED else "being deleted"
        if facts.crd_deleting or facts.crd_present is False:
            return _decision(INCIDENT, event, CRD_DELETING, f"Tenant {name} {how} while the Tenant CRD is "
                             f"{'being deleted' if facts.crd_deleting else 'gone'}")
        if settings.strict:
            return _decision(INCIDENT, event, TENANTS_VANISHED, f"Tenant {name} {how}: strict detection makes "
                             "every Tenant deletion an incident")
        recent = [n for at, n in facts.tenant_deletions if event.received - at <= settings.window_seconds]
        names = tuple(recent) + (name,)
        window = f"{settings.window_seconds:g}s"
        if len(names) >= settings.tenant_burst:
            return _decision(INCIDENT, event, TENANTS_VANISHED, f"{len(names)} Tenants deleted within {window} "
                             f"(threshold {settings.tenant_burst}): {', '.join(names)}", names)
        return _decision(NOTICE, event, "tenant-offboarded", f"Tenant {name} {how} ({len(names)} within {window}, "
                         f"an incident from {settings.tenant_burst}): offboarding; its namespaces go with it")
    if event.type == ADDED:
        counts = facts.live_refs.get(name) or Counter()
        stale = sum(n for ref_uid, n in counts.items() if ref_uid != uid)
        if stale:
            return _decision(INCIDENT, event, TENANTS_REBUILT, f"Tenant {name} is back with a new UID while {stale} "
                             "live namespaces still reference its old one (the Tenant CRD deleted and re-applied?): "
                             "the garbage collector deletes them")
        return _routine(event, "tenant-created", f"Tenant {name} created")
    return _routine(event, "tenant-updated", f"Tenant {name} updated", quiet=True)


def _classify_namespace(event: WatchEvent, facts: Facts, settings: DetectionSettings) -> Decision:
    meta = event.object.get("metadata") or {}
    name, uid = meta.get("name", ""), meta.get("uid", "")
    if not facts.deciding:
        return _routine(event, "listed", f"namespace {name} listed", quiet=True)
    if event.type == DELETED:
        return _routine(event, "namespace-gone", f"namespace {name} is gone", quiet=True)
    if not meta.get("deletionTimestamp"):
        what = "created" if event.type == ADDED else "updated"
        return _routine(event, f"namespace-{what}", f"namespace {name} {what}", quiet=True)
    if uid in facts.terminating_namespaces:
        return _routine(event, "namespace-terminating", f"namespace {name} still Terminating", quiet=True)
    refs = [(r.get("name", ""), r.get("uid", "")) for r in triage.tenant_refs(event.object)]
    label = (meta.get("labels") or {}).get(triage.TENANT_LABEL)
    if not refs:
        if label:
            return _routine(event, "namespace-deleted", f"namespace {name} (labelled for Tenant {label}, no Tenant "
                            "ownerReference) deleted")
        return _routine(event, "namespace-deleted", f"namespace {name} (no Tenant owner) deleted", quiet=True)
    tenants = ", ".join(sorted({n for n, _ in refs}))
    if facts.crd_deleting or facts.crd_present is False:
        return _decision(INCIDENT, event, NAMESPACE_TERMINATING, f"tenant namespace {name} turned Terminating while "
                         f"the Tenant CRD is {'being deleted' if facts.crd_deleting else 'gone'}")
    statuses = [_owner_status(n, u, facts) for n, u in refs]
    if triage.ALIVE in statuses:
        return _routine(event, "owner-deleted-namespace", f"namespace {name} deleted by its owner or an admin: "
                        f"Tenant {tenants} is alive (same UID, not being deleted)")
    if triage.DYING in statuses:
        return _routine(event, "offboarding", f"namespace {name} deleted with its Tenant {tenants}, which is being "
                        "deleted (offboarding: Capsule deletes its namespaces)")
    orphaned = _orphaned_by(event, facts)
    if not orphaned:
        return _routine(event, "offboarding", f"namespace {name} deleted after its Tenant {tenants} was deleted "
                        "(offboarding: the garbage collector deletes its namespaces)")
    recent = [n for at, n in facts.orphaned if event.received - at <= settings.window_seconds]
    names = tuple(recent) + (name,)
    why = ", ".join(f"{n} ({'not found' if n not in facts.tenants else 'another UID now'})" for n, _ in orphaned)
    window = f"{settings.window_seconds:g}s"
    if len(names) >= settings.orphaned_namespaces:
        return _decision(INCIDENT, event, NAMESPACE_TERMINATING, f"{len(names)} tenant namespaces turned Terminating "
                         f"within {window} because their Tenant is gone, never seen deleted (threshold "
                         f"{settings.orphaned_namespaces}); the latest: {name}, Tenant {why}", names)
    return _decision(NOTICE, event, "orphaned-namespace", f"namespace {name} turned Terminating: its Tenant {why} is "
                     f"gone, never seen deleted ({len(names)} within {window}, an incident from "
                     f"{settings.orphaned_namespaces})")


def _classify_deployment(event: WatchEvent, facts: Facts) -> Decision:
    if "deployment" not in facts.synced and event.type == ADDED:
        return _routine(event, "listed", f"Capsule's Deployment {event.name} listed", quiet=True)
    if event.type == DELETED:
        return _decision(NOTICE, event, "capsule-deleted", f"Capsule's Deployment {event.name} was deleted "
                         "(uninstalled?): not the cascade by itself; the Tenant CRD's deletion would be")
    replicas = int((event.object.get("spec") or {}).get("replicas", 1))
    if event.type == ADDED:
        return _routine(event, "capsule-installed", f"Capsule's Deployment {event.name} created with {replicas} "
                        "replica(s)")
    if replicas != facts.capsule_replicas:
        return _routine(event, "capsule-scaled", f"Capsule's Deployment scaled {facts.capsule_replicas} -> {replicas} "
                        "by someone else (a restart or an upgrade)")
    return _routine(event, "capsule-rolled", f"Capsule's Deployment {event.name} {event.type.lower()} (a rollout or "
                    "its status)", quiet=True)


@dataclass
class Detector:
    """Feeds each watch event to `classify`, then updates the facts with it."""

    settings: DetectionSettings = field(default_factory=DetectionSettings)
    facts: Facts = field(default_factory=Facts)

    def decide(self, event: WatchEvent) -> Decision:
        decision = classify(event, self.facts, self.settings)
        self.facts.apply(event, self.settings)
        return decision

    def feed(self, event: WatchEvent) -> Trigger | None:
        """The trigger when this event opens an incident, else None."""
        decision = self.decide(event)
        return decision.trigger() if decision.is_incident else None


def late_start(view: triage.ClusterView, settings: DetectionSettings = DetectionSettings()) -> Decision | None:
    """Responder started after the fact. An incident when the Tenant CRD is absent or deleting and
    namespaces still carry Tenant references; when live namespaces reference a Tenant that exists under
    another UID (the CRD re-applied); or when `orphanedNamespaces` or more reference Tenants that are not
    found. Fewer not-found references: a notice. A Tenant being deleted (offboarding): nothing."""
    rows = [row for row in triage.triage(view) if row.state == triage.NsState.AT_RISK]
    now = time.time()
    if not rows:
        return None
    names = tuple(row.name for row in rows)
    if not view.crd_present or view.crd_deleting:
        return Decision(INCIDENT, TENANTS_VANISHED, f"Tenant CRD {'deleting' if view.crd_present else 'absent'} and "
                        f"{len(rows)} namespaces carry dangling Tenant references", now, names)
    stale, missing = [], []
    for row in rows:
        for ref in row.dying_refs:
            tenant = view.tenants.get(ref.get("name") or "")
            if tenant is None:
                missing.append(row.name)
            elif (tenant.get("metadata") or {}).get("uid") != ref.get("uid"):
                stale.append(row.name)
    stale, missing = sorted(set(stale)), sorted(set(missing) - set(stale))
    if stale:
        return Decision(INCIDENT, TENANTS_REBUILT, f"{len(stale)} live namespaces reference an old UID of a Tenant "
                        "that exists under a new one (the Tenant CRD deleted and re-applied?): the garbage collector "
                        "deletes them", now, tuple(stale))
    if len(missing) >= settings.orphaned_namespaces:
        return Decision(INCIDENT, TENANTS_VANISHED, f"{len(missing)} live namespaces reference Tenants that are gone "
                        f"(threshold {settings.orphaned_namespaces})", now, tuple(missing))
    if missing:
        return Decision(NOTICE, "orphaned-namespace", f"{len(missing)} namespace(s) reference a Tenant that is gone "
                        f"({', '.join(missing)}; an incident from {settings.orphaned_namespaces})", now, tuple(missing))
    return None


def late_start_trigger(view: triage.ClusterView, settings: DetectionSettings = DetectionSettings()) -> Trigger | None:
    decision = late_start(view, settings)
    return decision.trigger() if decision is not None and decision.is_incident else None
