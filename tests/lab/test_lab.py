"""The lab is real: Capsule enforces, the breaker refuses deletes, the cascade happens without responder."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from responder.errors import ApiError
from responder.lab import processes
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.incident import delete_tenant_crd, namespace_deleters, observe_cascade, read_audit
from responder.lab.seed import TENANT_API, seed

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

NAMESPACE_WEBHOOK = {"0.14": "namespaces.validating.projectcapsule.dev", "0.12": "namespaces.projectcapsule.dev"}
RESULTS = Path(os.environ.get("RESPONDER_RESULTS_DIR", "/tmp/responder-results"))


async def scale_capsule(client, replicas: int) -> None:
    await client.patch(f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}/scale",
                       {"spec": {"replicas": replicas}})


async def wait_capsule_process(lab, running: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = lab.capsule_process()
        if bool(record and processes.is_running(record)) == running:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"capsule process running={not running} after {timeout}s")


async def test_capsule_sets_tenant_owner_reference(lab_manager, capsule_line):
    lab = await lab_manager.get(capsule_line)
    async with lab.admin_client() as client:
        result = await seed(client, tenants=1, namespaces_per_tenant=2, prefix=f"own{capsule_line.replace('.', '')}")
        tenant_name = next(iter(result.tenants))
        tenant = await client.get(f"{TENANT_API}/{tenant_name}")
        for ns_name in result.tenants[tenant_name]:
            ns = await client.get(f"/api/v1/namespaces/{ns_name}")
            refs = ns["metadata"].get("ownerReferences") or []
            assert len(refs) == 1, refs
            ref = refs[0]
            assert ref["kind"] == "Tenant" and ref["apiVersion"].startswith("capsule.clastix.io/")
            assert ref["name"] == tenant_name and ref["uid"] == tenant["metadata"]["uid"]
            assert ns["metadata"]["labels"]["capsule.clastix.io/tenant"] == tenant_name
        # The namespaces were created by the owner (impersonated), and only Capsule's webhook could have
        # written the ownerReference: the seed's request body carried none.
        creates = [e for e in read_audit(lab.audit_log) if e.get("verb") == "create"
                   and (e.get("objectRef") or {}).get("resource") == "namespaces"
                   and (e.get("objectRef") or {}).get("name") in result.tenants[tenant_name]]
        assert creates and all(e["impersonatedUser"]["username"] == result.owners[tenant_name] for e in creates)


async def test_breaker_rejects_namespace_delete_while_capsule_is_down(lab_manager, capsule_line):
    lab = await lab_manager.get(capsule_line)
    async with lab.admin_client() as client:
        for name in ("breaker-victim", "breaker-control"):
            await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": name}})
        await scale_capsule(client, 0)
        try:
            await wait_capsule_process(lab, running=False)
            with pytest.raises(ApiError) as refused:
                await client.delete("/api/v1/namespaces/breaker-victim")
            assert "failed calling webhook" in refused.value.api_message
            assert NAMESPACE_WEBHOOK[capsule_line] in refused.value.api_message
            ns = await client.get("/api/v1/namespaces/breaker-victim")
            assert "deletionTimestamp" not in ns["metadata"]
        finally:
            await scale_capsule(client, 1)
        await wait_capsule_process(lab, running=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.delete("/api/v1/namespaces/breaker-victim")
                break
            except ApiError as exc:  # the webhook server takes a moment to listen again
                if time.monotonic() > deadline:
                    raise
                assert "failed calling webhook" in exc.api_message
                await asyncio.sleep(0.2)
        ns = await client.get_or_none("/api/v1/namespaces/breaker-victim")
        assert ns is None or ns["metadata"].get("deletionTimestamp")


async def test_incident_without_responder(lab_manager, capsule_line):
    """Seed 10 x 10, delete the Tenant CRD, and measure the cascade: the baseline responder must beat."""
    lab = await lab_manager.get(capsule_line, fresh=True)
    async with lab.admin_client() as client:
        result = await seed(client, tenants=10, namespaces_per_tenant=10)
        namespaces = set(result.namespaces)
        timeline_task = asyncio.create_task(observe_cascade(client, namespaces, duration=125))
        await asyncio.sleep(0.5)  # let the watch list first
        start = await delete_tenant_crd(client)
        timeline = await timeline_task
        timeline.start = start
        deleters = namespace_deleters(lab.audit_log, since=start - 1, namespaces=namespaces)
        tenants_left = await client.get_or_none(TENANT_API)
    report = {"capsule": lab.state()["capsule_version"], **timeline.to_json(), "namespace_deleters": deleters,
              "tenant_api_after": "present" if tenants_left else "gone"}
    print("\nincident without responder:", json.dumps(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"baseline-no-responder-capsule-{capsule_line}.json").write_text(json.dumps(report, indent=2))
    assert len(timeline.hit) == len(namespaces), f"{len(namespaces) - len(timeline.hit)} namespaces survived 120 s"
    assert timeline.last_deletion is not None and timeline.last_deletion <= 120
