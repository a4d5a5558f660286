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
from responder.names import RESPONDER_NAMESPACE, TENANT_RECORD_OBJECTS
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
    assert not journal.exists(), "plan left a journal directory behind"
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


async def test_aftermath_from_the_guards_record_when_responder_has_no_copy_of_its_own(lab_manager, tmp_path):
    """A guard kept the tenant record between incidents, then was stopped; a Tenant changed after the last
    backup. The Tenant CRD is deleted with no responder running. A responder with no journal and no shadow
    copy names the record as what existed, recreates the Tenants with the record's specs (not the older
    backup's) and restores the namespaces from the backup."""
    from responder.incident.record import read_tenant_record

    from .test_guard import guard_kubeconfig, start_guard

    lab = await lab_manager.get("0.14", velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        guard_config = await guard_kubeconfig(lab, admin, "guard-record", tmp_path)  # the role and the record's ConfigMaps
        seeded = await seed(admin, tenants=2, namespaces_per_tenant=2, prefix="recorded")
        await create_backup(admin, "before-the-owner-was-added")
        changed = "recorded-001"
        owners = (await admin.get(f"{TENANTS_PATH}/{changed}"))["spec"]["owners"]
        await admin.patch(f"{TENANTS_PATH}/{changed}",
                          {"spec": {"owners": owners + [{"kind": "User", "name": "added-after-the-backup"}]}})
        specs_before = {t["metadata"]["name"]: t["spec"] for t in (await admin.get(TENANTS_PATH))["items"]}
        content_before = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
    guard = start_guard("record", guard_config, tmp_path)
    try:
        guard.wait_for("leading")
        async with client_for(lab.kubeconfig) as admin:
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                record = await read_tenant_record(admin)
                if record and {"added-after-the-backup" in json.dumps(t.get("spec")) for n, t in
                               record.shadow.tenants.items() if n == changed} == {True}:
                    break
                assert asyncio.get_running_loop().time() < deadline, guard.stderr()[-3000:]
                await asyncio.sleep(0.5)
        assert set(seeded.namespaces) <= set(record.shadow.namespaces)
    finally:
        assert guard.stop() == 0, guard.stderr()[-3000:]
    async with lab.admin_client() as admin:
        doomed = await _lose_everything(admin)

    journal = tmp_path / "journal"  # no shadow copy: responder never ran here
    plan = run_responder("plan", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    evidence = json.loads(plan.stdout)["recovery"]
    assert evidence["source"].startswith("guard record responder-system/responder-tenant-record"), evidence
    assert evidence["record"]["namespaces"] >= len(seeded.namespaces) and evidence["lost_percent"] == 100.0, evidence

    proc = run_responder("run", "--yes", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json",
                         timeout=900)
    assert proc.returncode == 0, _steps(proc.stderr)
    rec = json.loads(proc.stdout)["recovery"]
    assert rec["verified"] and rec["known_from"].startswith("guard record"), rec
    assert rec["restored"] == len(doomed), rec
    async with client_for(lab.kubeconfig) as admin:
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        content_after = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        for name in TENANT_RECORD_OBJECTS:  # a later test on this lab starts with no record
            await admin.delete(f"/api/v1/namespaces/{RESPONDER_NAMESPACE}/configmaps/{name}")
    assert {n: tenants[n]["spec"] for n in specs_before} == specs_before  # the record's, with the added owner
    for ns in seeded.namespaces:
        assert recovery.adopted_by(live[ns], tenants[ns.rsplit("-ns-", 1)[0]]), ns
    assert content_after == content_before



async def test_aftermath_total_loss_on_capsule_0_12(lab_manager, tmp_path):
    """The same on Capsule 0.12 (Tenants without finalizers: the garbage collector alone deletes the namespaces)."""
    await _total_loss(lab_manager, tmp_path, "0.12")

FREEZE = "test-aftermath-freeze"
FINISH_ANNOTATION = "responder.dev/finish-deletion"  # responder's nudge (wait-lost-gone)


async def _freeze(client, survivors: list[str], frozen: str) -> None:
    """What stopped the cascade part way, as the on-call found it: the survivors' DELETEs refused (the
    cascade had not reached them when it stopped) and the frozen namespace's content kept (as Capsule's
    fail-closed webhooks keep it once Capsule is down), until responder says a backup holds it and nudges
    the namespace (its finish-deletion annotation). A ValidatingAdmissionPolicy of the test's own."""
    names = ", ".join(f"'{n}'" for n in survivors)
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": FREEZE},
              "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
                  {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"],
                   "resources": ["namespaces", "configmaps", "secrets"]},
                  {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["deployments"]},
                  {"apiGroups": ["rbac.authorization.k8s.io"], "apiVersions": ["v1"], "operations": ["DELETE"],
                   "resources": ["roles", "rolebindings"]}]},
                  "validations": [{"message": "held by the test's freeze", "expression":
                                   f"request.resource.resource == 'namespaces' ? !(request.name in [{names}]) : "
                                   f"(request.namespace != '{frozen}' || (has(namespaceObject.metadata.annotations) "
                                   f"&& '{FINISH_ANNOTATION}' in namespaceObject.metadata.annotations))"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": FREEZE}, "spec": {"policyName": FREEZE, "validationActions": ["Deny"]}}
    await client.create("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", policy)
    await client.create("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings", binding)
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # in force once a dry-run DELETE of a survivor is refused
        try:
            await client.delete(f"/api/v1/namespaces/{survivors[0]}", dry_run=True)
        except ApiError as exc:
            if "held by the test's freeze" in exc.api_message:
                return
        assert asyncio.get_running_loop().time() < deadline, "the freeze policy is not in force"
        await asyncio.sleep(0.2)


async def _unfreeze(client) -> None:
    for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
        try:
            await client.delete(f"/apis/admissionregistration.k8s.io/v1/{kind}/{FREEZE}")
        except ApiError as exc:
            if exc.status != 404:
                raise


async def test_aftermath_partial_recreates_only_what_is_missing(lab_manager, tmp_path):
    """Found after the fact, part way: the Tenant CRD gone, some tenant namespaces alive with dangling
    references, some lost, one Terminating with its content (and an object written after the last backup).
    responder restores the lost ones from the backup and the Terminating one from a rescue backup of its own
    (then lets its deletion finish), re-adopts the survivors in place, leaves a plain namespace alone, and
    verifies; every namespace ends owned by its Tenant."""
    lab = await lab_manager.get("0.12", velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=3, namespaces_per_tenant=2, prefix="partial")
        plain = "partial-plain"
        await admin.create("/api/v1/namespaces", {"metadata": {"name": plain}})
        await admin.create(f"/api/v1/namespaces/{plain}/configmaps", {"metadata": {"name": "untouched"}})
        await create_backup(admin, "before-the-partial-loss")
        survivors = [seeded.tenants["partial-001"][0], seeded.tenants["partial-002"][0]]
        frozen = seeded.tenants["partial-003"][0]
        # Written after the last backup: only a rescue backup of the Terminating namespace can bring it back.
        await admin.create(f"/api/v1/namespaces/{frozen}/configmaps",
                           {"metadata": {"name": "after-the-backup"}, "data": {"only": "in the rescue"}})
        content_before = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        uids_before = {ns: (await admin.get(f"/api/v1/namespaces/{ns}"))["metadata"]["uid"] for ns in survivors}
        replicas_before = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
        tenant_namespaces = await _tenant_namespaces(admin)
        lost = sorted(set(tenant_namespaces) - set(survivors) - {frozen})
        await _freeze(admin, survivors, frozen)
        unfreezing: asyncio.Task | None = None
        try:
            await delete_tenant_crd(admin)  # no responder running
            await _wait_gone(admin, lost)
            await _wait_crd_gone(admin)
            live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
            assert live[frozen]["metadata"].get("deletionTimestamp"), "the frozen namespace is not Terminating"
            assert (await content_of(admin, frozen)) == content_before[frozen]
            assert all(s in live and not live[s]["metadata"].get("deletionTimestamp") for s in survivors)

            journal = tmp_path / "journal"
            plan = run_responder("plan", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "-o", "json")
            assert plan.returncode == 0, plan.stderr[-3000:]
            evidence = json.loads(plan.stdout)["recovery"]
            assert evidence["source"] == "backup before-the-partial-loss" and evidence["surviving"] >= 2, evidence
            assert not journal.exists(), "plan left a journal directory behind"

            async def unfreeze_once_let_go() -> None:
                # Once responder has let the frozen namespace go (rescued, then nudged), the freeze has done its
                # part: lifted, so nothing but responder and Capsule keeps the survivors while verify settles.
                while await admin.get_or_none(f"/api/v1/namespaces/{frozen}") is not None:
                    await asyncio.sleep(0.5)
                await _unfreeze(admin)

            unfreezing = asyncio.create_task(unfreeze_once_let_go())
            proc = await asyncio.to_thread(run_responder, "run", "--yes", "--kubeconfig", str(kubeconfig),
                                           "--journal", str(journal), "-o", "json", timeout=900)
            assert unfreezing.done(), "the frozen namespace was never let go"
        finally:
            if unfreezing is not None:
                unfreezing.cancel()
            await _unfreeze(admin)
    assert proc.returncode == 0, _steps(proc.stderr)
    summary = json.loads(proc.stdout)
    rec = summary["recovery"]
    assert rec["verified"] and rec["backup"] == "before-the-partial-loss", rec
    assert rec["lost"] == rec["restored"] == len(lost) + 1, rec
    assert rec["dangling"] == {} and rec["deleted_after_recovery"] == [], rec
    records = read_journal(Path(summary["journal"]))
    gone = next(r for r in records if r["kind"] == "recovery-gone")
    assert gone["rescued"] == [frozen] and gone["rescue_backup"], gone
    restore = next(r for r in reversed(records) if r["kind"] == "recovery-restore")
    assert restore["restores"][0]["backup"] == gone["rescue_backup"], restore
    restored_from = {ns: r["backup"] for r in restore["restores"] for ns in r["restored"]}
    assert restored_from[frozen] == gone["rescue_backup"] and not set(survivors) & set(restored_from), restore
    # Written to the lost and the survivors (detach, re-adopt), never to the plain namespace.
    targets = {r["target"] for r in records if r["kind"] == "intent"}
    assert plain not in targets

    async with client_for(lab.kubeconfig) as admin:
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
        content_after = {ns: await content_of(admin, ns) for ns in seeded.namespaces}
        replicas_after = (await admin.get(DEPLOYMENT_PATH))["spec"]["replicas"]
        plain_content = [c["metadata"]["name"] for c in
                         (await admin.get(f"/api/v1/namespaces/{plain}/configmaps"))["items"]]
    for ns in tenant_namespaces:
        assert ns in live and not live[ns]["metadata"].get("deletionTimestamp"), ns
        assert recovery.adopted_by(live[ns], tenants[live[ns]["metadata"]["labels"][triage.TENANT_LABEL]]), ns
    assert {ns: live[ns]["metadata"]["uid"] for ns in survivors} == uids_before  # re-adopted in place
    assert content_after == content_before  # the object written after the backup too: from the rescue
    assert "untouched" in plain_content and not (live[plain]["metadata"].get("ownerReferences"))
    assert replicas_after == replicas_before

