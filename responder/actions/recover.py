"""Recovery: bring back what was lost and return the cluster to its pre-incident shape.

Steps, in runbook order: choose the Velero backup, wait until the lost namespaces are really gone,
recreate the Tenant CRD and the Tenants (widening the breaker's exemption to Velero), restore the lost
namespaces with a Velero Restore, re-adopt every namespace into its recreated Tenant, bring Capsule
back exactly as recorded, and verify. Each step writes what later steps need as a journal record, so
a resumed run continues from the journal, not from memory. The decisions are pure functions in
responder/recovery/decisions.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx

from responder.recovery import decisions as recovery
from responder.actions.breaker import (HOLD_POLICY, TripBreaker, breaker_tripped, fresh_capsule_hooks,
                                       hold_left_in_place, holds_of, release_hold, restore_match_conditions_patch,
                                       widen_exemption_patch)
from responder.actions.self_hold import lift_self_hold, read_self_hold
from responder.actions.common import capsule_target
from responder.cluster.client import JSON_PATCH, MERGE_PATCH
from responder.cluster.discovery import Discovery, wait_crd_established
from responder.incident.engine import StepContext, StepOutcome, WriteRequest
from responder.errors import ApiError
from responder.incident import triage
from responder.incident.observe import TENANTS_PATH
from responder.names import SELF_HOLD_POLICY
from responder.runbook.schema import ActionSpec, ParamSpec

CRD_NAME = "tenants.capsule.clastix.io"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
VELERO_PARAMS = {"veleroNamespace": ParamSpec(str, default="velero", description="where Velero's objects live")}


def _velero(ctx: StepContext, resource: str, name: str | None = None) -> str:
    ns = str(ctx.params.get("veleroNamespace", "velero"))
    base = f"/apis/velero.io/v1/namespaces/{ns}/{resource}"
    return f"{base}/{name}" if name else base


def latest_record(ctx: StepContext, kind: str) -> dict[str, Any] | None:
    return next((r for r in reversed(ctx.journal.records()) if r.get("kind") == kind), None)


def _snapshot(ctx: StepContext) -> dict[str, Any]:
    """What responder saw before its first write (recorded when the incident opened)."""
    return latest_record(ctx, "snapshot") or {}


def witnessed_namespaces(ctx: StepContext) -> dict[str, str]:
    """Tenant namespaces responder itself saw before the incident: its journal's snapshot, else its shadow copy."""
    snap = _snapshot(ctx).get("namespaces") or ctx.observer.shadow.namespace_tenants()
    return {ns: tenant for ns, tenant in snap.items() if ns not in ctx.options.protected}


def witnessed_source(ctx: StepContext) -> str:
    """Where witnessed_namespaces comes from: the journal's snapshot, the shadow copy, or the guard's
    in-cluster record (loaded as the shadow copy when responder had none of its own)."""
    snapshot = _snapshot(ctx)
    source = str(snapshot.get("source") or "")
    if source.startswith("guard record"):
        return source
    return "journal" if snapshot.get("namespaces") else "shadow"


def known_namespaces(ctx: StepContext) -> dict[str, str]:
    """What existed before the incident (namespace -> Tenant): what responder witnessed, then what the
    chosen backup adds (choose-backup records it)."""
    plan = latest_record(ctx, "recovery-plan") or {}
    known, _ = recovery.merge_known(witnessed_namespaces(ctx), plan.get("known_from_backup") or {},
                                    ctx.options.protected)
    return known


def owner_templates(ctx: StepContext) -> dict[str, dict[str, Any]]:
    """Per namespace, its Tenant ownerReference from before the incident (less the UID)."""
    plan = latest_record(ctx, "recovery-plan") or {}
    return (plan.get("owners_from_backup") or {}) | (_snapshot(ctx).get("owners") or {})


async def live_tenants(ctx: StepContext) -> dict[str, dict[str, Any]]:
    """The Tenants in the cluster by name, less those being deleted; none while the Tenant CRD is not
    served. A Tenant being deleted adopts nothing: on Capsule >= 0.13 its finalizer deletes the namespaces
    its status lists, and the garbage collector those it owns once it is gone."""
    try:
        items = (await ctx.client.get(TENANTS_PATH)).get("items") or []
    except ApiError as exc:
        if exc.status != 404:
            raise
        return {}
    return {t["metadata"]["name"]: t for t in items if not t["metadata"].get("deletionTimestamp")}


async def _all_namespaces(ctx: StepContext) -> dict[str, dict[str, Any]]:
    items = (await ctx.client.get("/api/v1/namespaces")).get("items") or []
    return {n["metadata"]["name"]: n for n in items}


async def download(ctx: StepContext, kind: str, name: str, *, timeout: float = 60.0) -> bytes:
    """Velero's DownloadRequest: a presigned URL to a backup's tarball or a restore's results."""
    request_name = f"responder-{ctx.journal.incident_id}-{kind.lower()}-{name}"[:253].lower()
    body = {"apiVersion": "velero.io/v1", "kind": "DownloadRequest",
            "metadata": {"name": request_name, "namespace": str(ctx.params.get("veleroNamespace", "velero"))},
            "spec": {"target": {"kind": kind, "name": name}}}
    if not ctx.done_before("download-request", request_name):
        try:
            await ctx.write("download-request", request_name, "POST", _velero(ctx, "downloadrequests"), body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = await ctx.client.get(_velero(ctx, "downloadrequests", request_name))
        url = (obj.get("status") or {}).get("downloadURL")
        if url:
            async with httpx.AsyncClient(timeout=60) as http:
                response = await http.get(url)
            response.raise_for_status()
            return response.content
        await asyncio.sleep(0.3)
    raise TimeoutError(f"Velero did not answer the DownloadRequest for {kind} {name} within {timeout:.0f}s")


# -- 1. choose the backup --------------------------------------------------------------------------

class ChooseBackup:
    spec = ActionSpec(
        name="choose-backup",
        description="Pick the newest usable Velero backup that holds every lost namespace; say why others were refused.",
        params={**VELERO_PARAMS,
                "schedule": ParamSpec(str, default="", description="only backups of this Velero Schedule"),
                "backup": ParamSpec(str, default="", description="this backup by name (still checked)"),
                "allowPartiallyFailed": ParamSpec(bool, default=False)},
    )

    async def run(self, ctx: StepContext) -> StepOutcome:
        witnessed = witnessed_namespaces(ctx)
        live = await _all_namespaces(ctx)
        lost = recovery.lost_namespaces(witnessed, live)
        source = witnessed_source(ctx)
        plan: dict[str, Any] = {"known": len(witnessed), "lost": lost, "backup": None, "rejected": [],
                                "counts": {}, "tenants_from": source, "known_from": source,
                                "known_from_backup": {}, "owners_from_backup": {}}
        try:
            backups = (await ctx.client.get(_velero(ctx, "backups"))).get("items") or []
            locations = (await ctx.client.get(_velero(ctx, "backupstoragelocations"))).get("items") or []
        except ApiError as exc:
            if exc.status != 404:
                raise
            backups, locations = [], []
            plan["reason"] = "Velero is not installed (no velero.io API or namespace)"
        phases = {b["metadata"]["name"]: (b.get("status") or {}).get("phase", "") for b in locations}
        now = dt.datetime.now(dt.timezone.utc)
        refused: list[dict[str, str]] = []
        pool = list(backups)
        while pool:
            # The backup must hold every namespace responder saw lost; what else it says existed is read
            # from it (responder may not have been running when they went).
            choice = recovery.choose_backup(pool, lost, now=now, storage_phases=phases,
                                            schedule=str(ctx.params.get("schedule") or "") or None,
                                            name=str(ctx.params.get("backup") or "") or None,
                                            allow_partially_failed=bool(ctx.params.get("allowPartiallyFailed")))
            refused += choice.to_json()["rejected"]
            if choice.backup is None:
                plan["reason"] = choice.reason
                break
            named = {r["name"] for r in refused}  # refused once is said once
            pool = [b for b in pool if b["metadata"]["name"] not in named]
            if ctx.dry_run:  # a dry-run DownloadRequest is never served: judge by the spec alone
                plan["backup"] = choice.backup
                break
            chosen = next(b for b in pool if b["metadata"]["name"] == choice.backup)
            pool = [b for b in pool if b["metadata"]["name"] != choice.backup]
            contents = recovery.parse_backup_tarball(await download(ctx, "BackupContents", choice.backup))
            absent = [ns for ns in lost if ns not in contents.namespaces]
            why = recovery.evidence_refusal(chosen, contents) or (
                f"holds no objects of {len(absent)} lost namespaces (e.g. {', '.join(absent[:3])}): taken before them"
                if absent else None)
            if why:
                refused.append({"name": choice.backup, "reason": why})
                continue
            known, added = recovery.merge_known(witnessed, recovery.tenant_namespaces_in(contents),
                                                ctx.options.protected)
            lost = recovery.lost_namespaces(known, live)
            templates = recovery.owner_templates_in(contents)
            plan.update(backup=choice.backup, known=len(known), lost=lost, known_from_backup=added,
                        owners_from_backup={ns: templates[ns] for ns in added if ns in templates},
                        counts={ns: recovery.restorable_counts(contents, ns) for ns in known})
            if added:
                plan["known_from"] = f"{source} and backup {choice.backup}" if witnessed else f"backup {choice.backup}"
            if contents.tenants:
                # Witnessed Tenants win (RecreateTenants.wanted_tenants); the backup adds the others.
                plan["tenants_from"] = (f"{source}, then backup {choice.backup}" if ctx.observer.shadow.tenants
                                        else "backup")
                plan["tenants"] = {n: recovery.tenant_for_create(t) for n, t in contents.tenants.items()}
            if contents.tenant_crd:
                plan["tenant_crd"] = recovery.crd_for_create(contents.tenant_crd)
            break
        if plan["backup"] is None and not witnessed and backups and not ctx.dry_run:
            await self.evidence_only(ctx, plan, backups, refused, live)
            lost = plan["lost"]
        plan["rejected"] = refused
        for r in refused:
            ctx.log(f"backup {r['name']} refused: {r['reason']}", level="warning")
        if not plan["known"] and ctx.dry_run and plan["backup"]:
            plan["known_from"] = (f"backup {plan['backup']}, whose contents only a real run reads (a DownloadRequest "
                                  "is a write)")
        elif not plan["known"]:
            plan["known_from"] = ("nothing: responder's journal and shadow copy hold no tenant namespace and no usable "
                                  "backup says what existed")
        if not lost:
            plan["reason"] = plan.get("reason") or "no namespace was lost"
        ctx.journal.record("recovery-plan", step=ctx.step.id, **plan)
        summary = {k: plan[k] for k in ("backup", "rejected", "tenants_from", "known_from")} | {"lost": len(lost)}
        if not plan["known"] and ctx.dry_run and plan["backup"]:
            return StepOutcome("finished", f"dry run: what existed is in {plan['known_from']}", summary)
        if not plan["known"]:
            ctx.log(f"WHAT EXISTED IS UNKNOWN: {plan['known_from']}"
                    + (f" ({plan['reason']})" if plan.get("reason") else ""), level="warning")
            return StepOutcome("finished", f"nothing known to restore: {plan['known_from']}", summary)
        if not lost:
            return StepOutcome("finished", f"no namespace lost ({plan['known']} known, from the {plan['known_from']}): "
                                           "nothing to restore", summary)
        if plan["backup"] is None:
            reason = plan.get("reason") or "no backup holds every lost namespace"
            ctx.log(f"NO USABLE BACKUP ({reason}): lost namespaces can only come back from a rescue backup; "
                    "Tenants come from responder's shadow copy", level="warning")
            return StepOutcome("finished", f"no usable backup: {reason}", summary)
        return StepOutcome("finished", f"backup {plan['backup']} holds all {len(lost)} lost namespaces "
                                       f"(what existed: from the {plan['known_from']})", summary)

    @staticmethod
    async def evidence_only(ctx: StepContext, plan: dict[str, Any], backups: list[dict[str, Any]],
                            refused: list[dict[str, str]], live: dict[str, Any]) -> None:
        """No backup may be restored from and responder saw nothing: the newest refused backup whose
        contents can still be read says what existed, so the report can list what could not come back
        and why. Nothing is restored or recreated from it."""
        reasons = {r["name"]: r["reason"] for r in refused}
        for backup in recovery.candidate_backups(backups):
            name = backup["metadata"]["name"]
            if (backup.get("status") or {}).get("phase") not in ("Completed", "PartiallyFailed"):
                continue
            try:
                contents = recovery.parse_backup_tarball(await download(ctx, "BackupContents", name, timeout=20))
            except Exception as exc:  # unreadable (its storage location is unavailable, ...): the next one
                ctx.log(f"backup {name} could not be read for what existed: {exc}", level="warning")
                continue
            if recovery.evidence_refusal(backup, contents):
                continue
            known, added = recovery.merge_known({}, recovery.tenant_namespaces_in(contents), ctx.options.protected)
            plan.update(known=len(known), known_from_backup=added, lost=recovery.lost_namespaces(known, live),
                        known_from=f"backup {name}, read for what existed only: it may not be restored from "
                                   f"({reasons.get(name, 'refused')})")
            return


def recovery_plan(ctx: StepContext) -> dict[str, Any]:
    return latest_record(ctx, "recovery-plan") or {"lost": {}, "backup": None, "counts": {}, "tenants_from": "shadow"}


# -- 2. wait until the lost namespaces are gone ----------------------------------------------------

def frozen_lost(lost: Any, live: dict[str, Any]) -> list[str]:
    """Lost namespaces still Terminating: Capsule's fail-closed webhooks (the breaker) also refuse the
    namespace controller's deletes of their content, so they are frozen with their content intact."""
    return sorted(ns for ns in lost if ns in live)


def rescue_backup_name(ctx: StepContext) -> str:
    return f"responder-rescue-{ctx.journal.incident_id}".lower()[:63]


class WaitLostGone:
    spec = ActionSpec(
        name="wait-lost-gone",
        description="Rescue-backup lost namespaces the breaker froze while Terminating, let their deletion finish, and "
                    "wait until they (and the dying Tenant CRD) are gone: Velero cannot restore into a Terminating one.",
        params={**VELERO_PARAMS,
                "waitSeconds": ParamSpec((int, float), default=180),
                "rescueBackup": ParamSpec(bool, default=True,
                                          description="back up frozen Terminating namespaces before letting them go"),
                "backupTimeout": ParamSpec((int, float), default=300),
                "namespaceControllerIdentity": ParamSpec(
                    str, default="system:serviceaccount:kube-system:namespace-controller",
                    description="the username kube-controller-manager's namespace controller writes as")},
    )

    async def preview(self, ctx: StepContext) -> list[str]:
        plan = recovery_plan(ctx)
        frozen = frozen_lost(plan["lost"], await _all_namespaces(ctx))
        if not frozen:
            return []
        rescue = bool(ctx.params.get("rescueBackup", True))
        lines = [f"create Velero Backup {rescue_backup_name(ctx)} of the {len(frozen)} lost namespaces frozen "
                 f"Terminating"] if rescue else []
        if rescue or plan.get("backup"):
            lines.append(f"exempt {ctx.params['namespaceControllerIdentity']} in Capsule's webhook configurations "
                         f"(as responder is), once a backup holds them")
            lines += [f"annotate namespace {ns} so the namespace controller finishes deleting it" for ns in frozen]
        return lines

    async def run(self, ctx: StepContext) -> StepOutcome:
        plan = recovery_plan(ctx)
        lost = set(plan["lost"])
        live = await _all_namespaces(ctx)
        frozen = frozen_lost(plan["lost"], live)
        rescue = None
        rescue_counts: dict[str, dict[str, int]] = {}
        if frozen and bool(ctx.params.get("rescueBackup", True)):
            rescue = await self.rescue_backup(ctx, frozen)
            if rescue:
                rescue_counts = await self.rescue_contents(ctx, rescue, frozen)
        # Let the namespace controller finish only where a backup holds the content (the chosen one holds
        # every lost namespace); otherwise they stay frozen, content intact, and the report says so.
        releasable = set(frozen) if (rescue or plan.get("backup")) else set()
        finishers = [ctx.options.identity, str(ctx.params["namespaceControllerIdentity"])]
        tripped = breaker_tripped(ctx.journal.records())
        if releasable:
            await widen_exemption(ctx, finishers)
            await self.nudge(ctx, sorted(releasable))
        wait_for = (lost - set(frozen)) | releasable
        deadline = time.monotonic() + float(ctx.params.get("waitSeconds", 180))
        pending = {ns for ns in wait_for if ns in live}
        crd_deleting = True
        while not ctx.dry_run and time.monotonic() < deadline:
            if releasable and not tripped and breaker_tripped(ctx.journal.records()):
                # The incident grew meanwhile and the breaker tripped, exempting responder alone: the
                # namespace controller must still be let through to finish these.
                tripped = True
                await widen_exemption(ctx, finishers)
                await self.nudge(ctx, sorted(ns for ns in releasable if ns in live), again=True)
            live = await _all_namespaces(ctx)
            pending = {ns for ns in wait_for if ns in live}
            crd = await ctx.client.get_or_none(CRD_PATH)
            crd_deleting = bool(crd and crd["metadata"].get("deletionTimestamp"))
            ctx.progress(len(wait_for) - len(pending), len(wait_for), "lost namespaces gone")
            if not pending and not crd_deleting:
                break
            await asyncio.sleep(0.5)
        kept = sorted(set(frozen) - releasable)
        stuck = sorted(pending | set(kept))
        gone = sorted(lost - set(stuck))
        ctx.journal.record("recovery-gone", step=ctx.step.id, gone=gone, stuck=stuck, frozen=frozen,
                           kept_terminating=kept, rescue_backup=rescue, rescued=frozen if rescue else [],
                           rescue_counts=rescue_counts,
                           crd_deleting=crd_deleting)
        data = {"gone": len(gone), "stuck": stuck, "rescue_backup": rescue}
        if kept:
            ctx.log(f"{len(kept)} lost namespaces are Terminating with their content intact and no backup holds them: "
                    f"left Terminating (not finalized); copy their content out before Capsule comes back: "
                    f"{', '.join(kept[:10])}", level="warning")
        if pending or crd_deleting:
            what = f"{len(pending)} namespaces still Terminating" + (" and the Tenant CRD still deleting" if crd_deleting else "")
            ctx.log(f"{what}: they are left out of the restore (see the terminating step's report)", level="warning")
            return StepOutcome("failed" if crd_deleting else "finished", what, data)
        rescued = f"; {len(frozen)} frozen ones backed up first ({rescue})" if rescue else ""
        return StepOutcome("finished", f"{len(gone)} lost namespaces are gone{rescued}", data)

    async def rescue_backup(self, ctx: StepContext, namespaces: list[str]) -> str | None:
        """A Velero Backup of the frozen namespaces as they are now (newer than any scheduled one)."""
        name = rescue_backup_name(ctx)
        body = {"apiVersion": "velero.io/v1", "kind": "Backup",
                "metadata": {"name": name, "namespace": str(ctx.params.get("veleroNamespace", "velero")),
                             "labels": {"app.kubernetes.io/managed-by": "responder"}},
                "spec": {"includedNamespaces": namespaces, "includeClusterResources": False,
                         "snapshotVolumes": False, "ttl": "720h0m0s"}}
        try:
            if not ctx.done_before("create-backup", name):
                await ctx.write("create-backup", name, "POST", _velero(ctx, "backups"), body=body)
        except ApiError as exc:
            if exc.status == 404:  # no Velero here
                ctx.log("no Velero API: the frozen namespaces cannot be backed up first", level="warning")
                return None
            if exc.status != 409:
                raise
        if ctx.dry_run:
            return None
        deadline = time.monotonic() + float(ctx.params.get("backupTimeout", 300))
        while time.monotonic() < deadline:
            backup = await ctx.client.get(_velero(ctx, "backups", name))
            status = backup.get("status") or {}
            progress = status.get("progress") or {}
            ctx.progress(int(progress.get("itemsBackedUp") or 0), int(progress.get("totalItems") or 0),
                         f"rescue backup {status.get('phase') or 'New'}")
            if status.get("phase") == "Completed":
                return name
            if status.get("phase") in ("PartiallyFailed", "Failed", "FailedValidation"):
                ctx.log(f"rescue backup {name} ended {status.get('phase')}: "
                        f"{status.get('failureReason') or status.get('validationErrors') or ''}", level="warning")
                return None
            await asyncio.sleep(0.5)
        ctx.log(f"rescue backup {name} did not complete in time", level="warning")
        return None

    async def rescue_contents(self, ctx: StepContext, name: str, namespaces: list[str]) -> dict[str, dict[str, int]]:
        """Per frozen namespace, what the rescue backup holds: the namespace controller may have deleted
        part of the content before the breaker held, and the restore fills that in from the chosen backup."""
        try:
            contents = recovery.parse_backup_tarball(await download(ctx, "BackupContents", name))
        except Exception as exc:  # without the counts every rescued namespace is filled in from the chosen backup
            ctx.log(f"could not read the rescue backup's contents: {exc}", level="warning")
            return {}
        return {ns: recovery.restorable_counts(contents, ns) for ns in namespaces}

    async def nudge(self, ctx: StepContext, namespaces: list[str], *, again: bool = False) -> None:
        """Touch each frozen namespace so the namespace controller retries now, not after its back-off
        (`again`: once more, with another stamp, after the exemption changed)."""
        stamp = f"{ctx.journal.incident_id}{'-again' if again else ''}"
        requests = [WriteRequest("nudge-namespace", ns, "PATCH", f"/api/v1/namespaces/{ns}",
                                 body={"metadata": {"annotations": {"responder.dev/finish-deletion": stamp}}},
                                 content_type=MERGE_PATCH)
                    for ns in namespaces if again or not ctx.done_before("nudge-namespace", ns)]
        results = await ctx.write_many(requests, in_flight=16)
        for r, res in zip(requests, results):
            if isinstance(res, ApiError) and res.status != 404:
                ctx.log(f"could not nudge {r.target}: {res.status} {res.api_message[:200]}", level="warning")


async def widen_exemption(ctx: StepContext, identities: list[str]) -> None:
    """The breaker's exemption, for exactly these identities (Capsule stays at 0 meanwhile)."""
    for key, undo in breaker_originals(ctx).items():
        current = await ctx.client.get(undo["path"])
        ops = widen_exemption_patch(current, identities)
        if ops:
            await ctx.write("widen-exemption", key, "PATCH", undo["path"], body=ops, content_type=JSON_PATCH,
                            undo=undo)


# -- 3. the Tenant CRD and the Tenants -------------------------------------------------------------

def breaker_originals(ctx: StepContext) -> dict[str, dict[str, Any]]:
    """Per webhook configuration, the matchConditions from before the incident (the breaker's undo)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in ctx.journal.records():
        undo = rec.get("undo") if rec.get("kind") == "intent" else None
        if undo and undo.get("op") == "webhook-match-conditions":
            out.setdefault(f"{undo['kind']}/{undo['name']}", undo)  # the first one holds the true original
    return out


class RecreateTenants:
    spec = ActionSpec(
        name="recreate-tenants",
        description="Recreate the Tenant CRD and the Tenants (from the backup, else the shadow copy); exempt Velero too.",
        params={"veleroIdentity": ParamSpec(str, default="system:serviceaccount:velero:velero",
                                            description="the username Velero's server writes as")},
    )

    @staticmethod
    def wanted_tenants(ctx: StepContext, plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The Tenants the known namespaces belong to, as they are to be created (name -> body)."""
        # What responder witnessed (its shadow copy, or the guard's record) first, as it was just before the
        # incident; the backup adds the Tenants it never saw.
        tenants = dict(plan.get("tenants") or {}) | {n: recovery.tenant_for_create(t)
                                                     for n, t in ctx.observer.shadow.tenants.items()}
        wanted = set(known_namespaces(ctx).values())
        if plan.get("known_from_backup") and plan.get("tenants"):
            wanted |= set(tenants)  # the backup is the record of what existed: every Tenant in it
        return {n: t for n, t in tenants.items() if n in wanted}

    @staticmethod
    async def absent_tenants(ctx: StepContext, tenants: dict[str, dict[str, Any]]) -> list[str]:
        absent = []
        for name in sorted(tenants):
            existing = await ctx.client.get_or_none(f"{TENANTS_PATH}/{name}")
            if existing is None or existing["metadata"].get("deletionTimestamp"):
                absent.append(name)
        return absent

    async def preview(self, ctx: StepContext) -> list[str]:
        plan = recovery_plan(ctx)
        lines = [f"exempt Velero ({ctx.params['veleroIdentity']}) in Capsule's webhook configurations, as "
                 f"responder is"] if plan.get("backup") else []
        crd = await ctx.client.get_or_none(CRD_PATH)
        if crd is None or crd["metadata"].get("deletionTimestamp"):
            lines.append(f"create the Tenant CRD {CRD_NAME} (from the {plan.get('tenants_from')})")
        tenants = self.wanted_tenants(ctx, plan)
        return lines + [f"create Tenant {name} (from the {plan.get('tenants_from')})"
                        for name in await self.absent_tenants(ctx, tenants)]

    async def run(self, ctx: StepContext) -> StepOutcome:
        plan = recovery_plan(ctx)
        await widen_exemption(ctx, [ctx.options.identity, str(ctx.params["veleroIdentity"])]
                                   if plan.get("backup") else [ctx.options.identity])
        crd_created = await self.ensure_crd(ctx, plan)
        tenants = self.wanted_tenants(ctx, plan)
        if ctx.dry_run and crd_created:
            return StepOutcome("finished", f"dry run: would create the CRD and {len(tenants)} Tenants",
                               {"tenants": len(tenants)})
        # No undo: deleting a Tenant would take its namespaces with it.
        requests = [WriteRequest("create-tenant", name, "POST", TENANTS_PATH, body=tenants[name])
                    for name in await self.absent_tenants(ctx, tenants) if not ctx.done_before("create-tenant", name)]
        results = await ctx.write_many(requests, in_flight=8)
        errors = [r for r in results if isinstance(r, ApiError) and r.status != 409]
        if errors:
            raise errors[0]
        uids = {}
        for name in tenants:
            obj = await ctx.client.get_or_none(f"{TENANTS_PATH}/{name}")
            if obj is not None:
                uids[name] = obj["metadata"]["uid"]
        ctx.journal.record("recovery-tenants", step=ctx.step.id, source=plan.get("tenants_from"), uids=uids,
                           created=[r.target for r in requests])
        return StepOutcome("finished", f"{len(requests)} Tenants recreated from the {plan.get('tenants_from')} "
                                       f"({len(uids)} present)", {"created": len(requests), "present": len(uids)})

    async def ensure_crd(self, ctx: StepContext, plan: dict[str, Any]) -> bool:
        crd = await ctx.client.get_or_none(CRD_PATH)
        if crd is not None and not crd["metadata"].get("deletionTimestamp"):
            return False
        body = (recovery.crd_for_create(ctx.observer.shadow.tenant_crd) if ctx.observer.shadow.tenant_crd
                else plan.get("tenant_crd"))
        if body is None:
            raise ApiError(404, "NotFound", "the Tenant CRD is gone and neither a usable backup nor responder's shadow "
                                            "copy holds it: re-apply Capsule's CRDs (its Helm chart) and the Tenants, "
                                            "then run `responder run` again to restore and re-adopt")
        if not ctx.done_before("create-crd", CRD_NAME):
            await ctx.write("create-crd", CRD_NAME, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                            body=body)
        if ctx.dry_run:
            return True
        if await wait_crd_established(ctx.client, CRD_NAME, 30):
            return True
        raise ApiError(504, "Timeout", "the recreated Tenant CRD did not become Established within 30s")


# -- 4. Velero restore -----------------------------------------------------------------------------

class RestoreNamespaces:
    spec = ActionSpec(
        name="velero-restore",
        description="Restore the lost namespaces with Velero (never overwriting), following its progress and warnings.",
        params={**VELERO_PARAMS, "restoreTimeout": ParamSpec((int, float), default=900,
                                                                description="seconds the Restore may go "
                                                                            "without progress"),
                "veleroIdentity": ParamSpec(str, default="system:serviceaccount:velero:velero",
                                            description="the username Velero's server writes as"),
                "capsuleNamespace": ParamSpec(str, default="capsule-system"),
                "capsuleDeployment": ParamSpec(str, default="capsule-controller-manager"),
                "capsuleStopTimeout": ParamSpec((int, float), default=60,
                                                description="how long to wait for Capsule to stop before restoring")},
    )

    @staticmethod
    def restore_groups(ctx: StepContext) -> tuple[list[recovery.RestoreGroup], list[str]]:
        """The Restores to create, in order, and the lost namespaces no backup holds (see
        recovery.plan_restores)."""
        plan = recovery_plan(ctx)
        gone_rec = latest_record(ctx, "recovery-gone") or {}
        base = f"responder-{ctx.journal.incident_id}".lower()[:54]
        return recovery.plan_restores(base, lost=plan["lost"], backup=plan.get("backup"),
                                      counts=plan.get("counts") or {}, stuck=gone_rec.get("stuck") or [],
                                      rescue_backup=gone_rec.get("rescue_backup"),
                                      rescued=gone_rec.get("rescued") or [],
                                      rescue_counts=gone_rec.get("rescue_counts"))

    async def preview(self, ctx: StepContext) -> list[str]:
        groups, unrestorable = self.restore_groups(ctx)
        lines = []
        if groups and not breaker_tripped(ctx.journal.records()):
            target = capsule_target(ctx)
            lines.append(f"scale {target.namespace}/{target.deployment} to 0 and exempt responder and Velero "
                         f"({ctx.params['veleroIdentity']}) in Capsule's webhooks for the restore (Capsule refuses "
                         "tenant namespaces created by anyone but their owners); restore-capsule brings it back")
        lines += [group.describe() for group in groups]
        if unrestorable:
            lines.append(f"(no backup holds {len(unrestorable)} lost namespaces: they cannot be restored)")
        return lines

    async def run(self, ctx: StepContext) -> StepOutcome:
        plan = recovery_plan(ctx)
        groups, unrestorable = self.restore_groups(ctx)
        if not groups:
            ctx.journal.record("recovery-restore", step=ctx.step.id, phase="none", restored=[], restores=[],
                               unrestorable=unrestorable, reason=plan.get("reason"), warnings=[], errors=[])
            if not plan["lost"]:
                return StepOutcome("skipped", "nothing to restore", {})
            return StepOutcome("skipped", f"no backup: {len(unrestorable)} lost namespaces cannot be restored",
                               {"unrestorable": len(unrestorable)})
        if not breaker_tripped(ctx.journal.records()):
            await self.hold_capsule_for_restore(ctx)
        else:  # tripped after recreate-tenants widened it (the incident grew): Velero must write too
            await widen_exemption(ctx, [ctx.options.identity, str(ctx.params["veleroIdentity"])])
        records = [await self.restore_from(ctx, g.name, g.backup, g.namespaces) for g in groups]
        if ctx.dry_run:
            return StepOutcome("finished", f"dry run: {len(groups)} Restore(s) validated", {})
        ok = all(r["phase"] in ("Completed", "PartiallyFailed") for r in records)
        record = {"restore": ", ".join(r["restore"] for r in records),
                  "phase": next((r["phase"] for r in records if r["phase"] not in ("Completed", "PartiallyFailed")),
                                "PartiallyFailed" if any(r["phase"] == "PartiallyFailed" for r in records)
                                else "Completed"),
                  "restored": sorted({ns for r in records for ns in r["restored"]}),
                  "unrestorable": unrestorable, "restores": records,
                  "items_restored": sum(int(r["items_restored"] or 0) for r in records),
                  "total_items": sum(int(r["total_items"] or 0) for r in records),
                  "warnings": [w for r in records for w in r["warnings"]],
                  "errors": [e for r in records for e in r["errors"]],
                  "failure_reason": "; ".join(r["failure_reason"] for r in records if r["failure_reason"]) or None}
        ctx.journal.record("recovery-restore", step=ctx.step.id, **record)
        summary = "; ".join(f"Restore {r['restore']} (from {r['backup']}): {r['phase']}, {r['items_restored'] or 0}/"
                            f"{r['total_items'] or 0} items, {len(r['warnings'])} warnings, {len(r['errors'])} errors"
                            for r in records)
        data = {k: record[k] for k in ("restore", "phase", "items_restored", "total_items")}
        return StepOutcome("finished" if ok else "failed", summary, data)

    async def hold_capsule_for_restore(self, ctx: StepContext) -> None:
        """Capsule running (nothing was alive to save, so the breaker stayed off) refuses tenant namespaces
        created by anyone but their Tenant's owners: Velero's restore and responder's re-adoption. So the
        breaker trips now, for the restore only: Capsule at 0, responder and Velero exempted, the namespace
        hold in place; restore-capsule (or, whatever fails, the session) brings it back."""
        outcome = await TripBreaker().trip(ctx)
        if outcome.data.get("breaker") not in ("tripped", "dry-run"):
            ctx.log(f"Capsule could not be held for the restore: {outcome.summary}", level="warning")
            return
        if ctx.dry_run:
            return
        target = capsule_target(ctx)
        deadline = time.monotonic() + float(ctx.params.get("capsuleStopTimeout", 60))
        while time.monotonic() < deadline:  # until no Capsule process can revert the exemption
            deployment = await ctx.client.get_or_none(target.deployment_path)
            if not ((deployment or {}).get("status") or {}).get("replicas"):
                break
            await asyncio.sleep(0.5)
        # Capsule >= 0.13 may have rewritten its webhook configurations on its way down: exempt again.
        await TripBreaker().ensure_exemption(ctx, await fresh_capsule_hooks(ctx.client))
        await widen_exemption(ctx, [ctx.options.identity, str(ctx.params["veleroIdentity"])])

    async def restore_from(self, ctx: StepContext, name: str, backup: str, targets: list[str]) -> dict[str, Any]:
        body = {"apiVersion": "velero.io/v1", "kind": "Restore",
                "metadata": {"name": name, "namespace": str(ctx.params.get("veleroNamespace", "velero")),
                             "labels": {"app.kubernetes.io/managed-by": "responder"}},
                # Lost namespaces only; cluster resources (the Tenants) are recreated by responder;
                # existing objects are never overwritten (Velero's default policy, stated).
                "spec": {"backupName": backup, "includedNamespaces": targets,
                         "includeClusterResources": False, "existingResourcePolicy": "none"}}
        if not ctx.done_before("create-restore", name):
            try:
                await ctx.write("create-restore", name, "POST", _velero(ctx, "restores"), body=body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        if ctx.dry_run:
            return {"restore": name, "backup": backup, "phase": "dry-run", "restored": []}
        for ns in targets:
            ctx.emit("restore", target=ns, status="restoring")
        restore = await self.follow(ctx, name, float(ctx.params.get("restoreTimeout", 900)))
        status = restore.get("status") or {}
        phase = status.get("phase", "")
        messages = {"warnings": [], "errors": []}
        if phase in ("Completed", "PartiallyFailed", "Failed"):
            try:
                messages = recovery.parse_restore_results(await download(ctx, "RestoreResults", name))
            except Exception as exc:  # the results file is best effort; the counts are in the status
                ctx.log(f"could not fetch the restore's results: {exc}", level="warning")
        for line in messages["warnings"][:50]:
            ctx.log(f"velero warning: {line}")
        for line in messages["errors"][:50]:
            ctx.log(f"velero error: {line}", level="warning")
        progress = status.get("progress") or {}
        # Restored means the namespace is back, not that it was asked for (a PartiallyFailed restore
        # may have brought back none of it).
        live = await _all_namespaces(ctx) if phase in ("Completed", "PartiallyFailed") else {}
        back = [ns for ns in targets if ns in live and not live[ns]["metadata"].get("deletionTimestamp")]
        for ns in targets:
            ctx.emit("restore", target=ns, status="restored" if ns in back else "failed")
        return {"restore": name, "backup": backup, "phase": phase, "restored": back,
                "items_restored": progress.get("itemsRestored"), "total_items": progress.get("totalItems"),
                "warnings": messages["warnings"], "errors": messages["errors"],
                "failure_reason": status.get("failureReason"), "validation_errors": status.get("validationErrors")}

    async def follow(self, ctx: StepContext, name: str, timeout: float) -> dict[str, Any]:
        """The Restore once finished; TimeoutError once its phase and item count have not changed for
        `timeout` seconds (Velero stuck, or running another restore first)."""
        changed_at = time.monotonic()
        last = None
        while time.monotonic() - changed_at < timeout:
            restore = await ctx.client.get(_velero(ctx, "restores", name))
            status = restore.get("status") or {}
            progress = status.get("progress") or {}
            now = (status.get("phase"), progress.get("itemsRestored"), progress.get("totalItems"))
            if now != last:
                ctx.progress(int(progress.get("itemsRestored") or 0), int(progress.get("totalItems") or 0),
                             f"restore {status.get('phase') or 'New'}")
                last, changed_at = now, time.monotonic()
            if status.get("phase") in ("Completed", "PartiallyFailed", "Failed", "FailedValidation"):
                return restore
            await asyncio.sleep(0.5)
        raise TimeoutError(f"Restore {name} made no progress for {timeout:.0f}s (Velero runs one restore at a "
                           "time)")


# -- 5. re-adopt -----------------------------------------------------------------------------------

class ReadoptNamespaces:
    spec = ActionSpec(
        name="readopt-namespaces",
        description="Give every detached or restored namespace the ownerReference to its recreated Tenant (new UID).",
        params={"concurrency": ParamSpec(int, default=32)},
    )

    @staticmethod
    async def planned(ctx: StepContext) -> tuple[list[WriteRequest], list[str], list[str]]:
        """The re-adoption patches to send, the known namespaces absent, those whose Tenant is missing."""
        known = known_namespaces(ctx)
        templates = owner_templates(ctx)
        live = await _all_namespaces(ctx)
        tenants = await live_tenants(ctx)
        requests, missing_tenant, absent = [], [], []
        for ns, tenant_name in sorted(known.items()):
            obj, tenant = live.get(ns), tenants.get(tenant_name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                absent.append(ns)
                continue
            if tenant is None:
                missing_tenant.append(ns)
                continue
            patch = recovery.readopt_patch(obj, tenant, templates.get(ns))
            if patch and not ctx.done_before("readopt", ns):
                requests.append(WriteRequest("readopt", ns, "PATCH", f"/api/v1/namespaces/{ns}", body=patch,
                                             content_type=JSON_PATCH))
        return requests, absent, missing_tenant

    async def preview(self, ctx: StepContext) -> list[str]:
        known = known_namespaces(ctx)
        requests, absent, missing_tenant = await self.planned(ctx)
        lines = [f"set namespace {r.target}'s ownerReference to its recreated Tenant {known[r.target]}"
                 for r in requests]
        if missing_tenant:
            lines.append(f"(no Tenant to adopt {len(missing_tenant)} namespaces: {', '.join(missing_tenant[:3])})")
        return lines

    async def run(self, ctx: StepContext) -> StepOutcome:
        known = known_namespaces(ctx)
        # Re-adopted in this incident before this run: journaled (a resumed run, or inherited from a dead leader).
        before = sum(1 for ns in known if ctx.done_before("readopt", ns))
        requests, absent, missing_tenant = await self.planned(ctx)
        results = await ctx.write_many(requests, in_flight=int(ctx.params.get("concurrency", 32)))
        failed = [(r.target, res) for r, res in zip(requests, results) if isinstance(res, ApiError)]
        for r, res in zip(requests, results):
            if not isinstance(res, ApiError):
                ctx.emit("readopt", target=r.target, tenant=known[r.target])
        data = {"readopted": len(requests) - len(failed), "readopted_before": before, "absent": absent,
                "tenant_missing": missing_tenant, "failed": [t for t, _ in failed]}
        for target, exc in failed[:10]:
            ctx.log(f"re-adopting {target} failed: {exc.status} {exc.api_message[:200]}", level="warning")
        status = "failed" if failed or missing_tenant else "finished"
        return StepOutcome(status, f"{data['readopted']} namespaces re-adopted by their recreated Tenants"
                                   + (f" ({before} more before this run)" if before else "")
                                   + (f"; {len(absent)} absent" if absent else ""), data)


# -- 6. bring Capsule back -------------------------------------------------------------------------

class RestoreCapsule:
    spec = ActionSpec(
        name="restore-capsule",
        description="Put Capsule's webhook configurations and replicas back exactly as recorded; wait until it "
                    "reconciles the Tenants.",
        params={"capsuleNamespace": ParamSpec(str, default="capsule-system"),
                "capsuleDeployment": ParamSpec(str, default="capsule-controller-manager"),
                "reconcileTimeout": ParamSpec((int, float), default=120,
                                              description="seconds Capsule may go without listing one more "
                                                          "namespace in a Tenant's status"),
                "reconcileSecondsPerNamespace": ParamSpec((int, float), default=1.0,
                                                          description="the wait in all is at most "
                                                                      "reconcileTimeout plus this per namespace")},
    )

    @staticmethod
    def original_replicas(ctx: StepContext) -> int:
        """Capsule's replicas from before the incident: the breaker's undo, else the snapshot or shadow."""
        replicas = next((rec["undo"]["replicas"] for rec in ctx.journal.records()
                         if rec.get("kind") == "intent" and (rec.get("undo") or {}).get("op") == "scale"), None)
        if replicas is None:
            replicas = _snapshot(ctx).get("capsule_replicas") or ctx.observer.shadow.capsule_replicas or 1
        return int(replicas)

    @staticmethod
    async def webhook_patches(ctx: StepContext) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        """(configuration, its undo record, JSON patch) for each webhook configuration to put back."""
        out = []
        for key, undo in breaker_originals(ctx).items():
            ops = restore_match_conditions_patch(await ctx.client.get(undo["path"]), undo["webhooks"])
            if ops:
                out.append((key, undo, ops))
        return out

    async def preview(self, ctx: StepContext) -> list[str]:
        target = capsule_target(ctx)
        lines = [f"put the matchConditions of {key} back as recorded before the incident"
                 for key, _, _ in await self.webhook_patches(ctx) if not ctx.done_before("restore-webhooks", key)]
        if breaker_tripped(ctx.journal.records()) and not ctx.done_before("restore-replicas", target.deployment):
            lines.append(f"scale {target.namespace}/{target.deployment} to {self.original_replicas(ctx)} replicas "
                         f"(as before the incident)")
        self_hold = await read_self_hold(ctx.client)
        if self_hold.in_force:
            lines.append(f"lift the self-arming hold ({self_hold.why}): record the Tenant CRD present then as the "
                         f"adopted one in ValidatingAdmissionPolicy {SELF_HOLD_POLICY}, once every Tenant lists its "
                         "namespaces again")
        if await self.own_hold(ctx):
            lines.append(f"lift the namespace hold (delete ValidatingAdmissionPolicy {HOLD_POLICY} and its binding, "
                         f"unmark the armed hold's parameter) once every Tenant lists its namespaces again")
        return lines

    async def run(self, ctx: StepContext) -> StepOutcome:
        started = time.monotonic()
        target = capsule_target(ctx)
        for key, undo, ops in await self.webhook_patches(ctx):
            if not ctx.done_before("restore-webhooks", key):
                await ctx.write("restore-webhooks", key, "PATCH", undo["path"], body=ops, content_type=JSON_PATCH)
        replicas = self.original_replicas(ctx)
        # Not tripped (nothing was alive to save): Capsule was never scaled down, nothing to put back.
        tripped = breaker_tripped(ctx.journal.records())
        if tripped and not ctx.done_before("restore-replicas", target.deployment):
            await ctx.write("restore-replicas", target.deployment, "PATCH", f"{target.deployment_path}/scale",
                            body={"spec": {"replicas": replicas}}, content_type=MERGE_PATCH)
        if ctx.dry_run:
            return StepOutcome("finished", "dry run: Capsule not restarted", {})
        # Within the step's own timeout, so a wait that gives up still says why.
        budget = float(ctx.step.timeout) - (time.monotonic() - started) - 5.0
        pending = await self.wait_reconciled(ctx, float(ctx.params.get("reconcileTimeout", 120)),
                                             float(ctx.params.get("reconcileSecondsPerNamespace", 1.0)), budget)
        data = {"replicas": replicas, "tenants_not_reconciled": pending}
        if pending:
            ctx.log(f"{len(pending)} Tenants do not list all their namespaces yet, or are being deleted (Capsule "
                    f"would delete what they list): {', '.join(pending[:5])}"
                    + ("; the namespace hold stays (remove it with `responder undo`)" if await self.own_hold(ctx)
                       else ""),
                    level="warning")
            return StepOutcome("failed", f"Capsule back at {replicas} replicas; {len(pending)} Tenants not reconciled",
                               data)
        # Capsule runs and owns every namespace again: tenant namespaces may be deleted again.
        data["hold_removed"] = await release_hold(ctx)
        lifted = await lift_self_hold(ctx)
        if lifted:
            data["hold_removed"].append(lifted)
        return StepOutcome("finished", f"Capsule back at {replicas} replicas; every Tenant lists its namespaces"
                                       + ("; namespace hold removed" if data["hold_removed"] else ""), data)

    @staticmethod
    async def own_hold(ctx: StepContext) -> bool:
        """This incident's namespace hold is in the cluster."""
        return bool(await holds_of(ctx.client, ctx.journal.incident_id))

    async def wait_reconciled(self, ctx: StepContext, timeout: float, per_namespace: float = 0.0,
                              budget: float = float("inf")) -> list[str]:
        """Tenants that do not own their known namespaces again (recovery.tenants_not_reconciled), once
        Capsule has listed no further namespace for `timeout` seconds, or after the overall cap
        (recovery.reconcile_cap, at most `budget`); [] as soon as every Tenant lists its namespaces."""
        known = known_namespaces(ctx)
        clock: recovery.ReconcileClock | None = None
        while True:
            namespaces, tenants = await _all_namespaces(ctx), await live_tenants(ctx)
            pending = recovery.tenants_not_reconciled(known, namespaces, tenants)
            if not pending:
                return []
            listed, expected = recovery.namespaces_listed(known, namespaces, tenants)
            now = time.monotonic()
            if clock is None:
                cap = min(recovery.reconcile_cap(timeout, expected, per_namespace), max(budget, 1.0))
                clock = recovery.ReconcileClock(idle=timeout, cap=cap, started=now)
            if clock.observe(listed, now):
                ctx.progress(listed, expected, f"namespaces listed by their Tenants ({len(pending)} Tenants to go)")
            if clock.expired(now):
                idle = now - clock.progressed_at >= clock.idle
                ctx.log(f"waited {now - clock.started:.0f}s for Capsule: "
                        + (f"no namespace newly listed for {clock.idle:.0f}s" if idle
                           else f"the limit of {clock.cap:.0f}s for {expected} namespaces reached")
                        + f" ({listed} of {expected} listed)", level="warning")
                return pending
            await asyncio.sleep(1.0)


# -- 7. verify -------------------------------------------------------------------------------------

class VerifyRecovery:
    spec = ActionSpec(
        name="verify-recovery",
        description="Every namespace known before the incident exists, belongs to its Tenant and holds its objects; "
                    "Capsule's webhooks and replicas equal the originals.",
        params={"capsuleNamespace": ParamSpec(str, default="capsule-system"),
                "capsuleDeployment": ParamSpec(str, default="capsule-controller-manager"),
                "settleSeconds": ParamSpec((int, float), default=10,
                                           description="how long no known namespace may be deleted, with "
                                                       "Capsule back and the hold lifted")},
    )

    async def settle(self, ctx: StepContext, watched: set[str], seconds: float) -> list[str]:
        """The watched namespaces deleted (gone or Terminating) within `seconds`: the garbage collector
        or Capsule, free again, finishing what the incident began."""
        deleted: set[str] = set()
        deadline = time.monotonic() + seconds
        while not ctx.dry_run and watched - deleted and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            live = await _all_namespaces(ctx)
            deleted |= {ns for ns in watched if ns not in live or live[ns]["metadata"].get("deletionTimestamp")}
        return sorted(deleted)

    async def run(self, ctx: StepContext) -> StepOutcome:
        known = known_namespaces(ctx)
        plan = recovery_plan(ctx)
        restored = set((latest_record(ctx, "recovery-restore") or {}).get("restored") or [])
        before = await _all_namespaces(ctx)
        # Protected namespaces with a Tenant ownerReference: responder never writes them, the garbage
        # collector may still delete them.
        protected_owned = sorted(ns for ns, obj in before.items() if ns in ctx.options.protected
                                 and triage.tenant_refs(obj) and not obj["metadata"].get("deletionTimestamp"))
        watched = {ns for ns in known if ns in before and not before[ns]["metadata"].get("deletionTimestamp")}
        deleted_after = await self.settle(ctx, watched | set(protected_owned),
                                          float(ctx.params.get("settleSeconds", 10)))
        live = await _all_namespaces(ctx)
        tenants = await live_tenants(ctx)
        dangling = recovery.dangling_tenant_references(
            [o for o in live.values() if not o["metadata"].get("deletionTimestamp")], tenants)
        missing = sorted(ns for ns in known if ns not in live or live[ns]["metadata"].get("deletionTimestamp"))
        not_adopted = sorted(ns for ns, t in known.items() if ns in live and ns not in missing
                             and not (t in tenants and recovery.adopted_by(live[ns], tenants[t])))
        content_missing = await self.missing_objects(ctx, plan, [ns for ns in known if ns in live])
        snapshot = _snapshot(ctx)
        webhook_diffs: list[str] = []
        if snapshot.get("webhooks"):
            from responder.incident.observe import WEBHOOK_STREAMS, capsule_webhooks_in

            listings = {n: (await ctx.client.get(p)).get("items") or [] for n, _, p in WEBHOOK_STREAMS}
            now = {f"{kind}/{o['metadata']['name']}": o for kind, o in capsule_webhooks_in(lambda n: listings[n])}
            webhook_diffs = recovery.webhook_differences(snapshot["webhooks"], now)
        target = capsule_target(ctx)
        deployment = await ctx.client.get_or_none(target.deployment_path)
        replicas = ((deployment or {}).get("spec") or {}).get("replicas")
        expected_replicas = snapshot.get("capsule_replicas")
        lost = set(plan.get("lost") or {})
        hold_left = await hold_left_in_place(ctx.client, ctx.journal.incident_id)
        self_hold = await read_self_hold(ctx.client)
        if self_hold.in_force:
            hold_left.append(f"ValidatingAdmissionPolicy/{SELF_HOLD_POLICY} (self-arming: {self_hold.why})")
        result = {
            "known": len(known), "present": len(known) - len(missing), "missing": missing,
            "adopted": len(known) - len(missing) - len(not_adopted), "not_adopted": not_adopted,
            "saved": sorted(set(known) - lost - set(missing)), "lost": sorted(lost),
            "restored": sorted(restored), "unrestorable": sorted(lost - restored),
            "content_missing": content_missing, "webhook_differences": webhook_diffs,
            "capsule_replicas": replicas, "capsule_replicas_expected": expected_replicas,
            "backup": plan.get("backup"), "hold_left": hold_left, "known_from": plan.get("known_from"),
            "dangling": dangling, "deleted_after_recovery": deleted_after,
            "protected_lost": [ns for ns in protected_owned if ns in deleted_after],
        }
        ctx.journal.record("recovery-verify", step=ctx.step.id, **result)
        problems = []
        if missing:
            problems.append(f"{len(missing)} namespaces missing")
        if not_adopted:
            problems.append(f"{len(not_adopted)} not adopted")
        if content_missing:
            problems.append(f"{sum(len(v) for v in content_missing.values())} objects missing in "
                            f"{len(content_missing)} namespaces")
        if webhook_diffs:
            problems.append("webhooks differ: " + "; ".join(webhook_diffs))
        if expected_replicas is not None and replicas != expected_replicas:
            problems.append(f"Capsule at {replicas} replicas, expected {expected_replicas}")
        if hold_left:
            problems.append("the namespace hold is still in place: " + ", ".join(hold_left))
        if dangling:
            problems.append(f"{len(dangling)} namespaces carry a Tenant reference no live Tenant matches (the garbage "
                            f"collector will delete them): {', '.join(list(dangling)[:5])}")
        if deleted_after:
            problems.append(f"{len(deleted_after)} namespaces deleted after recovery: {', '.join(deleted_after[:5])}")
        data = {k: (len(v) if isinstance(v, (list, dict)) else v) for k, v in result.items()}
        if problems:
            for p in problems:
                ctx.log(f"VERIFY: {p}", level="warning")
            return StepOutcome("failed", "; ".join(problems), data)
        return StepOutcome("finished", f"all {len(known)} namespaces present, owned by their Tenants, content intact; "
                                       "Capsule as before; no Tenant reference dangles cluster-wide and none was "
                                       f"deleted within {float(ctx.params.get('settleSeconds', 10)):.0f}s", data)

    async def missing_objects(self, ctx: StepContext, plan: dict[str, Any], namespaces: list[str]) -> dict[str, list[str]]:
        """Objects the backup holds for a namespace that are not there now (one LIST per kind)."""
        counts = plan.get("counts") or {}
        if not counts or ctx.dry_run:
            return {}
        discovery = Discovery(ctx.client)
        await discovery.refresh()
        by_resource = {}
        for res in await discovery.namespaced_listable():
            group = res.group_version.rsplit("/", 1)[0] if "/" in res.group_version else ""
            by_resource[f"{res.name}.{group}" if group else res.name] = res
        missing: dict[str, list[str]] = {}
        limit = asyncio.Semaphore(16)

        async def check(ns: str, resource: str, expected: int) -> None:
            res = by_resource.get(resource)
            if res is None:
                missing.setdefault(ns, []).append(f"{resource}: API not served")
                return
            async with limit:
                items = (await ctx.client.get(res.collection_path(ns))).get("items") or []
            have = sum(1 for o in items if not o["metadata"].get("ownerReferences")
                       and (resource, o["metadata"]["name"]) not in recovery.AUTO_CREATED)
            if have < expected:
                missing.setdefault(ns, []).append(f"{resource}: {have} of {expected}")

        await asyncio.gather(*(check(ns, r, n) for ns in namespaces for r, n in (counts.get(ns) or {}).items()))
        return dict(sorted(missing.items()))
