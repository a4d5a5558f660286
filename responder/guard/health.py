"""The guard's health and metrics endpoint: `/healthz`, `/readyz`, Prometheus `/metrics`.

A small HTTP/1.1 server on the guard's event loop (no thread): every answer reads the guard's state as it is
now. Metrics are rendered by `prometheus_client` from a registry of the guard's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Enum, Gauge, generate_latest

log = logging.getLogger(__name__)

BREAKER_STATES = ["ready", "tripped", "failed"]


@dataclass
class GuardStatus:
    """What the endpoint reports, read from the guard at each request."""

    leader: bool
    lease_known: bool
    holder: str
    identity: str
    lease_transitions: int
    # stream -> (listed and not being restarted, seconds since its last event or None)
    watches: dict[str, tuple[bool, float | None]] = field(default_factory=dict)
    required_watches: frozenset[str] = frozenset()
    hold_armed: bool = False
    breaker: str = "ready"
    incident_open: bool = False

    def ready(self) -> bool:
        """Ready: every required watch listed and up, and the Lease's state known (leading or standing by)."""
        return self.lease_known and bool(self.required_watches) and all(
            self.watches.get(name, (False, None))[0] for name in self.required_watches)


class GuardMetrics:
    """The guard's Prometheus metrics (a registry of its own: no process-wide defaults mixed in)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.leader = Gauge("responder_leader", "1 while this replica holds the cluster's writer Lease",
                            registry=self.registry)
        self.lease_transitions = Gauge("responder_lease_transitions", "changes of holder the writer Lease records",
                                       registry=self.registry)
        self.incidents = Counter("responder_incidents", "incidents this replica detected and opened",
                                 registry=self.registry)
        self.incident_open = Gauge("responder_incident_open", "1 while an incident is open", registry=self.registry)
        self.watch_up = Gauge("responder_watch_up", "1 while the watch stream is listed and running",
                              ["stream"], registry=self.registry)
        self.watch_age = Gauge("responder_watch_last_event_age_seconds",
                               "seconds since the stream's last event (absent before the first)", ["stream"],
                               registry=self.registry)
        self.hold_armed = Gauge("responder_hold_armed", "1 when the armed namespace hold is installed",
                                registry=self.registry)
        self.breaker = Enum("responder_breaker", "the breaker: ready, tripped by this replica, or failed",
                            states=BREAKER_STATES, registry=self.registry)
        self.notifications = Counter("responder_notifications", "notifications by sink and result: sent, failed "
                                     "(given up after retries), dropped (queue full, or not leading)",
                                     ["sink", "result"], registry=self.registry)

    def update(self, status: GuardStatus) -> None:
        self.leader.set(1 if status.leader else 0)
        self.lease_transitions.set(status.lease_transitions)
        self.incident_open.set(1 if status.incident_open else 0)
        for stream, (up, age) in status.watches.items():
            self.watch_up.labels(stream).set(1 if up else 0)
            if age is not None:
                self.watch_age.labels(stream).set(round(age, 3))
        self.hold_armed.set(1 if status.hold_armed else 0)
        self.breaker.state(status.breaker if status.breaker in BREAKER_STATES else "failed")

    def render(self, status: GuardStatus) -> bytes:
        self.update(status)
        return generate_latest(self.registry)


class HealthServer:
    """Serves /healthz, /readyz and /metrics for `status()`."""

    def __init__(self, status: Callable[[], GuardStatus], metrics: GuardMetrics) -> None:
        self.status = status
        self.metrics = metrics
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        status = self.status()
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            body: dict[str, Any] = {
                "ready": status.ready(), "leader": status.leader, "holder": status.holder,
                "identity": status.identity, "lease_known": status.lease_known,
                "watches": {name: {"up": up, "last_event_age_seconds": None if age is None else round(age, 3)}
                            for name, (up, age) in sorted(status.watches.items())}}
            return (200 if status.ready() else 503), "application/json", (json.dumps(body) + "\n").encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.render(status)
        return 404, "text/plain; charset=utf-8", b"not found: /healthz, /readyz, /metrics\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=10)
            while True:  # the headers: not needed
                line = await asyncio.wait_for(reader.readline(), timeout=10)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                code, ctype, body = 405, "text/plain; charset=utf-8", b"GET only\n"
            else:
                code, ctype, body = self.answer(parts[1].split("?", 1)[0])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[code]
            head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (body if parts and parts[0] != "HEAD" else b""))
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        except Exception:  # a probe must never take the guard down
            log.exception("health endpoint failed")
        finally:
            writer.close()
