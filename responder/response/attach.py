"""Attached to a guard: where a guard replica leads the cluster (holds the writer Lease), the TUI does not act
on its own. It follows the guard's incident from the cluster (the Lease's holder, the Incident object) and its
confirmations become approvals on that Incident (responder.response.approval); it writes nothing else.

The decisions are pure functions (`attach_target`, `pick_incident`, `awaiting_approval`); `GuardFollower`
reads what they decide on, with GETs and LISTs only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.lease import holder_role, lease_path, record_from
from responder.errors import NotFound
from responder.names import RESPONDER_NAMESPACE, WRITER_LEASE
from responder.response.incident_object import (INCIDENTS_PATH, WAITING, IncidentStore, approval_refused,
                                                approvals_of, is_open)

GUARD_ROLE = "guard"
LEASE_PATH = lease_path(RESPONDER_NAMESPACE, WRITER_LEASE)


def attach_target(holder: str) -> str | None:
    """The leading guard's place (its pod) when `holder` is a guard replica's identity: a TUI attaches to
    it. None for any other holder (a TUI, a headless `watch`/`run`): that one keeps no Incident to follow,
    so the TUI refuses as a headless command does (LeaseHeld)."""
    role, place = holder_role(holder)
    return place if role == GUARD_ROLE else None


def pick_incident(items: Iterable[Mapping[str, Any]], following: str | None) -> Mapping[str, Any] | None:
    """The Incident to show: the one already followed while it exists (it stays shown after it ended), else
    the newest open one; None while there is none (the guard watches, no incident)."""
    items = list(items)
    if following:
        same = next((i for i in items if (i.get("metadata") or {}).get("name") == following), None)
        if same is not None:
            return same
    open_ = [i for i in items if is_open(dict(i))]
    if not open_:
        return None
    return max(open_, key=lambda i: ((i.get("metadata") or {}).get("creationTimestamp") or "",
                                     (i.get("metadata") or {}).get("name") or ""))


def awaiting_approval(incident: Mapping[str, Any]) -> str | None:
    """The recovery step the guard waits on now and that may be approved (none approved it yet); else None."""
    status = incident.get("status") or {}
    step = status.get("waitingFor")
    if status.get("phase") != WAITING or not step:
        return None
    if step in approvals_of(dict(incident)) or approval_refused(dict(incident), str(step)) is not None:
        return None
    return str(step)


def snapshot_owners(incident: Mapping[str, Any]) -> dict[str, str]:
    """namespace -> the Tenant that owned it before the incident, from the Incident's snapshot ({} without one)."""
    try:
        snapshot = IncidentStore.read_packed(dict(incident), "snapshot")
    except (ValueError, OSError, TypeError):
        return {}
    if not isinstance(snapshot, dict):
        return {}
    owners = snapshot.get("owners") or {}
    return {ns: str(owner.get("name") or "") for ns, owner in owners.items() if isinstance(owner, dict)}


@dataclass
class GuardView:
    """What one look at the cluster found: the Lease's holder and the Incident followed (None: none yet)."""

    holder: str
    incident: dict[str, Any] | None
    owners: dict[str, str] = field(default_factory=dict)


class GuardFollower:
    """Reads the guard's Lease and Incident through the session's client (reads only)."""

    def __init__(self, client: KubeClient, holder: str) -> None:
        self.client = client
        self.holder = holder
        self.following: str | None = None
        self._owners: dict[str, dict[str, str]] = {}  # Incident name -> its snapshot's owners, read once

    async def look(self) -> GuardView:
        lease = await self.client.get_or_none(LEASE_PATH)
        if lease is not None:
            self.holder = record_from(lease).holder
        try:
            items = (await self.client.get(INCIDENTS_PATH)).get("items") or []
        except NotFound:  # the CRD is not installed: no Incident to follow
            items = []
        chosen = pick_incident(items, self.following)
        if chosen is None:
            return GuardView(self.holder, None)
        incident = dict(chosen)
        name = incident["metadata"]["name"]
        self.following = name
        if name not in self._owners:
            owners = snapshot_owners(incident)
            if owners:  # written once, soon after the guard's first write: read it once it is there
                self._owners[name] = owners
        return GuardView(self.holder, incident, self._owners.get(name, {}))
