"""`responder lab down` keeps the lab's state and `responder lab up` comes back up on it."""

from __future__ import annotations

import asyncio
import io
import sys
import time

import pytest

from responder.errors import ApiError, LabError
from responder.lab import processes
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.seed import TENANT_API, seed
from tests.lab.test_lab import scale_capsule, wait_capsule_process

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]


async def test_lab_comes_back_up_on_its_kept_state(lab_manager, capsule_line):
    lab = await lab_manager.get(capsule_line)
    prefix = f"kept{capsule_line.replace('.', '')}"
    async with lab.admin_client() as client:
        before = await seed(client, tenants=1, namespaces_per_tenant=1, prefix=prefix, with_content=False,
                            timeout=120)
    tenant = next(iter(before.tenants))
    ports = lab.state()["ports"]

    stopped = await asyncio.to_thread(lab.down)
    assert {"kubelet", "kube-apiserver", "etcd"} <= set(stopped), stopped  # the kubelet takes Capsule with it
    capsule = lab.capsule_process()
    assert capsule is None or not processes.is_running(capsule)
    assert lab.state()["ports"] == ports and not any(lab.running().values())

    started = time.monotonic()
    await asyncio.to_thread(lab.up, capsule=capsule_line, out=sys.stderr)
    print(f"\nlab up on kept state (Capsule {capsule_line}): {time.monotonic() - started:.1f}s")
    assert lab.state()["ports"] == ports  # Capsule's webhook configurations name this port

    async with lab.admin_client() as client:
        # The kept Tenant and its namespace are there as they were.
        kept_tenant = await client.get(f"{TENANT_API}/{tenant}")
        kept_ns = await client.get(f"/api/v1/namespaces/{before.tenants[tenant][0]}")
        assert [r["uid"] for r in kept_ns["metadata"]["ownerReferences"]] == [kept_tenant["metadata"]["uid"]]

        # Namespace writes pass Capsule's fail-closed webhooks again: an admin creates and deletes one.
        plain = f"{prefix}-plain"
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": plain}})
        await client.delete(f"/api/v1/namespaces/{plain}")

        # The kept Tenant's owner creates a second namespace: Capsule's webhook adopts and labels it, and
        # the controller lists both in the Tenant's status (seed waits for that); a new Tenant is reconciled.
        after = await seed(client, tenants=1, namespaces_per_tenant=2, prefix=prefix, with_content=False,
                           timeout=120)
        assert after.tenants == {tenant: [*before.tenants[tenant], f"{tenant}-ns-02"]}
        adopted = await client.get(f"/api/v1/namespaces/{tenant}-ns-02")
        refs = adopted["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("Tenant", tenant, kept_tenant["metadata"]["uid"])]
        assert adopted["metadata"]["labels"]["capsule.clastix.io/tenant"] == tenant
        new = await seed(client, tenants=1, namespaces_per_tenant=1, prefix=f"{prefix}-new", with_content=False,
                         timeout=120)
        assert len(new.namespaces) == 1


async def wait_namespace_writes_admitted(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": "kept-probe"}}, dry_run=True)
            return
        except ApiError as exc:
            if time.monotonic() > deadline or "failed calling webhook" not in exc.api_message:
                raise
            await asyncio.sleep(0.2)


async def test_lab_comes_back_up_with_the_breaker_tripped_as_it_was_left(lab_manager):
    """A lab stopped mid-incident (Capsule at 0) comes back as it was: Capsule stays down and `lab up` says so,
    instead of waiting for webhooks nobody serves; with --velero, whose install needs them, it refuses until
    Capsule is back."""
    lab = await lab_manager.get("0.12")
    async with lab.admin_client() as client:
        await scale_capsule(client, 0)
        await wait_capsule_process(lab, running=False)
    await asyncio.to_thread(lab.down)

    with pytest.raises(LabError, match="0 replicas") as refused:
        await asyncio.to_thread(lab.up, capsule="0.12", velero=True, out=io.StringIO())
    assert "without --velero" in refused.value.fix and not any(lab.running().values())

    out = io.StringIO()
    await asyncio.to_thread(lab.up, capsule="0.12", out=out)
    assert "Capsule's Deployment is at 0 replicas" in out.getvalue()
    async with lab.admin_client() as client:
        deployment = await client.get(f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}")
        assert deployment["spec"]["replicas"] == 0
        with pytest.raises(ApiError, match="failed calling webhook"):  # the breaker holds
            await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": "kept-refused"}})
        await scale_capsule(client, 1)  # what recovery does; the kubelet starts Capsule again
        await wait_capsule_process(lab, running=True)
        await wait_namespace_writes_admitted(client)

    # With Capsule serving again the kept state takes Velero too (its install passes Capsule's webhooks).
    await asyncio.to_thread(lab.down)
    await asyncio.to_thread(lab.up, capsule="0.12", velero=True, out=sys.stderr)
    async with lab.admin_client() as client:
        await wait_namespace_writes_admitted(client, timeout=5)
        assert await client.get_or_none("/api/v1/namespaces/velero")
