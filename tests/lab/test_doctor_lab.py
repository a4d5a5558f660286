"""`responder doctor` on the lab with real Velero: ready (exit 0) once Velero holds a backup of every tenant
namespace, `responder protect` guards the Tenant CRD and Capsule's CRDs carry the keep annotation; exit 1
with the named findings when any of that is missing. -o json and -o yaml parse."""

from __future__ import annotations

import json

import pytest
import yaml

from responder.ops.doctor import KEEP_ANNOTATION
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK
from responder.lab.seed import seed
from responder.lab.velero import create_backup
from responder.ops.protect import BINDING_PATH, POLICY_PATH

from .incident_helpers import run_responder

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CAPSULE_GROUPS = ("capsule.clastix.io", "projectcapsule.dev")


def doctor(kubeconfig, *args: str, output: str = "json") -> tuple[int, dict]:
    proc = run_responder("doctor", "--kubeconfig", str(kubeconfig), "-o", output, *args, timeout=120)
    assert proc.returncode in (EXIT_OK, EXIT_NOT_CONTAINED), proc.stderr
    report = json.loads(proc.stdout) if output == "json" else yaml.safe_load(proc.stdout)
    return proc.returncode, report


def statuses(report: dict) -> dict[str, str]:
    return {c["check"]: c["status"] for c in report["checks"]}


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["check"] == name)


async def capsule_crds(admin) -> list[str]:
    return [c["metadata"]["name"] for c in (await admin.list_all(CRDS_PATH))["items"]
            if c["spec"]["group"] in CAPSULE_GROUPS]


async def annotate_keep(admin, names: list[str], keep: bool) -> None:
    for name in names:
        await admin.patch(f"{CRDS_PATH}/{name}", {"metadata": {"annotations": {KEEP_ANNOTATION: "keep" if keep else None}}})


async def test_doctor_ready_with_velero_backup_and_protect_then_findings(lab_manager):
    lab = await lab_manager.get("0.14", velero=True)
    kc = lab.kubeconfig
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=2, namespaces_per_tenant=2, prefix="doc")
        crds = await capsule_crds(admin)
        assert crds
        await create_backup(admin, "doctor-lab")
        proc = run_responder("protect", "--kubeconfig", str(kc))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        try:
            # Before the keep annotation: exactly that finding, exit 1.
            rc, report = doctor(kc)
            assert rc == EXIT_NOT_CONTAINED and report["ready"] is False
            findings = sorted(n for n, s in statuses(report).items() if s == "finding")
            assert findings == ["crd-keep"], report["checks"]
            assert sorted(check(report, "crd-keep")["details"]) == sorted(crds)

            # Everything in place: ready, exit 0, and every check that can be ok is ok.
            await annotate_keep(admin, crds, True)
            rc, report = doctor(kc)
            assert rc == EXIT_OK and report["ready"] is True, [c for c in report["checks"] if c["status"] != "ok"]
            assert report["missing_permissions"] is None
            st = statuses(report)
            for name in ("permissions", "capsule", "breaker", "velero-location", "velero-backups",
                         "tenant-crd-protection", "crd-keep", "namespace-hold"):
                assert st.get(name) == "ok", (name, report["checks"])
            assert st["prevent-deletion"] == "info"
            ages = check(report, "velero-backups")["data"]["newest_backup_age_s"]
            assert set(seeded.namespaces) <= set(ages) and all(ages[ns] is not None for ns in seeded.namespaces)
            assert check(report, "capsule")["data"]["version"] == "v0.14.0"
            # -o yaml says the same; the table ends with "ready".
            rc_yaml, report_yaml = doctor(kc, output="yaml")
            assert rc_yaml == EXIT_OK and statuses(report_yaml) == st
            table = run_responder("doctor", "--kubeconfig", str(kc), timeout=120)
            assert table.returncode == EXIT_OK and table.stdout.rstrip().endswith("ready"), table.stdout

            # A tenant namespace created after the backup: the backup finding names it, exit 1.
            late = await seed(admin, tenants=1, namespaces_per_tenant=1, prefix="late", with_content=False)
            rc, report = doctor(kc)
            assert rc == EXIT_NOT_CONTAINED
            backups = check(report, "velero-backups")
            assert backups["status"] == "finding" and late.namespaces[0] in " ".join(backups["details"]), backups
            assert backups["data"]["newest_backup_age_s"][late.namespaces[0]] is None
            # ... and a stale backup is a finding too (every backup is older than a few seconds' allowance).
            rc, report = doctor(kc, "--max-backup-age", "0.0001")
            assert rc == EXIT_NOT_CONTAINED and "older than" in " ".join(check(report, "velero-backups")["details"])
            await create_backup(admin, "doctor-lab-2")
            rc, report = doctor(kc)
            assert rc == EXIT_OK, [c for c in report["checks"] if c["status"] != "ok"]

            # Protection removed: the named finding, exit 1.
            proc = run_responder("protect", "--kubeconfig", str(kc), "--remove")
            assert proc.returncode == 0, proc.stderr
            rc, report = doctor(kc)
            assert rc == EXIT_NOT_CONTAINED
            protection = check(report, "tenant-crd-protection")
            assert protection["status"] == "finding" and protection["summary"].startswith("Tenant CRD not protected")
            assert "responder protect" in protection["fix"]
            assert sorted(n for n, s in statuses(report).items() if s == "finding") == ["namespace-hold",
                                                                                    "self-arming-hold",
                                                                                    "tenant-crd-protection"]
        finally:
            # The lab is shared with later tests, which delete the Tenant CRD: leave it deletable.
            run_responder("protect", "--kubeconfig", str(kc), "--remove")
            await annotate_keep(admin, crds, False)
        assert await admin.get_or_none(POLICY_PATH) is None and await admin.get_or_none(BINDING_PATH) is None
