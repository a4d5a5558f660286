"""The guard leader's tenant record (responder.incident.record), kept current between incidents.

Debounced: written once the watches have been quiet for a moment after a change, and only when the record's
digest differs from the stored one. Never while the cluster looks unhealthy (the Tenant CRD deleting, a Tenant
deleting, tenant namespaces at risk or Terminating) and never once an incident is open: the record must hold
the state from before, not the damage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from responder.errors import ApiError, ResponderError
from responder.incident.record import record_from_cluster, unhealthy_reason, write_tenant_record
from responder.response.session import Session

log = logging.getLogger(__name__)


class RecordKeeper:
    def __init__(self, session: Session, *, leading: Callable[[], bool], writer: str, every: float = 2.0,
                 quiet: float = 3.0) -> None:
        self.session = session
        self.leading = leading
        self.writer = writer
        self.every = every
        self.quiet = quiet
        self.changed_at = time.monotonic()  # the last watch event (any stream)
        self.written_for: float | None = None  # changed_at of the state last recorded
        self.index: dict[str, Any] | None = None
        self.why_not = ""  # the last reason given for not writing (logged once per reason)
        session.observer.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:
        self.changed_at = time.monotonic()

    def _skip(self, why: str) -> None:
        if why != self.why_not:
            log.info("tenant record not written: %s", why)
            self.why_not = why

    async def run(self) -> None:
        session = self.session
        while not session.incident_opened.is_set():
            await asyncio.sleep(self.every)
            if session.incident_opened.is_set() or not self.leading():
                continue
            observer = session.observer
            if not all(observer.synced[n].is_set() for n in ("crd", "tenants", "namespaces", "deployment")):
                continue
            changed = self.changed_at
            if changed == self.written_for or time.monotonic() - changed < self.quiet:
                continue
            why = unhealthy_reason(session.view())
            if why:
                self._skip(why)
                continue
            deployment = next(iter(observer.objects("deployment")), None)
            record = record_from_cluster(tenants=observer.objects("tenants"), namespaces=observer.objects("namespaces"),
                                         webhooks=observer.capsule_webhooks(),
                                         capsule_replicas=((deployment or {}).get("spec") or {}).get("replicas"),
                                         tenant_crd=observer.crd())
            try:
                index = await write_tenant_record(session.client, record, writer=self.writer, previous=self.index)
            except (ApiError, ResponderError) as exc:
                self._skip(f"{exc}")
                continue
            self.written_for, self.why_not = changed, ""
            if index is not None:
                self.index = index
                log.warning("tenant record written: %d Tenants, %d namespaces, %d bytes gzipped in %d chunks",
                            index["tenants"], index["namespaces"], index["compressed"], index["chunks"])
