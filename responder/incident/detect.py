"""Detection: turn watch events into the decision "an incident has started", as early as possible.

Signals, earliest first:
- crd-deleting: the Tenant CRD got a deletionTimestamp (MODIFIED), or vanished;
- tenants-vanished: Tenants deleted (or turned Terminating) in a burst, or the Tenant type is gone
  while namespaces still point at Tenants (a late start);
- namespace-terminating: a namespace that belongs to a Tenant turned Terminating.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from responder.incident import triage
from responder.cluster.watch import ADDED, DELETED, MODIFIED, TYPE_GONE, WatchEvent

CRD_DELETING = "crd-deleting"
TENANTS_VANISHED = "tenants-vanished"
NAMESPACE_TERMINATING = "namespace-terminating"


@dataclass(frozen=True)
class Trigger:
    kind: str
    reason: str
    event_received: float  # epoch seconds the triggering event arrived
    objects: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "event_received": self.event_received,
                "objects": list(self.objects)}


@dataclass
class Detector:
    tenant_burst: int = 3  # this many Tenants going within the window is no routine clean-up
    window_seconds: float = 10.0
    _tenant_hits: deque = field(default_factory=deque)

    def feed(self, event: WatchEvent) -> Trigger | None:
        meta = event.object.get("metadata") or {}
        if event.resource == "crd":
            if event.type == DELETED or (event.type in (ADDED, MODIFIED) and meta.get("deletionTimestamp")):
                return Trigger(CRD_DELETING, f"the Tenant CRD {meta.get('name', '')} is being deleted "
                               f"(deletionTimestamp {meta.get('deletionTimestamp', 'n/a')})",
                               event.received, (meta.get("name", ""),))
        elif event.resource == "tenants":
            if event.type == TYPE_GONE:
                return Trigger(TENANTS_VANISHED, "the Tenant resource type disappeared (CRD deleted)", event.received)
            if event.type == DELETED or (event.type in (ADDED, MODIFIED) and meta.get("deletionTimestamp")):
                now = event.received
                self._tenant_hits.append((now, meta.get("name", "")))
                while self._tenant_hits and now - self._tenant_hits[0][0] > self.window_seconds:
                    self._tenant_hits.popleft()
                if len(self._tenant_hits) >= self.tenant_burst:
                    names = tuple(n for _, n in self._tenant_hits)
                    return Trigger(TENANTS_VANISHED, f"{len(names)} Tenants deleted within "
                                   f"{self.window_seconds:.0f}s", event.received, names)
        elif event.resource == "namespaces":
            if event.type in (ADDED, MODIFIED) and meta.get("deletionTimestamp"):
                labels = meta.get("labels") or {}
                if triage.tenant_refs(event.object) or labels.get(triage.TENANT_LABEL):
                    return Trigger(NAMESPACE_TERMINATING, f"tenant namespace {meta.get('name')} turned Terminating",
                                   event.received, (meta.get("name", ""),))
        return None


def late_start_trigger(view: triage.ClusterView) -> Trigger | None:
    """Responder started after the fact: no Tenant CRD (or it is deleting) and namespaces still carry
    Tenant references whose owners are gone."""
    if view.crd_present and not view.crd_deleting:
        return None
    at_risk = [row.name for row in triage.triage(view) if row.state == triage.NsState.AT_RISK]
    if not at_risk:
        return None
    return Trigger(TENANTS_VANISHED, f"Tenant CRD {'deleting' if view.crd_present else 'absent'} and "
                   f"{len(at_risk)} namespaces carry dangling Tenant references", time.time(), tuple(at_risk))
