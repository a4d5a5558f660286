"""API discovery: map apiVersion/kind to REST paths, list namespaced resource types."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from responder.cluster.client import KubeClient


@dataclass(frozen=True)
class ApiResource:
    group_version: str
    kind: str
    name: str  # plural
    namespaced: bool
    verbs: frozenset[str]

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"

    def collection_path(self, namespace: str | None = None) -> str:
        if self.namespaced and namespace:
            return f"{self.prefix}/namespaces/{namespace}/{self.name}"
        return f"{self.prefix}/{self.name}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


class Discovery:
    """Caches one discovery pass; `refresh()` after CRDs come or go."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._by_kind: dict[tuple[str, str], ApiResource] = {}
        self._all: list[ApiResource] = []

    async def refresh(self) -> None:
        self._by_kind.clear()
        self._all.clear()
        group_versions = ["v1"]
        groups = await self.client.get("/apis")
        for group in groups.get("groups") or []:
            group_versions.extend(v["groupVersion"] for v in group.get("versions") or [])
        for gv in group_versions:
            path = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            listing = await self.client.get_or_none(path)
            for res in (listing or {}).get("resources") or []:
                if "/" in res["name"]:
                    continue  # subresources
                api_res = ApiResource(gv, res["kind"], res["name"], bool(res.get("namespaced")),
                                      frozenset(res.get("verbs") or []))
                self._all.append(api_res)
                self._by_kind.setdefault((gv, res["kind"]), api_res)

    async def resource_for(self, api_version: str, kind: str) -> ApiResource:
        if (api_version, kind) not in self._by_kind:
            await self.refresh()
        try:
            return self._by_kind[(api_version, kind)]
        except KeyError:
            raise LookupError(f"the API server does not serve {kind} in {api_version}") from None

    async def namespaced_listable(self) -> list[ApiResource]:
        """Namespaced types that can be listed and deleted: what a namespace's content is made of.

        One group/version per kind (the first the server lists, its preferred one), minus events,
        which the namespace controller deletes with everything else but nobody needs back."""
        if not self._all:
            await self.refresh()
        seen: set[tuple[str, str]] = set()
        out: list[ApiResource] = []
        for res in self._all:
            group = res.group_version.rsplit("/", 1)[0] if "/" in res.group_version else ""
            if not res.namespaced or not {"list", "delete"} <= res.verbs or res.name == "events":
                continue
            if (group, res.kind) in seen:
                continue
            seen.add((group, res.kind))
            out.append(res)
        return out


async def object_path(discovery: Discovery, obj: dict[str, Any]) -> str:
    res = await discovery.resource_for(obj["apiVersion"], obj["kind"])
    meta = obj.get("metadata") or {}
    return res.object_path(meta["name"], meta.get("namespace"))


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def wait_crd_established(client: KubeClient, name: str, timeout: float = 30.0) -> bool:
    """Poll the CRD `name` until its Established condition is True (its kind is served); False at the
    timeout."""
    deadline = time.monotonic() + timeout
    while True:
        crd = await client.get_or_none(f"{CRD_PATH}/{name}")
        conds = {c["type"]: c["status"] for c in ((crd or {}).get("status") or {}).get("conditions") or []}
        if conds.get("Established") == "True":
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
