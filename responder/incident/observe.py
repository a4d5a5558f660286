"""The observer: every stream responder needs, one store per resource, the shadow copy kept current.

Streams: the Tenant CRD, Tenants, namespaces, the Capsule Deployment and the validating and mutating
webhook configurations. Subscribers (detection, the engine's progress, the TUI feed) get every event.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from responder.incident import triage
from responder.cluster.client import KubeClient
from responder.cluster.watch import DELETED, SYNCED, TYPE_GONE, ResourceWatch, WatchEvent
from responder.incident.shadow import FORGET_DELETED_AFTER_S, Shadow
from responder.errors import ApiError, ClusterUnreachable

log = logging.getLogger(__name__)

TENANT_CRD = "tenants.capsule.clastix.io"
TENANTS_PATH = "/apis/capsule.clastix.io/v1beta2/tenants"
VELERO_STREAM = "backupstoragelocations"  # Velero's BackupStorageLocations (the TUI header)
OPTIONAL_STREAMS = frozenset({VELERO_STREAM})
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def freeze_cluster_picture() -> None:
    """Move what is alive now (the cluster picture, once its first lists are in) out of the garbage
    collector's reach: it lives as long as the process, and every full collection would walk it all, a
    pause of hundreds of milliseconds at 10,000 namespaces in which the watches' events wait."""
    gc.collect()  # once, before freezing: garbage must not be frozen with the live objects
    gc.freeze()


@dataclass(frozen=True)
class CapsuleTarget:
    namespace: str = "capsule-system"
    deployment: str = "capsule-controller-manager"

    @property
    def deployment_path(self) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}"


class ClusterObserver:
    def __init__(self, client: KubeClient, *, capsule: CapsuleTarget = CapsuleTarget(),
                 shadow: Shadow | None = None, shadow_path: Path | None = None,
                 velero_namespace: str | None = "velero") -> None:
        self.client = client
        self.capsule = capsule
        self.shadow = shadow or Shadow()
        self.shadow_path = shadow_path
        self.watches: dict[str, ResourceWatch] = {
            "crd": ResourceWatch(client, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", resource="crd",
                                 params={"fieldSelector": f"metadata.name={TENANT_CRD}"}),
            "tenants": ResourceWatch(client, TENANTS_PATH, resource="tenants"),
            "namespaces": ResourceWatch(client, "/api/v1/namespaces", resource="namespaces"),
            "deployment": ResourceWatch(client, f"/apis/apps/v1/namespaces/{capsule.namespace}/deployments",
                                        resource="deployment",
                                        params={"fieldSelector": f"metadata.name={capsule.deployment}"}),
            "validatingwebhooks": ResourceWatch(client, VWC_PATH, resource="validatingwebhooks"),
            "mutatingwebhooks": ResourceWatch(client, MWC_PATH, resource="mutatingwebhooks"),
        }
        if velero_namespace:
            # Optional: the header shows the backup location's phase. Absent Velero (404) or no permission
            # (403) must not hold up detection, so this stream is never waited for nor fatal.
            self.watches[VELERO_STREAM] = ResourceWatch(
                client, f"/apis/velero.io/v1/namespaces/{velero_namespace}/backupstoragelocations",
                resource=VELERO_STREAM)
        self.subscribers: list[Callable[[WatchEvent], None]] = []
        self.synced: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.watches}
        self.tenant_type_gone = False
        # Set while containment is about to start: each stream then hands the loop over after every event,
        # so a burst of buffered watch events (the CRD deletion brings hundreds) cannot delay the breaker.
        self.yield_each_event = False
        # Routine deletions leave the shadow copy after a while; an open incident keeps everything (its
        # recovery reads what was deleted): the session sets this False when it opens one.
        self.forget_deleted = True
        self._tasks: list[asyncio.Task] = []
        # Streams that stopped after their first list and are being restarted: name -> why.
        self.stream_errors: dict[str, str] = {}
        self.restart_delay = 1.0  # seconds before the first restart, doubling to 30

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> None:
        self.subscribers.append(callback)

    async def start(self, *, sync_timeout: float = 30.0) -> None:
        for name, watch in self.watches.items():
            self._tasks.append(asyncio.create_task(self._pump(name, watch), name=f"watch-{name}"))
        pumps = [t for t, n in zip(self._tasks, self.watches) if n not in OPTIONAL_STREAMS]
        self._tasks.append(asyncio.create_task(self._save_shadow_periodically(), name="shadow-saver"))
        # Wait for every first list, but fail at once (with its own error: 403 -> exit 4) when a stream
        # dies, instead of timing out with no reason.
        synced = asyncio.ensure_future(asyncio.gather(*(e.wait() for n, e in self.synced.items()
                                                          if n not in OPTIONAL_STREAMS)))
        synced.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" noise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + sync_timeout
        try:
            while not synced.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    missing = ", ".join(n for n, e in self.synced.items() if not e.is_set())
                    raise ClusterUnreachable(f"the API server did not list {missing} within {sync_timeout:.0f}s",
                                             fix="check the API server's health and load, then try again")
                done, _ = await asyncio.wait([synced, *pumps], timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not synced and not task.cancelled() and task.exception() is not None:
                        raise task.exception()
        finally:
            if not synced.done():
                synced.cancel()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.save_shadow()

    async def _pump(self, name: str, watch: ResourceWatch) -> None:
        if name in OPTIONAL_STREAMS:
            try:
                await self._pump_events(name, watch)
            except ApiError as exc:
                log.warning("not watching %s (%s %s): the header cannot show it", name, exc.status, exc.reason)
            return
        delay = self.restart_delay
        while True:
            try:
                await self._pump_events(name, watch)
                raise ClusterUnreachable(f"the {name} watch ended", fix="check the API server")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a stream that dies unnoticed leaves detection blind
                if not self.synced[name].is_set():
                    raise  # before the first list: start() reports it (403 -> exit 4)
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.stream_errors[name] = why
                log.error("BLIND: the %s watch stopped (%s); restarting it in %.1fs", name, why, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _pump_events(self, name: str, watch: ResourceWatch) -> None:
        async for event in watch.events():
            if event.type == SYNCED:
                self.synced[name].set()
                if self.stream_errors.pop(name, None) is not None:
                    log.warning("the %s watch is back (listed again)", name)
            elif event.type == TYPE_GONE:
                if name == "tenants":
                    self.tenant_type_gone = True
                if name in ("tenants", VELERO_STREAM):
                    self.synced[name].set()  # nothing to list: the type is gone
            else:
                if name == "tenants" and self.tenant_type_gone:
                    self.tenant_type_gone = False
                self._update_shadow(name, event)
            for callback in self.subscribers:
                try:
                    callback(event)
                except Exception:  # a broken subscriber must not stop the watch
                    log.exception("subscriber failed on %s event", name)
            if self.yield_each_event:
                await asyncio.sleep(0)

    def _update_shadow(self, name: str, event: WatchEvent) -> None:
        obj = event.object
        meta = obj.get("metadata") or {}
        if name == "tenants" and event.type != DELETED:
            self.shadow.observe_tenant(obj)
        elif name == "tenants":
            self.shadow.observe_gone("tenant", meta.get("name", ""), time.time())
        elif name == "namespaces" and event.type != DELETED and not meta.get("deletionTimestamp"):
            self.shadow.observe_namespace(obj)
        elif name == "namespaces":
            self.shadow.observe_gone("namespace", meta.get("name", ""), time.time())
        elif name == "deployment" and event.type != DELETED:
            self.shadow.observe_capsule_replicas(int((obj.get("spec") or {}).get("replicas", 1)))
        elif name == "crd" and event.type != DELETED:
            self.shadow.observe_crd(obj)
        elif name in ("validatingwebhooks", "mutatingwebhooks") and is_capsule_webhook(obj):
            kind = "ValidatingWebhookConfiguration" if name == "validatingwebhooks" else "MutatingWebhookConfiguration"
            self.shadow.observe_webhook(kind, obj, deleted=event.type == DELETED)

    def save_shadow(self) -> None:
        if self.shadow_path is not None and self.shadow.dirty:
            self.shadow.save(self.shadow_path)

    async def _save_shadow_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.forget_deleted:
                forgotten = self.shadow.forget_gone(time.time() - FORGET_DELETED_AFTER_S)
                if forgotten:
                    log.info("shadow copy: forgot %d deleted %s long ago (e.g. %s)", len(forgotten),
                             "objects" if len(forgotten) > 1 else "object", forgotten[0])
            if self.shadow_path is None or not self.shadow.dirty:
                continue
            text = self.shadow.snapshot()  # here, on the loop: the watches change the copy meanwhile
            try:
                await asyncio.to_thread(self.shadow.write_snapshot, self.shadow_path, text)
            except OSError:
                log.exception("could not save the shadow copy")

    # -- the current picture ------------------------------------------------------------------------

    def objects(self, name: str) -> list[dict[str, Any]]:
        return list(self.watches[name].store.values())

    def crd(self) -> dict[str, Any] | None:
        items = self.objects("crd")
        return items[0] if items else None

    def view(self, *, protected: frozenset[str], detached: dict[str, str] | None = None,
             content_remaining: dict[str, int | None] | None = None) -> triage.ClusterView:
        crd = self.crd()
        return triage.ClusterView(
            crd_present=crd is not None,
            crd_deleting=bool(crd and crd["metadata"].get("deletionTimestamp")),
            tenants={t["metadata"]["name"]: t for t in self.objects("tenants")},
            namespaces={n["metadata"]["name"]: n for n in self.objects("namespaces")},
            protected=protected,
            known_namespaces=self.shadow.namespace_tenants(),
            detached=detached or {},
            content_remaining=content_remaining or {},
        )

    def capsule_webhooks(self) -> list[tuple[str, dict[str, Any]]]:
        return capsule_webhooks_in(self.objects)


WEBHOOK_STREAMS = (("validatingwebhooks", "ValidatingWebhookConfiguration", VWC_PATH),
                   ("mutatingwebhooks", "MutatingWebhookConfiguration", MWC_PATH))


def capsule_webhooks_in(objects: Callable[[str], list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, configuration) for Capsule's webhook configurations among the objects of each stream."""
    return [(kind, obj) for name, kind, _ in WEBHOOK_STREAMS for obj in objects(name) if is_capsule_webhook(obj)]


def is_capsule_webhook(obj: dict[str, Any]) -> bool:
    """Capsule's webhook configurations: the 0.13+ dynamic ones and the chart's static ones."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get("projectcapsule.dev/created-by") == "controller" or labels.get("app.kubernetes.io/name") == "capsule":
        return True
    return any(h.get("name", "").endswith(("projectcapsule.dev", "capsule.clastix.io")) for h in obj.get("webhooks") or [])
