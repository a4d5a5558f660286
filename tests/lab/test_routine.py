"""Routine tenant work under `responder watch --headless --auto --yes`, on the lab with the real Capsule:
an owner deleting its namespaces, an admin offboarding one Tenant, Capsule restarted by someone else.
None of it opens an incident or makes responder write anything; each operation completes as it would
without responder; every decision is in the summary with its reason."""

from __future__ import annotations

import asyncio
import time

import pytest

from responder.cluster.client import KubeClient
from responder.errors import ApiError
from responder.lab.apply import bind_cluster_admin
from responder.incident.delete_gate import CAPSULE_USER, GARBAGE_COLLECTOR
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.processes import free_port
from responder.lab.delete_gate import gate_cert_dir, gate_in_force, install_delete_gate, remove_delete_gate
from responder.lab.incident import CRD_PATH, persisted_writes_by
from responder.lab.seed import TENANT_API, seed
from responder.incident.observe import MWC_PATH, VWC_PATH, is_capsule_webhook

from .incident_helpers import client_for, namespace_states, start_watch

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}"
# The watch's --timeout: the operations below take about 19 s on the lab, the offboarding held by the delete
# gate for the detection window (10 s), then retried by Capsule (2 s apart) or the garbage collector (its
# back-off doubling: past the window at about 10 s, else at about 20 s).
WATCH_SECONDS = 45


async def wait_for(what: str, probe, timeout: float = 90.0):
    """Poll `probe` (async, truthy when done) until it is, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.3)


async def capsule_serving(admin: KubeClient) -> bool:
    """Capsule runs again: its namespace webhook admits a dry-run namespace CREATE."""
    try:
        await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": "routine-readiness-probe"}}, dry_run=True)
    except ApiError:
        return False
    return True


async def test_routine_work_opens_no_incident_and_writes_nothing(lab_manager, capsule_line, tmp_path):
    lab = await lab_manager.get(capsule_line)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=4, namespaces_per_tenant=3, prefix="routine", with_content=False)
    owned, offboarded = seeded.tenants["routine-001"], seeded.tenants["routine-002"]
    kept = set(seeded.namespaces) - set(owned[:2]) - set(offboarded)

    port = free_port()
    watch = start_watch(kubeconfig, tmp_path / "journal", "--timeout", str(WATCH_SECONDS),
                        "--gate-listen", f"127.0.0.1:{port}", "--gate-cert-dir", str(gate_cert_dir(lab)))
    watch.wait_watching()
    async with client_for(lab.kubeconfig) as admin:
        await install_delete_gate(admin, lab, port, users=(GARBAGE_COLLECTOR, CAPSULE_USER))
        try:
            await gate_in_force(admin, sorted(kept)[0])
            started = time.time()
            # 1. The owner of routine-001 deletes two of its namespaces (as a tenant owner does every day).
            owner = admin.with_options(impersonate=seeded.owners["routine-001"],
                                       impersonate_groups=(seeded.owner_group, "system:authenticated"))
            try:
                await asyncio.gather(*(owner.delete(f"/api/v1/namespaces/{ns}") for ns in owned[:2]))
            finally:
                await owner.aclose()
            # 2. An admin offboards routine-002: Capsule (0.14) or the garbage collector (0.12) deletes its namespaces.
            await admin.delete(f"{TENANT_API}/routine-002")

            async def operations_done() -> bool:
                states = await namespace_states(admin, set(owned[:2]) | set(offboarded))
                return all(s == "gone" for s in states.values())

            await wait_for("the owner's and the offboarded Tenant's namespaces gone", operations_done)
            # 3. Someone else restarts Capsule: replicas 1 -> 0 -> 1, a new pod, its webhooks rewritten (0.14).
            for replicas in (0, 1):
                await admin.patch(f"{DEPLOYMENT_PATH}/scale", {"spec": {"replicas": replicas}})
                await asyncio.sleep(1.0)
            await wait_for("Capsule back after its restart", lambda: capsule_serving(admin), timeout=120)
            operations_s = time.time() - started

            rc, summary, stderr = watch.finish(timeout=WATCH_SECONDS + 60)
            states = await namespace_states(admin, set(seeded.namespaces))
            tenants = {t["metadata"]["name"] for t in (await admin.get(TENANT_API))["items"]}
            replicas_after = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
            writes = persisted_writes_by(lab.audit_log, "responder", since=started - 1)
            # Leave the shared lab as found: the rest of this seed goes (and is gone before the next test).
            for tenant in tenants & set(seeded.tenants):
                await admin.delete(f"{TENANT_API}/{tenant}")

            async def cleaned() -> bool:
                return all(s == "gone" for s in (await namespace_states(admin, set(seeded.namespaces))).values())

            await wait_for("the routine seed cleaned up", cleaned)
        finally:
            await remove_delete_gate(admin)  # the lab is shared: no webhook left pointing at a stopped watch

    assert rc == 0, stderr[-3000:]
    assert operations_s < WATCH_SECONDS, f"the operations took {operations_s:.0f}s, longer than the watch"
    assert watch.journal_path() is None, "routine work must not open an incident journal"
    assert summary is not None and summary["incident"] is None, summary
    assert writes == [], [(w["verb"], w["requestURI"]) for w in writes]
    detection = summary["detection"]
    assert detection["counts"]["incident"] == 0 and detection["incident"] is None, detection
    routine = {(d["kind"], tuple(d["objects"])) for d in detection["routine"]}
    for ns in owned[:2]:
        assert ("owner-deleted-namespace", (ns,)) in routine, detection["routine"]
    offboarding = [d for d in detection["notices"] if d["kind"] == "tenant-offboarded"]
    assert [d["objects"] for d in offboarding] == [["routine-002"]], detection["notices"]
    assert {ns for kind, objects in routine if kind == "offboarding" for ns in objects} <= set(offboarded)
    assert any(kind == "capsule-scaled" for kind, _ in routine), detection["routine"]
    assert all(d["reason"] for d in detection["routine"] + detection["notices"])
    # The operations completed as without responder; everything else is untouched.
    assert {ns for ns, s in states.items() if s == "alive"} == kept, states
    assert replicas_after == 1  # as the restart left it; responder never scaled it (no write above)
    assert "routine-002" not in tenants and {"routine-001", "routine-003", "routine-004"} <= tenants
    assert "ROUTINE owner-deleted-namespace" in stderr and "NOTICE tenant-offboarded" in stderr
    # The delete gate held the offboarded Tenant's namespaces for the window, then let them go; the owner's
    # own DELETEs never reached it (matchConditions select the garbage collector's and Capsule's only).
    held = [line for line in stderr.splitlines() if "DENY tenant-deleted-recently" in line]
    released = [line for line in stderr.splitlines() if "ALLOW offboarded" in line]
    assert held and all("routine-002" in line for line in held), stderr[-3000:]
    assert {ns for ns in offboarded if any(f"namespace {ns}:" in line for line in released)} == set(offboarded), \
        stderr[-3000:]
    assert not any(ns in line for ns in owned[:2] for line in held + released), stderr[-3000:]
    print(f"\nroutine corpus on Capsule {capsule_line}: operations {operations_s:.1f}s, "
          f"decisions {detection['counts']}")


async def test_capsule_uninstalled_during_the_incident_the_breaker_says_so(lab_manager, tmp_path):
    """Webhooks, Deployment and CRD deleted together (`helm uninstall`, an Argo CD prune): an incident (the CRD),
    and the breaker says Capsule is uninstalled - nothing to scale, the hold holds - instead of failing on a 404."""
    lab = await lab_manager.get("0.14", fresh=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=3, namespaces_per_tenant=3, prefix="uninstall", with_content=False)
    watch = start_watch(kubeconfig, tmp_path / "journal")
    watch.wait_watching()
    async with client_for(lab.kubeconfig) as admin:
        hooks = [f"{path}/{obj['metadata']['name']}" for path in (VWC_PATH, MWC_PATH)
                 for obj in (await admin.get(path))["items"] if is_capsule_webhook(obj)]
        await asyncio.gather(admin.delete(DEPLOYMENT_PATH), admin.delete(CRD_PATH),
                             *(admin.delete(hook) for hook in hooks))
        rc, summary, stderr = watch.finish(timeout=180)
        states = await namespace_states(admin, set(seeded.namespaces))
    assert rc == 0, stderr[-3000:]
    breaker = summary["steps"]["breaker"]
    assert breaker["status"] == "finished" and breaker["breaker"] == "capsule-uninstalled", summary["steps"]
    assert "CAPSULE UNINSTALLED" in stderr and "nothing to scale" in breaker["summary"]
    assert summary["steps"]["verify-breaker"]["status"] == "finished"
    # The Tenants' finalizers are released: the watch lagging behind the detach does not hold them.
    assert summary["steps"]["tenant-finalizers"]["status"] == "finished", summary["steps"]
    assert summary["trigger"]["kind"] == "crd-deleting" and summary["contained"], summary
    assert all(s == "alive" for s in states.values()), states
