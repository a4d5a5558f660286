"""Run real incidents on the lab with the real `responder` program, and read what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.lab.control_plane import Lab
from responder.lab.incident import delete_tenant_crd

RESPONDER = [sys.executable, "-m", "responder"]


@dataclass
class WatchProcess:
    proc: subprocess.Popen
    journal_dir: Path
    stderr_path: Path
    stdout_path: Path
    started: float = field(default_factory=time.time)

    def wait_watching(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "watching " in self.stderr_path.read_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"responder exited early: {self.stderr_path.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError("responder did not start watching")

    def finish(self, timeout: float = 300) -> tuple[int, dict[str, Any] | None, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"responder did not finish: {self.stderr_path.read_text()[-3000:]}")
        out = self.stdout_path.read_text()
        try:
            summary = json.loads(out) if out.strip() else None
        except ValueError:
            summary = None
        return rc, summary, self.stderr_path.read_text()

    def journal_path(self) -> Path | None:
        files = sorted(self.journal_dir.glob("inc-*.jsonl"))
        return files[-1] if files else None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def start_watch(kubeconfig: Path, journal_dir: Path, *extra: str, env: dict[str, str] | None = None,
                recover: bool = False) -> WatchProcess:
    """`responder watch --headless --auto --yes`; containment only unless `recover`."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    out, err = journal_dir / "watch.stdout", journal_dir / "watch.stderr"
    phases = [] if recover else ["--contain-only"]
    proc = subprocess.Popen([*RESPONDER, "watch", "--headless", "--auto", "--yes", "--kubeconfig", str(kubeconfig),
                             "--journal", str(journal_dir), "-o", "json", *phases, *extra],
                            stdout=open(out, "w"), stderr=open(err, "w"), env={**os.environ, **(env or {})})
    return WatchProcess(proc, journal_dir, err, out)


def run_responder(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*RESPONDER, *args], capture_output=True, text=True, timeout=timeout)


def read_journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def namespace_states(client: KubeClient, names: set[str]) -> dict[str, str]:
    """name -> alive | terminating | gone."""
    listing = await client.list_all("/api/v1/namespaces")
    live = {n["metadata"]["name"]: n for n in listing["items"]}
    out = {}
    for name in names:
        ns = live.get(name)
        out[name] = "gone" if ns is None else ("terminating" if ns["metadata"].get("deletionTimestamp") else "alive")
    return out


async def trigger(lab: Lab) -> float:
    async with lab.admin_client() as client:
        return await delete_tenant_crd(client)


def client_for(kubeconfig: Path) -> KubeClient:
    return KubeClient(load_cluster_access(str(kubeconfig)))


# The lab's kubelet stops the Capsule process within this long after the breaker's scale to 0; until
# then Capsule keeps running (and, on 0.14, deleting the namespaces of Tenants being deleted).
CAPSULE_STOP_S = 1.0


def breaker_held(records: list[dict[str, Any]]) -> float | None:
    """When Capsule's scale-to-0 succeeded (epoch seconds of its outcome), None if it has not."""
    from datetime import datetime

    outcomes = {r["intent"]: r for r in records if r["kind"] == "outcome"}
    for r in records:
        if r["kind"] == "intent" and r.get("action") == "scale-capsule" and outcomes.get(r["seq"], {}).get("status") == "ok":
            return datetime.fromisoformat(outcomes[r["seq"]]["ts"].replace("Z", "+00:00")).timestamp()
    return None


def losses_unexplained(audit_log: Path, *, since: float, held: float, prefix: str,
                       lost: set[str]) -> str | None:
    """Why the namespaces `lost` (of those named `prefix`...) are not all the cascade's own before the breaker
    held (None: they are). On 0.14 Capsule deletes the namespaces of its dying Tenants until its process stops
    (CAPSULE_STOP_S after the scale to 0 held): a DELETE sent before then may win, none accepted after it may.
    A DELETE answered with a server error counts as sent (Capsule stopped mid-request: the deletion can reach
    etcd while its answer is lost); one refused (4xx) never does."""
    from datetime import datetime

    from responder.lab.incident import read_audit

    def epoch(e: dict[str, Any]) -> float:
        return datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()

    def code(e: dict[str, Any]) -> int:
        return int((e.get("responseStatus") or {}).get("code", 500))

    deletes = [e for e in read_audit(audit_log, since=since)
               if e.get("verb") == "delete" and (e.get("objectRef") or {}).get("resource") == "namespaces"
               and not e["objectRef"].get("subresource") and e["objectRef"].get("name", "").startswith(prefix)
               and "dryRun=" not in e.get("requestURI", "")]
    late = {e["objectRef"]["name"]: round(epoch(e) - held, 3) for e in deletes
            if code(e) < 300 and epoch(e) > held + CAPSULE_STOP_S}
    if late:
        return f"namespaces deleted after the breaker held (s after): {late}"
    sent_before_stop = {e["objectRef"]["name"] for e in deletes
                        if (code(e) < 300 or code(e) >= 500) and epoch(e) <= held + CAPSULE_STOP_S}
    if not lost <= sent_before_stop:
        return (f"lost with no DELETE sent before Capsule stopped: {sorted(lost - sent_before_stop)}; DELETEs: "
                f"{[(e['objectRef']['name'], e['user']['username'], code(e)) for e in deletes]}")
    return None


def deleted_names(audit_log: Path, *, since: float, prefix: str) -> set[str]:
    """Namespaces named `prefix`... that a DELETE was sent for (the gone ones are named only there)."""
    from responder.lab.incident import read_audit

    return {e["objectRef"]["name"] for e in read_audit(audit_log, since=since)
            if e.get("verb") == "delete" and (e.get("objectRef") or {}).get("resource") == "namespaces"
            and not e["objectRef"].get("subresource") and e["objectRef"].get("name", "").startswith(prefix)
            and "dryRun=" not in e.get("requestURI", "")}
