"""The guard's notifications: payloads, redaction, retry with backoff, the gate, and posture decisions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

import httpx
import pytest

from responder.guard.alerts import backup_allowance, blind_streams, cron_max_gap, stale_backups
from responder.guard.health import GuardMetrics, GuardStatus
from responder.guard.notify import (Notice, Notifier, Sink, alertmanager_payload, backoff_delays, scrub, shown_url,
                                    webhook_payload)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlc2lnbg"
HOOK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"


def notice(**overrides) -> Notice:
    values = dict(key="incident/i-1", event="contained", alertname="ResponderIncident", severity="critical",
                  cluster="prod-1", incident="i-1", summary="incident i-1 contained", description="namespaces: 3 detached.",
                  starts_at=T0, at=T0 + dt.timedelta(seconds=30), fields={"event": "contained"})
    values.update(overrides)
    return Notice(**values)


def test_alertmanager_payload_labels_annotations_and_times():
    [alert] = alertmanager_payload(notice())
    assert alert == {"labels": {"alertname": "ResponderIncident", "severity": "critical", "cluster": "prod-1",
                                "incident": "i-1"},
                     "annotations": {"summary": "incident i-1 contained", "description": "namespaces: 3 detached."},
                     "startsAt": "2026-01-02T03:04:05.000Z"}
    [resolved] = alertmanager_payload(notice(event="recovered", resolved=True))
    assert resolved["endsAt"] == "2026-01-02T03:04:35.000Z"
    [posture] = alertmanager_payload(notice(key="posture/watch-blind/namespaces", incident="",
                                            extra_labels={"stream": "namespaces"}))
    assert "incident" not in posture["labels"] and posture["labels"]["stream"] == "namespaces"


def test_webhook_payload_is_slack_text_plus_fields():
    body = webhook_payload(notice())
    assert body["text"].startswith(":rotating_light: [prod-1] incident i-1 contained\nnamespaces: 3 detached.")
    assert (body["event"], body["status"], body["incident"], body["cluster"]) == ("contained", "firing", "i-1", "prod-1")
    assert webhook_payload(notice(resolved=True))["status"] == "resolved"
    json.dumps(body)  # plain JSON


def test_no_credentials_in_payloads():
    leaky = notice(description=f"Authorization: Bearer {JWT}; token {JWT}; url https://admin:hunter2@am.example/x "
                               f"hook {HOOK}",
                   fields={"token": "s3cret", "password": "hunter2", "nested": {"bearer": JWT}})
    for body in (alertmanager_payload(leaky), webhook_payload(leaky)):
        text = json.dumps(body)
        for secret in (JWT, "s3cret", "hunter2", "XXXXSECRETXXXX", "eyJ"):
            assert secret not in text, secret
        assert "<redacted>" in text
    assert scrub("https://user:pw@host/p") == "https://<redacted>host/p"


def test_shown_url_hides_path_and_credentials():
    assert shown_url(HOOK) == "https://hooks.slack.com"
    assert shown_url("http://u:p@am.lab:9093/x") == "http://am.lab:9093"


def test_backoff_is_exponential_and_capped():
    assert list(backoff_delays(first=0.5, factor=2, cap=3, attempts=6)) == [0.5, 1.0, 2.0, 3, 3]
    assert list(backoff_delays(attempts=1)) == []


class Receiver:
    """An httpx transport answering with the given statuses in turn (then 200), recording requests."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if self.statuses else 200
        if isinstance(status, Exception):
            raise status
        return httpx.Response(status)


async def deliver(receiver: Receiver, sink: Sink, *notices: Notice, gate=None, leading=lambda: True):
    slept: list[float] = []
    outcomes: list[tuple[str, str, int]] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    notifier = Notifier([sink], sleep=sleep, gate=gate, leading=leading,
                        retry={"first": 1, "factor": 2, "cap": 4, "attempts": 5},
                        on_outcome=lambda s, n, result, attempts, started: outcomes.append((s.kind, result, attempts)))
    notifier.start()
    assert notifier.http is not None
    await notifier.http.aclose()
    notifier.http = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    for n in notices:
        notifier.notify(n)
    return notifier, slept, outcomes


async def test_retries_with_backoff_then_sends(caplog):
    receiver = Receiver(503, httpx.ConnectError("refused https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"),
                        429)
    caplog.set_level(logging.INFO)
    notifier, slept, outcomes = await deliver(receiver, Sink("webhook", HOOK), notice())
    await notifier.close()
    assert slept == [1, 2, 4] and outcomes == [("webhook", "sent", 4)]
    assert len(receiver.requests) == 4 and str(receiver.requests[0].url) == HOOK
    assert "XXXXSECRETXXXX" not in caplog.text and "hooks.slack.com" in caplog.text


async def test_gives_up_after_the_cap_and_never_raises(caplog):
    receiver = Receiver(*[500] * 10)
    notifier, slept, outcomes = await deliver(receiver, Sink("alertmanager", "http://am:9093"), notice())
    await notifier.close()
    assert slept == [1, 2, 4, 4] and outcomes == [("alertmanager", "failed", 5)]
    assert str(receiver.requests[0].url) == "http://am:9093/api/v2/alerts"
    assert "failed after 5 attempts: HTTP 500" in caplog.text


async def test_client_error_is_not_retried():
    notifier, slept, outcomes = await deliver(Receiver(400), Sink("alertmanager", "http://am:9093"), notice())
    await notifier.close()
    assert slept == [] and outcomes == [("alertmanager", "failed", 1)]


async def test_nothing_sent_before_the_gate_opens_nor_by_a_standby():
    gate = asyncio.Event()

    async def wait_gate() -> None:
        await gate.wait()

    receiver = Receiver()
    notifier, _, outcomes = await deliver(receiver, Sink("webhook", "http://hook"), notice(), gate=wait_gate)
    await asyncio.sleep(0.05)
    assert receiver.requests == [] and outcomes == []
    gate.set()
    await notifier.close()
    assert len(receiver.requests) == 1 and outcomes == [("webhook", "sent", 1)]

    receiver = Receiver()
    notifier, _, outcomes = await deliver(receiver, Sink("webhook", "http://hook"), notice(), leading=lambda: False)
    await notifier.close()
    assert receiver.requests == [] and outcomes == [("webhook", "dropped", 0)]


async def test_outcomes_counted_in_the_metric():
    metrics = GuardMetrics()
    notifier = Notifier([], on_outcome=lambda s, n, result, a, t: metrics.notifications.labels(s.kind, result).inc())
    notifier._outcome(Sink("webhook", "http://hook"), notice(), "failed", 5, None)
    text = metrics.render(GuardStatus(leader=True, lease_known=True, holder="a", identity="a",
                                      lease_transitions=1)).decode()
    assert 'responder_notifications_total{result="failed",sink="webhook"} 1.0' in text


# -- posture decisions ------------------------------------------------------------------------------

@pytest.mark.parametrize("expression,gap", [
    ("0 1 * * *", 86400), ("@daily", 86400), ("@every 6h", 21600), ("*/15 * * * *", 900),
    ("0 2 * * 0", 7 * 86400), ("0 3 * * 1-5", 3 * 86400), ("30 */6 * * *", 21600), ("0 0 0 1 * *", 3600 * 24 * 31)])
def test_cron_max_gap(expression, gap):
    assert cron_max_gap(expression) == gap


def test_cron_max_gap_refuses_nonsense():
    for bad in ("", "every day", "61 * * * *", "@every soon"):
        with pytest.raises(ValueError):
            cron_max_gap(bad)


def _backup(name: str, schedule: str, started: dt.datetime, phase: str = "Completed") -> dict:
    return {"metadata": {"name": name, "labels": {"velero.io/schedule-name": schedule}},
            "status": {"phase": phase, "startTimestamp": started.isoformat().replace("+00:00", "Z")}}


def test_stale_backups():
    schedules = [{"metadata": {"name": "daily", "creationTimestamp": "2025-01-01T00:00:00Z"},
                  "spec": {"schedule": "0 1 * * *"}},
                 {"metadata": {"name": "hourly", "creationTimestamp": "2025-01-01T00:00:00Z"},
                  "spec": {"schedule": "@hourly"}},
                 {"metadata": {"name": "paused", "creationTimestamp": "2025-01-01T00:00:00Z"},
                  "spec": {"schedule": "@hourly", "paused": True}},
                 {"metadata": {"name": "new", "creationTimestamp": "2026-01-02T02:00:00Z"},
                  "spec": {"schedule": "@daily"}}]
    backups = [_backup("daily-1", "daily", T0 - dt.timedelta(hours=20)),
               _backup("hourly-old", "hourly", T0 - dt.timedelta(hours=3)),
               _backup("hourly-failed", "hourly", T0 - dt.timedelta(minutes=30), phase="Failed")]
    stale = stale_backups(schedules, backups, now=T0)
    assert set(stale) == {"hourly"}
    assert "hourly-old is 3.0 h old" in stale["hourly"] and "allows 75 min" in stale["hourly"]
    assert backup_allowance(86400) == 86400 * 1.25
    later = stale_backups(schedules, backups, now=T0 + dt.timedelta(days=2))
    assert set(later) == {"daily", "hourly", "new"} and "no Completed backup" in later["new"]


def test_blind_streams_after_a_minute_down():
    down: dict[str, float] = {}
    assert blind_streams({"namespaces": (False, None), "tenants": (True, 1.0)}, down, now=100.0) == {}
    assert blind_streams({"namespaces": (False, None), "tenants": (True, 1.0)}, down, now=161.0) == {"namespaces": 61.0}
    assert blind_streams({"namespaces": (True, 0.1), "tenants": (True, 1.0)}, down, now=170.0) == {}
    assert down == {}


async def test_posture_problems_raised_once_then_cleared():
    from responder.guard.alerts import GuardAlerts

    notifier = Notifier([Sink("webhook", "http://hook")])
    alerts = GuardAlerts(notifier, cluster="prod-1")
    queue = notifier.queues[notifier.sinks[0]]
    blind = alerts._posture_notice("watch-blind/tenants", "ResponderWatchBlind", "blind", "down 61 s", {"stream": "tenants"})
    alerts.set_problems({"watch-blind/tenants": blind})
    alerts.set_problems({"watch-blind/tenants": blind})  # still there: told once
    assert queue.qsize() == 1 and "posture/watch-blind/tenants" in notifier.active
    alerts.set_problems({})
    cleared = [queue.get_nowait() for _ in range(queue.qsize())][-1]
    assert (cleared.event, cleared.resolved, cleared.starts_at) == ("posture-cleared", True, blind.starts_at)
    assert cleared.labels() == blind.labels() and notifier.active == {}
    [alert] = alertmanager_payload(cleared)
    assert alert["labels"]["stream"] == "tenants" and "endsAt" in alert


async def test_incident_notices_wait_for_the_breakers_first_step():
    from responder.guard.alerts import GuardAlerts
    from responder.incident.engine import EngineEvent

    class Opened:  # what the gate reads of a session
        incident_opened = asyncio.Event()

    alerts = GuardAlerts(Notifier([]), cluster="prod-1")
    alerts.session = Opened()  # type: ignore[assignment]
    await asyncio.wait_for(alerts._gate(), 1)  # no incident open: posture notices pass
    Opened.incident_opened.set()
    waiting = asyncio.create_task(alerts._gate())
    alerts._on_engine_event(EngineEvent("write", "breaker", {}))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # a write on its way is not a write done
    alerts._on_engine_event(EngineEvent("step-finished", "breaker", {"status": "finished"}))
    await asyncio.wait_for(waiting, 1)


async def test_firing_alerts_are_sent_to_alertmanager_again_until_resolved():
    receiver = Receiver()
    outcomes: list[str] = []
    notifier = Notifier([Sink("alertmanager", "http://am:9093")], refresh=0.05,
                        on_outcome=lambda s, n, result, a, t: outcomes.append(n.event))
    notifier.start()
    assert notifier.http is not None
    await notifier.http.aclose()
    notifier.http = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    notifier.notify(notice(event="opened"))
    await asyncio.sleep(0.3)
    assert outcomes[0] == "opened" and outcomes.count("refresh") >= 2
    notifier.notify(notice(event="recovered", resolved=True))
    await asyncio.sleep(0.05)
    count = len(receiver.requests)
    await asyncio.sleep(0.2)
    await notifier.close()
    assert len(receiver.requests) == count and outcomes[-1] == "recovered"  # resolved: no more re-sends
    assert "endsAt" in json.loads(receiver.requests[-1].content)[0]


def test_a_bad_sink_url_is_refused_without_quoting_it():
    from responder.cli.guard import _sink_url
    from responder.errors import ConfigError

    assert _sink_url(HOOK, "$RESPONDER_WEBHOOK_URL") == HOOK
    for bad in ("hooks.slack.com/services/T000/B000/XXXXSECRETXXXX", "ftp://am:9093"):
        with pytest.raises(ConfigError) as refused:
            _sink_url(bad, "$RESPONDER_WEBHOOK_URL")
        assert "XXXXSECRETXXXX" not in str(refused.value) and "am:9093" not in str(refused.value)
        assert "$RESPONDER_WEBHOOK_URL is not an http(s) URL" in str(refused.value)


async def test_a_run_broken_off_by_an_error_is_told_as_failed_but_a_stop_is_not():
    from responder.guard.alerts import GuardAlerts

    told: list[Notice] = []

    class Open:  # an open incident, as GuardAlerts reads it
        incident_opened = asyncio.Event()
        journal = None
        trigger = None

    Open.incident_opened.set()
    for error, expected in ((KeyboardInterrupt(), []), (asyncio.CancelledError(), []), (None, []),
                            (RuntimeError("boom\ndetail"), ["failed"])):
        told.clear()
        alerts = GuardAlerts(Notifier([]), cluster="prod-1")
        alerts.notifier.notify = told.append  # type: ignore[method-assign]
        alerts.session = Open()  # type: ignore[assignment]
        alerts.journal = type("J", (), {"incident_id": "i-1", "path": type("P", (), {"name": "i-1.jsonl"})(),
                                        "close": lambda self: None})()
        Open.journal = alerts.journal
        await alerts.close(error)
        assert [n.event for n in told] == expected, error
    assert told[0].summary == "incident i-1: the guard stopped on an error (RuntimeError)"
    assert told[0].description.startswith("boom;")
