"""The delete gate: whether a namespace DELETE sent by the garbage collector or by Capsule may pass now.

A burst of Tenant deletions is the cascade, but detection can only open at the burst's threshold (the third
deletion within the window), while the garbage collector (Capsule 0.12: a namespace's ownerReference to its
Tenant) and Capsule's Tenant finalizer (0.14) start deleting the first Tenants' namespaces milliseconds after
each Tenant's deletion. The gate holds those DELETEs for the detection window: a burst then becomes an incident
(and the namespace hold) before any of its namespaces is lost, and one Tenant offboarded alone completes once
its deletion is older than the window (the garbage collector and Capsule retry a denied DELETE with back-off).

`decide` is pure: the request (who deletes which namespace, with its Tenant label and ownerReferences as the
AdmissionReview's oldObject shows them), the guard's in-memory picture and a clock in, a GateDecision with its
`why` out. No API call: it answers on the API server's admission path.

The picture's times and `now` must come from the same clock (the guard's watch events' arrival times).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from responder.incident import triage
from responder.incident.detect import Facts

GARBAGE_COLLECTOR = "system:serviceaccount:kube-system:generic-garbage-collector"
CAPSULE_USER = "system:serviceaccount:capsule-system:capsule"
DEFAULT_WINDOW_S = 10.0  # the runbook's detection window (spec.detection.window)

ALLOW_NOT_GATED = "not-gated"  # not a namespace DELETE, or a user the gate does not select
ALLOW_NOT_TENANT = "not-tenant-namespace"
ALLOW_NOT_LISTED = "picture-not-listed"
ALLOW_OFFBOARDED = "offboarded"
ALLOW_OTHER_OWNER = "other-owner"
DENY_INCIDENT = "incident-open"
DENY_RECENT = "tenant-deleted-recently"
DENY_NOT_SEEN = "tenant-not-seen-deleted"


@dataclass(frozen=True)
class GateSettings:
    window_seconds: float = DEFAULT_WINDOW_S
    users: frozenset[str] = frozenset({GARBAGE_COLLECTOR, CAPSULE_USER})


@dataclass(frozen=True)
class TenantSeen:
    """A Tenant as the guard's picture holds it: present (alive or being deleted)."""

    uid: str
    deleting: bool = False


@dataclass(frozen=True)
class GatePicture:
    """What the gate decides from, read from the guard's watches (no request)."""

    listed_at: float | None  # when every first list was in; None: not yet
    tenants: Mapping[str, TenantSeen] = field(default_factory=dict)  # name -> present Tenant
    deleted_at: Mapping[str, float] = field(default_factory=dict)  # Tenant UID -> first seen being deleted
    incident: str = ""  # the open incident's name, "" when none


def picture_from_facts(facts: Facts, *, listed_at: float | None, incident: str = "") -> GatePicture:
    """The gate's picture from the detector's facts (the same watches, the same clock)."""
    tenants = {name: TenantSeen(t.uid, t.deleting) for name, t in facts.tenants.items()}
    return GatePicture(listed_at if facts.deciding else None, tenants, dict(facts.offboarded), incident)


@dataclass(frozen=True)
class GateRequest:
    """A DELETE as the admission request shows it; `namespace` is the oldObject (the Namespace as stored)."""

    username: str
    operation: str
    resource: str  # "namespaces" for the core group's Namespaces; else "group/resource"
    name: str
    namespace: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    kind: str
    why: str
    retry_after_seconds: float | None = None  # a deny's remaining hold, when known

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "kind": self.kind, "why": self.why,
                "retry_after_seconds": self.retry_after_seconds}

    def line(self) -> str:
        return f"{'ALLOW' if self.allowed else 'DENY'} {self.kind}: {self.why}"


def _tenants_of(namespace: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    """(Tenant ownerReferences as (name, uid), the Tenant label or "")."""
    refs = [(r.get("name") or "", r.get("uid") or "") for r in triage.tenant_refs(namespace)]
    label = ((namespace.get("metadata") or {}).get("labels") or {}).get(triage.TENANT_LABEL) or ""
    return refs, label


def _age(now: float, since: float) -> float:
    # A clock stepped back reads as "just now": holding a little longer is the safe side.
    return max(0.0, now - since)


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 100 else f"{value:.0f}s"


def decide(request: GateRequest, picture: GatePicture, settings: GateSettings, now: float) -> GateDecision:
    """Allow or deny one namespace DELETE, and say why (pure)."""
    if request.operation != "DELETE" or request.resource != "namespaces":
        return GateDecision(True, ALLOW_NOT_GATED, f"{request.operation} {request.resource}: the gate only "
                            "decides namespace DELETEs")
    if request.username not in settings.users:
        return GateDecision(True, ALLOW_NOT_GATED, f"namespace {request.name} deleted by {request.username or '?'}: "
                            "not a user the gate holds (only the garbage collector and Capsule)")
    refs, label = _tenants_of(request.namespace)
    if not refs and not label:
        return GateDecision(True, ALLOW_NOT_TENANT, f"namespace {request.name} has no Tenant ownerReference nor "
                            f"{triage.TENANT_LABEL} label: not a tenant namespace")
    tenant_names = ", ".join(sorted({n for n, _ in refs} | ({label} if label else set())))
    if picture.incident:
        return GateDecision(False, DENY_INCIDENT, f"responder holds namespace {request.name} (Tenant {tenant_names}): "
                            f"incident {picture.incident} is open")
    if picture.listed_at is None:
        # A guard still listing knows no more than a guard that is down, and a guard that is down allows
        # (failurePolicy Ignore): holding here would only make a restart change the outcome.
        return GateDecision(True, ALLOW_NOT_LISTED, f"namespace {request.name} (Tenant {tenant_names}): the guard's "
                            "picture is not listed yet, nothing to decide from")
    if not refs and request.username == GARBAGE_COLLECTOR:
        # The collector deletes only for a dangling owner, and this namespace names no Tenant as one.
        return GateDecision(True, ALLOW_OTHER_OWNER, f"namespace {request.name} (labelled for Tenant {label}, no "
                            "Tenant ownerReference): the garbage collector deletes it for another owner")
    window = settings.window_seconds
    held: list[tuple[float, str]] = []  # (remaining hold, why) per Tenant still within the window
    unseen: list[str] = []
    old: list[str] = []
    owners: Iterable[tuple[str, str]] = refs or [(label, "")]  # label only: the Tenant by name, any UID
    for name, uid in owners:
        present = picture.tenants.get(name)
        same = present is not None and (not uid or present.uid == uid)
        alive = same and present is not None and not present.deleting
        uid = uid or (present.uid if present is not None else "")
        since = picture.deleted_at.get(uid) if uid else None
        if since is None and alive:
            unseen.append(f"{name} (alive in the guard's picture: the picture is behind)")
            continue
        if since is None:
            # Never seen deleted: absent or another UID now (gone before the picture was listed, so its deletion
            # is at least that old, or the watch has not delivered it yet), or being deleted since then.
            since = picture.listed_at
            if _age(now, since) < window:
                state = "being deleted, its start not recorded" if same else "gone, not seen deleted"
                unseen.append(f"{name} ({state}; the picture was listed {_seconds(_age(now, since))} ago)")
                continue
        age = _age(now, since)
        if age < window:
            held.append((window - age, f"{name} deleted {_seconds(age)} ago"))
        else:
            old.append(f"{name} deleted {_seconds(age)} ago")
    if unseen:
        return GateDecision(False, DENY_NOT_SEEN, f"responder holds namespace {request.name}: Tenant "
                            f"{'; '.join(unseen)}; held until the guard sees the deletion and {window:g}s pass "
                            f"(the detection window for a burst of Tenant deletions)")
    if held:
        remaining = max(r for r, _ in held)
        return GateDecision(False, DENY_RECENT, f"responder holds namespace {request.name}: Tenant "
                            f"{'; '.join(w for _, w in held)}, within the {window:g}s detection window for a burst "
                            f"of Tenant deletions; held {_seconds(remaining)} more, then offboarding proceeds",
                            round(remaining, 3))
    return GateDecision(True, ALLOW_OFFBOARDED, f"namespace {request.name}: Tenant {'; '.join(old)}, older than the "
                        f"{window:g}s detection window and no incident open: offboarding proceeds")
