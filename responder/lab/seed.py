"""Seed the lab with Tenants, tenant namespaces and real content.

Each namespace is created AS its tenant owner (impersonation), so Capsule's own mutating webhook
sets the Tenant ownerReference and labels, never the seed. Content (ConfigMaps, a Secret, a Role and
RoleBinding, a Deployment) is created by the admin and labelled so it can be counted and cleaned up.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any

from responder.cluster.client import KubeClient
from responder.errors import ApiError, LabError

SEED_LABEL = "responder.dev/seeded"
TENANT_API = "/apis/capsule.clastix.io/v1beta2/tenants"
CONTENT_KINDS = {"configmaps": 2, "secrets": 1, "roles": 1, "rolebindings": 1, "deployments": 1}


@dataclass
class SeedResult:
    tenants: dict[str, list[str]] = field(default_factory=dict)  # tenant -> namespaces
    owners: dict[str, str] = field(default_factory=dict)  # tenant -> owner user
    owner_group: str = ""
    seconds: float = 0.0

    @property
    def namespaces(self) -> list[str]:
        return [ns for nss in self.tenants.values() for ns in nss]

    def to_json(self) -> dict[str, Any]:
        return {"tenants": self.tenants, "owners": self.owners, "owner_group": self.owner_group,
                "namespaces": len(self.namespaces), "content_per_namespace": CONTENT_KINDS,
                "seconds": round(self.seconds, 2)}


def tenant_name(i: int, prefix: str = "tenant") -> str:
    return f"{prefix}-{i:03d}"


def namespace_name(tenant: str, j: int) -> str:
    return f"{tenant}-ns-{j:02d}"


async def capsule_user_group(client: KubeClient) -> str:
    """The group Capsule treats as tenant users, from the live CapsuleConfiguration."""
    cfg = await client.get("/apis/capsule.clastix.io/v1beta2/capsuleconfigurations/default")
    spec = cfg.get("spec") or {}
    for subject in spec.get("users") or []:
        if subject.get("kind") == "Group":
            return subject["name"]
    groups = spec.get("userGroups") or []
    if groups:
        return groups[0]
    raise LabError("the CapsuleConfiguration names no tenant user group", fix="check the chart values")


def _content(ns: str, owner: str) -> list[tuple[str, dict[str, Any]]]:
    labels = {SEED_LABEL: "true", "app": "demo"}
    secret_value = base64.b64encode(os.urandom(18)).decode()
    return [
        ("/api/v1/namespaces/{ns}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": "app-config", "labels": labels},
                                                 "data": {"env": "production", "namespace": ns}}),
        ("/api/v1/namespaces/{ns}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": "app-settings", "labels": labels},
                                                 "data": {"replicas": "1", "feature.flags": "a,b,c"}}),
        ("/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                              "metadata": {"name": "app-secret", "labels": labels},
                                              "data": {"password": base64.b64encode(secret_value.encode()).decode()}}),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "app-reader", "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "app-reader", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": owner}]}),
        ("/apis/apps/v1/namespaces/{ns}/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "demo"}},
                     "template": {"metadata": {"labels": {"app": "demo"}},
                                  "spec": {"containers": [{"name": "app", "image": "registry.invalid/demo:1"}]}}}}),
    ]


async def _create_ignoring_exists(client: KubeClient, path: str, body: dict[str, Any], *, attempts: int = 20,
                                  bulk: bool = False) -> None:
    for attempt in range(attempts):
        try:
            await client.request("POST", path, body=body, bulk=bulk)
            return
        except ApiError as exc:
            if exc.status == 409:
                return
            # Capsule's cache may lag a just-created Tenant; its webhooks may time out under load.
            transient = exc.status in (500, 504) or "any Tenant assigned" in exc.api_message
            if not transient or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25 * (attempt + 1))


def poll_interval(tenants: int, base: float) -> float:
    """How often to list the Tenants while waiting on Capsule: each listing carries every Tenant's status (an
    entry per namespace, with its conditions), so a large seed polls less often (every 10 s from 500 Tenants)
    rather than take the API server's CPU from the Capsule work it waits on."""
    return min(10.0, max(base, tenants / 50))


async def wait_tenants_ready(client: KubeClient, names: set[str], *, timeout: float) -> None:
    """Wait until Capsule has reconciled every Tenant (it writes status.state)."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        listing = await client.list_all(TENANT_API)
        ready = {t["metadata"]["name"] for t in listing["items"] if (t.get("status") or {}).get("state")}
        pending -= ready
        if pending:
            await asyncio.sleep(poll_interval(len(names), 0.2))
    if pending:
        raise LabError(f"Capsule did not reconcile {len(pending)} new Tenants within {timeout:.0f}s",
                       fix="see the capsule log in the lab state dir")


async def seed(client: KubeClient, *, tenants: int, namespaces_per_tenant: int, prefix: str = "tenant",
               concurrency: int = 16, wait_reconciled: bool = True, timeout: float = 600.0,
               with_content: bool = True, labels: dict[str, str] | None = None,
               counts: dict[str, int] | None = None) -> SeedResult:
    """`labels` go on the Tenants and namespaces too (a drill on an existing cluster finds its own by them).
    `counts` (if given) is kept up to date: "namespaces" and "objects" (content) created so far.

    `concurrency` workers each create a namespace (as its owner), then its content (as the admin, all of
    it at once, through the client's bulk HTTP/1.1 pool), then take the next namespace: namespaces and
    content are created side by side rather than one phase after the other."""
    started = time.monotonic()
    extra = dict(labels or {})
    result = SeedResult(owner_group=await capsule_user_group(client))
    limit = asyncio.Semaphore(concurrency)

    async def guarded(coro):
        async with limit:
            return await coro

    names = [tenant_name(i, prefix) for i in range(1, tenants + 1)]
    for tenant in names:
        result.owners[tenant] = f"owner-{tenant}"
        result.tenants[tenant] = [namespace_name(tenant, j) for j in range(1, namespaces_per_tenant + 1)]
    await asyncio.gather(*(guarded(_create_ignoring_exists(client, TENANT_API, {
        "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
        "metadata": {"name": tenant, "labels": {SEED_LABEL: "true", **extra}},
        "spec": {"owners": [{"kind": "User", "name": result.owners[tenant]}]}})) for tenant in names))

    # Capsule must have seen each Tenant before its owner can create namespaces in it.
    await wait_tenants_ready(client, set(names), timeout=timeout)

    counts = counts if counts is not None else {}
    counts.setdefault("namespaces", 0)
    counts.setdefault("objects", 0)
    owners = {t: client.with_options(impersonate=result.owners[t],
                                     impersonate_groups=(result.owner_group, "system:authenticated"))
              for t in names}
    work = [(tenant, ns) for tenant in names for ns in result.tenants[tenant]]
    work.reverse()  # popped from the end: in order

    async def create_content(path: str, body: dict[str, Any]) -> None:
        await _create_ignoring_exists(client, path, body, bulk=True)
        counts["objects"] += 1

    async def worker() -> None:
        while work:
            tenant, ns = work.pop()
            await _create_ignoring_exists(owners[tenant], "/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {SEED_LABEL: "true", **extra}}})
            counts["namespaces"] += 1
            if with_content:
                await asyncio.gather(*(create_content(path.format(ns=ns), body)
                                       for path, body in _content(ns, result.owners[tenant])))

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        for owner in owners.values():
            await owner.aclose()
    if wait_reconciled:
        await wait_tenants_reconciled(client, result, timeout=timeout)
    result.seconds = time.monotonic() - started
    return result


async def wait_tenants_reconciled(client: KubeClient, result: SeedResult, *, timeout: float) -> None:
    """Capsule lists each namespace in its Tenant's status: proof the controller saw them."""
    deadline = time.monotonic() + timeout
    missing: dict[str, int] = {}
    while time.monotonic() < deadline:
        listing = await client.list_all(TENANT_API)
        sizes = {t["metadata"]["name"]: int((t.get("status") or {}).get("size") or 0) for t in listing["items"]}
        missing = {t: len(nss) - sizes.get(t, 0) for t, nss in result.tenants.items() if sizes.get(t, 0) < len(nss)}
        if not missing:
            return
        await asyncio.sleep(poll_interval(len(result.tenants), 0.5))
    raise LabError(f"Capsule did not reconcile {len(missing)} tenants within {timeout:.0f}s "
                   f"(e.g. {next(iter(missing))})", fix="see the capsule log in the lab state dir")
