"""The guard's notifications: Alertmanager's v2 API and a generic JSON webhook (Slack-compatible).

Off the hot path: `Notifier.notify` only queues; one background task per sink sends, after the guard's
gate opens (never before the breaker's first write) and only while this replica leads. Each delivery is
retried with exponential backoff up to a cap, then given up; every outcome is counted
(responder_notifications_total{sink,result}) and a failure never reaches the guard. Payloads and logs
carry no credentials: payload text is scrubbed of tokens, and a sink is named by its scheme and host
only (a Slack webhook's path is its secret; httpx's error messages quote the URL, so they are not logged).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from responder.incident.journal import redact

log = logging.getLogger(__name__)

# What the guard tells: an incident's phases, and posture problems (raised, then cleared).
INCIDENT_EVENTS = ("opened", "contained", "waiting-approval", "recovered", "failed")
POSTURE_EVENTS = ("posture", "posture-cleared")
REFRESH = "refresh"  # a firing alert sent to Alertmanager again, so that it does not expire there
RESULTS = ("sent", "failed", "dropped")  # responder_notifications_total{result}

# Bearer tokens, JWTs (ServiceAccount tokens), and credentials in URLs: never in a payload.
_SECRETS = (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"),
            re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
            re.compile(r"(?i)\b(https?://)[^/\s:@]+:[^/\s@]+@"),
            re.compile(r"https://hooks\.slack\.com/\S+"))
REDACTED = "<redacted>"


def scrub(value: Any) -> Any:
    """`value` with secrets removed: fields named like credentials (the journal's rule) and token-shaped text."""
    value = redact(value)
    if isinstance(value, str):
        for pattern in _SECRETS:
            value = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + REDACTED, value)
        return value
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def shown_url(url: str) -> str:
    """A sink's URL as logs may show it: scheme and host, no credentials, no path (a webhook's secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}"


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Notice:
    """One thing to tell. `key` is the alert's identity (its Alertmanager labels follow from it): one per
    incident (its phases update one alert) and one per posture problem."""

    key: str
    event: str  # INCIDENT_EVENTS or POSTURE_EVENTS
    alertname: str
    severity: str  # critical | warning
    cluster: str
    summary: str
    description: str
    incident: str = ""
    resolved: bool = False
    starts_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    fields: Mapping[str, Any] = field(default_factory=dict)
    extra_labels: Mapping[str, str] = field(default_factory=dict)  # what tells two posture alerts apart

    def labels(self) -> dict[str, str]:
        labels = {"alertname": self.alertname, "severity": self.severity, "cluster": self.cluster}
        if self.incident:
            labels["incident"] = self.incident
        return {**labels, **self.extra_labels}


def alertmanager_payload(notice: Notice) -> list[dict[str, Any]]:
    """The body of POST /api/v2/alerts: one alert. Firing alerts carry no endsAt (Alertmanager keeps them
    for its resolve_timeout; the notifier re-sends them meanwhile); a resolved one ends now."""
    alert: dict[str, Any] = {
        "labels": scrub(notice.labels()),
        "annotations": scrub({"summary": notice.summary, "description": notice.description}),
        "startsAt": _iso(notice.starts_at)}
    if notice.resolved:
        alert["endsAt"] = _iso(notice.at)
    return [alert]


def webhook_payload(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message ({"text"}) with the same facts as fields for other receivers."""
    status = "resolved" if notice.resolved else "firing"
    icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(notice.severity, "")
    if notice.resolved:
        icon = ":white_check_mark:"
    text = f"{icon} [{notice.cluster}] {notice.summary}".strip()
    if notice.description:
        text += f"\n{notice.description}"
    return scrub({"text": text, "event": notice.event, "status": status, "alertname": notice.alertname,
                  "severity": notice.severity, "cluster": notice.cluster, "incident": notice.incident or None,
                  "summary": notice.summary, "description": notice.description, "startsAt": _iso(notice.starts_at),
                  "at": _iso(notice.at), "fields": dict(notice.fields)})


class DeliveryError(Exception):
    def __init__(self, why: str, *, retryable: bool) -> None:
        super().__init__(why)
        self.why = why
        self.retryable = retryable


@dataclass(frozen=True)
class Sink:
    """One destination: `kind` is the metric's sink label (alertmanager | webhook)."""

    kind: str
    url: str

    @property
    def shown(self) -> str:
        return f"{self.kind} {shown_url(self.url)}"

    def request(self, notice: Notice) -> tuple[str, Any]:
        if self.kind == "alertmanager":
            return self.url.rstrip("/") + "/api/v2/alerts", alertmanager_payload(notice)
        return self.url, webhook_payload(notice)

    async def send(self, http: httpx.AsyncClient, notice: Notice) -> None:
        url, body = self.request(notice)
        try:
            response = await http.post(url, json=body)
        except httpx.TransportError as exc:  # its message quotes the URL: only the kind is told
            raise DeliveryError(type(exc).__name__, retryable=True) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise DeliveryError(f"HTTP {response.status_code}", retryable=True)
        if response.status_code >= 400:
            raise DeliveryError(f"HTTP {response.status_code} (the payload or the URL is refused)", retryable=False)


def sinks_from(alertmanagers: list[str], webhook: str | None) -> list[Sink]:
    return [Sink("alertmanager", url) for url in alertmanagers] + ([Sink("webhook", webhook)] if webhook else [])


def backoff_delays(*, first: float = 0.5, factor: float = 2.0, cap: float = 30.0, attempts: int = 6) -> Iterator[float]:
    """The waits between `attempts` tries: first, first*factor, ... each at most `cap`."""
    delay = first
    for _ in range(attempts - 1):
        yield min(delay, cap)
        delay *= factor


class _HideSinkUrls(logging.Filter):
    """httpx logs each request's URL at INFO (`-v`): for the sinks' URLs, only scheme and host."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(str(arg).startswith(tuple(self.urls)) for arg in record.args):
            record.args = tuple(shown_url(str(arg)) if str(arg).startswith(tuple(self.urls)) else arg
                                for arg in record.args)
        return True


Outcome = Callable[[Sink, Notice, str, int, float | None], None]  # (sink, notice, result, attempts, first try's epoch)


class Notifier:
    """Queues notices and delivers them in the background, one task and queue per sink (a sink that is
    down does not hold the others back; each keeps its notices in order)."""

    def __init__(self, sinks: list[Sink], *, leading: Callable[[], bool] = lambda: True,
                 gate: Callable[[], Awaitable[None]] | None = None, on_outcome: Outcome | None = None,
                 retry: Mapping[str, float] | None = None, refresh: float = 60.0, queue_size: int = 256,
                 timeout: float = 5.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.sinks = sinks
        self.leading = leading
        self.gate = gate
        self.on_outcome = on_outcome
        self.retry = dict(retry or {})
        self.refresh = refresh
        self.timeout = timeout
        self.sleep = sleep
        self.active: dict[str, Notice] = {}  # firing alerts, re-sent to Alertmanager every `refresh` seconds
        self.queues = {sink: asyncio.Queue[Notice](maxsize=queue_size) for sink in sinks}
        self.tasks: list[asyncio.Task[None]] = []
        self.http: httpx.AsyncClient | None = None
        self._hide = _HideSinkUrls([sink.url for sink in sinks])

    def start(self) -> None:
        if self.tasks or not self.sinks:
            return
        logging.getLogger("httpx").addFilter(self._hide)
        self.http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        self.tasks = [asyncio.create_task(self._drain(sink), name=f"notify-{sink.kind}") for sink in self.sinks]

    def notify(self, notice: Notice) -> None:
        """Queue `notice` for every sink; never blocks, never raises."""
        if notice.resolved:
            self.active.pop(notice.key, None)
        else:
            self.active[notice.key] = notice
        for sink, queue in self.queues.items():
            try:
                queue.put_nowait(notice)
            except asyncio.QueueFull:
                self._outcome(sink, notice, "dropped", 0, None)

    async def close(self, *, flush: float = 5.0) -> None:
        """Deliver what is queued for up to `flush` seconds, then stop."""
        if self.tasks:
            try:
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self.queues.values())), flush)
            except asyncio.TimeoutError:
                pass
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.tasks = []
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        logging.getLogger("httpx").removeFilter(self._hide)

    async def _drain(self, sink: Sink) -> None:
        queue = self.queues[sink]
        refresh_at = time.monotonic() + self.refresh
        while True:
            try:
                notice = await asyncio.wait_for(queue.get(), max(0.0, refresh_at - time.monotonic()))
            except asyncio.TimeoutError:
                refresh_at = time.monotonic() + self.refresh
                if sink.kind == "alertmanager" and self.active:
                    if self.gate is not None:
                        await self.gate()
                    for firing in list(self.active.values()):  # Alertmanager drops what is not re-sent
                        if self.leading():
                            await self._deliver(sink, dataclasses.replace(firing, event=REFRESH), quiet=True)
                continue
            try:
                if self.gate is not None:
                    await self.gate()
                if not self.leading():
                    self._outcome(sink, notice, "dropped", 0, None)  # a standby tells nothing
                else:
                    await self._deliver(sink, notice)
            except asyncio.CancelledError:
                raise
            except Exception:  # a notification must never take the guard down
                log.exception("notification to %s failed", sink.shown)
            finally:
                queue.task_done()

    async def _deliver(self, sink: Sink, notice: Notice, *, quiet: bool = False) -> None:
        assert self.http is not None
        attempts, started = 0, time.time()
        for delay in [*backoff_delays(**self.retry), None]:
            attempts += 1
            try:
                await sink.send(self.http, notice)
            except DeliveryError as exc:
                if exc.retryable and delay is not None:
                    await self.sleep(delay)
                    continue
                log.warning("notification %s (%s) to %s failed after %d attempts: %s", notice.event, notice.key,
                            sink.shown, attempts, exc.why)
                self._outcome(sink, notice, "failed", attempts, started)
                return
            if not quiet:
                log.info("notification %s (%s) sent to %s", notice.event, notice.key, sink.shown)
            self._outcome(sink, notice, "sent", attempts, started)
            return

    def _outcome(self, sink: Sink, notice: Notice, result: str, attempts: int, started: float | None) -> None:
        if self.on_outcome is not None:
            try:
                self.on_outcome(sink, notice, result, attempts, started)
            except Exception:
                log.exception("recording a notification's outcome failed")
