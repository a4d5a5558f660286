"""The self-arming hold on the lab: the API server contains the cascade with no responder process running.

`responder protect` installs it; the lab admin then deletes the Tenant CRD through its allow-delete annotation (an
operator "who knows what they are doing"). No responder runs until `responder run --yes` (a late start), which
detaches, recovers and lifts the hold.

OBSERVE_S: how long the namespaces are watched with no responder running: 120 s, long enough for the garbage
collector (0.12) and Capsule (0.14) to retry every refused DELETE many times over with their backoff.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from responder.actions.self_hold import SELF_HOLD_PATHS, TENANT_CRD_PATH, read_self_hold
from responder.errors import ApiError
from responder.incident import triage
from responder.incident.observe import TENANTS_PATH
from responder.lab.apply import bind_cluster_admin
from responder.lab.control_plane import Lab
from responder.lab.incident import read_audit
from responder.lab.seed import seed
from responder.names import SELF_HOLD_POLICY
from responder.ops.protect import ALLOW_DELETE_ANNOTATION
from responder.recovery import decisions as recovery

from .incident_helpers import client_for, namespace_states, read_journal, run_responder, start_watch

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

OBSERVE_S = 120.0
GC = "system:serviceaccount:kube-system:generic-garbage-collector"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture
def unprotect_after():
    """Later tests share the lab and delete the Tenant CRD: never leave it protected, whatever happened."""
    labs: list[Lab] = []
    yield labs.append
    for lab in labs:
        proc = run_responder("protect", "--kubeconfig", str(lab.kubeconfig), "--remove")
        assert proc.returncode == 0, proc.stdout + proc.stderr


async def prepared(lab_manager, line: str, tenants: int, per_tenant: int, tmp_path: Path, unprotect_after):
    """A fresh lab, seeded; responder's identity; `responder protect` by the admin (the self-arming hold lets
    responder's username through); a short watch that leaves the shadow copy a late start recovers from."""
    lab = await lab_manager.get(line, fresh=True)
    unprotect_after(lab)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant, with_content=False)
    proc = run_responder("protect", "--kubeconfig", str(lab.kubeconfig), "--responder-user", "responder")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-arming hold dormant" in proc.stdout, proc.stdout
    journal = tmp_path / "journal"
    first = start_watch(kubeconfig, journal, "--timeout", "2")
    first.wait_watching()
    assert first.finish(timeout=60)[0] == 0
    return lab, kubeconfig, seeded, journal


async def delete_tenant_crd_on_purpose(admin) -> float:
    """As an operator would: annotate the CRD past `responder protect`, then delete it. Returns when it was sent."""
    await admin.patch(TENANT_CRD_PATH, {"metadata": {"annotations": {ALLOW_DELETE_ANNOTATION: "true"}}})
    deadline = time.monotonic() + 30
    while True:  # the CRD protection sees the annotation at once (it reads the object); retry a refusal anyway
        sent = time.time()
        try:
            await admin.delete(TENANT_CRD_PATH)
            return sent
        except ApiError as exc:
            assert exc.status == 403 and time.monotonic() < deadline, exc
            await asyncio.sleep(0.2)


def refused_deletes(audit_log: Path, namespaces: set[str], since: float) -> dict[str, int]:
    """Persisting namespace DELETEs refused by the self-arming hold, per user."""
    counts: dict[str, int] = {}
    for event in read_audit(audit_log, since=since):
        ref = event.get("objectRef") or {}
        if event.get("verb") != "delete" or ref.get("resource") != "namespaces" or ref.get("name") not in namespaces:
            continue
        status = event.get("responseStatus") or {}
        if "dryRun=" in event.get("requestURI", "") or status.get("code", 0) < 400:
            continue
        if SELF_HOLD_POLICY not in status.get("message", ""):
            continue
        user = (event.get("user") or {}).get("username", "?")
        counts[user] = counts.get(user, 0) + 1
    return counts


async def observe(admin, namespaces: set[str], seconds: float) -> dict[str, str]:
    """Poll for `seconds`; fail at once if any namespace turns Terminating or goes."""
    deadline = time.monotonic() + seconds
    while True:
        states = await namespace_states(admin, namespaces)
        hit = {n: s for n, s in states.items() if s != "alive"}
        assert not hit, hit
        if time.monotonic() >= deadline:
            return states
        await asyncio.sleep(1.0)


def late_start(kubeconfig: Path, journal: Path) -> tuple[dict, list[dict]]:
    """`responder run --yes`: containment and recovery by a responder that was not running."""
    proc = run_responder("run", "--kubeconfig", str(kubeconfig), "--journal", str(journal), "--yes", "-o", "json",
                         timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    return summary, read_journal(Path(summary["journal"]))


async def assert_owned_by_live_tenants(admin, seeded) -> None:
    live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
    tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
    for tenant, names in seeded.tenants.items():
        for ns in names:
            assert ns in live and not live[ns]["metadata"].get("deletionTimestamp"), ns
            assert recovery.adopted_by(live[ns], tenants[tenant]), (ns, live[ns]["metadata"])


def assert_lifted_by_the_run(records: list[dict], why: str) -> None:
    """The run journaled the hold in force before it wrote anything but the breaker, and lifted it with a
    journaled write once recovery was done."""
    journaled = [r for r in records if r["kind"] == "self-hold"]
    assert journaled and journaled[0]["in_force"] and why in journaled[0]["why"], journaled
    outcomes = {r["intent"]: r["status"] for r in records if r["kind"] == "outcome"}
    lifts = [r for r in records if r["kind"] == "intent" and r.get("action") == "release-hold"
             and r["target"] == f"ValidatingAdmissionPolicy/{SELF_HOLD_POLICY}"]
    assert len(lifts) == 1 and outcomes[lifts[0]["seq"]] == "ok", lifts
    readopts = [r["seq"] for r in records if r["kind"] == "intent" and r.get("action") == "readopt"]
    assert readopts and max(readopts) < lifts[0]["seq"]  # lifted only after every re-adoption
    verify = next(r for r in reversed(records) if r["kind"] == "recovery-verify")
    assert verify["hold_left"] == [] and verify["not_adopted"] == [] and verify["missing"] == [], verify


@pytest.mark.parametrize("line, deleter", [("0.14", "system:serviceaccount:capsule-system:capsule"), ("0.12", GC)])
async def test_no_responder_running_the_api_server_holds_then_a_late_start_recovers(lab_manager, tmp_path, line,
                                                                                   deleter, unprotect_after):
    lab, kubeconfig, seeded, journal = await prepared(lab_manager, line, 4, 5, tmp_path, unprotect_after)
    namespaces = set(seeded.namespaces)
    async with client_for(lab.kubeconfig) as admin:
        crd_uid = (await admin.get(TENANT_CRD_PATH))["metadata"]["uid"]
        sent = await delete_tenant_crd_on_purpose(admin)
        states = await observe(admin, namespaces, OBSERVE_S)
        alive = sum(s == "alive" for s in states.values())
        print(f"capsule {line}: {alive}/{len(namespaces)} namespaces alive {OBSERVE_S:.0f}s after the CRD DELETE")
        assert alive >= 0.99 * len(namespaces)
        refused = refused_deletes(lab.audit_log, namespaces, sent)
        print(f"capsule {line}: refused DELETEs by user: {refused}")
        assert refused.get(deleter), refused  # Capsule's controller (>= 0.13) or the garbage collector, refused
        state = await read_self_hold(admin)
        assert state.in_force, state
        # The refusal names the policy, why, and the way out (the CRD waits on Capsule's Tenant finalizer on 0.14;
        # on 0.12 it is gone, and the API server's own text names the binding, which says it).
        expected = (("being deleted", "responder protect --remove") if line == "0.14"
                    else ("no params found", "to-remove-capsule-run-responder-protect-remove-first"))
        try:
            await admin.delete(f"/api/v1/namespaces/{seeded.namespaces[0]}", dry_run=True)
            pytest.fail("a tenant namespace DELETE was admitted while the hold is in force")
        except ApiError as exc:
            assert SELF_HOLD_POLICY in exc.api_message and all(p in exc.api_message for p in expected), exc
    plan = run_responder("plan", "--kubeconfig", str(kubeconfig), "--journal", str(tmp_path / "plan"), "-o", "json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["self_hold"]["in_force"], plan.stdout[:2000]

    summary, records = late_start(kubeconfig, journal)
    assert summary["recovery"]["verified"], summary["recovery"]
    assert summary["self_hold"]["installed"] and not summary["self_hold"]["in_force"], summary["self_hold"]
    assert_lifted_by_the_run(records, "being deleted" if line == "0.14" else "absent")
    async with client_for(lab.kubeconfig) as admin:
        await assert_owned_by_live_tenants(admin, seeded)
        state = await read_self_hold(admin)
        new_uid = (await admin.get(TENANT_CRD_PATH))["metadata"]["uid"]
        assert state.installed and not state.in_force and state.adopted_uid == new_uid != crd_uid, state
    rc = run_responder("doctor", "--kubeconfig", str(lab.kubeconfig), "-o", "json", timeout=120)
    check = next(c for c in json.loads(rc.stdout)["checks"] if c["check"] == "self-arming-hold")
    assert check["status"] == "ok", check


async def test_the_crd_rebuilt_with_its_tenants_keeps_the_hold_until_responder_readopts(lab_manager, tmp_path,
                                                                                      unprotect_after):
    # Capsule 0.12 only: on 0.14 the CRD's deletion waits on Capsule's Tenant finalizer, which waits on the
    # namespace DELETEs the hold refuses, so the CRD stays Terminating and no pipeline can re-apply it.
    lab, kubeconfig, seeded, journal = await prepared(lab_manager, "0.12", 3, 4, tmp_path, unprotect_after)
    namespaces = set(seeded.namespaces)
    async with client_for(lab.kubeconfig) as admin:
        crd = await admin.get(TENANT_CRD_PATH)
        tenants = (await admin.get(TENANTS_PATH))["items"]
        sent = await delete_tenant_crd_on_purpose(admin)
        while await admin.get_or_none(TENANT_CRD_PATH) is not None:
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, sent + 10 - time.time()))
        # A pipeline re-applies the CRD and the Tenants 10 s later (new UIDs); Capsule is running.
        body = recovery.crd_for_create(crd)
        body["metadata"].pop("annotations", None)  # a pipeline applies its own manifest, without the allowance
        await admin.create(CRDS, body)
        for _ in range(100):
            if await admin.get_or_none(TENANTS_PATH) is not None:
                break
            await asyncio.sleep(0.2)
        for tenant in tenants:
            await admin.create(TENANTS_PATH, recovery.tenant_for_create(tenant))
        rebuilt = time.time()
        state = await read_self_hold(admin)
        assert state.in_force and "recreated" in state.why, state
        states = await observe(admin, namespaces, OBSERVE_S)
        assert all(s == "alive" for s in states.values()), states
        refused = refused_deletes(lab.audit_log, namespaces, sent)
        print(f"rebuilt: {len(namespaces)} namespaces alive {OBSERVE_S:.0f}s after; refused since the CRD DELETE: "
              f"{refused}; since the rebuild: {refused_deletes(lab.audit_log, namespaces, rebuilt)}")
        assert refused.get(GC), refused  # the GC, refused (its retries after the rebuild depend on its resync)
        # The message names the policy, why, and the way out.
        try:
            await admin.delete(f"/api/v1/namespaces/{seeded.namespaces[0]}", dry_run=True)
            pytest.fail("a tenant namespace DELETE was admitted while the hold is in force")
        except ApiError as exc:
            assert exc.status == 403, exc
            for part in (SELF_HOLD_POLICY, "was recreated", "responder protect --remove"):
                assert part in exc.api_message, exc.api_message

    summary, records = late_start(kubeconfig, journal)
    assert summary["recovery"]["verified"], summary["recovery"]
    assert_lifted_by_the_run(records, "recreated")
    async with client_for(lab.kubeconfig) as admin:
        await assert_owned_by_live_tenants(admin, seeded)
        assert not (await read_self_hold(admin)).in_force


async def test_between_incidents_owners_create_label_and_delete_as_without_it(lab_manager, tmp_path):
    lab = await lab_manager.get("0.14")
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=1, namespaces_per_tenant=1, prefix="between", with_content=False)
    proc = run_responder("protect", "--kubeconfig", str(lab.kubeconfig), "--only", "self-hold")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-arming hold dormant" in proc.stdout, proc.stdout
    tenant = next(iter(seeded.tenants))
    async with client_for(lab.kubeconfig) as admin:
        try:
            plan = run_responder("plan", "--kubeconfig", str(lab.kubeconfig), "--journal", str(tmp_path / "j"),
                                 "-o", "json")
            assert plan.returncode == 0, plan.stderr
            assert json.loads(plan.stdout)["self_hold"]["summary"].startswith("dormant")
            owner = admin.with_options(impersonate=seeded.owners[tenant],
                                       impersonate_groups=(seeded.owner_group, "system:authenticated"))
            try:
                name = f"{tenant}-extra"
                for attempt in range(40):  # Capsule's webhooks may lag under load
                    try:
                        await owner.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                  "metadata": {"name": name}})
                        break
                    except ApiError as exc:
                        assert exc.status in (500, 504) or "Tenant" in exc.api_message, exc
                        await asyncio.sleep(0.5)
                ns = await admin.get(f"/api/v1/namespaces/{name}")
                assert ns["metadata"]["labels"].get(triage.TENANT_LABEL) == tenant  # a tenant namespace
                await owner.patch(f"/api/v1/namespaces/{name}", {"metadata": {"labels": {"team": "blue"}}})
                for attempt in range(60):  # Capsule binds the owner's namespace-deleter role right after creation
                    try:
                        await owner.delete(f"/api/v1/namespaces/{name}")  # admitted: the hold is dormant
                        break
                    except ApiError as exc:
                        assert SELF_HOLD_POLICY not in exc.api_message and attempt < 59, exc
                        await asyncio.sleep(0.5)
                # Offboarding one Tenant: Capsule and the GC delete its namespaces as without the hold.
                await admin.delete(f"{TENANTS_PATH}/{tenant}")
                deadline = time.monotonic() + 120
                gone = set(seeded.namespaces) | {name}
                while (await namespace_states(admin, gone)) != {n: "gone" for n in gone}:
                    assert time.monotonic() < deadline, await namespace_states(admin, gone)
                    await asyncio.sleep(0.5)
            finally:
                await owner.aclose()
            assert not (await read_self_hold(admin)).in_force
        finally:
            proc = run_responder("protect", "--kubeconfig", str(lab.kubeconfig), "--remove", "--only", "self-hold")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "self-arming hold removed: none of its objects is left" in proc.stdout, proc.stdout
            for path in SELF_HOLD_PATHS.values():
                assert await admin.get_or_none(path) is None, path
