"""The guard's endpoint (responder/guard/health.py) and the journaling of leadership changes, without a cluster."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from responder.cluster.lease import LeadershipChange
from responder.guard.health import GuardMetrics, GuardStatus, HealthServer
from responder.incident.journal import Journal
from responder.response.leadership import journal_leadership

REQUIRED = frozenset({"crd", "namespaces"})


def status(**overrides) -> GuardStatus:
    fields = dict(leader=True, lease_known=True, holder="guard/a/1", identity="guard/a/1", lease_transitions=2,
                  watches={"crd": (True, 1.5), "namespaces": (True, None), "velero": (False, None)},
                  required_watches=REQUIRED, hold_armed=True, breaker="tripped", incident_open=True)
    fields.update(overrides)
    return GuardStatus(**fields)


def test_ready_needs_every_required_watch_up_and_the_lease_known():
    assert status().ready()  # the optional velero stream being down does not matter
    assert not status(lease_known=False).ready()
    assert not status(watches={"crd": (True, None), "namespaces": (False, None)}).ready()
    assert not status(watches={"crd": (True, None)}).ready()  # a required stream not listed yet
    assert not status(required_watches=frozenset(), watches={}).ready()  # no session yet
    assert status(leader=False).ready()  # a standby is ready too


def test_metrics_render_what_the_status_says():
    metrics = GuardMetrics()
    metrics.incidents.inc()
    text = metrics.render(status()).decode()
    for line in ("responder_leader 1.0", "responder_lease_transitions 2.0", "responder_incidents_total 1.0",
                 "responder_incident_open 1.0", 'responder_watch_up{stream="crd"} 1.0',
                 'responder_watch_up{stream="velero"} 0.0', 'responder_watch_last_event_age_seconds{stream="crd"} 1.5',
                 "responder_hold_armed 1.0", 'responder_breaker{responder_breaker="tripped"} 1.0',
                 'responder_breaker{responder_breaker="ready"} 0.0'):
        assert line + "\n" in text, line
    assert 'responder_watch_last_event_age_seconds{stream="namespaces"}' not in text  # no event yet: no age
    standby = metrics.render(status(leader=False, breaker="ready")).decode()
    assert "responder_leader 0.0\n" in standby and 'responder_breaker{responder_breaker="ready"} 1.0' in standby


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_the_endpoint_answers_health_readiness_and_metrics():
    current = {"status": status(lease_known=False)}
    server = HealthServer(lambda: current["status"], GuardMetrics())
    port = await server.start("127.0.0.1", 0)
    try:
        assert (await _get(port, "/healthz"))[::2] == (200, b"ok\n")
        code, _, body = await _get(port, "/readyz")
        assert code == 503 and json.loads(body)["lease_known"] is False
        current["status"] = status()
        code, _, body = await _get(port, "/readyz?verbose=1")
        ready = json.loads(body)
        assert code == 200 and ready["ready"] and ready["leader"] and ready["watches"]["crd"] == {
            "up": True, "last_event_age_seconds": 1.5}
        code, headers, body = await _get(port, "/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
        assert b"responder_leader 1.0\n" in body
        assert (await _get(port, "/nope"))[0] == 404
        assert (await _get(port, "/metrics", "POST"))[0] == 405
        code, _, body = await _get(port, "/healthz", "HEAD")
        assert code == 200 and body == b""
    finally:
        await server.stop()


def test_leadership_changes_are_journaled_once_an_incident_journal_exists(tmp_path):
    session = SimpleNamespace(journal=None)
    on_change = journal_leadership(session)
    on_change(LeadershipChange("acquired", "guard/a/1", 0))  # no incident yet: nothing to journal in
    session.journal = Journal.create(tmp_path, meta={})
    try:
        on_change(LeadershipChange("acquired", "guard/b/2", 1, previous_holder="guard/a/1"))
        on_change(LeadershipChange("lost", "guard/c/3", 2))
        records = [r for r in session.journal.records() if r["kind"] == "leadership"]
    finally:
        session.journal.close()
    assert [(r["event"], r["holder"], r["previous_holder"], r["transitions"]) for r in records] == [
        ("acquired", "guard/b/2", "guard/a/1", 1), ("lost", "guard/c/3", "", 2)]


def test_a_port_that_is_not_a_port_is_bad_input_before_any_cluster_access(capsys):
    from responder.cli import main

    assert main(["guard", "--port", "70000", "--kubeconfig", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "--port 70000 is not a TCP port" in err and "fix:" in err
