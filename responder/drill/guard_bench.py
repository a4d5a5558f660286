"""`responder bench soak` and `responder bench idle`: the guard as the chart runs it (`responder lab up --guard`:
`helm install`, 2 replicas run by the lab's kubelet with their ServiceAccount's in-cluster credentials).

Soak: the routine corpus of `bench detect` (an owner deletes namespaces, an admin offboards a Tenant, two Tenants
deleted a window apart, Capsule restarted by someone else, namespaces created and labelled in bulk) repeated on a
fresh seed per round, the round's leftover Tenants then offboarded one window apart (offboarding, never a burst),
for as long as asked. Must hold: 0 incidents (`responder_incidents_total` of every replica), 0 writes by the
guard's ServiceAccount (audit log), no restarts (the kubelet's count), each replica's memory (RSS) at the end
within 10 % of its RSS after the first round (warm).

Idle: N namespaces in N/20 Tenants, the guard installed over them and left alone: each replica's RSS and CPU share
of one core over `--seconds`, then the watch lag of `--changes` changes: a namespace's label PATCH answered (the
change committed) -> the replica's namespaces stream saw it (the time of its last event, read from
`responder_watch_last_event_age_seconds`), p50/p99/max; and the PATCH's own round trip, which Capsule's admission
webhooks dominate, with the lag counted from the PATCH sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from responder.cluster.client import KubeClient
from responder.drill.detect_bench import ROUTINE_CASES, ROUTINE_OPERATIONS, offboard
from responder.errors import EXIT_OK, ConfigError
from responder.lab import processes
from responder.lab.build import CAPSULE_VERSIONS
from responder.lab.control_plane import Lab
from responder.lab.incident import persisted_writes_by
from responder.lab.pods import read_pods, replica_record
from responder.lab.seed import TENANT_API, seed
from responder.names import RESPONDER_NAMESPACE, TENANT_RECORD
from responder.runbook.schema import DetectionSettings

GUARD_USER = f"system:serviceaccount:{RESPONDER_NAMESPACE}:responder"  # the chart's ServiceAccount
MEMORY_GROWTH_LIMIT = 0.10
SAMPLE_EVERY = 5.0


def add_parser(bsub: argparse._SubParsersAction) -> None:
    soak_parser = bsub.add_parser("soak", help="the routine corpus repeated against the chart's 2 guard replicas")
    soak_parser.add_argument("--minutes", type=float, default=30.0, help="how long to repeat it (default 30)")
    soak_parser.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.14")
    soak_parser.add_argument("--state-dir", type=Path, default=None)
    soak_parser.set_defaults(handler=cmd_bench_soak)
    idle_parser = bsub.add_parser("idle", help="the guard idle over N namespaces: RSS, CPU, watch lag")
    idle_parser.add_argument("--namespaces", type=int, default=10_000, help="namespaces seeded (default 10,000)")
    idle_parser.add_argument("--per-tenant", type=int, default=20, help="namespaces per Tenant (default 20)")
    idle_parser.add_argument("--seconds", type=float, default=120.0, help="the idle window for RSS and CPU")
    idle_parser.add_argument("--changes", type=int, default=200, help="namespace changes timed for the watch lag")
    idle_parser.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.14")
    idle_parser.add_argument("--state-dir", type=Path, default=None)
    idle_parser.set_defaults(handler=cmd_bench_idle)


# -- reading the replicas ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    return (await client.get(url, timeout=10)).text


def decisions_logged(log: Path, offset: int) -> dict[str, int]:
    """What a replica's detection logged since `offset`: ROUTINE, NOTICE and INCIDENT decisions (it saw the work)."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return {kind: len(re.findall(rf"responder\.detection: {kind} ", text)) for kind in ("ROUTINE", "NOTICE", "INCIDENT")}


# -- soak ----------------------------------------------------------------------------------------------------


async def soak(lab: Lab, *, seconds: float, out=sys.stderr) -> dict[str, Any]:
    """The routine corpus against the installed guard for `seconds` (whole rounds); the figures and the verdict."""
    replicas = lab.guard_replicas()
    if len(replicas) < 2 or not all(r["running"] for r in replicas):
        raise ConfigError(f"the soak needs the guard's 2 replicas running (found {len(replicas)})",
                          fix="responder lab up --guard")
    pids = {r["pod"]: r["pid"] for r in replicas}
    log_offsets = {r["pod"]: Path(r["log"]).stat().st_size for r in replicas}
    restarts_before = {r["pod"]: r["restarts"] for r in replicas}
    window = DetectionSettings().window_seconds  # the chart's runbook (the shipped one) keeps the default
    samples: dict[str, list[tuple[float, float | None]]] = {pod: [] for pod in pids}
    started = time.time()
    baseline: dict[str, float | None] = {}
    rounds: list[dict[str, Any]] = []

    async def sample() -> None:
        while True:
            for pod, pid in pids.items():
                samples[pod].append((round(time.time() - started, 1), rss_mb(pid)))
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    try:
        async with lab.admin_client() as admin:
            while not rounds or time.time() < started + seconds:
                round_started = time.time()
                seeded = await seed(admin, tenants=6, namespaces_per_tenant=3, prefix=f"soak{len(rounds) + 1:03d}",
                                    with_content=False)
                for case in ROUTINE_CASES:
                    await ROUTINE_OPERATIONS[case](admin, seeded)
                # The round's leftover Tenants offboarded one window apart: offboarding, never a burst.
                for tenant in sorted(seeded.tenants):
                    if await admin.get_or_none(f"{TENANT_API}/{tenant}") is not None:
                        await asyncio.sleep(window + 1)
                        await offboard(admin, seeded, tenant)
                rounds.append({"round": len(rounds) + 1, "seconds": round(time.time() - round_started, 1)})
                if len(rounds) == 1:
                    baseline = {pod: rss_mb(pid) for pod, pid in pids.items()}
                print(f"bench soak: round {len(rounds)} in {rounds[-1]['seconds']}s "
                      f"(RSS {', '.join(f'{v} MB' for v in (rss_mb(p) for p in pids.values()))})", file=out, flush=True)
    finally:
        sampler.cancel()
    final = {pod: rss_mb(pid) for pod, pid in pids.items()}
    async with httpx.AsyncClient() as http:
        texts = {r["pod"]: await scrape(http, r["metrics"]) for r in replicas}
    incidents = {pod: metric(text, "responder_incidents_total") for pod, text in texts.items()}
    leaders = {pod: metric(text, "responder_leader") for pod, text in texts.items()}
    after = {r["pod"]: r for r in lab.guard_replicas()}
    # A replica restarted by the kubelet counts; one whose pod is gone counts as a restart too.
    restarts = {pod: (after[pod]["restarts"] - restarts_before[pod]) if pod in after else 1 for pod in pids}
    # The leader's tenant record (its own ConfigMaps, kept between incidents by design) is bookkeeping, not a
    # write to the tenants' cluster: counted apart.
    all_writes = persisted_writes_by(lab.audit_log, GUARD_USER, since=started)
    record_path = f"/api/v1/namespaces/{RESPONDER_NAMESPACE}/configmaps/{TENANT_RECORD}"
    record_writes = [w for w in all_writes if w["requestURI"].startswith(record_path)]
    writes = [w for w in all_writes if w not in record_writes]
    decisions = {r["pod"]: decisions_logged(Path(r["log"]), log_offsets[r["pod"]]) for r in replicas}
    growth = {pod: (None if not baseline.get(pod) or final[pod] is None
                    else round((final[pod] - baseline[pod]) / baseline[pod], 4)) for pod in pids}
    ok = (all(v == 0 for v in incidents.values()) and not writes and all(v == 0 for v in restarts.values())
          and all(g is not None and g <= MEMORY_GROWTH_LIMIT for g in growth.values()))
    return {"benchmark": "soak", "capsule": lab.state().get("capsule_version"), "seconds": round(time.time() - started, 1),
            "rounds": len(rounds), "round_seconds": [r["seconds"] for r in rounds],
            "operations_per_round": list(ROUTINE_CASES) + ["offboard-leftovers-one-window-apart"],
            "incidents": incidents, "decisions_logged": decisions, "leader": leaders, "writes_by_guard": len(writes),
            "tenant_record_writes": len(record_writes),
            "write_samples": [(w["verb"], w["requestURI"]) for w in writes[:5]], "restarts": restarts,
            "rss_mb": {pod: {"after_first_round": baseline.get(pod), "end": final[pod], "growth": growth[pod],
                             "max": max((v for _, v in samples[pod] if v is not None), default=None)} for pod in pids},
            "rss_samples_mb": samples, "memory_growth_limit": MEMORY_GROWTH_LIMIT, "ok": ok}


def fresh_guard_lab(state_dir: Path | None, capsule: str) -> Lab:
    lab = Lab(state_dir or (Lab().dir.parent / "bench-lab"))
    lab.down(wipe=True)
    lab.up(capsule=capsule, out=sys.stderr)
    return lab


def cmd_bench_soak(args: argparse.Namespace) -> int:
    if args.minutes <= 0:
        raise ConfigError(f"--minutes {args.minutes} is not a duration", fix="pass minutes above 0 (30: the issue's run)")
    lab = fresh_guard_lab(args.state_dir, args.capsule)
    try:
        lab.install_guard(out=sys.stderr)
        result = asyncio.run(soak(lab, seconds=args.minutes * 60))
    finally:
        lab.down(wipe=True)
    print(json.dumps(result, indent=2))
    return EXIT_OK


# -- idle ----------------------------------------------------------------------------------------------------


async def watch_lag(lab: Lab, admin: KubeClient, namespaces: list[str], changes: int) -> dict[str, Any]:
    """Per replica, ms from a namespace's label PATCH answered (the change made: committed, past Capsule's webhooks)
    to its namespaces stream's next event (negative: the event came before the answer); and the PATCH's own
    round trip (sent -> answered), which the admission webhooks dominate."""
    replicas = lab.guard_replicas()
    lags: dict[str, list[float]] = {r["pod"]: [] for r in replicas}
    from_sent: dict[str, list[float]] = {r["pod"]: [] for r in replicas}
    write_ms: list[float] = []
    stream_age = 'responder_watch_last_event_age_seconds{stream="namespaces"}'
    async with httpx.AsyncClient() as http:
        for i in range(changes):
            name = namespaces[i % len(namespaces)]
            sent = time.time()
            await admin.patch(f"/api/v1/namespaces/{name}", {"metadata": {"labels": {"bench-idle": f"{sent:.6f}"}}})
            answered = time.time()
            write_ms.append(round((answered - sent) * 1000, 1))
            pending = {r["pod"]: r["metrics"] for r in replicas}
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                for pod, url in list(pending.items()):
                    age = metric(await scrape(http, url), stream_age)
                    seen = time.time() - age if age is not None else None
                    if seen is not None and seen >= sent:
                        lags[pod].append(round((seen - answered) * 1000, 1))
                        from_sent[pod].append(round((seen - sent) * 1000, 1))
                        del pending[pod]
                await asyncio.sleep(0.005)
            for pod in pending:
                lags[pod].append(10_000.0)  # not seen within 10 s: counted as 10 s
                from_sent[pod].append(10_000.0)
            await asyncio.sleep(0.2)
    return {"lags": lags, "from_sent": from_sent, "write_ms": write_ms}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


async def idle(lab: Lab, *, namespaces: int, per_tenant: int, seconds: float, changes: int,
               out=sys.stderr) -> dict[str, Any]:
    tenants = max(1, namespaces // per_tenant)
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant, prefix="idle",
                            with_content=False, timeout=6 * 3600)
    print(f"bench idle: seeded {len(seeded.namespaces)} namespaces in {tenants} Tenants in {seeded.seconds:.0f}s",
          file=out, flush=True)
    lab.install_guard(out=out)
    await asyncio.sleep(30)  # past the replicas' first lists
    replicas = lab.guard_replicas()
    records = {pod: replica_record(entry) for pod, entry in read_pods(lab.dir).items()}
    cpu_before = {pod: processes.cpu_seconds(rec) for pod, rec in records.items()}
    wall = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - wall
    cpu = {pod: round(((processes.cpu_seconds(rec) or 0) - (cpu_before[pod] or 0)) / elapsed, 4)
           for pod, rec in records.items()}
    rss = {pod: rss_mb(rec.pid) for pod, rec in records.items()}
    async with lab.admin_client() as admin:
        timed = await watch_lag(lab, admin, seeded.namespaces, changes)
    lags = timed["lags"]
    async with httpx.AsyncClient() as http:
        leaders = {r["pod"]: metric(await scrape(http, r["metrics"]), "responder_leader") for r in replicas}
    per_replica = {pod: {"leader": leaders.get(pod) == 1.0, "rss_mb": rss[pod], "cpu_share_of_a_core": cpu[pod],
                         "watch_lag_ms": {"p50": percentile(lags[pod], 0.5), "p99": percentile(lags[pod], 0.99),
                                          "max": max(lags[pod]), "mean": round(statistics.mean(lags[pod]), 1)},
                         "patch_sent_to_seen_ms": {"p50": percentile(timed["from_sent"][pod], 0.5),
                                                   "p99": percentile(timed["from_sent"][pod], 0.99)}}
                   for pod in records}
    worst = {"rss_mb": max(v["rss_mb"] or 0 for v in per_replica.values()),
             "cpu_share_of_a_core": max(v["cpu_share_of_a_core"] for v in per_replica.values()),
             "watch_lag_p99_ms": max(v["watch_lag_ms"]["p99"] for v in per_replica.values())}
    targets = {"rss_mb": 200, "cpu_share_of_a_core": 0.02, "watch_lag_p99_ms": 100}
    return {"benchmark": "idle", "capsule": lab.state().get("capsule_version"), "namespaces": len(seeded.namespaces),
            "tenants": tenants, "seed_seconds": round(seeded.seconds, 1), "idle_seconds": round(elapsed, 1),
            "changes": changes, "patch_round_trip_ms": {"p50": percentile(timed["write_ms"], 0.5),
                                                        "p99": percentile(timed["write_ms"], 0.99)},
            "replicas": per_replica, "worst": worst, "targets": targets,
            "within_targets": {k: worst[k] <= targets[k] for k in targets}}


def cmd_bench_idle(args: argparse.Namespace) -> int:
    if args.namespaces < 1 or args.per_tenant < 1 or args.seconds <= 0 or args.changes < 1:
        raise ConfigError("bad --namespaces, --per-tenant, --seconds or --changes",
                          fix="positive numbers (the issue's scale: --namespaces 10000 --per-tenant 20)")
    lab = fresh_guard_lab(args.state_dir, args.capsule)
    try:
        result = asyncio.run(idle(lab, namespaces=args.namespaces, per_tenant=args.per_tenant, seconds=args.seconds,
                                  changes=args.changes))
    finally:
        lab.down(wipe=True)
    print(json.dumps(result, indent=2))
    return EXIT_OK
