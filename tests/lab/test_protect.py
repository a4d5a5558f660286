"""`responder protect` on the lab: the real API server evaluates the ValidatingAdmissionPolicy.

The DELETEs of the Tenant CRD are sent by the lab admin (system:masters: RBAC allows it, so only the policy
can refuse it). Every probe is a server-side dry run except one real DELETE, sent only after a dry run has
been refused, so a policy that does not work fails the test instead of deleting the CRD.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from responder.actions.breaker import ARMED_HOLD_PATHS
from responder.errors import ApiError
from responder.lab.incident import read_audit
from responder.names import HOLD_PARAM_CRD
from responder.ops.protect import ALLOW_DELETE_ANNOTATION, BINDING_PATH, POLICY_PATH, deny_message

from .incident_helpers import client_for, run_responder

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

TENANT_CRD = "tenants.capsule.clastix.io"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{TENANT_CRD}"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
HOLD_PARAM_CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{HOLD_PARAM_CRD}"


def doctor(kubeconfig) -> tuple[int, dict]:
    proc = run_responder("doctor", "--kubeconfig", str(kubeconfig), "-o", "json", timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["check"] == name)


async def delete_refusal(admin, *, dry_run: bool) -> ApiError | None:
    """DELETE the Tenant CRD; the error the API server answered, or None when it was admitted."""
    try:
        await admin.delete(CRD_PATH, dry_run=dry_run)
    except ApiError as exc:
        return exc
    return None


async def wait_for(admin, refused: bool, timeout: float = 30.0) -> ApiError | None:
    """The API server loads policy changes asynchronously: poll with dry runs until the DELETE is refused
    (or admitted)."""
    deadline = time.monotonic() + timeout
    while True:
        error = await delete_refusal(admin, dry_run=True)
        if (error is not None) == refused:
            return error
        assert time.monotonic() < deadline, f"a dry-run DELETE was {'still admitted' if refused else 'still refused'}"
        await asyncio.sleep(0.5)


async def test_protect_refuses_deleting_the_tenant_crd_until_annotated(lab_manager):
    lab = await lab_manager.get("0.14")
    kc = lab.kubeconfig
    async with client_for(kc) as admin:
        try:
            # Doctor on an unprotected lab: the named finding, exit 1.
            rc, report = doctor(kc)
            assert rc == 1
            protection = check(report, "tenant-crd-protection")
            assert protection["status"] == "finding" and protection["summary"].startswith("Tenant CRD not protected")
            hold = check(report, "namespace-hold")
            assert hold["status"] == "finding" and "responder protect --only hold" in hold["fix"], hold
            assert check(report, "permissions")["status"] == "ok"  # the lab admin has everything

            # --dry-run: the server accepts the objects, nothing persists (audit: only dryRun=All writes).
            since = time.time() - 1
            proc = run_responder("protect", "--kubeconfig", str(kc), "--dry-run", "--only", "crds")
            assert proc.returncode == 0, proc.stderr
            assert "dry run" in proc.stdout
            assert await admin.get_or_none(POLICY_PATH) is None and await admin.get_or_none(BINDING_PATH) is None
            await asyncio.sleep(0.5)  # the audit backend writes as requests complete
            vap_writes = [e for e in read_audit(lab.audit_log, since=since)
                          if (e.get("objectRef") or {}).get("resource", "").startswith("validatingadmissionpolic")
                          and e.get("verb") not in ("get", "list", "watch")]
            assert len(vap_writes) == 2 and all("dryRun=All" in e["requestURI"] for e in vap_writes), vap_writes
            assert await delete_refusal(admin, dry_run=True) is None  # and nothing refuses the DELETE

            # protect: the policy and binding exist, and the DELETE is refused with the message.
            proc = run_responder("protect", "--kubeconfig", str(kc))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert f"verified: a dry-run DELETE of {TENANT_CRD} is refused" in proc.stdout, proc.stdout
            assert "namespace hold armed: dormant until the breaker marks it" in proc.stdout, proc.stdout
            policy = await admin.get(POLICY_PATH)
            assert policy["metadata"]["managedFields"][0]["manager"] == "responder"
            assert (await admin.get(BINDING_PATH))["spec"]["validationActions"] == ["Deny"]
            await wait_for(admin, refused=True)
            refused = await delete_refusal(admin, dry_run=False)  # the real thing
            assert refused is not None and refused.status == 403, refused
            assert deny_message(TENANT_CRD) in refused.api_message, refused.api_message
            assert f"kubectl annotate crd {TENANT_CRD} {ALLOW_DELETE_ANNOTATION}=true" in refused.api_message
            crd = await admin.get(CRD_PATH)
            assert not crd["metadata"].get("deletionTimestamp")

            # Doctor now: that finding is gone.
            rc, report = doctor(kc)
            assert check(report, "tenant-crd-protection")["status"] == "ok"
            assert check(report, "namespace-hold")["status"] == "ok"

            # Another CRD is not refused (the policy names only the protected ones): a dry run of one.
            crds = (await admin.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions"))["items"]
            other = next(c["metadata"]["name"] for c in crds if c["metadata"]["name"] != TENANT_CRD)
            try:
                await admin.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{other}", dry_run=True)
            except ApiError as exc:
                pytest.fail(f"{other} was refused too: {exc}")

            # Annotated, the DELETE is allowed: shown by a server-side dry run (the lab stays usable).
            await admin.patch(CRD_PATH, {"metadata": {"annotations": {ALLOW_DELETE_ANNOTATION: "true"}}})
            await wait_for(admin, refused=False)
            assert (await admin.get(CRD_PATH))["metadata"].get("deletionTimestamp") is None
            # Any other value is not an allowance.
            await admin.patch(CRD_PATH, {"metadata": {"annotations": {ALLOW_DELETE_ANNOTATION: "yes"}}})
            assert await wait_for(admin, refused=True) is not None
            await admin.patch(CRD_PATH, {"metadata": {"annotations": {ALLOW_DELETE_ANNOTATION: None}}})

            # --remove leaves neither object, and waits until the CRD is deletable again (dry run).
            proc = run_responder("protect", "--kubeconfig", str(kc), "--remove")
            assert proc.returncode == 0, proc.stderr
            assert "deleted" in proc.stdout
            assert "verified: a dry-run DELETE of tenants.capsule.clastix.io is admitted again" in proc.stdout
            assert await delete_refusal(admin, dry_run=True) is None  # no policy refresh to wait for after it
            assert await admin.get_or_none(POLICY_PATH) is None and await admin.get_or_none(BINDING_PATH) is None
            assert await admin.get_or_none(ARMED_HOLD_PATHS["NamespaceHold"]) is None
            assert await admin.get_or_none(HOLD_PARAM_CRD_PATH) is None  # and the parameter's kind
            for kind in ("validatingadmissionpolicies", "validatingadmissionpolicybindings"):
                items = (await admin.get(f"{ADMISSION}/{kind}"))["items"]
                assert not [i for i in items if i["metadata"]["name"].startswith("responder")], items
            await wait_for(admin, refused=False)
            # Removing twice is fine.
            proc = run_responder("protect", "--kubeconfig", str(kc), "--remove")
            assert proc.returncode == 0 and "not there" in proc.stdout, proc.stdout + proc.stderr
        finally:
            # Later tests on this shared lab delete the Tenant CRD: never leave it protected.
            run_responder("protect", "--kubeconfig", str(kc), "--remove")
