"""responder as a ServiceAccount bound to exactly `responder manifests rbac`: doctor, protect, and the full
incident (containment, then recovery with the lab's real Velero), with no request refused for lack of a
permission. The same run proves that secrets never reach responder's output: the ServiceAccount token and
the data of Secrets seeded in tenant namespaces (one of them lost and restored from the backup) appear in
none of its logs, summary, journal directory (journal, shadow copy) or report.

The token comes from the TokenRequest API, as an operator would mint one for a kubeconfig; it is written
to a 0600 kubeconfig and never printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from responder.recovery import decisions as recovery
from responder.errors import ApiError
from responder.lab.apply import apply_objects
from responder.lab.incident import read_audit
from responder.lab.seed import seed
from responder.lab.velero import create_backup
from responder.incident.observe import TENANTS_PATH
from responder.names import TENANT_RECORD

from .incident_helpers import (RESPONDER, WatchProcess, client_for, namespace_states, read_journal, run_responder,
                               start_watch, trigger)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

SA_NAMESPACE, SA_NAME = "responder-system", "responder"
SA_USER = f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"


async def service_account_kubeconfig(lab, admin, path) -> tuple[Path, str]:
    """Apply `responder manifests rbac` as printed, then a TokenRequest for its ServiceAccount."""
    proc = run_responder("manifests", "rbac", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)["items"]
    assert [d["kind"] for d in docs[:3]] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    # Then the guard's tenant record, created empty (the role may only patch those names, never create).
    assert docs[3:] and all(d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(TENANT_RECORD)
                            for d in docs[3:]), [d["kind"] for d in docs[3:]]
    # The namespace exists on the lab (the writer Lease lives there): applied, not created.
    await apply_objects(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SA_NAMESPACE}}, *docs])
    review = await admin.create(f"/api/v1/namespaces/{SA_NAMESPACE}/serviceaccounts/{SA_NAME}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    token = review["status"]["token"]
    return lab.write_kubeconfig(path, SA_NAME, token=token), token


def _protect_probe(event: dict) -> bool:
    """`responder protect`'s verification, a dry-run DELETE of the Tenant CRD: the role grants no delete on
    CRDs, by design, so RBAC refuses it (protect then says "not verified")."""
    return (event.get("verb") == "delete" and "dryRun=All" in event["requestURI"]
            and (event.get("objectRef") or {}).get("resource") == "customresourcedefinitions")


def refused_requests(audit_log: Path, since: float) -> list[str]:
    """Requests by the ServiceAccount the API server refused (401/403): the role lacks something."""
    return [f"{e.get('verb')} {e['requestURI']} -> {(e.get('responseStatus') or {}).get('code')}"
            for e in read_audit(audit_log, since=since)
            if (e.get("user") or {}).get("username") == SA_USER
            and (e.get("responseStatus") or {}).get("code") in (401, 403) and not _protect_probe(e)]


async def seed_secrets(admin, namespaces: list[str]) -> list[str]:
    """A Secret with a random value under an innocent key name in each namespace (a key named "password"
    would be caught by name); returns every form of the values a leak could take (raw and base64)."""
    values = []
    for ns in namespaces:
        value = f"leak-canary-{secrets.token_hex(16)}"
        encoded = base64.b64encode(value.encode()).decode()
        await admin.create(f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "db-settings"},
            "data": {"settings.yaml": encoded}})
        values += [value, encoded]
    return values


def start_verbose_watch(kubeconfig: Path, journal_dir: Path, *extra: str) -> WatchProcess:
    """`responder -vv watch --headless --auto --yes` (debug logging: every library's too), with recovery."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    out, err = journal_dir / "watch.stdout", journal_dir / "watch.stderr"
    proc = subprocess.Popen([*RESPONDER, "-vv", "watch", "--headless", "--auto", "--yes", "--kubeconfig",
                             str(kubeconfig), "--journal", str(journal_dir), "-o", "json", *extra],
                            stdout=open(out, "w"), stderr=open(err, "w"), env=dict(os.environ))
    return WatchProcess(proc, journal_dir, err, out)


def leaks(needles: dict[str, str], texts: dict[str, str]) -> list[str]:
    return [f"{what} in {where}" for what, needle in needles.items() for where, text in texts.items()
            if needle in text]


def output_of(directory: Path) -> dict[str, str]:
    return {str(p): p.read_bytes().decode("utf-8", "replace") for p in sorted(directory.rglob("*")) if p.is_file()}


async def test_service_account_with_the_generated_role_runs_the_full_incident(lab_manager, tmp_path):
    lab = await lab_manager.get("0.14", fresh=True, velero=True)  # the incident below spends the lab
    async with client_for(lab.kubeconfig) as admin:
        kubeconfig, token = await service_account_kubeconfig(lab, admin, tmp_path / "sa.kubeconfig")
        seeded = await seed(admin, tenants=5, namespaces_per_tenant=4)
        lost_tenant = sorted(seeded.tenants)[0]
        canaries = await seed_secrets(admin, seeded.namespaces)
        await create_backup(admin, "least-privilege")
    namespaces = set(seeded.namespaces)
    outputs: dict[str, str] = {}
    since = time.time() - 1

    # doctor as the ServiceAccount: every access check allowed, Velero ready, nothing it could not read.
    proc = run_responder("-vv", "doctor", "--kubeconfig", str(kubeconfig), "-o", "json", timeout=120)
    outputs |= {"doctor stdout": proc.stdout, "doctor stderr": proc.stderr}
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert report["identity"] == SA_USER
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["permissions"]["status"] == "ok", checks["permissions"]
    assert report["missing_permissions"] is None
    assert not [c for c in report["checks"] if c["summary"].startswith("could not check")], report["checks"]
    for name in ("breaker", "velero-location", "velero-backups"):
        assert checks[name]["status"] == "ok", checks[name]

    # protect and protect --remove as the ServiceAccount (its rules for the policy are in the role too; arming
    # the namespace hold applies a CRD, a cluster admin's act the role does not grant).
    for args in (("--only", "crds"), ("--remove", "--only", "crds")):
        proc = run_responder("-vv", "protect", "--kubeconfig", str(kubeconfig), *args)
        outputs |= {f"protect{args} stdout": proc.stdout, f"protect{args} stderr": proc.stderr}
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if "--remove" not in args:
            assert "protected: tenants.capsule.clastix.io" in proc.stdout, proc.stdout
            assert "not verified: this identity may not delete CRDs" in proc.stdout, proc.stdout
    assert refused_requests(lab.audit_log, since) == []
    # The API server drops a deleted policy only at its next policy refresh: the CRD deletion below must
    # not come while it still refuses (the ServiceAccount may not dry-run that DELETE itself; the admin may).
    async with client_for(lab.kubeconfig) as admin:
        deadline = time.monotonic() + 30
        while True:
            try:
                await admin.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tenants.capsule.clastix.io",
                                   dry_run=True)
                break
            except ApiError as exc:
                assert exc.status == 403 and time.monotonic() < deadline, exc
                await asyncio.sleep(0.2)

    # The full incident as the ServiceAccount: one tenant's namespaces deleted by an admin (lost), then the
    # Tenant CRD; responder contains, then recovers from the backup.
    watch = start_verbose_watch(kubeconfig, tmp_path / "journal", "--timeout", "120")
    watch.wait_watching()
    async with client_for(lab.kubeconfig) as admin:
        lost = sorted(seeded.tenants[lost_tenant])
        await asyncio.gather(*(admin.delete(f"/api/v1/namespaces/{ns}") for ns in lost))
    started = await trigger(lab)
    rc, summary, stderr = watch.finish(timeout=1200)
    assert rc == 0, stderr[-4000:]
    assert summary and summary["contained"] and summary["identity"] == SA_USER, summary
    assert summary["steps"]["verify-breaker"]["breaker"] == "verified", summary["steps"]
    rec = summary["recovery"]
    assert rec["verified"] and rec["backup"] == "least-privilege", rec
    assert rec["lost"] >= len(lost) and rec["restored"] == rec["lost"], rec
    # Every step finished; no write in the journal failed for lack of a permission.
    journal_path = watch.journal_path()
    journal = read_journal(journal_path)
    failed = [r for r in journal if r.get("kind") == "outcome" and r.get("status") == "failed"
              and any(w in str(r.get("detail", "")).lower() for w in ("403", "401", "forbidden"))]
    assert not failed, failed[:5]
    steps = {r["step"]: r["status"] for r in journal if r["kind"] == "step"}
    for step in ("breaker", "detach", "verify-breaker", "choose-backup", "recreate-tenants", "restore", "readopt",
                 "restore-capsule", "verify"):
        assert steps.get(step) == "finished", (step, steps)
    # The API server refused none of the ServiceAccount's requests (the audit log records every write).
    assert refused_requests(lab.audit_log, started - 5) == []
    # Every tenant namespace is there, owned by its recreated Tenant (checked 30 s after the delete: the
    # controller's finalizer would have deleted them by then: the cascade takes 1.6 s on 0.14).
    await asyncio.sleep(max(0.0, started + 30 - time.time()))
    async with client_for(lab.kubeconfig) as admin:
        states = await namespace_states(admin, namespaces)
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        restored_secret = await admin.get(f"/api/v1/namespaces/{lost[0]}/secrets/db-settings")
    assert all(s == "alive" for s in states.values()), {n: s for n, s in states.items() if s != "alive"}
    for ns in namespaces:
        tenant = tenants[ns.rsplit("-ns-", 1)[0]]
        assert recovery.adopted_by(live[ns], tenant), (ns, live[ns]["metadata"])
    # The restored Secret holds its value again: the canaries really went through responder's recovery.
    assert restored_secret["data"]["settings.yaml"] in canaries

    # No secret in anything responder wrote: logs (-vv), summary, the journal directory, the report.
    proc = run_responder("report", str(journal_path))
    assert proc.returncode == 0, proc.stderr
    outputs |= {"report": proc.stdout} | output_of(watch.journal_dir)
    assert any("DEBUG" in text for text in outputs.values()), "the logs were not at debug level"
    needles = {"the ServiceAccount token": token,
               "the token's signature": token.rsplit(".", 1)[-1]}
    needles |= {f"Secret value {i}": c for i, c in enumerate(canaries)}
    found = leaks(needles, outputs)
    assert found == [], found[:10]


async def test_service_account_with_the_generated_role_contains_on_capsule_0_12(lab_manager, tmp_path):
    """Containment only, on Capsule 0.12 (the garbage collector is the adversary there)."""
    lab = await lab_manager.get("0.12", fresh=True)
    async with client_for(lab.kubeconfig) as admin:
        kubeconfig, _ = await service_account_kubeconfig(lab, admin, tmp_path / "sa.kubeconfig")
        seeded = await seed(admin, tenants=5, namespaces_per_tenant=4)
    namespaces = set(seeded.namespaces)
    watch = start_watch(kubeconfig, tmp_path / "journal")
    watch.wait_watching()
    started = await trigger(lab)
    rc, summary, stderr = watch.finish()
    assert rc == 0, stderr[-3000:]
    assert summary and summary["contained"] and summary["identity"] == SA_USER, summary
    journal = read_journal(watch.journal_path())
    failed = [r for r in journal if r.get("kind") == "outcome" and r.get("status") == "failed"]
    assert not failed, failed[:5]
    assert summary["steps"]["verify-breaker"]["breaker"] == "verified", summary["steps"]
    assert refused_requests(lab.audit_log, started - 5) == []
    await asyncio.sleep(max(0.0, started + 30 - time.time()))
    async with client_for(lab.kubeconfig) as admin:
        states = await namespace_states(admin, namespaces)
    assert all(s == "alive" for s in states.values()), {n: s for n, s in states.items() if s != "alive"}
