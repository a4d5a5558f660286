"""The guard's notifications on the lab (Capsule 0.14): a guard with both sinks, the lab's Alertmanager and a
webhook receiver (an HTTP server in this test, its URL's path a secret given through the environment). The
posture problem the lab has (its namespace hold is not armed) is told; the Tenant CRD deleted: contained;
Alertmanager holds the incident's alert; the receiver got opened, contained and waiting-approval, with no
token in them; the breaker's first write came before the first notification."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from responder.errors import EXIT_INTERRUPTED

from responder.lab import alertmanager as lab_alertmanager
from responder.lab.apply import apply_objects
from responder.lab.seed import seed
from responder.names import RESPONDER_NAMESPACE

from .incident_helpers import trigger
from .test_guard import LEASE_PATH, _epoch, guard_kubeconfig, poll, start_guard

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

HOOK_SECRET = "T0LAB/B0LAB/hooksecret0123456789"


class WebhookReceiver:
    """A Slack-like incoming webhook: records each POST (arrival time, path, JSON body)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((time.time(), self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{HOOK_SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [body["event"] for _, _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_guard_notifies_alertmanager_and_a_webhook(lab_manager, tmp_path):
    lab = await lab_manager.get("0.14")

    am_url = await asyncio.to_thread(lab.start_alertmanager)
    assert lab.status()["alertmanager"] == am_url
    async with lab.admin_client() as admin:
        await apply_objects(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RESPONDER_NAMESPACE}}])
        if await admin.get_or_none(LEASE_PATH) is not None:
            await admin.delete(LEASE_PATH)
        await seed(admin, tenants=3, namespaces_per_tenant=3, prefix="notify", with_content=False)
        kubeconfig = await guard_kubeconfig(lab, admin, "guard-notify", tmp_path)
    token = re.search(r"token: (\S+)", kubeconfig.read_text()).group(1)
    receiver = WebhookReceiver()
    guard = start_guard("n", kubeconfig, tmp_path, "--alertmanager", am_url, "--cluster-name", "lab-notify",
                        env={"RESPONDER_WEBHOOK_URL": receiver.url})
    try:
        guard.wait_for("leading")
        assert poll(lambda: guard.get("/readyz").status_code == 200, 60)
        # Posture: the lab's namespace hold is not armed (no `responder protect`): told within a posture round.
        posture = []
        for _ in range(100):
            posture = [a for a in await lab_alertmanager.alerts(am_url)
                       if a["labels"].get("alertname") == "ResponderHoldNotArmed"]
            if posture:
                break
            await asyncio.sleep(0.25)
        assert posture and posture[0]["labels"]["cluster"] == "lab-notify", posture
        assert any(body["event"] == "posture" for _, _, body in receiver.received), receiver.events()
        started = time.monotonic()
        await trigger(lab)
        # Contained, then the first recovery step waits for its approval on the Incident (the guard runs recovery).
        guard.wait_for("waits for approval", timeout=180)
        assert poll(lambda: {"opened", "contained", "waiting-approval"} <= set(receiver.events()), 30), receiver.events()
        notified_s = time.monotonic() - started

        journal_path = next((tmp_path / "journal-n").glob("inc-*.jsonl"))

        def journal_now() -> list[dict]:
            return [json.loads(line) for line in journal_path.read_text().splitlines()]

        expected = {("alertmanager", "opened", "sent"), ("webhook", "opened", "sent"),
                    ("alertmanager", "contained", "sent"), ("webhook", "contained", "sent"),
                    ("alertmanager", "waiting-approval", "sent"), ("webhook", "waiting-approval", "sent")}
        # Journaled once each answer is in (the receiver saw the request a moment before).
        assert poll(lambda: expected <= {(r["sink"], r["event"], r["result"]) for r in journal_now()
                                         if r["kind"] == "notification"}, 30), journal_now()[-10:]
        journal = journal_now()
        incident = journal[0]["incident"]

        # Alertmanager holds the incident's alert (one alert: its phases update it), and nothing resolved it.
        async def incident_alert():
            return [a for a in await lab_alertmanager.alerts(am_url)
                    if a["labels"].get("alertname") == "ResponderIncident" and a["labels"].get("incident") == incident]
        held = []
        for _ in range(50):
            held = await incident_alert()
            if held:
                break
            await asyncio.sleep(0.2)
        assert len(held) == 1, held
        assert held[0]["labels"] == {"alertname": "ResponderIncident", "severity": "critical", "cluster": "lab-notify",
                                     "incident": incident}, held
        assert held[0]["status"]["state"] == "active" and held[0]["annotations"]["summary"], held

        # The webhook: Slack's {"text"} and the facts as fields; no credential anywhere in what was sent.
        bodies = [body for _, _, body in receiver.received]
        opened = next(b for b in bodies if b["event"] == "opened")
        assert opened["text"] and opened["incident"] == incident and opened["cluster"] == "lab-notify", opened
        sent = json.dumps(bodies)
        assert token not in sent and "hooksecret" not in sent and "BEGIN" not in sent
        assert all(path == f"/services/{HOOK_SECRET}" for _, path, _ in receiver.received)
        assert "hooksecret" not in guard.stderr() and token not in guard.stderr()

        # Off the hot path: the breaker's first write went out (its outcome journaled) before any incident
        # notification started, by the journal's clock and by the receiver's.
        first_intent = next(r for r in journal if r["kind"] == "intent")
        first_outcome = next(r for r in journal if r["kind"] == "outcome" and r["intent"] == first_intent["seq"])
        assert first_intent["action"] == "scale-capsule", first_intent
        notifications = [r for r in journal if r["kind"] == "notification"]
        first_sent = min(r["started_at"] for r in notifications)
        first_received = min(at for at, _, body in receiver.received if body.get("incident") == incident)
        written = _epoch(first_outcome["ts"])
        print(f"\nguard notify: the breaker's first write answered; the first notification started "
              f"{(first_sent - written) * 1000:.1f} ms later, the webhook got it {(first_received - written) * 1000:.1f} "
              f"ms later; all three phases at the receiver {notified_s:.1f} s after the delete")
        assert written <= first_sent <= first_received

        metrics = guard.get("/metrics").text
        for sink in ("alertmanager", "webhook"):
            match = re.search(rf'^responder_notifications_total{{result="sent",sink="{sink}"}} (\S+)$', metrics, re.M)
            assert match and float(match.group(1)) >= 3, metrics
        assert 'result="failed"' not in metrics
        # Stopped with the incident open (waiting for approval): "interrupted", the next leader resumes it.
        assert guard.stop() == EXIT_INTERRUPTED, guard.stderr()[-3000:]
    finally:
        receiver.close()
        if guard.proc.poll() is None:
            guard.proc.kill()
            guard.proc.wait()
