"""The shadow copy: what recovery will need, kept current from the watches and on disk.

Every Tenant (spec, UID, metadata), which namespace belongs to which Tenant, Capsule's webhook
configurations and the controller's replicas, and the Tenant CRD itself. Written atomically (temp
file, fsync, rename) so a crash never leaves half a file.

A Tenant or namespace seen deleted is kept for FORGET_DELETED_AFTER_S, then forgotten unless an incident
is open: routine deletions (an owner's namespace, an offboarded Tenant) must not come back as "lost" in
a later incident, nor make a backup that never held them unusable, and a long-running guard's copy must
not grow with churn. The deletion times live in memory only: a copy loaded from disk forgets nothing
until this process itself sees the deletion.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.incident import triage

# Twice the longest detection window a runbook may set (runbook.schema.MAX_DETECTION_WINDOW): an incident
# that opens on its Nth signal still finds what its first signals deleted.
FORGET_DELETED_AFTER_S = 1200.0

_STRIP_META = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "selfLink")


def _clean(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for key in _STRIP_META:
        meta.pop(key, None)
    return out


@dataclass
class Shadow:
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> Tenant (no status)
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {tenant, uid, labels}
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # "<Kind>/<name>" -> object
    capsule_replicas: int | None = None
    tenant_crd: dict[str, Any] | None = None
    updated: float = 0.0
    dirty: bool = field(default=False, repr=False)
    # "tenant/<name>" or "namespace/<name>" -> when its deletion was seen (epoch seconds); not persisted.
    gone: dict[str, float] = field(default_factory=dict, repr=False)

    # -- updates from watch events ----------------------------------------------------------------

    def observe_tenant(self, tenant: dict[str, Any]) -> None:
        # Keep the last state seen before deletion began: that is what gets recreated.
        meta = tenant.get("metadata") or {}
        if meta.get("deletionTimestamp") and meta.get("name") in self.tenants:
            return
        if not meta.get("deletionTimestamp"):
            self.gone.pop(f"tenant/{meta.get('name')}", None)
        clean = _clean(tenant)
        clean.pop("status", None)
        self.tenants[meta["name"]] = clean
        self._touch()

    def observe_namespace(self, ns: dict[str, Any]) -> None:
        meta = ns.get("metadata") or {}
        refs = triage.tenant_refs(ns)
        tenant = refs[0]["name"] if refs else (meta.get("labels") or {}).get(triage.TENANT_LABEL)
        name = meta.get("name", "")
        if not tenant:
            # A namespace responder detached keeps its place: it still belongs to its tenant.
            return
        self.gone.pop(f"namespace/{name}", None)
        entry = {"tenant": tenant, "uid": meta.get("uid"), "labels": meta.get("labels") or {}}
        # The reference exactly as Capsule wrote it (less the UID): re-adoption writes the same form.
        owner = {k: v for k, v in refs[0].items() if k != "uid"} if refs else \
            (self.namespaces.get(name) or {}).get("owner")
        if owner:
            entry["owner"] = owner
        if self.namespaces.get(name) != entry:
            self.namespaces[name] = entry
            self._touch()

    def observe_webhook(self, kind: str, obj: dict[str, Any], *, deleted: bool = False) -> None:
        key = f"{kind}/{obj['metadata']['name']}"
        if deleted:
            return  # keep the last known configuration: it is what gets restored
        self.webhooks[key] = _clean(obj)
        self._touch()

    def observe_capsule_replicas(self, replicas: int) -> None:
        # Record the healthy value only; 0 is what the breaker (or an outage) sets.
        if replicas > 0 and replicas != self.capsule_replicas:
            self.capsule_replicas = replicas
            self._touch()

    def observe_crd(self, crd: dict[str, Any]) -> None:
        # A CRD being deleted still holds its schema: the best copy left to a responder that starts late
        # (it never saw the CRD whole), never one to replace a copy taken before the deletion.
        if (crd.get("metadata") or {}).get("deletionTimestamp") and self.tenant_crd is not None:
            return
        clean = _clean(crd)
        clean.pop("status", None)
        self.tenant_crd = clean
        self._touch()

    def observe_gone(self, kind: str, name: str, at: float) -> None:
        """A Tenant deleted, or a namespace deleted or Terminating (kind "tenant" or "namespace"), seen at
        `at`: kept until forget_gone drops it."""
        known = self.tenants if kind == "tenant" else self.namespaces
        if name in known:
            self.gone.setdefault(f"{kind}/{name}", at)

    def forget_gone(self, before: float) -> list[str]:
        """Drop what was seen deleted before `before` ("tenant/<name>", "namespace/<name>", returned)."""
        dropped = [key for key, at in self.gone.items() if at < before]
        for key in dropped:
            kind, name = key.split("/", 1)
            (self.tenants if kind == "tenant" else self.namespaces).pop(name, None)
            del self.gone[key]
        if dropped:
            self._touch()
        return dropped

    def _touch(self) -> None:
        self.updated = time.time()
        self.dirty = True

    # -- persistence ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"tenants": self.tenants, "namespaces": self.namespaces, "webhooks": self.webhooks,
                "capsule_replicas": self.capsule_replicas, "tenant_crd": self.tenant_crd, "updated": self.updated}

    def snapshot(self) -> str:
        """The copy as JSON, taken on the thread that updates it (the event loop's): writing it can then
        happen in another thread while the watches go on changing the copy."""
        text = json.dumps(self.to_json())
        self.dirty = False
        return text

    def save(self, path: Path) -> None:
        self.write_snapshot(path, self.snapshot())

    def write_snapshot(self, path: Path, text: str) -> None:
        """Write a `snapshot()` (from any thread); if that fails the copy is dirty again, so the next
        save tries again."""
        try:
            write_atomically(path, text)
        except OSError:
            self.dirty = True
            raise

    @classmethod
    def load(cls, path: Path) -> "Shadow":
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(tenants=data.get("tenants") or {}, namespaces=data.get("namespaces") or {},
                   webhooks=data.get("webhooks") or {}, capsule_replicas=data.get("capsule_replicas"),
                   tenant_crd=data.get("tenant_crd"), updated=data.get("updated") or 0.0)

    def namespace_tenants(self) -> dict[str, str]:
        return {name: entry["tenant"] for name, entry in self.namespaces.items()}


_WRITE_LOCK = threading.Lock()


def write_atomically(path: Path, text: str) -> None:
    """Temp file, fsync, rename. One writer at a time in this process: the periodic save (in a worker
    thread) and the save at the end of containment (on the event loop) would otherwise share the temp
    file (found in CI: the second rename found it already renamed). The temp file's name carries the
    pid, so two responder processes on one context each rename a whole file of their own."""
    with _WRITE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
