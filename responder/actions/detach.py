"""Detach live at-risk namespaces from their dying Tenants, racing the garbage collector.

One guarded JSON patch per namespace (triage.detach_patch): `test` ops on the namespace UID and on
each removed reference's UID make a replay harmless and refuse a changed object; only Tenant
ownerReferences and Capsule finalizers are removed, any other owner stays. Passes repeat until no
live namespace is at risk (new ones may appear while the watch catches up).
"""

from __future__ import annotations

import time
from typing import Any

from responder.incident import triage
from responder.cluster.client import JSON_PATCH
from responder.incident.engine import StepContext, StepOutcome, WriteRequest
from responder.errors import ApiError
from responder.runbook.schema import ActionSpec, ParamSpec


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def detached_from_journal(records: list[dict[str, Any]]) -> dict[str, str]:
    """ns -> tenant for every namespace this incident detached (persisted, not dry-run)."""
    outcomes = {r["intent"]: r["status"] for r in records if r.get("kind") == "outcome"}
    out: dict[str, str] = {}
    for rec in records:
        if rec.get("kind") == "intent" and rec.get("action") == "detach" and not rec.get("dry_run") \
                and outcomes.get(rec["seq"]) == "ok":
            refs = (rec.get("undo") or {}).get("ownerReferences") or []
            out[rec["target"]] = refs[0]["name"] if refs else ""
    return out


def still_shows_removed_refs(ns: dict[str, Any], removed: dict[str, frozenset[str]]) -> bool:
    """The watch still shows a namespace with exactly the Tenant references responder's persisted detach
    removed: a view from before that patch (its MODIFIED event is on its way), not a namespace at risk again."""
    name = (ns.get("metadata") or {}).get("name", "")
    uids = {r.get("uid") for r in triage.tenant_refs(ns)}
    return name in removed and bool(uids) and uids <= removed[name]


def removed_refs_from_journal(records: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
    """ns -> UIDs of the Tenant references this incident's persisted detach writes removed."""
    outcomes = {r["intent"]: r["status"] for r in records if r.get("kind") == "outcome"}
    out: dict[str, set[str]] = {}
    for rec in records:
        if rec.get("kind") == "intent" and rec.get("action") == "detach" and not rec.get("dry_run") \
                and outcomes.get(rec["seq"]) == "ok":
            refs = (rec.get("undo") or {}).get("ownerReferences") or []
            out.setdefault(rec["target"], set()).update(r.get("uid") for r in refs if r.get("uid"))
    return {name: frozenset(uids) for name, uids in out.items()}


class DetachNamespaces:
    spec = ActionSpec(
        name="detach-namespaces",
        description="Remove dying Tenant ownerReferences (and Capsule finalizers) from every live at-risk namespace.",
        params={"concurrency": ParamSpec(int, default=64, description="PATCH requests in flight"),
                "maxPasses": ParamSpec(int, default=20, description="re-triage passes before giving up")},
    )

    @staticmethod
    async def settle_pending(ctx: StepContext) -> int:
        """Detach writes a crash (or a resent request) left unknown: is the Tenant reference still there?"""
        async def applied(intent: dict[str, Any]) -> bool | None:
            ns = await ctx.client.get_or_none(f"/api/v1/namespaces/{intent['target']}")
            if ns is None:
                return None
            removed = {r.get("uid") for r in (intent.get("undo") or {}).get("ownerReferences") or []}
            return not any(r.get("uid") in removed for r in triage.tenant_refs(ns))

        return await ctx.settle_pending("detach", applied)

    async def run(self, ctx: StepContext) -> StepOutcome:
        settled = await self.settle_pending(ctx)
        if settled:
            ctx.log(f"resumed: settled {settled} detach writes left pending by the crash")
        concurrency = max(1, int(ctx.params.get("concurrency", 64)))
        max_passes = max(1, int(ctx.params.get("maxPasses", 20)))
        latest: dict[str, dict[str, Any]] = {}  # newest object per namespace we learned from our own writes
        detached: dict[str, str] = detached_from_journal(ctx.journal.records())
        failed: dict[str, str] = {}
        gone: set[str] = set()
        total_done = 0
        started = time.monotonic()

        def current_view() -> triage.ClusterView:
            view = ctx.observer.view(protected=ctx.options.protected, detached=detached)
            merged = dict(view.namespaces)
            for name, obj in latest.items():
                if name in merged and _rv(obj) > _rv(merged[name]):
                    merged[name] = obj
            for name in gone:
                merged.pop(name, None)
            return triage.ClusterView(**{**view.__dict__, "namespaces": merged})

        async def detach_batch(batch: list[tuple[dict[str, Any], triage.NamespaceTriage]]) -> None:
            nonlocal total_done
            requests, rows = [], []
            for ns, row in batch:
                patch = triage.detach_patch(ns)
                if not patch:
                    continue
                name = ns["metadata"]["name"]
                rows.append(row)
                requests.append(WriteRequest(
                    "detach", name, "PATCH", f"/api/v1/namespaces/{name}", body=patch, content_type=JSON_PATCH,
                    undo={"op": "reattach", "namespace": name, "uid": ns["metadata"].get("uid"),
                          "ownerReferences": list(row.dying_refs), "finalizers": list(row.capsule_finalizers)}))
            results = await ctx.write_many(requests, in_flight=concurrency)
            if any(isinstance(r, ApiError) and r.resent for r in results):
                # Resent PATCHes refused by their own guard: look at each namespace, as on resume.
                await self.settle_pending(ctx)
                for name, tenant in detached_from_journal(ctx.journal.records()).items():
                    if name not in detached:
                        detached[name] = tenant
                        total_done += 1
            refresh = []
            for row, result in zip(rows, results):
                if isinstance(result, ApiError):
                    if result.status == 404:
                        gone.add(row.name)
                    elif result.status in (409, 422):
                        refresh.append(row.name)  # changed since we looked (another writer, or done already)
                    else:
                        failed[row.name] = f"{result.status} {result.api_message[:200]}"
                    continue
                if not ctx.dry_run:
                    latest[row.name] = result
                detached[row.name] = row.tenant or ""
                total_done += 1
            for name in refresh:
                fresh = await ctx.client.get_or_none(f"/api/v1/namespaces/{name}")
                if fresh is None:
                    gone.add(name)
                else:
                    latest[name] = fresh

        passes = 0
        seen_at_risk: set[str] = set()
        while passes < max_passes:
            passes += 1
            view = current_view()
            rows = [r for r in triage.triage(view) if r.state == triage.NsState.AT_RISK and r.name not in failed]
            if ctx.dry_run:
                rows = [r for r in rows if r.name not in detached]
            if not rows:
                break
            seen_at_risk.update(r.name for r in rows)
            ctx.progress(total_done, len(seen_at_risk), f"pass {passes}: {len(rows)} at risk")
            pairs = [(view.namespaces[r.name], r) for r in rows]
            for chunk_start in range(0, len(pairs), 256):
                await detach_batch(pairs[chunk_start:chunk_start + 256])
                ctx.progress(total_done, len(seen_at_risk))
            if ctx.dry_run:
                break
        seconds = time.monotonic() - started
        data = {"detached": total_done, "at_risk_seen": len(seen_at_risk), "failed": failed, "gone": sorted(gone),
                "passes": passes, "seconds": round(seconds, 3),
                "per_second": round(total_done / seconds, 1) if seconds > 0 and total_done else None}
        remaining = [r.name for r in triage.triage(current_view()) if r.state == triage.NsState.AT_RISK]
        if ctx.dry_run:
            return StepOutcome("finished", f"dry run: would detach {total_done} namespaces", data)
        if remaining:
            data["remaining"] = remaining
            return StepOutcome("failed", f"{len(remaining)} namespaces still at risk after {passes} passes", data)
        return StepOutcome("finished", f"detached {total_done} namespaces in {seconds:.2f}s", data)
