"""Recovery after the fact, on the lab with real Velero (moto S3): the Tenant CRD was deleted while no
responder was running, and responder is started afterwards with nothing of its own to go on (no journal,
no shadow copy). What existed comes from the newest usable Velero backup."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from responder.actions.breaker import holds_in_place
from responder.errors import ApiError
from responder.incident import triage
from responder.incident.observe import TENANTS_PATH
from responder.lab.apply import bind_cluster_admin
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.incident import delete_tenant_crd
from responder.lab.seed import seed
from responder.lab.velero import create_backup, velero_path
from responder.recovery import decisions as recovery

from .incident_helpers import client_for, read_journal, run_responder
from .test_containment import capsule_webhooks
from .test_recovery import _wait_gone, content_of, doctor_backup

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1200)]

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tenants.capsule.clastix.io"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}"


def _steps(stderr: str) -> str:
    """What each step did, from a run's log (without Velero's per-item messages)."""
    return "\n".join(line for line in stderr.splitlines() if " step " in line and "velero " not in line)[-6000:]


async def _wait_crd_gone(client, timeout: float = 180) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await client.get_or_none(CRD_PATH) is not None:
        assert asyncio.get_running_loop().time() < deadline, "the Tenant CRD is still there"
        await asyncio.sleep(0.5)


async def test_aftermath_total_loss_comes_back_from_the_backup(lab_manager, tmp_path):
    await _total_loss(lab_manager, tmp_path, "0.14")


async def _total_loss(lab_manager, tmp_path, line: str) -> None:
    lab = await lab_manager.get(line, fresh=True, velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=3, namespaces_per_tenant=3)
        await create_backup(admin, "before-the-loss")
        specs_before = {t["metadata"]["name"]: t["spec"] for t in (await admin.get(TENANTS_PATH))["items"]}
        content_before = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        webhooks_before = await capsule_webhooks(admin)
        replicas_before = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
        # The loss, with no responder running: every Tenant and every tenant namespace goes.
        await delete_tenant_crd(admin)
        await _wait_gone(admin, seeded.namespaces)
        await _wait_crd_gone(admin)
    assert len(specs_before) == 3 and len(seeded.namespaces) == 9

    journal = tmp_path / "journal"  # empty: responder never saw this cluster before
    plan = run_responder("plan", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout)
    evidence = planned["recovery"]
    assert evidence["backup"] == "before-the-loss" and evidence["source"] == "backup before-the-loss", evidence
    assert evidence["lost_percent"] == 100.0 and evidence["surviving"] == 0, evidence
    assert planned["tenant_crd"] == "absent"
    breaker = next(s for s in planned["steps"] if s["action"] == "trip-breaker")
    assert breaker["would"].startswith("none: nothing alive to save"), breaker

    proc = run_responder("run", "--yes", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json",
                         timeout=900)
    assert proc.returncode == 0, _steps(proc.stderr)
    summary = json.loads(proc.stdout)
    assert "warning" not in summary, summary["warning"]
    assert summary["steps"]["breaker"]["summary"].startswith("breaker not tripped"), summary["steps"]["breaker"]
    rec = summary["recovery"]
    assert rec["verified"] and rec["backup"] == "before-the-loss", rec
    assert rec["lost"] == rec["restored"] == 9 and rec["known_from"] == "backup before-the-loss", rec
    assert rec["dangling"] == {} and rec["deleted_after_recovery"] == [], rec

    async with client_for(lab.kubeconfig) as admin:
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        crd = await admin.get_or_none(CRD_PATH)
        content_after = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        webhooks_after = await capsule_webhooks(admin)
        replicas_after = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
    assert crd is not None and not crd["metadata"].get("deletionTimestamp")
    # Every Tenant, its spec equal to the backup's (taken from the live ones just before the backup).
    assert {n: t["spec"] for n, t in tenants.items()} == specs_before
    # Every namespace, with its content object by object, owned by its Tenant.
    for ns in seeded.namespaces:
        assert ns in live and not live[ns]["metadata"].get("deletionTimestamp"), ns
        assert recovery.adopted_by(live[ns], tenants[ns.rsplit("-ns-", 1)[0]]), (ns, live[ns]["metadata"])
    assert content_after == content_before
    # Capsule as it was: its original replicas and webhook configurations.
    assert replicas_after == replicas_before
    assert webhooks_after == webhooks_before
    # Capsule went down for the restore only (its webhook refuses tenant namespaces Velero creates), not
    # at containment: nothing was alive to save.
    records = read_journal(Path(summary["journal"]))
    scaled = [r["step"] for r in records if r["kind"] == "intent" and r["action"] == "scale-capsule"]
    assert scaled == ["restore"], _steps(proc.stderr)


async def _tenant_namespaces(client) -> list[str]:
    listing = await client.get("/api/v1/namespaces")
    return sorted(n["metadata"]["name"] for n in listing["items"]
                  if triage.TENANT_LABEL in (n["metadata"].get("labels") or {}))


async def _lose_everything(client) -> list[str]:
    """Delete the Tenant CRD with no responder running; wait until every tenant namespace and the CRD are gone."""
    doomed = await _tenant_namespaces(client)
    await delete_tenant_crd(client)
    await _wait_gone(client, doomed)
    await _wait_crd_gone(client)
    return doomed


async def test_aftermath_rebuilt_by_a_pipeline_readopts_into_its_tenants(lab_manager, tmp_path):
    """The CRD and the Tenants re-applied by a pipeline (new UIDs) after the loss: the namespaces come back
    owned by the pipeline's Tenants, none recreated by responder."""
    lab = await lab_manager.get("0.14", velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=2, namespaces_per_tenant=2, prefix="rebuilt")
        await create_backup(admin, "before-the-rebuild")
        crd = await admin.get(CRD_PATH)
        tenants_before = (await admin.get(TENANTS_PATH))["items"]
        content_before = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        replicas_before = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
        doomed = await _lose_everything(admin)
        assert set(seeded.namespaces) <= set(doomed)
        # The pipeline: the CRD and every Tenant applied again.
        await admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", recovery.crd_for_create(crd))
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                for tenant in tenants_before:
                    if await admin.get_or_none(f"{TENANTS_PATH}/{tenant['metadata']['name']}") is None:
                        await admin.create(TENANTS_PATH, recovery.tenant_for_create(tenant))
                break
            except ApiError as exc:  # the CRD is not served yet
                assert asyncio.get_running_loop().time() < deadline, exc
                await asyncio.sleep(0.5)
        pipeline = {t["metadata"]["name"]: t["metadata"]["uid"] for t in (await admin.get(TENANTS_PATH))["items"]}
    assert set(pipeline) == {t["metadata"]["name"] for t in tenants_before}

    journal = tmp_path / "journal"
    proc = run_responder("run", "--yes", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json",
                         timeout=900)
    assert proc.returncode == 0, _steps(proc.stderr)
    rec = json.loads(proc.stdout)["recovery"]
    assert rec["verified"] and rec["backup"] == "before-the-rebuild" and rec["restored"] == len(doomed), rec
    records = read_journal(Path(json.loads(proc.stdout)["journal"]))
    assert not [r for r in records if r["kind"] == "intent" and r["action"] in ("create-tenant", "create-crd")]
    async with client_for(lab.kubeconfig) as admin:
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        content_after = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        replicas_after = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
    assert {n: t["metadata"]["uid"] for n, t in tenants.items()} == pipeline  # the pipeline's, not duplicated
    for ns in doomed:
        assert recovery.adopted_by(live[ns], tenants[live[ns]["metadata"]["labels"][triage.TENANT_LABEL]]), ns
    assert content_after == content_before
    assert replicas_after == replicas_before


async def test_aftermath_with_no_usable_backup_changes_nothing_and_says_what_is_lost(lab_manager, tmp_path):
    """Every backup refused (PartiallyFailed): nothing can be restored. Exit 1, Capsule as it was, and the
    report lists the namespaces that could not come back (read from the refused backup) and why."""
    lab = await lab_manager.get("0.14", velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=1, namespaces_per_tenant=2, prefix="unbacked")
        await create_backup(admin, "partially-failed")
        for backup in (await admin.get(velero_path("backups")))["items"]:
            await doctor_backup(admin, backup["metadata"]["name"], {"phase": "PartiallyFailed", "errors": 1})
        webhooks_before = await capsule_webhooks(admin)
        replicas_before = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
        doomed = await _lose_everything(admin)
    journal = tmp_path / "journal"
    proc = run_responder("run", "--yes", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json",
                         timeout=600)
    assert proc.returncode == 1, _steps(proc.stderr)
    summary = json.loads(proc.stdout)
    assert "warning" not in summary and summary["recovery"]["backup"] is None, summary
    async with client_for(lab.kubeconfig) as admin:
        assert (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"] == replicas_before
        assert await capsule_webhooks(admin) == webhooks_before
        assert not [h for h in (await holds_in_place(admin)).values()]
    report = run_responder("report", summary["journal"])
    assert report.returncode == 0, report.stderr
    assert not report.stdout.startswith("> **CAPSULE IS AT 0")
    assert "No backup used" in report.stdout and "refused: phase PartiallyFailed" in report.stdout, report.stdout
    assert f"Could not be restored ({len(doomed)})" in report.stdout, report.stdout
    assert all(ns in report.stdout for ns in seeded.namespaces)


async def test_aftermath_total_loss_on_capsule_0_12(lab_manager, tmp_path):
    """The same on Capsule 0.12 (Tenants without finalizers: the garbage collector alone deletes the namespaces)."""
    await _total_loss(lab_manager, tmp_path, "0.12")
