"""Capsule >= 0.13: Tenants held by `controller.projectcapsule.dev/finalize`.

When the CRD is deleted these Tenants turn Terminating instead of vanishing. The moment Capsule runs
again it deletes every namespace in their status.spaces, detached or not. So once their namespaces
are detached, responder releases the finalizer: the Tenant (already being deleted, its spec kept in
the shadow copy) goes, the CRD deletion completes, and nothing is left that would take namespaces
with it when Capsule comes back. Tenants whose namespaces are not all detached yet are left alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from responder.incident import triage
from responder.actions.detach import detached_from_journal, removed_refs_from_journal, still_shows_removed_refs
from responder.cluster.client import JSON_PATCH
from responder.incident.engine import StepContext, StepOutcome, WriteRequest
from responder.errors import ApiError
from responder.incident.observe import TENANTS_PATH
from responder.runbook.schema import ActionSpec, ParamSpec

CAPSULE_TENANT_FINALIZER = "controller.projectcapsule.dev/finalize"


def release_patch(tenant: dict[str, Any]) -> list[dict[str, Any]]:
    """Remove Capsule's finalizer from a Tenant, guarded by its UID and the finalizer's position."""
    meta = tenant["metadata"]
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]}]
    finalizers = meta.get("finalizers") or []
    idx = [i for i, f in enumerate(finalizers) if f == CAPSULE_TENANT_FINALIZER]
    if not idx:
        return []
    for i in idx:
        ops.append({"op": "test", "path": f"/metadata/finalizers/{i}", "value": CAPSULE_TENANT_FINALIZER})
    for i in reversed(idx):
        ops.append({"op": "remove", "path": f"/metadata/finalizers/{i}"})
    return ops


class ReleaseTenantFinalizers:
    spec = ActionSpec(
        name="release-tenant-finalizers",
        description="Capsule >= 0.13: release terminating Tenants whose namespaces are all detached.",
        params={"settleSeconds": ParamSpec((int, float), default=20,
                                           description="how long to wait for the CRD cleanup to mark the Tenants")},
    )

    async def run(self, ctx: StepContext) -> StepOutcome:
        async def applied(intent: dict[str, Any]) -> bool | None:
            # Gone (None): released, by this write or another hand, and deleted by the CRD cleanup.
            tenant = await ctx.client.get_or_none(f"{TENANTS_PATH}/{intent['target']}")
            if tenant is None:
                return None
            return CAPSULE_TENANT_FINALIZER not in (tenant["metadata"].get("finalizers") or [])

        settled = await ctx.settle_pending("release-finalizer", applied)
        if settled:
            ctx.log(f"resumed: settled {settled} Tenant finalizer releases left pending by the crash")
        records = ctx.journal.records()
        detached, removed = detached_from_journal(records), removed_refs_from_journal(records)
        # Containment can finish before the CRD's cleanup controller has marked the Tenants for deletion
        # (a small cluster detaches in milliseconds). A Tenant it marks after this step would hold the CRD
        # Terminating forever (Capsule is at 0), so wait for it to mark every finalized Tenant first.
        deadline = time.monotonic() + float(ctx.params.get("settleSeconds", 20))
        while True:
            view = ctx.observer.view(protected=ctx.options.protected, detached=detached)
            unmarked = [n for n, t in view.tenants.items() if view.crd_deleting
                        and not t["metadata"].get("deletionTimestamp")
                        and CAPSULE_TENANT_FINALIZER in (t["metadata"].get("finalizers") or [])]
            if not unmarked or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        if unmarked:
            ctx.log(f"{len(unmarked)} Tenants not yet marked for deletion by the CRD cleanup: {', '.join(unmarked[:10])}",
                    level="warning")
        rows = triage.triage(view)
        held = [t for t in view.tenants.values()
                if t["metadata"].get("deletionTimestamp") and CAPSULE_TENANT_FINALIZER in (t["metadata"].get("finalizers") or [])]
        if not held:
            return StepOutcome("finished", "no Tenant is held by Capsule's finalizer", {"released": 0})
        waiting, requests = [], []
        for tenant in held:
            name = tenant["metadata"]["name"]
            # Not the ones the watch still shows from before responder's persisted detach (stale, not attached).
            still_attached = [r.name for r in rows if r.state == triage.NsState.AT_RISK and r.tenant == name
                              and not still_shows_removed_refs(view.namespaces.get(r.name) or {}, removed)]
            if still_attached:
                waiting.append(name)
                ctx.log(f"Tenant {name}: {len(still_attached)} namespaces still attached; not released")
                continue
            patch = release_patch(tenant)
            if patch and not ctx.done_before("release-finalizer", name):
                requests.append(WriteRequest("release-finalizer", name, "PATCH", f"{TENANTS_PATH}/{name}",
                                             body=patch, content_type=JSON_PATCH))
        results = await ctx.write_many(requests, in_flight=16)
        released = [r.target for r, res in zip(requests, results) if not isinstance(res, ApiError)]
        errors = [res for res in results if isinstance(res, ApiError) and res.status not in (404, 422)]
        if errors:
            raise errors[0]
        data = {"released": len(released), "tenants": released, "waiting": waiting}
        if waiting:
            return StepOutcome("failed", f"{len(waiting)} Tenants still own attached namespaces", data)
        return StepOutcome("finished", f"released {len(released)} terminating Tenants (their namespaces are detached)",
                           data)
