"""Namespaces already Terminating: they cannot be saved, but their data must not be orphaned.

Clearing a Terminating namespace's spec.finalizers (PUT .../finalize) before its content is gone
leaves that content in etcd, invisible until a namespace of the same name is created again. So this
step reports what remains in each, finalizes only the empty ones (while Capsule is down its webhook
also blocks the namespace controller's own finalize), and finalizes non-empty ones only when the
operator explicitly accepts orphaning (`orphanContent: true` plus confirmation).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from responder.incident import triage
from responder.cluster.client import KubeClient
from responder.cluster.discovery import Discovery
from responder.incident.engine import StepContext, StepOutcome
from responder.errors import ApiError
from responder.runbook.schema import ActionSpec, ParamSpec


UNCOUNTED = "<could not list>"


async def count_content(client: KubeClient, discovery: Discovery, namespace: str) -> dict[str, int]:
    """Objects left in a namespace, per resource type (types with none are left out). A type that
    cannot be listed (403, 5xx) is reported under UNCOUNTED: unknown is never treated as empty,
    or an empty-looking namespace would be finalized and its content orphaned."""
    counts: dict[str, int] = {}

    async def count(res) -> None:
        try:
            listing = await client.get(res.collection_path(namespace), limit=500)
        except ApiError as exc:
            if exc.status not in (404, 405):  # the type went away, or cannot be listed at all
                counts[UNCOUNTED] = counts.get(UNCOUNTED, 0) + 1
            return
        n = len(listing.get("items") or [])
        if n:
            counts[res.name if "/" not in res.group_version else f"{res.name}.{res.group_version.split('/')[0]}"] = n

    await asyncio.gather(*(count(r) for r in await discovery.namespaced_listable()))
    return counts


class HandleTerminating:
    spec = ActionSpec(
        name="handle-terminating",
        description="Report content left in Terminating tenant namespaces; finalize those that are empty.",
        params={"waitSeconds": ParamSpec((int, float), default=0, description="wait this long for content to go"),
                "orphanContent": ParamSpec(bool, default=False,
                                           description="finalize even with content left (needs confirmation)")},
    )

    async def run(self, ctx: StepContext) -> StepOutcome:
        discovery = Discovery(ctx.client)
        wait = float(ctx.params.get("waitSeconds", 0))
        deadline = time.monotonic() + wait
        finalized: list[str] = []
        report: dict[str, dict[str, int]] = {}
        while True:
            view = ctx.observer.view(protected=ctx.options.protected)
            rows = [r for r in triage.triage(view) if r.state == triage.NsState.TERMINATING
                    and (r.tenant or triage.tenant_refs(view.namespaces[r.name]))]
            report = {}
            for row in rows:
                report[row.name] = await count_content(ctx.client, discovery, row.name)
            empty = [name for name, counts in report.items() if not counts]
            for name in empty:
                if name in finalized or ctx.done_before("finalize", name):
                    continue
                if await self._finalize(ctx, view.namespaces[name]):
                    finalized.append(name)
            if all(not c for c in report.values()) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(1.0)
        with_content = {name: counts for name, counts in report.items() if counts}
        for name, counts in with_content.items():
            ctx.log(f"{name} is Terminating with content left: "
                    + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if with_content and ctx.params.get("orphanContent"):
            total = sum(sum(c.values()) for c in with_content.values())
            if await ctx.confirm(f"finalize {len(with_content)} Terminating namespaces that still hold {total} objects "
                                 "(their content stays orphaned in etcd)", sorted(with_content), str(len(with_content))):
                view = ctx.observer.view(protected=ctx.options.protected)
                for name in with_content:
                    if name in view.namespaces and await self._finalize(ctx, view.namespaces[name], orphaning=True):
                        finalized.append(name)
        data = {"terminating": len(report), "finalized": finalized, "content_remaining": with_content}
        return StepOutcome("finished", f"{len(report)} Terminating tenant namespaces: {len(finalized)} finalized, "
                                       f"{len(with_content)} still hold content", data)

    async def _finalize(self, ctx: StepContext, ns: dict[str, Any], *, orphaning: bool = False) -> bool:
        name = ns["metadata"]["name"]
        fresh = await ctx.client.get_or_none(f"/api/v1/namespaces/{name}")
        if fresh is None:
            return False
        body = {**fresh, "spec": {**(fresh.get("spec") or {}), "finalizers": []}}
        try:
            # The resourceVersion in the body makes this PUT fail if the namespace changed meanwhile.
            await ctx.write("finalize", name, "PUT", f"/api/v1/namespaces/{name}/finalize", body=body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        if orphaning:
            ctx.journal.record("orphaned-content", step=ctx.step.id, namespace=name)
        return True
