"""`responder bench detect`: does detection tell the cascade from routine tenant work? Both corpora on the lab,
with the real Capsule doing its part, a confusion matrix and latencies as JSON.

Routine corpus (one lab, one seed; each case under its own watching session, which must open no incident and
write nothing): an owner deletes two of its namespaces; an admin offboards one Tenant; two Tenants deleted a
window apart; Capsule restarted by someone else (replicas 1 -> 0 -> 1); namespaces created and labelled in bulk.
Incident corpus (each case on a fresh lab, the namespace hold armed as doctor asks; the session contains): the
Tenant CRD deleted; Tenants deleted in a burst; an owner deleting its namespace while the CRD is deleted; the
CRD deleted and re-applied with the Tenants by a pipeline (new UIDs; recovery re-adopts); a late start (the
self-arming hold in place, the CRD deleted and re-applied by the pipeline where it can be, responder started
afterwards with stale (0.12) or dangling (0.14, the CRD still deleting) Tenant references; recovery
re-adopts). Measured per incident: detection latency (the triggering request sent -> its event received),
the first write after detection (its intent journaled), the share of the namespaces alive at detection still
alive, with the same UID, `--settle` seconds after the trigger (a namespace whose DELETE the API server
admitted before detection, as its audit log says, was lost before responder could know of it, and is
counted apart), and where recovery ran, how many namespaces end owned by the live Tenant of their name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
from responder.lab.delete_gate import delete_gate_served
from responder.lab.incident import CRD_PATH, persisted_writes_by, read_audit
from responder.lab.seed import TENANT_API, SeedResult, seed
from responder.ops.protect import arm_hold, install_self_hold, self_hold_exemptions
from responder.recovery.decisions import adopted_by, crd_for_create, tenant_for_create
from responder.response.session import Session, SessionOptions, resolve_runbook

DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}"
IDENTITY = "responder"
ROUTINE_CASES = ("owner-deletes-namespaces", "offboard-one-tenant", "tenants-spread", "capsule-restarted",
                 "namespaces-created-labelled")
INCIDENT_CASES = ("crd-deleted", "tenants-burst", "owner-delete-during-crd-deletion", "rebuilt", "late-start")
BURST_GAP_S = 1.0  # between the burst's Tenant deletions: 3 within 2 s, inside the 10 s window
LATE_START_S = 15.0  # at most this long after the CRD's DELETE responder starts, in the late-start case


def add_parser(bsub: argparse._SubParsersAction) -> None:
    detect = bsub.add_parser("detect", help="the routine and the incident corpus: confusion matrix and latencies")
    detect.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.14")
    detect.add_argument("--settle", type=float, default=120.0,
                        help="seconds after an incident's trigger to count the namespaces still alive")
    detect.add_argument("--namespaces-per-tenant", type=int, default=10,
                        help="namespaces of each of the 5 Tenants seeded for an incident case")
    detect.add_argument("--only", choices=("routine", "incident"), default=None, help="run one corpus only")
    detect.add_argument("--case", action="append", choices=INCIDENT_CASES, default=None,
                        help="run only this incident case (repeatable; default: all)")
    detect.add_argument("--delete-gate", choices=("on", "off", "both"), default="on",
                        help="serve the delete gate in the incident cases (on), not (off: the baseline), or run each "
                             "case both ways, off first, each on a fresh lab (both)")
    detect.add_argument("--state-dir", type=Path, default=None)
    detect.set_defaults(handler=cmd_bench_detect)


def cmd_bench_detect(args: argparse.Namespace) -> int:
    if args.settle <= 0 or args.namespaces_per_tenant < 1:
        raise ConfigError(f"bad --settle {args.settle} or --namespaces-per-tenant {args.namespaces_per_tenant}",
                          fix="--settle above 0 seconds (120: the figure the issue asks for); --namespaces-per-tenant 1 or more")
    lab = Lab(args.state_dir or (Lab().dir.parent / "bench-lab"))
    cases: list[dict[str, Any]] = []
    try:
        if args.only in (None, "routine") and not args.case:
            print("bench detect: routine corpus, fresh lab", file=sys.stderr, flush=True)
            lab.down(wipe=True)
            lab.up(capsule=args.capsule, out=sys.stderr)
            cases += asyncio.run(routine_corpus(lab))
        if args.only in (None, "incident"):
            gates = {"on": (True,), "off": (False,), "both": (False, True)}[args.delete_gate]
            for case in args.case or INCIDENT_CASES:
                for gate in gates:
                    print(f"bench detect: incident {case}, delete gate {'on' if gate else 'off'}, fresh lab",
                          file=sys.stderr, flush=True)
                    lab.down(wipe=True)
                    lab.up(capsule=args.capsule, out=sys.stderr)
                    cases.append(asyncio.run(incident_case(lab, case, settle=args.settle,
                                                           per_tenant=args.namespaces_per_tenant, gate=gate)))
                    print(f"bench detect: {case}: {json.dumps(cases[-1])}", file=sys.stderr, flush=True)
    finally:
        lab.down(wipe=True)
    gated = args.delete_gate != "off"
    report = {"benchmark": "detect", "capsule": CAPSULE_VERSIONS[args.capsule], "settle_s": args.settle,
              "delete_gate": args.delete_gate,
              **score([c for c in cases if c["expected"] == "routine" or c.get("gate", True) == gated])}
    if args.delete_gate == "both":  # the baseline, measured in the same run
        report["without_delete_gate"] = score([c for c in cases if c.get("gate") is False])
    print(json.dumps({**report, "cases": cases}, indent=2))
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
                                   default=None),
            "not_owned_after_recovery": sum(c["alive_of_case"] - c["owned_by_live_tenant"] for c in incidents
                                            if c.get("recovery") is not None)}


async def incident_case(lab: Lab, case: str, *, settle: float, per_tenant: int, gate: bool = True) -> dict[str, Any]:
    """One incident case on `lab`, measured `settle` seconds after its trigger."""
    async with lab.admin_client() as admin:
        run = await run_incident_case(lab, admin, case, per_tenant=per_tenant, gate=gate)
        await asyncio.sleep(max(0.0, run.sent + settle - time.time()))
        return {**await measure(lab, admin, run), "gate": gate}


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


@dataclass
class IncidentRun:
    """One incident case up to containment (and recovery, where it runs); `measure` ends it once the settle
    period has passed."""

    case: str
    namespaces: set[str]
    tenants: dict[str, list[str]]
    sent: float
    session: Session | None = None
    # The namespaces alive when the incident opened, as the watch showed them (name -> UID).
    at_detection: dict[str, str] = field(default_factory=dict)
    deleted_on_purpose: set[str] = field(default_factory=set)
    recovered: dict[str, str] | None = None  # recovery step -> status, where it ran
    adoption: dict[str, Any] = field(default_factory=dict)  # read right after recovery (adoption())
    missed: dict[str, Any] | None = None  # the result when no incident opened
    gate_decisions: dict[str, int] | None = None  # the delete gate's answers by kind (None: not served)


async def run_incident_case(lab: Lab, admin: KubeClient, case: str, *, per_tenant: int, prefix: str = "tenant",
                            recover: bool = False, gate: bool = True) -> IncidentRun:
    """Seed 5 Tenants, arm the hold, start a watching session (serving the delete gate unless `gate` is
    False), trigger `case`, contain; with `recover` (always for the rebuilt cases) run recovery too, which
    re-adopts and brings Capsule back."""
    kubeconfig, seeded = await prepared(lab, admin, tenants=5, per_tenant=per_tenant, prefix=prefix)
    namespaces = set(seeded.namespaces)
    await arm_hold(admin)  # as `responder doctor` asks (`responder protect --only hold`)
    if case == "late-start":
        await install_self_hold(admin, self_hold_exemptions([IDENTITY]))  # as `responder protect` does
    await asyncio.sleep(3)  # compiled and loaded, dormant (the API server reads policies each ~1 s)
    session = new_session(lab, kubeconfig, f"{case}-{prefix}")
    run = IncidentRun(case, namespaces, seeded.tenants, 0.0, session)

    def count_alive(decision: Decision | None = None) -> None:
        # Before any write: the incident opens in the watch's callback, this listener runs right after it.
        if (decision is None or decision.verdict == INCIDENT) and not run.at_detection \
                and session.observer.synced["namespaces"].is_set():
            run.at_detection.update((n["metadata"]["name"], n["metadata"]["uid"])
                                    for n in session.observer.objects("namespaces")
                                    if n["metadata"]["name"] in namespaces
                                    and not n["metadata"].get("deletionTimestamp"))

    session.decision_listeners.append(count_alive)
    await session.preflight()
    pipeline: asyncio.Task | None = None
    triggering: asyncio.Task | None = None
    served = contextlib.AsyncExitStack()
    try:
        if gate:
            # Served before the session watches, as a guard's gate is in place before anything happens: until
            # the session's first lists are in it allows, as a responder that is not running would.
            server = await served.enter_async_context(delete_gate_served(
                lab, admin, session.gate_decision, users=tuple(sorted(session.gate_settings.users)),
                probe_namespace=min(namespaces)))
            run.gate_decisions = server.decisions  # counted as they come, read by `measure`
        if case == "late-start":
            crd = await admin.get(CRD_PATH)
            tenants = (await admin.get(TENANT_API))["items"]
            run.sent = time.time()
            await admin.delete(CRD_PATH)
            # A pipeline re-applies the CRD and the Tenants as soon as the old CRD is gone (0.12: within a second;
            # 0.14: once responder has released Capsule's Tenant finalizers): new UIDs, stale references.
            pipeline = asyncio.create_task(rebuild(admin, crd, tenants))
            # responder starts once the pipeline is done (stale references), or, where it cannot finish before
            # responder releases the Tenants (0.14), LATE_START_S after the DELETE (dangling references).
            await asyncio.wait([pipeline], timeout=LATE_START_S)
            old = await admin.get_or_none(CRD_PATH)
            if not pipeline.done() and not (old and old["metadata"].get("deletionTimestamp")):
                await asyncio.wait([pipeline], timeout=90)  # the old CRD is gone: the pipeline is on its way
            if pipeline.done():
                pipeline.result()
            await session.start()
            session.check_late_start()
        else:
            await session.start()
            session.check_late_start()
            if case == "rebuilt":
                crd = await admin.get(CRD_PATH)
                tenants = (await admin.get(TENANT_API))["items"]
                pipeline = asyncio.create_task(rebuild(admin, crd, tenants))
            # Its own task, as the operator's or the pipeline's requests are to a watching responder: the
            # session contains from the first signal, not once the trigger's own requests are answered (the
            # owner's DELETE, through Capsule's webhook, took 100-150 ms on the lab).
            triggering = asyncio.create_task(INCIDENT_TRIGGERS[case](admin, seeded))
        try:
            await session.wait_for_incident(30)
        except TimeoutError:
            if triggering is not None:
                await triggering  # its error, if it failed
            run.missed = {"case": case, "expected": "incident", "decided": "routine",
                          "why": session.detection_summary()["notices"][:6], "namespaces": len(namespaces)}
            return run
        count_alive()  # opened during the first lists (a late start): alive once they are all in
        await session.contain()
        if triggering is not None:
            run.sent, run.deleted_on_purpose = await triggering
        if recover or pipeline is not None:
            # Beside the pipeline, which retries its Tenants until Capsule's webhooks admit them again.
            results = await session.recover()
            run.recovered = {step: outcome.status if outcome.status != "failed" else f"failed: {outcome.summary[:300]}"
                             for step, outcome in results.items()}
        if pipeline is not None:
            await asyncio.wait_for(pipeline, 180)
        if run.recovered is not None:
            run.adoption = await adoption(admin, run)
    finally:
        for task in (pipeline, triggering):
            if task is not None and not task.done():
                task.cancel()
        await served.aclose()
        await session.close()
    return run


async def rebuild(admin: KubeClient, crd: dict[str, Any], tenants: list[dict[str, Any]]) -> None:
    """What a pipeline that re-applies Capsule's CRD and Tenants does: once the old CRD is gone, create it
    again, then every Tenant not there (new UIDs; the namespaces still point at the old ones), retrying
    while the API server or Capsule's webhooks refuse (the CRD not served yet, the breaker tripped)."""
    await until("the old Tenant CRD gone", lambda: replaced_or_absent(admin, CRD_PATH, crd["metadata"]["uid"]),
                timeout=120)
    try:
        await admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd_for_create(crd))
    except ApiError as exc:
        if exc.status != 409:  # 409: responder's recovery recreated it first
            raise
    refusals: list[str] = []

    async def created() -> bool:
        try:
            for tenant in tenants:
                if await admin.get_or_none(f"{TENANT_API}/{tenant['metadata']['name']}") is None:
                    await admin.create(TENANT_API, tenant_for_create(tenant))
        except ApiError as exc:
            refusals[:] = [f"{exc.status} {exc.api_message[:200]}"]
            return False
        return True

    try:
        await until("the Tenants re-applied", created, timeout=170)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message}; last refusal: {refusals[0] if refusals else 'none'}", fix=exc.fix) from None


async def replaced_or_absent(admin: KubeClient, path: str, old_uid: str) -> bool:
    """The object at `path` is gone, or is another one (responder's recovery may recreate the CRD within the
    pipeline's poll interval of the old one's removal: the pipeline then finds it there)."""
    obj = await admin.get_or_none(path)
    return obj is None or obj["metadata"]["uid"] != old_uid


async def measure(lab: Lab, admin: KubeClient, run: IncidentRun) -> dict[str, Any]:
    """The case's figures, read once its settle period has passed."""
    if run.missed is not None:
        return run.missed
    session = run.session
    assert session is not None and session.trigger is not None
    trigger = session.trigger
    listing = (await admin.list_all("/api/v1/namespaces"))["items"]
    live = {n["metadata"]["name"]: n for n in listing if not n["metadata"].get("deletionTimestamp")}
    # The watch shows a delete a few milliseconds after the API server admitted it: one admitted before
    # detection was lost before responder could know, whatever the watch showed then.
    lost_before = deleted_before(lab.audit_log, since=run.sent - 5, until=trigger.event_received) & run.namespaces
    counted = {ns: uid for ns, uid in run.at_detection.items()
               if ns not in lost_before and ns not in run.deleted_on_purpose}
    survivors = {ns for ns, uid in counted.items() if ns in live and live[ns]["metadata"]["uid"] == uid}
    records = session.journal.records() if session.journal else []
    first = next((r for r in records if r.get("kind") == "intent"), None)
    opened = next((r for r in records if r.get("kind") == "trigger"), {})
    result = {"case": run.case, "expected": "incident", "decided": "incident", "kind": trigger.kind,
              "why": trigger.reason, "namespaces": len(run.namespaces),
              "detection_latency_ms": round((trigger.event_received - run.sent) * 1000, 1)
              if run.case != "late-start" else None,
              "journaled_after_detection_ms": round(opened["journaled_after_s"] * 1000, 1) if opened else None,
              "first_write_after_detection_ms": round((record_epoch(first["ts"]) - trigger.event_received) * 1000, 1)
              if first else None,
              "deleted_before_detection": len(lost_before), "alive_at_detection": len(counted),
              "alive_after_settle": len(survivors),
              "saved_share": round(len(survivors) / len(counted), 4) if counted else None,
              "lost": sorted(set(counted) - survivors)[:10], "contained": session.contained(),
              "delete_gate": dict(sorted(run.gate_decisions.items())) if run.gate_decisions is not None else None}
    if run.recovered is not None:
        result.update({"recovery": run.recovered, **run.adoption})
    return result


async def adoption(admin: KubeClient, run: IncidentRun) -> dict[str, Any]:
    """Right after recovery: how many of the case's live namespaces are owned by the live Tenant of their name."""
    live = {n["metadata"]["name"]: n for n in (await admin.list_all("/api/v1/namespaces"))["items"]
            if not n["metadata"].get("deletionTimestamp")}
    tenants = {t["metadata"]["name"]: t for t in (await admin.list_all(TENANT_API))["items"]}
    owned = {ns for tenant, names in run.tenants.items() for ns in names
             if ns in live and tenant in tenants and adopted_by(live[ns], tenants[tenant])}
    alive_of_case = run.namespaces & set(live)
    return {"alive_of_case": len(alive_of_case), "owned_by_live_tenant": len(owned & alive_of_case),
            "not_owned": sorted(alive_of_case - owned)[:10]}


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
    """Three Tenants deleted BURST_GAP_S apart, as a script deleting them one by one does: the rule opens at the
    third, while the garbage collector (0.12) or Capsule (0.14) goes for the first one's namespaces within
    about 150 ms of its deletion (the delete gate holds them until the third). The trigger's time is the third
    DELETE's, the one the rule opens on (detection latency is measured from it)."""
    sent = time.time()
    for index, tenant in enumerate(list(seeded.tenants)[:3]):
        if index:
            await asyncio.sleep(BURST_GAP_S)
        sent = time.time()
        await admin.delete(f"{TENANT_API}/{tenant}")
    return sent, set()


async def owner_delete_during_crd_deletion(admin: KubeClient, seeded: SeedResult) -> tuple[float, set[str]]:
    tenant = next(iter(seeded.tenants))
    owner = owner_client(admin, seeded, tenant)
    deleted = seeded.tenants[tenant][0]
    try:
        sent = time.time()
        answers = await asyncio.gather(owner.delete(f"/api/v1/namespaces/{deleted}"), admin.delete(CRD_PATH),
                                       return_exceptions=True)
    finally:
        await owner.aclose()
    for answer in answers:
        if isinstance(answer, BaseException) and (answer is answers[1] or not isinstance(answer, ApiError)):
            raise answer
    # The breaker may trip before the owner's DELETE reaches Capsule's webhook, which then refuses it.
    return sent, set() if isinstance(answers[0], ApiError) else {deleted}


INCIDENT_TRIGGERS: dict[str, Callable[[KubeClient, SeedResult], Awaitable[tuple[float, set[str]]]]] = {
    "crd-deleted": delete_crd, "rebuilt": delete_crd, "tenants-burst": tenants_burst,
    "owner-delete-during-crd-deletion": owner_delete_during_crd_deletion}
