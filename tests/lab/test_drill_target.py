"""`responder drill` on an existing cluster (the lab, reached through a kubeconfig), its --target
guard, and `drill --bench` (shape only, no timings). The scenarios: test_scenarios.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml

from responder.lab.apply import bind_cluster_admin

from responder.lab.control_plane import LAB_CONTEXT
from responder.lab.incident import read_audit
from responder.drill.scenarios import TENANTS_PATH

from .incident_helpers import namespace_states, run_responder

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

OPERATOR = "drill-operator"
SMALL = ("--tenants", "3", "--namespaces-per-tenant", "3", "--observe", "10")


def _writes_by(audit_log, user: str, since: float) -> list[dict]:
    return [e for e in read_audit(audit_log, since=since)
            if (e.get("user") or {}).get("username") == user and e.get("verb") not in ("get", "list", "watch")]


def _operator_kubeconfig(lab, tmp_path):
    """The operator's kubeconfig with two contexts on the same lab: responder-lab (current) and other."""
    config = yaml.safe_load(lab.mint_user(OPERATOR).read_text())
    config["contexts"].append({"name": "other", "context": dict(config["contexts"][0]["context"])})
    path = tmp_path / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def _drill_namespaces(lab, drill_id: str) -> dict[str, str]:
    async with lab.admin_client() as admin:
        listing = await admin.list_all("/api/v1/namespaces", labelSelector=f"responder.dev/drill={drill_id}")
        return await namespace_states(admin, {n["metadata"]["name"] for n in listing["items"]})


async def _drill_tenants_async(lab, drill_id: str) -> list[str]:
    async with lab.admin_client() as admin:
        listing = await admin.get(TENANTS_PATH, labelSelector=f"responder.dev/drill={drill_id}")
        return [t["metadata"]["name"] for t in listing.get("items") or []]


def _drill_tenants(lab, drill_id: str) -> list[str]:
    return asyncio.run(_drill_tenants_async(lab, drill_id))


def test_target_guard_then_a_drill_on_the_existing_cluster(lab_manager, tmp_path):
    lab = lab_manager.get_sync("0.14", fresh=True)

    async def bind():
        async with lab.admin_client() as admin:
            await bind_cluster_admin(admin, OPERATOR)

    asyncio.run(bind())
    kc = str(_operator_kubeconfig(lab, tmp_path))
    since = time.time()
    refusals = [
        ("--target", "other"),                                  # not the current-context
        (),                                                     # no --target
        ("--context", "other", "--target", LAB_CONTEXT),        # not the --context
    ]
    for extra in refusals:
        proc = run_responder("drill", "--kubeconfig", kc, *extra, *SMALL, timeout=60)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert "refusing to drill" in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr
        assert proc.stdout == ""
    time.sleep(1.5)  # the audit log is written as requests complete
    assert _writes_by(lab.audit_log, OPERATOR, since) == []

    proc = run_responder("drill", "--kubeconfig", kc, "--target", LAB_CONTEXT, *SMALL,
                         "--journal", str(tmp_path / "journal"), "-o", "json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(proc.stdout)
    drill_id = card["options"]["drill_id"]
    assert card["options"]["target"] == LAB_CONTEXT and card["scenario"] == "crd-deletion"
    assert card["namespaces_seeded"] == 9 and card["saved"] == 9 and card["lost"] == 0 and card["passed"]
    # The same audit check sees the operator's writes once the drill is allowed (so it can fail).
    assert _writes_by(lab.audit_log, OPERATOR, since)
    # Cleaned up: what it seeded (and only that: labelled with this drill's id) is gone.
    assert card["cleanup"]["namespaces_deleted"] == 9 and card["cleanup"]["namespaces_left"] == []
    assert card["cleanup"]["tenants_deleted"] == 3 and card["cleanup"]["tenants_left"] == []
    assert card["cleanup"]["errors"] == []
    assert asyncio.run(_drill_namespaces(lab, drill_id)) == {}
    assert _drill_tenants(lab, drill_id) == []


def test_bench_runs_all_three_variants(lab_manager, tmp_path):
    lab_manager.release()
    proc = run_responder("drill", "--bench", "--namespaces", "20", "--window", "30",
                         "--state-dir", str(tmp_path / "lab"), "-o", "json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert {r["variant"] for r in out["runs"]} == {"none", "naive", "responder"}
    assert out["machine"]["cpus"] and len(out["table"]) == 1
    runs = {r["variant"]: r for r in out["runs"]}
    for r in runs.values():
        assert r["seeded"] == 20 and {"saved", "alive_at_detection", "saved_share", "lost"} <= set(r)
    assert runs["none"]["saved"] == 0 and runs["none"]["lost"] == 20  # the incident itself
    assert runs["naive"]["detection_latency_s"] is not None  # the kubectl watch saw the deletion
    assert runs["naive"]["naive"]["patched"] + runs["naive"]["naive"]["failed"] >= 1
    assert runs["responder"]["saved"] == runs["responder"]["alive_at_detection"] == 20
    assert runs["responder"]["responder_peak_rss_mb"] > 10
