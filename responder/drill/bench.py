"""`responder bench contain`: containment figures on the lab, printed as JSON (and `responder bench hold`:
how soon the namespace hold is enforced; `responder bench detect`: responder/drill/detect_bench.py; `responder
bench recover`: responder/drill/recover_bench.py).

For each run: a fresh lab, N tenant namespaces (created by their owners through Capsule, no content:
the detach cost does not depend on it), the namespace hold armed (`responder protect --only hold`, as
doctor asks; `--hold not-armed` leaves it out), responder watching as its own identity, the Tenant CRD
deleted. Measured: detection latency (CRD DELETE sent -> CRD event received), detection-to-first-
write latency (event received -> first write journaled and sent), detach throughput, and how many
namespaces survived; and, over the detach's own window (first write to last answer), how busy the
machine was and the CPU each process spent per detached namespace (responder, kube-apiserver, etcd,
kube-controller-manager): on a machine that runs the whole control plane, the control plane's own
share bounds the detach rate whatever the client does. Each HTTP setting named with --variants
runs as its own incident, in the same invocation (--repeat: interleaved trials), so the figures compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from responder.cluster.client import JSON_PATCH, KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.drill import detect_bench, recover_bench
from responder.errors import EXIT_OK, ApiError, ConfigError
from responder.lab.build import CAPSULE_VERSIONS
from responder.lab import processes
from responder.lab.apply import bind_cluster_admin
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.control_plane import Lab
from responder.lab.incident import delete_tenant_crd
from responder.lab.seed import seed
from responder.names import ARMED_HOLD_POLICY, HOLD_PARAM_KIND, HOLD_POLICY
from responder.ops.protect import arm_hold
from responder.response.session import Session, SessionOptions, resolve_runbook

VARIANTS = {
    # name: (bulk-write HTTP/1.1 pool connections, 0 = through httpx), httpx HTTP/2?, httpx connections,
    # PATCHes in flight)
    "pool-c8": (8, True, 1, 64),
    "pool-c16": (16, True, 1, 64),
    "pool-c32": (32, True, 1, 64),
    "httpx-h2-c1-64": (0, True, 1, 64),
    "httpx-h2-c4-64": (0, True, 4, 64),
    "httpx-h1-c16-16": (0, False, 16, 16),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks on the lab (JSON)")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    contain = bsub.add_parser("contain", help="detection latency and detach throughput")
    contain.add_argument("--namespaces", type=int, default=1000)
    contain.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.12")
    contain.add_argument("--variants", default="pool-c16,httpx-h2-c1-64",
                         help=f"comma-separated HTTP settings to compare (known: {', '.join(VARIANTS)})")
    contain.add_argument("--repeat", type=int, default=1, help="trials per variant (median, min, max reported)")
    contain.add_argument("--hold", choices=("armed", "not-armed"), default="armed",
                         help="arm the namespace hold first (`responder protect --only hold`, as doctor asks) or not")
    contain.add_argument("--state-dir", type=Path, default=None)
    contain.set_defaults(handler=cmd_bench_contain)
    hold = bsub.add_parser("hold", help="how soon the API server enforces the breaker's namespace hold")
    hold.add_argument("--trials", type=int, default=10)
    hold.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.14")
    hold.add_argument("--state-dir", type=Path, default=None)
    hold.set_defaults(handler=cmd_bench_hold)
    detect_bench.add_parser(bsub)
    recover_bench.add_parser(bsub)


def cmd_bench_hold(args: argparse.Namespace) -> int:
    """Three ways to put the hold in place, each measured from its write returning to the first refused
    dry-run DELETE of a tenant namespace (by the lab's admin, whom the hold does not exempt): creating the
    policy and binding (what the breaker does where the hold is not armed), creating only the binding of
    a policy installed beforehand, and marking the armed hold's parameter (`responder protect`; what the
    breaker does where it is armed). And the self-arming hold, which needs no responder at all: measured from
    the Tenant CRD's DELETE being sent (self_arming_trials)."""
    if args.trials < 1:
        raise ConfigError(f"bad --trials {args.trials}", fix="--trials 1 or more")
    lab = Lab(args.state_dir or (Lab().dir.parent / "bench-lab"))
    lab.down(wipe=True)
    lab.up(capsule=args.capsule, out=sys.stderr)
    try:
        result = asyncio.run(hold_trials(lab, args.trials))
    finally:
        lab.down(wipe=True)
    summary = {way: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
               for way, v in result.items()}
    print(json.dumps({"benchmark": "hold", "capsule": CAPSULE_VERSIONS[args.capsule], "trials": args.trials,
                      "summary": summary, "runs": result}, indent=2))
    return EXIT_OK


async def hold_trials(lab: Lab, trials: int) -> dict[str, list[float]]:
    from responder.actions.breaker import (HOLD_IDENTITY_ANNOTATION, HOLD_INCIDENT_ANNOTATION, HOLD_PARAM_PATH,
                                           HOLD_PATHS, namespace_hold_objects, release_request)

    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=1, namespaces_per_tenant=1, with_content=False)
        probe = f"/api/v1/namespaces/{seeded.namespaces[0]}"

        async def refused_after(started: float, held: bool, probe: str = probe, policy: str = HOLD_POLICY) -> float:
            """ms from `started` until a dry-run DELETE is refused by `policy` (held) or not (not held)."""
            while time.perf_counter() - started < 30:
                try:
                    await admin.delete(probe, dry_run=True)
                    if not held:
                        return round((time.perf_counter() - started) * 1000, 1)
                except ApiError as exc:
                    if held == (f"'{policy}'" in exc.api_message):
                        return round((time.perf_counter() - started) * 1000, 1)
            raise RuntimeError(f"the hold was still {'not ' if held else ''}refusing after 30 s")

        out: dict[str, list[float]] = {"create_policy_and_binding": [], "bind_installed_policy": [],
                                       "mark_armed_hold": []}  # and self_arming_crd_delete, last
        for trial in range(trials):
            objects = namespace_hold_objects("responder", f"bench-{trial}")
            for obj in objects:
                await admin.create(HOLD_PATHS[obj["kind"]], obj)
            out["create_policy_and_binding"].append(await refused_after(time.perf_counter(), True))
            for obj in objects:
                await admin.delete(f"{HOLD_PATHS[obj['kind']]}/{obj['metadata']['name']}")
            await refused_after(time.perf_counter(), False)
        # The policy installed beforehand (inert without a binding); the binding created at the incident.
        policy, binding = namespace_hold_objects("responder", "bench-bound")
        await admin.create(HOLD_PATHS["ValidatingAdmissionPolicy"], policy)
        await asyncio.sleep(3)  # compiled and loaded
        for _ in range(trials):
            await admin.create(HOLD_PATHS["ValidatingAdmissionPolicyBinding"], binding)
            out["bind_installed_policy"].append(await refused_after(time.perf_counter(), True))
            await admin.delete(f"{HOLD_PATHS['ValidatingAdmissionPolicyBinding']}/{binding['metadata']['name']}")
            await refused_after(time.perf_counter(), False)
        await admin.delete(f"{HOLD_PATHS['ValidatingAdmissionPolicy']}/{policy['metadata']['name']}")
        # The armed hold (`responder protect --only hold`), marked and unmarked as the breaker and recovery do.
        await arm_hold(admin)
        await asyncio.sleep(3)  # compiled and loaded, dormant
        for trial in range(trials):
            mark = {"metadata": {"annotations": {HOLD_INCIDENT_ANNOTATION: f"bench-{trial}",
                                                 HOLD_IDENTITY_ANNOTATION: "responder"}}}
            await admin.patch(HOLD_PARAM_PATH, mark)
            out["mark_armed_hold"].append(await refused_after(time.perf_counter(), True, policy=ARMED_HOLD_POLICY))
            param = await admin.get(HOLD_PARAM_PATH)
            method, path, body, content_type = release_request(HOLD_PARAM_KIND, param)
            await admin.request(method, path, body=body, content_type=content_type)
            await refused_after(time.perf_counter(), False, policy=ARMED_HOLD_POLICY)
        out["self_arming_crd_delete"] = await self_arming_trials(admin, trials, refused_after)
    return out


async def self_arming_trials(admin: KubeClient, trials: int, refused_after: Callable[..., Awaitable[float]]) -> list[float]:
    """The self-arming hold (`responder protect --only self-hold`): ms from the Tenant CRD's DELETE being sent to
    the first refused dry-run DELETE of a tenant namespace; then the CRD is recreated and the hold re-keyed to it,
    as recovery does. Capsule is stopped and its webhooks removed first (the lab is wiped afterwards): its
    webhooks refuse a namespace with its tenant label and no Tenant owner, the probe here (an owned one would
    be deleted by the garbage collector once the hold is re-keyed, its Tenant gone with the CRD)."""
    from responder.actions.self_hold import SELF_HOLD_PATHS, TENANT_CRD_PATH, rekey_request
    from responder.cluster.discovery import wait_crd_established
    from responder.incident import triage
    from responder.incident.observe import TENANTS_PATH, WEBHOOK_STREAMS, capsule_webhooks_in
    from responder.names import SELF_HOLD_POLICY, TENANT_CRD
    from responder.ops.protect import ALLOW_DELETE_ANNOTATION, install_self_hold
    from responder.recovery.decisions import crd_for_create

    await admin.patch(f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}/scale",
                      {"spec": {"replicas": 0}})
    listings = {name: (await admin.get(path)).get("items") or [] for name, _, path in WEBHOOK_STREAMS}
    for kind, obj in capsule_webhooks_in(lambda name: listings[name]):
        prefix = "validating" if kind.startswith("Validating") else "mutating"
        await admin.delete(f"/apis/admissionregistration.k8s.io/v1/{prefix}webhookconfigurations/"
                           f"{obj['metadata']['name']}")
    # No Tenants left to finalize (Capsule >= 0.13's finalizer would keep the CRD's deletion waiting).
    for tenant in (await admin.get(TENANTS_PATH)).get("items") or []:
        path = f"{TENANTS_PATH}/{tenant['metadata']['name']}"
        await admin.patch(path, {"metadata": {"finalizers": None}})
        await admin.delete(path)
    probe = "/api/v1/namespaces/bench-self-arming-probe"
    await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": probe.rsplit("/", 1)[-1], "labels": {triage.TENANT_LABEL: "bench"}}})
    body = crd_for_create(await admin.get(TENANT_CRD_PATH))
    await install_self_hold(admin, ["responder"])
    await asyncio.sleep(3)  # compiled and loaded, dormant
    await refused_after(time.perf_counter(), False, probe, SELF_HOLD_POLICY)
    out = []
    for _ in range(trials):
        await admin.patch(TENANT_CRD_PATH, {"metadata": {"annotations": {ALLOW_DELETE_ANNOTATION: "true"}}})
        started = time.perf_counter()
        await admin.delete(TENANT_CRD_PATH)
        out.append(await refused_after(started, True, probe, SELF_HOLD_POLICY))
        deadline = time.monotonic() + 60
        while await admin.get_or_none(TENANT_CRD_PATH) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError("the Tenant CRD was still being deleted after 60 s")
            await asyncio.sleep(0.1)
        await admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
        await wait_crd_established(admin, TENANT_CRD, 30)
        policy_path = SELF_HOLD_PATHS["ValidatingAdmissionPolicy"]
        uid = (await admin.get(TENANT_CRD_PATH))["metadata"]["uid"]
        await admin.patch(policy_path, rekey_request(await admin.get(policy_path), uid), patch_type=JSON_PATCH)
        await refused_after(time.perf_counter(), False, probe, SELF_HOLD_POLICY)
    return out


def cmd_bench_contain(args: argparse.Namespace) -> int:
    lab = Lab(args.state_dir or (Lab().dir.parent / "bench-lab"))
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or args.repeat < 1:
        raise ConfigError(f"bad --variants {unknown} or --repeat {args.repeat}",
                          fix=f"name variants from {', '.join(VARIANTS)}; --repeat 1 or more")
    results = []
    for trial in range(1, args.repeat + 1):
        for name in names:  # interleaved, so a slow spell of the machine does not fall on one variant
            pool, http2, connections, in_flight = VARIANTS[name]
            print(f"bench: {name} trial {trial}: fresh lab, {args.namespaces} namespaces", file=sys.stderr, flush=True)
            lab.down(wipe=True)
            lab.up(capsule=args.capsule, out=sys.stderr)
            try:
                result = asyncio.run(contain_once(lab, args.namespaces, pool=pool, http2=http2,
                                                  connections=connections, in_flight=in_flight,
                                                  hold_armed=args.hold == "armed"))
            finally:
                lab.down(wipe=True)
            results.append({"variant": name, "trial": trial, "bulk_pool_connections": pool, "httpx_http2": http2,
                            "httpx_connections": connections, "in_flight": in_flight, **result})
    print(json.dumps({"benchmark": "contain", "capsule": CAPSULE_VERSIONS[args.capsule],
                      "namespaces": args.namespaces, "hold": args.hold, "summary": summarize(results, names), "runs": results}, indent=2))
    return EXIT_OK


def summarize(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per variant: median, min and max detach throughput and first-write latency over the trials; the
    ratio of each median throughput to the first variant sending bulk writes through httpx (the
    baseline), measured in the same run."""
    out = []
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        rates = [r["detach_per_second"] or 0.0 for r in mine]
        first = [r["first_write_after_detection_ms"] for r in mine]
        out.append({"variant": name, "trials": len(mine),
                    "detach_per_second": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
                    "first_write_after_detection_ms": {"median": statistics.median(first), "max": max(first)},
                    "saved_min": min(r["saved"] for r in mine), "seeded": mine[0]["seeded"]})
        for key in ("machine_busy_share", "control_plane_cpu_ms_per_namespace",
                    "ceiling_per_second_with_a_free_client"):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                out[-1][key] = {"median": statistics.median(values)}
        responder = [r["cpu_ms_per_namespace"]["responder"] for r in mine if "cpu_ms_per_namespace" in r]
        if responder:
            out[-1]["responder_cpu_ms_per_namespace"] = {"median": statistics.median(responder)}
    baseline = next((s for s in out if VARIANTS[s["variant"]][0] == 0), None)
    for entry in out:
        if baseline and baseline["detach_per_second"]["median"]:
            entry["vs_baseline"] = round(entry["detach_per_second"]["median"]
                                         / baseline["detach_per_second"]["median"], 2)
    return out


async def contain_once(lab: Lab, namespaces: int, *, pool: int, http2: bool, connections: int,
                       in_flight: int, hold_armed: bool = True) -> dict[str, Any]:
    per_tenant = 20
    tenants = max(1, namespaces // per_tenant)
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant, with_content=False)
        kubeconfig = lab.mint_user("responder")
        await bind_cluster_admin(admin, "responder")
        if hold_armed:
            await arm_hold(admin)
            await asyncio.sleep(3)  # compiled and loaded, dormant (the API server reads policies each ~1 s)
        runbook = lab.dir / "bench-runbook.yaml"
        runbook.write_text(resolve_runbook(None).read_text().replace("concurrency: 64", f"concurrency: {in_flight}"))
        options = SessionOptions(runbook=runbook, journal_dir=lab.dir / "incidents", yes=True, concurrency=connections,
                                 http2=http2, bulk_connections=pool)
        session = Session(load_cluster_access(str(kubeconfig)), options)
        await session.preflight()
        await session.start()
        try:
            sent = await delete_tenant_crd(admin)
            await session.wait_for_incident(30)
            with CpuSampler(lab) as sampler:
                await session.contain()
                done = time.time()
            await asyncio.sleep(max(0.0, sent + 20 - time.time()))
            listing = await admin.list_all("/api/v1/namespaces")
        finally:
            await session.close()
    live = {n["metadata"]["name"] for n in listing["items"] if not n["metadata"].get("deletionTimestamp")}
    records = session.journal.records()
    first_intent = next(r for r in records if r.get("kind") == "intent")
    detach = session.results["detach"].data
    trig = session.trigger
    window = detach_window(records)
    cpu = detach_window_cpu(sampler.samples, *window, detach.get("detached") or 0, os.cpu_count() or 1) \
        if window else {}
    return {
        "detection_latency_ms": round((trig.event_received - sent) * 1000, 1),
        "first_write_after_detection_ms": round((_ts(first_intent["ts"]) - trig.event_received) * 1000, 1),
        "breaker_seconds": session.results["breaker"].data.get("seconds"),
        "detached": detach.get("detached"), "detach_seconds": detach.get("seconds"),
        "detach_per_second": detach.get("per_second"),
        "time_to_contain_s": round(done - sent, 3),
        **cpu,
        "saved": len(set(seeded.namespaces) & live), "seeded": len(seeded.namespaces),
        "responder_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager")


class CpuSampler:
    """Samples, every `interval` seconds in a thread, the machine's busy and idle CPU time (/proc/stat)
    and the CPU time used so far by each lab process and by this process (responder runs in it), so
    the figures can be cut to the detach's own window afterwards. A read of a few /proc files per
    tick: well under 1 % of a core."""

    def __init__(self, lab: Lab, interval: float = 0.02) -> None:
        import threading

        self.records = lab._records()
        self.interval = interval
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(self.interval):
                self.samples.append(self.sample())
                return

    def sample(self) -> "CpuSample":
        with open("/proc/stat") as stat:
            jiffies = [int(v) for v in stat.readline().split()[1:]]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        processes_cpu: dict[str, float | None] = {name: processes.cpu_seconds(rec)
                                                  for name, rec in self.records.items()}
        processes_cpu["responder"] = usage.ru_utime + usage.ru_stime
        # idle + iowait count as idle; the rest (user, nice, system, irq, softirq, steal) as busy
        return CpuSample(time.time(), sum(jiffies), jiffies[3] + jiffies[4], processes_cpu)


@dataclass(frozen=True)
class CpuSample:
    at: float  # epoch seconds, comparable with the journal's timestamps
    jiffies: int
    idle_jiffies: int
    process_cpu_seconds: dict[str, float | None]


def detach_window_cpu(samples: list[CpuSample], start: float, end: float, detached: int,
                      cores: int) -> dict[str, Any]:
    """CPU figures for the detach's own window (its first write sent to its last answer): how busy the
    machine was, the CPU milliseconds each process spent per detached namespace, and the detach rate
    the cores would allow if responder cost nothing (the control plane's own CPU per namespace is the
    ceiling on a machine that runs it all). A busy share near 1 means the rate is the machine's."""
    inside = [s for s in samples if start <= s.at <= end]
    if not detached or len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    share = 1 - (last.idle_jiffies - first.idle_jiffies) / max(1, last.jiffies - first.jiffies)
    per = {name: round((after - before) * 1000 / detached, 2)
           for name, before in first.process_cpu_seconds.items()
           if before is not None and (after := last.process_cpu_seconds.get(name)) is not None}
    # the samples bracket only part of the window: scale to the whole, as a rate over it
    scale = (end - start) / max(1e-9, last.at - first.at)
    per = {name: round(ms * scale, 2) for name, ms in per.items()}
    control_plane = round(sum(per.get(name, 0.0) for name in CONTROL_PLANE), 2)
    return {"detach_window_s": round(end - start, 3), "machine_busy_share": round(share, 3),
            "cpu_ms_per_namespace": per, "control_plane_cpu_ms_per_namespace": control_plane, "cores": cores,
            "ceiling_per_second_with_a_free_client": round(cores * 1000 / control_plane) if control_plane else None}


def detach_window(records: list[dict[str, Any]]) -> tuple[float, float] | None:
    """From the detach's first intent to its last outcome, in epoch seconds (from the journal)."""
    intents = {r["seq"]: _ts(r["ts"]) for r in records if r.get("kind") == "intent" and r.get("action") == "detach"}
    answers = [_ts(r["ts"]) for r in records if r.get("kind") == "outcome" and r.get("intent") in intents]
    if not intents or not answers:
        return None
    return min(intents.values()), max(answers)


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
