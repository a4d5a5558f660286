"""`responder guard` on the lab (Capsule 0.14): replicas as local processes, each its own ServiceAccount bound to
`responder manifests rbac`, as a pod would run it. One leads through the writer Lease, the standby never writes
and takes over within the Lease's duration when the leader is SIGKILLed; a leader that finds another holder in the
Lease exits (6); a leader stopped with SIGTERM hands over at once; the leader contains the Tenant CRD's deletion on its own; a headless `run` refuses while a live
guard holds the Lease, and writes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from responder.cluster.lease import LEASE_DURATION, RETRY_PERIOD, micro_time
from responder.errors import EXIT_LEASE_HELD, Conflict
from responder.lab.apply import apply_objects
from responder.lab.control_plane import ADMIN_USER
from responder.lab.incident import persisted_writes_by
from responder.lab.processes import free_port
from responder.lab.seed import seed
from responder.names import RESPONDER_NAMESPACE, WRITER_LEASE
from responder.response.session import DEFAULT_RUNBOOK, REPO_RUNBOOKS

from .incident_helpers import RESPONDER, breaker_held, losses_unexplained, namespace_states, run_responder, trigger

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{RESPONDER_NAMESPACE}/leases/{WRITER_LEASE}"
TENANTS, PER_TENANT = 10, 10


def sa_user(name: str) -> str:
    return f"system:serviceaccount:{RESPONDER_NAMESPACE}:{name}"


async def guard_kubeconfig(lab, admin, name: str, directory: Path) -> Path:
    """`responder manifests rbac --name NAME` applied as printed, and a TokenRequest for that ServiceAccount."""
    proc = run_responder("manifests", "rbac", "--name", name, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    await apply_objects(admin, json.loads(proc.stdout)["items"])
    review = await admin.create(f"/api/v1/namespaces/{RESPONDER_NAMESPACE}/serviceaccounts/{name}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    return lab.write_kubeconfig(directory / f"{name}.kubeconfig", sa_user(name), token=review["status"]["token"])


@dataclass
class GuardProcess:
    name: str
    proc: subprocess.Popen
    port: int
    stderr_path: Path
    stdout_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"guard {self.name} exited ({self.proc.returncode}): {self.stderr()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"guard {self.name}: no {text!r} within {timeout}s: {self.stderr()[-3000:]}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def leader_metric(self) -> float:
        match = re.search(r"^responder_leader (\S+)$", self.get("/metrics").text, re.M)
        assert match, "responder_leader missing from /metrics"
        return float(match.group(1))

    def identity(self) -> str:
        return self.get("/readyz").json()["identity"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_guard(name: str, kubeconfig: Path, directory: Path, *extra: str,
                env: dict[str, str] | None = None) -> GuardProcess:
    journal = directory / f"journal-{name}"
    journal.mkdir(parents=True, exist_ok=True)
    port = free_port()
    out, err = directory / f"{name}.stdout", directory / f"{name}.stderr"
    proc = subprocess.Popen([*RESPONDER, "guard", "--kubeconfig", str(kubeconfig), "--journal", str(journal),
                             "--port", str(port), "--bind", "127.0.0.1", "-o", "json", *extra],
                            stdout=open(out, "w"), stderr=open(err, "w"), env={**os.environ, **(env or {})})
    return GuardProcess(name, proc, port, err, out)


def contain_only_runbook(directory: Path) -> Path:
    runbook = yaml.safe_load((REPO_RUNBOOKS / DEFAULT_RUNBOOK).read_text())
    runbook["spec"]["steps"] = [step for step in runbook["spec"]["steps"] if step["phase"] == "contain"]
    runbook["spec"]["params"].pop("veleroNamespace")  # only recovery steps take it
    path = directory / "contain-only.yaml"
    path.write_text(yaml.safe_dump(runbook, sort_keys=False))
    return path


async def set_lease_holder(lab, holder: str) -> None:
    """As an operator would (kubectl edit): the Lease names `holder` ("" releases it)."""
    async with lab.admin_client() as admin:
        for _ in range(20):  # the leader renews every 2 s: retry on the resourceVersion conflict
            lease = await admin.get(LEASE_PATH)
            lease["spec"].update(holderIdentity=holder, renewTime=micro_time(time.time()))
            try:
                await admin.replace(LEASE_PATH, lease)
                return
            except Conflict:
                await asyncio.sleep(0.1)
    raise AssertionError("the Lease could not be updated")


async def fresh_incident_lab(lab_manager):
    """A fresh Capsule 0.14 lab with responder's Incident CRD and no writer Lease: where a guard is started."""
    from responder.lab.apply import wait_crds_established
    from responder.response.incident_object import INCIDENT_CRD, incident_crd

    lab = await lab_manager.get("0.14", fresh=True)
    async with lab.admin_client() as admin:
        await apply_objects(admin, [incident_crd()])
        await wait_crds_established(admin, [INCIDENT_CRD])
        if await admin.get_or_none(LEASE_PATH) is not None:
            await admin.delete(LEASE_PATH)
    return lab


def poll(condition, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return condition()


async def test_two_guards_one_leader_failover_containment_and_a_refused_run(lab_manager, tmp_path):
    lab = await lab_manager.get("0.14")
    async with lab.admin_client() as admin:
        await apply_objects(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RESPONDER_NAMESPACE}}])
        # A Lease left by an earlier test's responder would only delay the first leader: start from none.
        if await admin.get_or_none(LEASE_PATH) is not None:
            await admin.delete(LEASE_PATH)
        seeded = await seed(admin, tenants=TENANTS, namespaces_per_tenant=PER_TENANT, prefix="guard",
                            with_content=False)
        kubeconfigs = {name: await guard_kubeconfig(lab, admin, name, tmp_path) for name in ("guard-a", "guard-b")}
    namespaces = set(seeded.namespaces)
    guards: list[GuardProcess] = []
    try:
        # Two replicas: the first takes the Lease, the second stands by with its watches warm.
        a = start_guard("a", kubeconfigs["guard-a"], tmp_path)
        guards.append(a)
        a.wait_for("leading")
        b = start_guard("b", kubeconfigs["guard-b"], tmp_path)
        guards.append(b)
        b.wait_for("standby")
        assert poll(lambda: a.get("/readyz").status_code == 200 and b.get("/readyz").status_code == 200, 60)
        assert a.get("/healthz").text == "ok\n"
        assert sorted([a.leader_metric(), b.leader_metric()]) == [0.0, 1.0]
        metrics = a.get("/metrics").text
        for line in ('responder_watch_up{stream="namespaces"} 1.0', "responder_incidents_total 0.0",
                     "responder_hold_armed", 'responder_breaker{responder_breaker="ready"} 1.0',
                     'responder_watch_last_event_age_seconds{stream="namespaces"}'):
            assert line in metrics, line

        # A headless run against the cluster the live guard leads: refused, naming it, with nothing written.
        since = time.time()
        run = run_responder("run", "--yes", "--kubeconfig", str(lab.kubeconfig), "--journal", str(tmp_path / "run"),
                            timeout=120)
        assert run.returncode == EXIT_LEASE_HELD, run.stdout + run.stderr
        assert a.identity() in run.stderr and "writes nothing" in run.stderr, run.stderr
        assert persisted_writes_by(lab.audit_log, ADMIN_USER, since=since) == []
        assert not list((tmp_path / "run").glob("inc-*.jsonl"))
        async with lab.admin_client() as admin:
            assert (await admin.get(LEASE_PATH))["spec"]["holderIdentity"] == a.identity()

        # SIGTERM (a rolling update): the leader releases the Lease, exits 0, and the standby leads at once.
        stopped = time.monotonic()
        assert a.stop() == 0, a.stderr()[-3000:]
        assert poll(lambda: b.leader_metric() == 1.0, 2 * RETRY_PERIOD + 10, every=0.1), b.stderr()
        handover_s = time.monotonic() - stopped
        assert handover_s <= 2 * RETRY_PERIOD + 5, handover_s  # the standby's next round
        a2 = start_guard("a2", kubeconfigs["guard-a"], tmp_path)
        guards.append(a2)
        a2.wait_for("standby")

        # SIGKILL the idle leader: the standby leads once the Lease has gone unrenewed for its duration.
        killed = time.monotonic()
        b.stop(signal.SIGKILL)
        assert poll(lambda: a2.leader_metric() == 1.0, LEASE_DURATION + 4 * RETRY_PERIOD + 10, every=0.2), a2.stderr()
        takeover_s = time.monotonic() - killed
        print(f"\nguard: the standby led {handover_s:.1f}s after the leader's SIGTERM, {takeover_s:.1f}s after the "
              f"leader's SIGKILL (Lease {LEASE_DURATION:.0f}s, retry {RETRY_PERIOD:.0f}s)")
        # The standby times the record itself (no clock comparison): it saw the last renewal up to one retry
        # period late and looks once per retry period, so the bound is the duration plus two of them (and
        # a few seconds for a loaded machine).
        assert takeover_s <= LEASE_DURATION + 2 * RETRY_PERIOD + 5, takeover_s
        async with lab.admin_client() as admin:
            lease = (await admin.get(LEASE_PATH))["spec"]
        assert lease["holderIdentity"] == a2.identity() and lease["leaseTransitions"] >= 2, lease

        # Another holder's name in the Lease (an operator's forced takeover): the leader stops leading and exits
        # (6) within a renewal or two, so its pod restarts as a standby; it never writes beside the new holder.
        await set_lease_holder(lab, "operator/forced-takeover")
        forced = time.monotonic()
        assert a2.proc.wait(timeout=30) == EXIT_LEASE_HELD, a2.stderr()[-3000:]
        lost_s = time.monotonic() - forced
        assert "lost the Lease to operator/forced-takeover" in a2.stderr(), a2.stderr()[-3000:]
        assert lost_s <= 2 * RETRY_PERIOD + 6, lost_s  # seen at its next round, then the process ends
        # Released (holder emptied): the next replica leads at once; another stands by.
        await set_lease_holder(lab, "")
        # The runbook's contain phase only: this test is about containment (recovery waits for approvals:
        # tests/lab/test_guard_incident.py).
        runbook = contain_only_runbook(tmp_path)
        c = start_guard("c", kubeconfigs["guard-a"], tmp_path, "--runbook", str(runbook))
        guards.append(c)
        c.wait_for("leading")
        d = start_guard("d", kubeconfigs["guard-b"], tmp_path, "--runbook", str(runbook))
        guards.append(d)
        d.wait_for("standby")
        standby_since = time.time()

        # The incident: the leader contains on its own, the standby writes nothing.
        started = await trigger(lab)
        c.wait_for("incident handled", timeout=180)
        summary = json.loads(c.stdout_path.read_text())
        assert summary["contained"], summary
        assert re.search(r"^responder_incidents_total 1\.0$", c.get("/metrics").text, re.M)
        assert 'responder_breaker{responder_breaker="tripped"} 1.0' in c.get("/metrics").text
        # Observed a while after the delete: the namespaces stay alive (polled), but for those Capsule 0.14
        # deleted before its process stopped: its finalizer races the breaker (usually none, 3 of 100 once in
        # CI); none may go after, nor any DELETE be accepted after (the audit log).
        journal = [json.loads(line) for line in next((tmp_path / "journal-c").glob("inc-*.jsonl")).read_text().splitlines()]
        held = breaker_held(journal)
        assert held is not None
        lost: set[str] = set()
        async with lab.admin_client() as admin:
            while True:
                states = await namespace_states(admin, namespaces)
                lost |= {n for n, state in states.items() if state != "alive"}
                assert losses_unexplained(lab.audit_log, since=started - 5, held=held, prefix="guard-",
                                          lost=lost) is None
                if time.time() >= started + 20:
                    break
                await asyncio.sleep(2)
        assert len(lost) <= 10, sorted(lost)  # a gross bound: the race is Capsule's first second
        assert persisted_writes_by(lab.audit_log, sa_user("guard-a"), since=started)
        assert persisted_writes_by(lab.audit_log, sa_user("guard-b"), since=standby_since) == []
        assert d.leader_metric() == 0.0
        # The Lease was held before the incident: the breaker's first write follows detection at once.
        detected = next(r for r in journal if r["kind"] == "trigger")["trigger"]["event_received"]
        first_write = next(r for r in journal if r["kind"] == "intent")
        first_write_ms = (_epoch(first_write["ts"]) - detected) * 1000
        print(f"guard: lost the Lease {lost_s:.1f}s after another holder's name appeared; the breaker's first write "
              f"{first_write_ms:.1f} ms after detection ({first_write['action']})")
        # Measured 4-11 ms here; the bound only catches a gross regression on a loaded CI machine.
        assert first_write["action"] == "scale-capsule" and first_write_ms < 1000, first_write_ms
        # Stopped: the standby first (it must not take over), then the leader, which releases the Lease.
        d.stop()
        assert c.stop() == 0, c.stderr()[-3000:]
        async with lab.admin_client() as admin:
            assert (await admin.get(LEASE_PATH))["spec"].get("holderIdentity", "") == ""
    finally:
        for guard in guards:
            if guard.proc.poll() is None:
                guard.proc.kill()
                guard.proc.wait()


def _epoch(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
