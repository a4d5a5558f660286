"""Writes the lab makes as its admin: server-side apply, waiting for CRDs, binding a user to cluster-admin."""

from __future__ import annotations

import time
from typing import Any

from responder.cluster.client import APPLY_PATCH, KubeClient
from responder.cluster.discovery import Discovery, wait_crd_established
from responder.errors import LabError

LAB_FIELD_MANAGER = "responder-lab"


async def apply_objects(client: KubeClient, objs: list[dict[str, Any]]) -> None:
    """Server-side apply as the lab's field manager."""
    discovery = Discovery(client)
    for obj in objs:
        res = await discovery.resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        path = res.object_path(meta["name"], meta.get("namespace") if res.namespaced else None)
        await client.request("PATCH", path, body=obj, content_type=APPLY_PATCH,
                             params={"fieldManager": LAB_FIELD_MANAGER, "force": "true"})


async def wait_crds_established(client: KubeClient, names: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = [name for name in names
               if not await wait_crd_established(client, name, max(0.0, deadline - time.monotonic()))]
    if pending:
        raise LabError(f"CRDs not established: {', '.join(sorted(pending))}", fix="check kube-apiserver.log")


async def bind_cluster_admin(client: KubeClient, user: str) -> None:
    """Bind a lab user to cluster-admin (idempotent: server-side apply). Least privilege is
    `responder manifests rbac`; drills and benchmarks use the broad role."""
    await apply_objects(client, [{
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{user}-cluster-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}])
