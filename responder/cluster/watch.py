"""List-then-watch streams that survive what an incident does to a cluster.

- LIST, then WATCH from the list's resourceVersion with bookmarks;
- 410 Gone (as HTTP status or as an ERROR event) re-lists and diffs against what was known, so a
  deletion missed while disconnected still arrives as DELETED;
- a stall timeout (no bytes, not even a bookmark) reconnects;
- 404 on a custom resource means the type is gone (its CRD was deleted): a TYPE_GONE event, then
  the stream keeps polling with backoff until the type returns;
- connection failures, and answers that say "not now" (429 from API Priority and Fairness, 5xx, a
  403 from an API server that has just restarted and is not ready), reconnect with capped backoff;
- a 401 re-reads the credentials (the client does, once for all its requests) and reconnects with
  them; only a refusal of the attempt made with the re-read credentials ends the stream;
- a kubeconfig that cannot be re-read right now (ConfigError, e.g. a token file being rewritten) and a
  line that is not a JSON watch event reconnect with backoff too.
A 403 from a ready API server (RBAC), 400 and other refusals end the stream: the caller reports them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from responder.cluster.client import CredentialsRenewed, KubeClient
from responder.errors import ApiError, ClusterUnreachable, ConfigError, Gone, NotFound, Unauthorized

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
TYPE_GONE = "TYPE_GONE"  # the resource type itself disappeared (CRD deleted)
SYNCED = "SYNCED"  # the initial list (or a re-list) has been delivered
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class WatchEvent:
    type: str
    resource: str
    object: dict[str, Any]
    received: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return (self.object.get("metadata") or {}).get("name", "")


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class ResourceWatch:
    """One resource stream. `store` always holds the last known state of every object."""

    def __init__(self, client: KubeClient, path: str, *, resource: str, params: dict[str, Any] | None = None,
                 stall_timeout: float = 90.0, timeout_seconds: int = 300) -> None:
        self.client = client
        self.path = path
        self.resource = resource
        self.params = dict(params or {})
        self.stall_timeout = stall_timeout
        self.timeout_seconds = timeout_seconds
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.type_present: bool | None = None
        self.relists = 0
        self.reconnects = 0

    async def _relist(self) -> list[WatchEvent]:
        listing = await self.client.list_all(self.path, **self.params)
        self.resource_version = (listing.get("metadata") or {}).get("resourceVersion")
        self.relists += 1
        fresh = {object_key(o): o for o in listing.get("items") or []}
        events: list[WatchEvent] = []
        for key, obj in fresh.items():
            old = self.store.get(key)
            if old is None:
                events.append(WatchEvent(ADDED, self.resource, obj))
            elif (old.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get("resourceVersion"):
                events.append(WatchEvent(MODIFIED, self.resource, obj))
        for key, old in self.store.items():
            if key not in fresh:
                events.append(WatchEvent(DELETED, self.resource, old))
        self.store = fresh
        events.append(WatchEvent(SYNCED, self.resource, {"metadata": {"resourceVersion": self.resource_version}}))
        return events

    def _apply(self, event_type: str, obj: dict[str, Any]) -> WatchEvent:
        key = object_key(obj)
        if event_type == DELETED:
            self.store.pop(key, None)
        else:
            self.store[key] = obj
        return WatchEvent(event_type, self.resource, obj)

    async def events(self) -> AsyncIterator[WatchEvent]:
        attempt = 0
        need_list = True
        # Set by a 401 after which the client re-read the credentials; cleared once the server accepts
        # a request again. A 401 while it is set: the re-read credentials are refused too.
        renewed = False

        def accepted() -> None:
            nonlocal renewed
            renewed = False

        while True:
            try:
                if need_list:
                    events = await self._relist()  # the client's own 401 handling: it raises only after a reload
                    accepted()
                    for ev in events:
                        yield ev
                    if self.type_present is False:
                        log.info("%s: resource type is back", self.resource)
                    self.type_present = True
                    need_list = False
                params = dict(self.params, watch="true", allowWatchBookmarks="true",
                              resourceVersion=self.resource_version or "", timeoutSeconds=str(self.timeout_seconds))
                async for raw in self.client.stream_lines(self.path, params, read_timeout=self.stall_timeout,
                                                          on_connect=accepted):
                    attempt = 0
                    frame = json.loads(raw)
                    if not isinstance(frame, dict):
                        raise ValueError("not a JSON object")
                    kind = frame.get("type")
                    obj = frame.get("object") or {}
                    if kind == "BOOKMARK":
                        self.resource_version = (obj.get("metadata") or {}).get("resourceVersion") or self.resource_version
                        continue
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(410, "Expired", obj.get("message", ""), method="WATCH", path=self.path)
                        raise ApiError(int(obj.get("code") or 500), obj.get("reason", ""), obj.get("message", ""),
                                       method="WATCH", path=self.path)
                    self.resource_version = (obj.get("metadata") or {}).get("resourceVersion") or self.resource_version
                    yield self._apply(kind, obj)
                # A clean end (server timeout): resume from the last resourceVersion.
                self.reconnects += 1
            except Gone:
                log.info("%s: watch expired (410), re-listing", self.resource)
                need_list = True
            except NotFound:
                if self.type_present is not False:
                    self.type_present = False
                    yield WatchEvent(TYPE_GONE, self.resource, {"metadata": {}})
                    for key, old in list(self.store.items()):
                        yield self._apply(DELETED, old)
                need_list = True
                attempt += 1
                await asyncio.sleep(min(2.0, 0.1 * attempt))
            except CredentialsRenewed as exc:
                if renewed:  # the credentials re-read after a 401 are refused too: for the caller to report
                    raise Unauthorized(exc.status, exc.reason, exc.api_message, method=exc.method, path=exc.path,
                                       details=exc.details) from None
                renewed = True
                attempt += 1
                self.reconnects += 1
                log.info("%s: watch refused (401), reconnecting with re-read credentials", self.resource)
                await self._backoff(attempt)
            except ConfigError as exc:
                # Re-reading the kubeconfig after a 401 failed (a token file or certificate being rewritten,
                # an exec plugin failing): keep trying, the file may be complete at the next attempt.
                attempt += 1
                self.reconnects += 1
                log.warning("%s: watch cannot reconnect, credentials not usable: %s", self.resource,
                            exc.message)
                await self._backoff(max(attempt, 2))
            except ValueError as exc:
                # A line that is not a JSON watch event (a proxy's error page, a truncated frame): events
                # applied so far moved resourceVersion, so reconnecting resumes right after them.
                attempt += 1
                self.reconnects += 1
                log.warning("%s: malformed watch event (%s), reconnecting", self.resource, type(exc).__name__)
                await self._backoff(attempt)
            except (httpx.TransportError, ClusterUnreachable, OSError, asyncio.TimeoutError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in TRANSIENT_STATUSES:
                    raise  # 401 after a reload, 403/400...: a real refusal, for the caller to report
                attempt += 1
                self.reconnects += 1
                what = f"{exc.status} {exc.reason}" if isinstance(exc, ApiError) else type(exc).__name__
                log.info("%s: watch interrupted (%s), reconnecting", self.resource, what)
                await self._backoff(attempt)

    @staticmethod
    async def _backoff(attempt: int) -> None:
        # The first reconnect is immediate: a dropped connection is usually a one-off, and an event
        # missed meanwhile may be the incident itself (measured on the lab: waiting 0.1-0.2 s here
        # after a cut let Capsule delete namespaces before the CRD's deletion was seen).
        if attempt > 1:
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2))


async def events_into(watch: ResourceWatch, queue: "asyncio.Queue[WatchEvent]") -> None:
    """Feed a watch into a queue, so readers can wait with a timeout without cancelling the stream
    (cancelling an async generator's __anext__ closes it for good)."""
    async for event in watch.events():
        await queue.put(event)
