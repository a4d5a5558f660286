"""Trigger the incident on a cluster and measure the cascade: used by lab tests, drills and benchmarks."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.watch import ADDED, DELETED, MODIFIED, ResourceWatch, events_into

TENANT_CRD = "tenants.capsule.clastix.io"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{TENANT_CRD}"


@dataclass
class CascadeTimeline:
    """When each watched namespace turned Terminating or vanished (epoch seconds, as received)."""

    watched: int
    hit: dict[str, float] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    start: float | None = None  # when the incident was triggered; offsets are measured from it

    def offsets(self) -> list[float]:
        base = self.start or 0.0
        return sorted(max(0.0, t - base) for t in self.hit.values())

    @property
    def first_deletion(self) -> float | None:
        return self.offsets()[0] if self.hit else None

    @property
    def last_deletion(self) -> float | None:
        return self.offsets()[-1] if self.hit else None

    def to_json(self) -> dict[str, Any]:
        return {"namespaces_watched": self.watched, "terminating_or_gone": len(self.hit), "gone": len(self.gone),
                "first_deletion_s": _r(self.first_deletion), "last_deletion_s": _r(self.last_deletion)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def delete_tenant_crd(client: KubeClient) -> float:
    """Start the incident; returns the wall-clock time the DELETE was sent."""
    sent = time.time()
    await client.delete(CRD_PATH)
    return sent


async def observe_cascade(client: KubeClient, namespaces: set[str], *, duration: float,
                          settle_when_all_hit: bool = True) -> CascadeTimeline:
    """Watch namespaces for `duration` seconds; record when each watched namespace turned Terminating
    or disappeared. The caller sets `timeline.start` once it triggers the incident."""
    timeline = CascadeTimeline(watched=len(namespaces))
    watch = ResourceWatch(client, "/api/v1/namespaces", resource="namespaces", stall_timeout=30)
    queue: asyncio.Queue = asyncio.Queue()
    pump = asyncio.create_task(events_into(watch, queue))
    deadline = time.time() + duration

    def mark(name: str, at: float, gone: bool) -> None:
        if name not in namespaces:
            return
        if gone:
            timeline.gone.add(name)
        timeline.hit.setdefault(name, at)

    synced = False
    try:
        while time.time() < deadline:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=max(0.05, deadline - time.time()))
            except asyncio.TimeoutError:
                break
            if event.type == "SYNCED":
                if not synced:
                    synced = True
                    present = {k[1] for k in watch.store}
                    for ns in namespaces - present:
                        mark(ns, event.received, gone=True)
                continue
            if event.type == DELETED:
                mark(event.name, event.received, gone=True)
            elif event.type in (ADDED, MODIFIED) and (event.object.get("metadata") or {}).get("deletionTimestamp"):
                mark(event.name, event.received, gone=False)
            if settle_when_all_hit and len(timeline.hit) == len(namespaces):
                break
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    return timeline


def namespace_deleters(audit_log: Path, *, since: float, namespaces: set[str] | None = None) -> dict[str, int]:
    """Who deleted namespaces after `since` (from the apiserver audit log): user -> count of DELETEs
    that were persisted (not dry-run, 2xx)."""
    counts: dict[str, int] = {}
    for event in read_audit(audit_log, since=since):
        ref = event.get("objectRef") or {}
        if event.get("verb") != "delete" or ref.get("resource") != "namespaces" or ref.get("subresource"):
            continue
        if namespaces is not None and ref.get("name") not in namespaces:
            continue
        if "dryRun=" in event.get("requestURI", "") or (event.get("responseStatus") or {}).get("code", 0) >= 300:
            continue
        user = (event.get("impersonatedUser") or event.get("user") or {}).get("username", "?")
        counts[user] = counts.get(user, 0) + 1
    return counts


def read_audit(audit_log: Path, *, since: float = 0.0) -> list[dict[str, Any]]:
    """Audit events (ResponseComplete stage) received at or after `since` (epoch seconds)."""
    out = []
    if not audit_log.exists():
        return out
    from datetime import datetime

    with open(audit_log, encoding="utf-8") as fh:
        for line in fh:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if event.get("stage") != "ResponseComplete":
                continue
            ts = event.get("requestReceivedTimestamp")
            if ts and datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() < since:
                continue
            out.append(event)
    return out


def persisted_writes_by(audit_log: Path, user: str, *, since: float) -> list[dict[str, Any]]:
    """Write requests by `user` that were not dry runs (reviews, which persist nothing, left out)."""
    out = []
    for event in read_audit(audit_log, since=since):
        if (event.get("user") or {}).get("username") != user:
            continue
        if event.get("verb") in ("get", "list", "watch"):
            continue
        resource = (event.get("objectRef") or {}).get("resource", "")
        if resource in ("selfsubjectreviews", "selfsubjectaccessreviews", "selfsubjectrulesreviews"):
            continue
        if "dryRun=All" in event.get("requestURI", ""):
            continue
        out.append(event)
    return out
