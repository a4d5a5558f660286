"""Recovery on the lab with real Velero (moto S3): a full incident driven through
`responder watch --headless --auto --yes`, with and without a backup."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from responder.recovery import decisions as recovery

from responder.incident import triage
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.apply import bind_cluster_admin
from responder.lab.seed import seed
from responder.lab.velero import create_backup, velero_path
from responder.incident.observe import TENANTS_PATH

from .incident_helpers import client_for, read_journal, run_responder, start_watch, trigger
from .test_containment import capsule_webhooks

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

RESULTS = Path(os.environ.get("RESPONDER_RESULTS_DIR", "/tmp/responder-results"))
# The seed's content that a restore must bring back (controller-made objects are recreated by controllers).
CONTENT = {"configmaps": "/api/v1/namespaces/{ns}/configmaps", "secrets": "/api/v1/namespaces/{ns}/secrets",
           "roles": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
           "rolebindings": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
           "deployments": "/apis/apps/v1/namespaces/{ns}/deployments"}


async def content_of(client, ns: str) -> dict[str, list[str]]:
    out = {}
    for kind, path in CONTENT.items():
        items = (await client.get(path.format(ns=ns)))["items"]
        out[kind] = sorted(o["metadata"]["name"] for o in items if (kind, o["metadata"]["name"]) not in
                           recovery.AUTO_CREATED and not o["metadata"].get("ownerReferences"))
    return out


async def delete_namespaces(client, names: list[str]) -> None:
    await asyncio.gather(*(client.delete(f"/api/v1/namespaces/{n}") for n in names))


async def doctor_backup(client, name: str, status: dict) -> None:
    """Velero's Backup CRD has no status subresource: a merge patch sets the status like Velero would."""
    await client.patch(velero_path("backups", name), {"status": status})


async def _doomed(client, lost_tenants: list[str]) -> list[str]:
    return [n["metadata"]["name"] for n in (await client.get("/api/v1/namespaces"))["items"]
            if (n["metadata"].get("labels") or {}).get(triage.TENANT_LABEL) in lost_tenants]


async def _wait_gone(client, names: list[str], timeout: float = 180) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        live = {n["metadata"]["name"] for n in (await client.get("/api/v1/namespaces"))["items"]}
        if not live & set(names):
            return
        assert asyncio.get_running_loop().time() < deadline, f"still there: {sorted(live & set(names))}"
        await asyncio.sleep(0.5)


async def _incident(lab, kubeconfig, tmp_path, lost_tenants: list[str]):
    """The lost tenants' namespaces go while responder is down (a first watch built its shadow copy, which
    the second one loads), then the Tenant CRD is deleted while responder watches."""
    journal = tmp_path / "journal"
    first = start_watch(kubeconfig, journal, "--timeout", "3")
    first.wait_watching()
    assert first.finish(timeout=60)[0] == 0
    async with client_for(lab.kubeconfig) as admin:
        doomed = await _doomed(admin, lost_tenants)
        await delete_namespaces(admin, doomed)
        await _wait_gone(admin, doomed)
    watch = start_watch(kubeconfig, journal, "--timeout", "120", recover=True)
    watch.wait_watching()
    await trigger(lab)
    rc, summary, stderr = watch.finish(timeout=1200)
    return watch, rc, summary, stderr, doomed


async def test_full_incident_restores_readopts_and_brings_capsule_back(lab_manager, tmp_path):
    lab = await lab_manager.get("0.14", fresh=True, velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=20, namespaces_per_tenant=10)
        await create_backup(admin, "good-older")
        # Newer backups that must be refused: one PartiallyFailed, one expired (status set as Velero sets it).
        await create_backup(admin, "newer-partially-failed", included=["default"])
        await doctor_backup(admin, "newer-partially-failed", {"phase": "PartiallyFailed", "errors": 3,
                                                              "startTimestamp": "2099-01-01T00:00:00Z"})
        await create_backup(admin, "newest-expired", included=["default"])
        await doctor_backup(admin, "newest-expired", {"startTimestamp": "2099-01-02T00:00:00Z",
                                                      "expiration": "2020-01-01T00:00:00Z"})
        webhooks_before = await capsule_webhooks(admin)
        tenant_uids_before = {t["metadata"]["name"]: t["metadata"]["uid"] for t in (await admin.get(TENANTS_PATH))["items"]}
        lost_tenants = ["tenant-001", "tenant-002"]  # seeded Tenants count from 001
        content_before = {ns: await content_of(admin, ns) for ns in seeded.namespaces
                          if any(ns.startswith(t) for t in lost_tenants)}
    watch, rc, summary, stderr, doomed = await _incident(lab, kubeconfig, tmp_path, lost_tenants)
    assert len(doomed) == 20
    assert rc == 0, stderr[-4000:]
    rec = summary["recovery"]
    assert rec["verified"] and rec["backup"] == "good-older", rec
    assert rec["lost"] >= 20 and rec["restored"] == rec["lost"], rec

    async with client_for(lab.kubeconfig) as admin:
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        deployment = await admin.get(f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}")
        webhooks_after = await capsule_webhooks(admin)
        content_after = {ns: await content_of(admin, ns) for ns in content_before}
    # 100 % of the namespaces exist and are owned by their recreated Tenants (new UIDs).
    for ns in seeded.namespaces:
        assert ns in live and not live[ns]["metadata"].get("deletionTimestamp"), ns
        tenant = tenants[ns.rsplit("-ns-", 1)[0]]
        assert recovery.adopted_by(live[ns], tenant), (ns, live[ns]["metadata"])
    assert all(tenants[n]["metadata"]["uid"] != uid for n, uid in tenant_uids_before.items())
    # The lost ones hold their content again.
    assert content_after == content_before
    # Capsule at its original replicas; webhook configurations equal the originals.
    assert deployment["spec"]["replicas"] == 1
    assert webhooks_after == webhooks_before
    # The refusals say which backup and why.
    journal = read_journal(watch.journal_path())
    plan = next(r for r in reversed(journal) if r["kind"] == "recovery-plan")
    reasons = {r["name"]: r["reason"] for r in plan["rejected"]}
    assert "PartiallyFailed" in reasons["newer-partially-failed"] and "expired" in reasons["newest-expired"]
    # The report lists every step.
    report = run_responder("report", str(watch.journal_path()))
    assert report.returncode == 0, report.stderr
    for step in ("breaker", "detach", "verify-breaker", "choose-backup", "wait-lost-gone", "recreate-tenants",
                 "restore", "readopt", "restore-capsule", "verify"):
        assert step in report.stdout, step
    assert "Backup used: `good-older`" in report.stdout
    steps = {r["step"]: r["status"] for r in journal if r["kind"] == "step"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recovery-full.json").write_text(json.dumps({"summary": summary, "steps": steps}, indent=2))


async def test_no_backup_recreates_tenants_from_shadow_and_says_what_is_lost(lab_manager, tmp_path):
    """No Velero at all: the namespaces lost while responder was down cannot come back, and the report says so."""
    lab = await lab_manager.get("0.14", fresh=True, velero=False)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=5, namespaces_per_tenant=4)
        webhooks_before = await capsule_webhooks(admin)
    watch, rc, summary, stderr, doomed = await _incident(lab, kubeconfig, tmp_path, ["tenant-001"])
    assert rc == 1, stderr[-3000:]  # not everything could be recovered, and the exit code says so
    rec = summary["recovery"]
    assert rec["backup"] is None and rec["restored"] == 0
    assert set(rec["unrestorable"]) == set(doomed) and len(doomed) == 4
    async with client_for(lab.kubeconfig) as admin:
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        webhooks_after = await capsule_webhooks(admin)
    assert set(tenants) == {f"tenant-{i:03d}" for i in range(1, 6)}  # every Tenant, from the shadow copy
    survivors = [ns for ns in seeded.namespaces if ns not in doomed]
    for ns in survivors:
        assert recovery.adopted_by(live[ns], tenants[ns.rsplit("-ns-", 1)[0]]), ns
    assert webhooks_after == webhooks_before
    report = run_responder("report", str(watch.journal_path()))
    assert "No backup used" in report.stdout and "Could not be restored (4)" in report.stdout, report.stdout[-3000:]
    assert all(ns in report.stdout for ns in doomed)


@pytest.mark.skip(reason="its incident is an admin deleting a namespace of a live Tenant, which detection now "
                         "rightly calls routine (no incident, no breaker); the rescue-backup path is covered by "
                         "test_aftermath.py::test_aftermath_partial_recreates_only_what_is_missing, where the "
                         "cascade itself leaves the namespace Terminating with its content")
async def test_half_deleted_namespace_is_filled_in_and_an_incident_growing_during_recovery_is_contained(
        lab_manager, tmp_path):
    """A tenant namespace deleted while responder was down: the namespace controller removed all its content
    but an object a finalizer holds. responder starts, the breaker freezes it, the rescue backup holds what
    was left, and the chosen backup fills in the rest. Meanwhile, during recovery, the Tenant CRD is deleted:
    the incident grows, and responder contains it again before going on."""
    lab = await lab_manager.get("0.14", fresh=True, velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=3, namespaces_per_tenant=2)
        await create_backup(admin, "before-the-incident")
        half = seeded.namespaces[0]
        content_before = await content_of(admin, half)
        held = f"/api/v1/namespaces/{half}/configmaps/held"
        await admin.create(f"/api/v1/namespaces/{half}/configmaps",
                           {"metadata": {"name": "held", "finalizers": ["responder.dev/test-hold"]}})
    journal = tmp_path / "journal"
    first = start_watch(kubeconfig, journal, "--timeout", "3")  # the shadow copy the second watch loads
    first.wait_watching()
    assert first.finish(timeout=60)[0] == 0

    def but_held(content: dict[str, list[str]]) -> dict[str, list[str]]:
        return {kind: [n for n in names if n != "held"] for kind, names in content.items()}

    async with client_for(lab.kubeconfig) as admin:
        await admin.delete(f"/api/v1/namespaces/{half}")
        deadline = asyncio.get_running_loop().time() + 60
        while any(but_held(await content_of(admin, half)).values()):
            assert asyncio.get_running_loop().time() < deadline, await content_of(admin, half)
            await asyncio.sleep(0.3)
    watch = start_watch(kubeconfig, journal, "--timeout", "120", recover=True)
    watch.wait_watching()
    async with client_for(lab.kubeconfig) as admin:
        deadline = asyncio.get_running_loop().time() + 300
        while not any(b["metadata"]["name"].startswith("responder-rescue-")
                      and (b.get("status") or {}).get("phase") == "Completed"
                      for b in (await admin.get(velero_path("backups")))["items"]):
            assert asyncio.get_running_loop().time() < deadline, "no rescue backup"
            await asyncio.sleep(0.5)
        await trigger(lab)  # recovery is waiting for the half-deleted namespace to go
        await asyncio.sleep(2)
    # The held object may go now. Its finalizer is removed as responder: the breaker refuses every other
    # identity's writes in tenant namespaces.
    async with client_for(kubeconfig) as as_responder:
        await as_responder.patch(held, {"metadata": {"finalizers": None}})
    rc, summary, stderr = watch.finish(timeout=900)
    assert rc == 0, stderr[-4000:]
    rec = summary["recovery"]
    assert rec["verified"] and rec["lost"] == rec["restored"] == 1, rec
    async with client_for(lab.kubeconfig) as admin:
        assert but_held(await content_of(admin, half)) == content_before  # whether Velero kept held is its call
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
    for ns in seeded.namespaces:
        assert recovery.adopted_by(live[ns], tenants[ns.rsplit("-ns-", 1)[0]]), ns
    records = read_journal(watch.journal_path())
    gone = next(r for r in records if r["kind"] == "recovery-gone")
    assert gone["rescued"] == [half], gone
    assert not any(gone["rescue_counts"][half].get(k) for k in ("configmaps", "secrets", "deployments.apps")), gone
    restore = next(r for r in reversed(records) if r["kind"] == "recovery-restore")
    # The rescue first (it held nothing restorable of this namespace), then the fill from the chosen backup.
    assert [r["backup"] for r in restore["restores"]] == [gone["rescue_backup"], "before-the-incident"], restore
    assert restore["restores"][1]["restored"] == [half] and restore["restored"] == [half], restore
    # The growth was contained during recovery: detached again and the Tenants released, before recreating.
    seq = {r["kind"]: r["seq"] for r in reversed(records) if r["kind"] in ("escalated", "recovery-plan",
                                                                           "recovery-tenants")}
    assert seq["recovery-plan"] < seq["escalated"] < seq["recovery-tenants"], seq
    detached_after = {r["target"] for r in records if r["kind"] == "intent" and r["action"] == "detach"
                      and r["seq"] > seq["escalated"]}
    assert detached_after == set(seeded.namespaces) - {half}, detached_after
