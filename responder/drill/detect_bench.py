"""`responder bench detect`: does detection tell the cascade from routine tenant work? Both corpora on the lab,
with the real Capsule doing its part, a confusion matrix and latencies as JSON.

Routine corpus (one lab, one seed; each case under its own watching session, which must open no incident and
write nothing): an owner deletes two of its namespaces; an admin offboards one Tenant; two Tenants deleted a
window apart; Capsule restarted by someone else (replicas 1 -> 0 -> 1); namespaces created and labelled in bulk.
Incident corpus (each case on a fresh lab, the namespace hold armed as doctor asks; the session contains): the
Tenant CRD deleted; Tenants deleted in a burst; an owner deleting its namespace while the CRD is deleted; a late
start (the CRD deleted before responder starts). Measured per incident: detection latency (the triggering request sent -> its event received), the first
write after detection (journaled and sent), and the share of the namespaces alive at detection still alive
`--settle` seconds after the trigger (a namespace whose DELETE the API server admitted before detection, as its
audit log says, was lost before responder could know of it, and is counted apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.errors import EXIT_OK, ApiError, ConfigError
from responder.incident.detect import INCIDENT, Decision
from responder.incident.journal import record_epoch
from responder.lab.apply import bind_cluster_admin
from responder.lab.build import CAPSULE_VERSIONS
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.control_plane import Lab
from responder.lab.incident import CRD_PATH, persisted_writes_by, read_audit
from responder.lab.seed import TENANT_API, SeedResult, seed
from responder.ops.protect import arm_hold
from responder.response.session import Session, SessionOptions, resolve_runbook

DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}"
IDENTITY = "responder"
ROUTINE_CASES = ("owner-deletes-namespaces", "offboard-one-tenant", "tenants-spread", "capsule-restarted",
                 "namespaces-created-labelled")
INCIDENT_CASES = ("crd-deleted", "tenants-burst", "owner-delete-during-crd-deletion", "late-start")


def add_parser(bsub: argparse._SubParsersAction) -> None:
    detect = bsub.add_parser("detect", help="the routine and the incident corpus: confusion matrix and latencies")
    detect.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.14")
    detect.add_argument("--settle", type=float, default=120.0,
                        help="seconds after an incident's trigger to count the namespaces still alive")
    detect.add_argument("--namespaces-per-tenant", type=int, default=10,
                        help="namespaces of each of the 5 Tenants seeded for an incident case")
    detect.add_argument("--only", choices=("routine", "incident"), default=None, help="run one corpus only")
    detect.add_argument("--state-dir", type=Path, default=None)
    detect.set_defaults(handler=cmd_bench_detect)


def cmd_bench_detect(args: argparse.Namespace) -> int:
    if args.settle <= 0 or args.namespaces_per_tenant < 1:
        raise ConfigError(f"bad --settle {args.settle} or --namespaces-per-tenant {args.namespaces_per_tenant}",
                          fix="--settle above 0 seconds (120: the figure the issue asks for); --namespaces-per-tenant 1 or more")
    lab = Lab(args.state_dir or (Lab().dir.parent / "bench-lab"))
    cases: list[dict[str, Any]] = []
    try:
        if args.only in (None, "routine"):
            print("bench detect: routine corpus, fresh lab", file=sys.stderr, flush=True)
            lab.down(wipe=True)
            lab.up(capsule=args.capsule, out=sys.stderr)
            cases += asyncio.run(routine_corpus(lab))
        if args.only in (None, "incident"):
            for case in INCIDENT_CASES:
                print(f"bench detect: incident {case}, fresh lab", file=sys.stderr, flush=True)
                lab.down(wipe=True)
                lab.up(capsule=args.capsule, out=sys.stderr)
                cases.append(asyncio.run(incident_case(lab, case, settle=args.settle,
                                                       per_tenant=args.namespaces_per_tenant)))
    finally:
        lab.down(wipe=True)
    print(json.dumps({"benchmark": "detect", "capsule": CAPSULE_VERSIONS[args.capsule], "settle_s": args.settle,
                      **score(cases), "cases": cases}, indent=2))
    return EXIT_OK


def score(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The confusion matrix (expected -> decided -> count) and the incident latencies."""
    confusion = {expected: {got: sum(1 for c in cases if c["expected"] == expected and c["decided"] == got)
                            for got in ("incident", "routine")} for expected in ("incident", "routine")}
    incidents = [c for c in cases if c["expected"] == "incident" and c["decided"] == "incident"]

    def spread(key: str) -> dict[str, float] | None:
        values = [c[key] for c in incidents if c.get(key) is not None]
        return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)} if values else None

    return {"confusion": confusion, "false_incidents": confusion["routine"]["incident"],
            "missed": confusion["incident"]["routine"],
            "writes_in_routine_cases": sum(c.get("writes", 0) for c in cases if c["expected"] == "routine"),
            "detection_latency_ms": spread("detection_latency_ms"),
            "first_write_after_detection_ms": spread("first_write_after_detection_ms"),
            "saved_share_min": min((c["saved_share"] for c in incidents if c.get("saved_share") is not None),
                                   default=None)}


async def prepared(lab: Lab, admin: KubeClient, *, tenants: int, per_tenant: int, prefix: str) -> tuple[Path, SeedResult]:
    kubeconfig = lab.mint_user(IDENTITY)
    await bind_cluster_admin(admin, IDENTITY)
    seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant, prefix=prefix, with_content=False)
    return kubeconfig, seeded


def new_session(lab: Lab, kubeconfig: Path, case: str) -> Session:
    options = SessionOptions(runbook=resolve_runbook(None), journal_dir=lab.dir / "bench-detect" / case, yes=True,
                             contain_only=True)
    return Session(load_cluster_access(str(kubeconfig)), options)


async def alive(admin: KubeClient, names: set[str]) -> set[str]:
    listing = await admin.list_all("/api/v1/namespaces")
    return {n["metadata"]["name"] for n in listing["items"]
            if n["metadata"]["name"] in names and not n["metadata"].get("deletionTimestamp")}


async def until(what: str, probe: Callable[[], Awaitable[bool]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise ConfigError(f"bench detect: {what} did not happen within {timeout:.0f}s",
                              fix="see the lab's logs (capsule.log, kube-controller-manager.log)")
        await asyncio.sleep(0.3)


def owner_client(admin: KubeClient, seeded: SeedResult, tenant: str) -> KubeClient:
    return admin.with_options(impersonate=seeded.owners[tenant],
                              impersonate_groups=(seeded.owner_group, "system:authenticated"))


# -- the routine corpus --------------------------------------------------------------------------------------


async def routine_corpus(lab: Lab) -> list[dict[str, Any]]:
    async with lab.admin_client() as admin:
        kubeconfig, seeded = await prepared(lab, admin, tenants=6, per_tenant=3, prefix="bench")
        results = []
        for case in ROUTINE_CASES:
            session = new_session(lab, kubeconfig, case)
            await session.preflight()
            await session.start()
            session.check_late_start()
            started = time.time()
            try:
                await ROUTINE_OPERATIONS[case](admin, seeded)
                await asyncio.sleep(2.0)  # the watches deliver what followed
            finally:
                await session.close()
            writes = persisted_writes_by(lab.audit_log, IDENTITY, since=started - 1)
            summary = session.detection_summary()
            results.append({"case": case, "expected": "routine",
                            "decided": INCIDENT if session.incident_opened.is_set() else "routine",
                            "why": (session.trigger.reason if session.trigger else
                                    [d["reason"] for d in summary["notices"] + summary["routine"]][:6]),
                            "decisions": summary["counts"], "writes": len(writes),
                            "seconds": round(time.time() - started, 1)})
            print(f"bench detect: {case}: {results[-1]['decided']}", file=sys.stderr, flush=True)
        return results


def nth_tenant(seeded: SeedResult, n: int) -> str:
    """The seed's n-th Tenant (1-based; `PREFIX-00n`): the operations work on any seed of 6 Tenants or more."""
    return sorted(seeded.tenants)[n - 1]


async def owner_deletes_namespaces(admin: KubeClient, seeded: SeedResult) -> None:
    owner = owner_client(admin, seeded, nth_tenant(seeded, 1))
    try:
        doomed = seeded.tenants[nth_tenant(seeded, 1)][:2]
        await asyncio.gather(*(owner.delete(f"/api/v1/namespaces/{ns}") for ns in doomed))
    finally:
        await owner.aclose()
    await until("the owner's namespaces gone", lambda: gone(admin, set(doomed)))


async def offboard(admin: KubeClient, seeded: SeedResult, tenant: str) -> None:
    await admin.delete(f"{TENANT_API}/{tenant}")
    await until(f"Tenant {tenant} and its namespaces gone",
                lambda: gone(admin, set(seeded.tenants[tenant]), tenant=tenant))


async def offboard_one_tenant(admin: KubeClient, seeded: SeedResult) -> None:
    await offboard(admin, seeded, nth_tenant(seeded, 2))


async def tenants_spread(admin: KubeClient, seeded: SeedResult) -> None:
    await offboard(admin, seeded, nth_tenant(seeded, 3))
    await asyncio.sleep(11.0)  # past the default 10 s window
    await offboard(admin, seeded, nth_tenant(seeded, 4))


async def capsule_restarted(admin: KubeClient, seeded: SeedResult) -> None:
    for replicas in (0, 1):
        await admin.patch(f"{DEPLOYMENT_PATH}/scale", {"spec": {"replicas": replicas}})
        await asyncio.sleep(1.0)

    async def serving() -> bool:
        try:
            await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": "bench-readiness-probe"}}, dry_run=True)
        except ApiError:
            return False
        return True

    await until("Capsule serving again", serving)


async def namespaces_created_labelled(admin: KubeClient, seeded: SeedResult) -> None:
    fifth, sixth = nth_tenant(seeded, 5), nth_tenant(seeded, 6)
    extra = [f"{fifth}-extra-{i:02d}" for i in range(5)]
    owner = owner_client(admin, seeded, fifth)
    try:
        await asyncio.gather(*(owner.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                   "metadata": {"name": name}})
                               for name in extra))
    finally:
        await owner.aclose()
    names = seeded.tenants[fifth] + seeded.tenants[sixth] + extra
    await asyncio.gather(*(admin.patch(f"/api/v1/namespaces/{ns}", {"metadata": {"labels": {"team": "bench"}}})
                           for ns in names))


ROUTINE_OPERATIONS: dict[str, Callable[[KubeClient, SeedResult], Awaitable[None]]] = {
    "owner-deletes-namespaces": owner_deletes_namespaces, "offboard-one-tenant": offboard_one_tenant,
    "tenants-spread": tenants_spread, "capsule-restarted": capsule_restarted,
    "namespaces-created-labelled": namespaces_created_labelled}


async def gone(admin: KubeClient, names: set[str], *, tenant: str | None = None) -> bool:
    listing = await admin.list_all("/api/v1/namespaces")
    if names & {n["metadata"]["name"] for n in listing["items"]}:
        return False
    return tenant is None or await admin.get_or_none(f"{TENANT_API}/{tenant}") is None


# -- the incident corpus -------------------------------------------------------------------------------------


async def incident_case(lab: Lab, case: str, *, settle: float, per_tenant: int) -> dict[str, Any]:
    async with lab.admin_client() as admin:
        kubeconfig, seeded = await prepared(lab, admin, tenants=5, per_tenant=per_tenant, prefix="tenant")
        namespaces = set(seeded.namespaces)
        await arm_hold(admin)  # as `responder doctor` asks (`responder protect --only hold`)
        await asyncio.sleep(3)  # compiled and loaded, dormant (the API server reads policies each ~1 s)
        session = new_session(lab, kubeconfig, case)
        at_detection: set[str] = set()

        def count_alive(decision: Decision | None = None) -> None:
            # The namespaces alive when the incident opened, as the watch shows them (before any write).
            if (decision is None or decision.verdict == INCIDENT) and not at_detection \
                    and session.observer.synced["namespaces"].is_set():
                at_detection.update(n["metadata"]["name"] for n in session.observer.objects("namespaces")
                                    if n["metadata"]["name"] in namespaces
                                    and not n["metadata"].get("deletionTimestamp"))

        session.decision_listeners.append(count_alive)
        await session.preflight()
        sent, deleted_on_purpose = 0.0, set()
        try:
            if case == "late-start":
                sent = time.time()
                await admin.delete(CRD_PATH)
                await asyncio.sleep(1.0)
                await session.start()
                session.check_late_start()
            else:
                await session.start()
                session.check_late_start()
                sent, deleted_on_purpose = await INCIDENT_TRIGGERS[case](admin, seeded)
            try:
                await session.wait_for_incident(30)
            except TimeoutError:
                return {"case": case, "expected": "incident", "decided": "routine",
                        "why": session.detection_summary()["notices"][:6], "namespaces": len(namespaces)}
            count_alive()  # opened during the first lists (a late start): alive once they are all in
            at_detection.difference_update(deleted_on_purpose)  # an owner's own delete is not a loss
            await session.contain()
        finally:
            await session.close()
        await asyncio.sleep(max(0.0, sent + settle - time.time()))
        survivors = await alive(admin, namespaces)
    trigger = session.trigger
    assert trigger is not None
    # The watch shows a delete a few milliseconds after the API server admitted it: one admitted before
    # detection was lost before responder could know, whatever the watch showed then.
    lost_before = deleted_before(lab.audit_log, since=sent - 5, until=trigger.event_received)
    at_detection -= lost_before
    records = session.journal.records() if session.journal else []
    first = next((r for r in records if r.get("kind") == "intent"), None)
    opened = next((r for r in records if r.get("kind") == "trigger"), {})
    return {"case": case, "expected": "incident", "decided": "incident", "kind": trigger.kind,
            "why": trigger.reason, "namespaces": len(namespaces),
            "detection_latency_ms": round((trigger.event_received - sent) * 1000, 1) if case != "late-start" else None,
            "journaled_after_detection_ms": round(opened["journaled_after_s"] * 1000, 1) if opened else None,
            "first_write_after_detection_ms": round((record_epoch(first["ts"]) - trigger.event_received) * 1000, 1)
            if first else None,
            "deleted_before_detection": len(lost_before & namespaces),
            "alive_at_detection": len(at_detection), "alive_after_settle": len(survivors & at_detection),
            "saved_share": round(len(survivors & at_detection) / len(at_detection), 4) if at_detection else None,
            "contained": session.contained()}


def deleted_before(audit_log: Path, *, since: float, until: float) -> set[str]:
    """Namespaces whose DELETE the API server admitted (not a dry run) between `since` and `until`."""
    out = set()
    for event in read_audit(audit_log, since=since):
        ref = event.get("objectRef") or {}
        if (event.get("verb") == "delete" and ref.get("resource") == "namespaces" and not ref.get("subresource")
                and (event.get("responseStatus") or {}).get("code", 0) < 300
                and "dryRun" not in event.get("requestURI", "")
                and record_epoch(event["requestReceivedTimestamp"]) <= until):
            out.add(ref.get("name", ""))
    return out


# Each returns when its first request was sent and the namespaces deleted on purpose (not losses).


async def delete_crd(admin: KubeClient, seeded: SeedResult) -> tuple[float, set[str]]:
    sent = time.time()
    await admin.delete(CRD_PATH)
    return sent, set()


async def tenants_burst(admin: KubeClient, seeded: SeedResult) -> tuple[float, set[str]]:
    sent = time.time()
    await asyncio.gather(*(admin.delete(f"{TENANT_API}/{t}") for t in list(seeded.tenants)[:3]))
    return sent, set()


async def owner_delete_during_crd_deletion(admin: KubeClient, seeded: SeedResult) -> tuple[float, set[str]]:
    owner = owner_client(admin, seeded, "tenant-001")
    deleted = seeded.tenants["tenant-001"][0]
    try:
        sent = time.time()
        await asyncio.gather(owner.delete(f"/api/v1/namespaces/{deleted}"), admin.delete(CRD_PATH))
    finally:
        await owner.aclose()
    return sent, {deleted}


INCIDENT_TRIGGERS: dict[str, Callable[[KubeClient, SeedResult], Awaitable[tuple[float, set[str]]]]] = {
    "crd-deleted": delete_crd, "tenants-burst": tenants_burst,
    "owner-delete-during-crd-deletion": owner_delete_during_crd_deletion}
