"""`responder check --cluster` on the lab: a manifest set that lacks the Tenant CRD is flagged against the live
cluster, and the checking identity (one that could write anything) wrote nothing, dry runs included."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from responder.lab.incident import read_audit
from responder.names import TENANT_CRD
from responder.ops.doctor import CAPSULE_GROUPS, CRDS_PATH
from responder.ops.protect import read_protection

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

RESPONDER = [sys.executable, "-m", "responder"]


def _as_rendered(crd: dict) -> dict:
    """A live CRD as a rendering would have it (no status, no server-set metadata)."""
    meta = crd["metadata"]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",  # LIST items carry neither
            "metadata": {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}, "spec": crd["spec"]}


def test_check_against_the_lab_flags_the_missing_tenant_crd_and_writes_nothing(lab_manager, tmp_path: Path) -> None:
    lab = lab_manager.get_sync(lab_manager.line or "0.14")  # either Capsule line: reuse the running lab

    async def live() -> tuple[list[dict], bool]:
        async with lab.admin_client() as admin:
            crds = (await admin.list_all(CRDS_PATH))["items"]
            return crds, (await read_protection(admin)).protects(TENANT_CRD)

    crds, protected = asyncio.run(live())
    capsule = [_as_rendered(c) for c in crds if c["spec"]["group"] in CAPSULE_GROUPS]
    assert any(c["metadata"]["name"] == TENANT_CRD for c in capsule)
    without_tenants = tmp_path / "without-tenant-crd.yaml"
    without_tenants.write_text(yaml.safe_dump_all([c for c in capsule if c["metadata"]["name"] != TENANT_CRD]))
    complete = tmp_path / "complete.yaml"
    complete.write_text(yaml.safe_dump_all(capsule))

    # A fresh identity with every permission (system:masters): had check written anything, it could have.
    user = f"responder-check-{uuid.uuid4().hex[:8]}"
    kubeconfig = lab.mint_user(user, ("system:masters",))
    since = time.time() - 1  # audit timestamps have second precision

    def check(manifests: Path) -> tuple[int, dict]:
        argv = ["check", "--to", str(manifests), "--cluster", "--kubeconfig", str(kubeconfig), "-o", "json"]
        proc = subprocess.run([*RESPONDER, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    rc, report = check(without_tenants)
    assert rc == 1 and report["mode"] == "cluster"
    removed = [f for f in report["findings"] if f["rule"] == "capsule-crd-removed"]
    assert [f["object"] for f in removed] == [f"CustomResourceDefinition/{TENANT_CRD}"]
    assert removed[0]["where"] == "the live cluster" and removed[0]["severity"] == "error"
    assert report["crd_changes"][0] == {"crd": TENANT_CRD, "change": "removed",
                                        "before": ["v1beta1 (served)", "v1beta2 (served, storage)"]}
    # What the cluster says about responder's own protection is read, not assumed.
    assert any(f["rule"] == "tenant-crd-unprotected" for f in report["findings"]) is not protected

    _, report = check(complete)
    assert not [f for f in report["findings"] if f["rule"] in ("capsule-crd-removed", "tenant-crd-version-removed")]
    assert {c["change"] for c in report["crd_changes"]} == {"versions unchanged"}

    # The lab's audit policy records every request but reads (GET/LIST/WATCH): any event of this identity would
    # be a write, a dry run or a review.
    time.sleep(1.0)  # the audit backend writes as requests complete
    events = [e for e in read_audit(lab.audit_log, since=since) if (e.get("user") or {}).get("username") == user]
    assert events == [], json.dumps([(e.get("verb"), e.get("requestURI")) for e in events])
