"""`responder drill --bench --namespaces 100,1000`: the Tenant CRD deletion at several sizes, each
size run three ways in the same invocation, each way on a fresh lab (JSON on stdout):

- none: nobody responds (the cascade runs its course);
- naive: the manual runbook automated naively (responder/lab/naive_runbook.sh): `kubectl get crd -w`,
  then one `kubectl patch ns X --type=json -p '[{"op":"remove","path":"/metadata/ownerReferences"}]'`
  process per tenant namespace, one after the other;
- responder: `responder watch --headless --auto --yes --contain-only` as its own identity (a child
  process, so its peak RSS is its own: wait4).

Every trial watches the seeded namespaces (an admin watch, the same in every trial) and records when
each one was detached (no Tenant ownerReference left) or lost (Terminating or gone). At the end of the
window a namespace is *saved* if it is alive, not Terminating and holds no Tenant ownerReference (every
Tenant is dying, so any reference left would get it deleted). The share is taken over the namespaces
still alive at detection (for `none`, over all seeded).

Seeding: `capsule` (default) creates each namespace as its Tenant's owner through Capsule's webhooks,
exactly as bench.py does. `direct` (for large sizes) creates the Tenants through Capsule, one namespace
per Tenant through Capsule as a template, and the rest as the admin with that template's Tenant
ownerReference, labels and annotations copied (name swapped); the Tenant's status must then list them
(Capsule reconciles them, checked), so Capsule >= 0.13's finalizer sees them as it would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.incident import triage
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, ResourceWatch, events_into
from responder.errors import EXIT_OK, ConfigError
from responder.lab.apply import bind_cluster_admin
from responder.lab.control_plane import Lab
from responder.lab.incident import delete_tenant_crd, read_audit
from responder.lab.seed import SEED_LABEL, TENANT_API, seed, wait_tenants_reconciled

NAIVE_SCRIPT = Path(__file__).resolve().parents[1] / "lab" / "naive_runbook.sh"
VARIANTS = ("none", "naive", "responder")
PER_TENANT = 20


def add_bench_arguments(drill: argparse.ArgumentParser) -> None:
    g = drill.add_argument_group("benchmark (--bench): no responder vs the naive runbook vs responder, JSON")
    g.add_argument("--bench", action="store_true", help="run the benchmark instead of a drill")
    g.add_argument("--namespaces", default="100,1000", help="comma-separated sizes (namespaces per trial)")
    g.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    g.add_argument("--window", type=float, default=60.0,
                   help="seconds after the CRD DELETE at which a trial's namespaces are counted (at most)")
    g.add_argument("--seed-mode", choices=["capsule", "direct"], default="capsule")


def cmd_drill_bench(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in str(args.namespaces).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--namespaces {args.namespaces!r} is not a comma-separated list of numbers",
                          fix="e.g. --namespaces 100,1000") from None
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not sizes or min(sizes) < 1:
        raise ConfigError(f"bad --variants {unknown} or --namespaces {args.namespaces}",
                          fix=f"variants of {', '.join(VARIANTS)}; positive sizes")
    lab = Lab(args.state_dir or (Lab().dir.parent / "drill-bench-lab"))
    out = sys.stderr
    runs = []
    started = time.time()
    for size in sizes:
        for variant in variants:
            print(f"bench: {size} namespaces, {variant}: fresh lab (Capsule {args.capsule})", file=out, flush=True)
            lab.down(wipe=True)
            load_before = os.getloadavg()
            lab.up(capsule=args.capsule, out=out)
            try:
                result = asyncio.run(trial(lab, size, variant, window=args.window, seed_mode=args.seed_mode))
            finally:
                lab.down(wipe=True)
            result["load_before"] = [round(x, 2) for x in load_before]
            result["load_after"] = [round(x, 2) for x in os.getloadavg()]
            print(f"bench: {size} {variant}: saved {result['saved']}/{result['alive_at_detection']} "
                  f"({result['saved_share']:.2%})", file=out, flush=True)
            runs.append(result)
    state = {"benchmark": "drill", "scenario": "crd-deletion", "capsule": args.capsule,
             "window_s": args.window, "seed_mode": args.seed_mode, "machine": machine(),
             "seconds": round(time.time() - started, 1), "runs": runs,
             "table": table(runs)}
    print(json.dumps(state, indent=2))
    return EXIT_OK


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0]}


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per size: the saved share of each variant side by side."""
    rows: dict[int, dict[str, Any]] = {}
    for r in runs:
        row = rows.setdefault(r["namespaces"], {"namespaces": r["namespaces"]})
        row[r["variant"]] = {"saved": r["saved"], "of": r["alive_at_detection"],
                             "share": round(r["saved_share"], 4),
                             "last_detach_s": r.get("last_detach_s"), "detection_s": r.get("detection_latency_s")}
    return list(rows.values())


@dataclass
class Tracker:
    """Per seeded namespace: when it was first seen detached and when it was first seen lost."""

    names: set[str]
    detached: dict[str, float] = field(default_factory=dict)
    lost: dict[str, float] = field(default_factory=dict)

    def feed(self, event) -> None:
        if event.type not in (ADDED, MODIFIED, DELETED) or event.name not in self.names:
            return
        meta = event.object.get("metadata") or {}
        if event.type == DELETED or meta.get("deletionTimestamp"):
            self.lost.setdefault(event.name, event.received)
        elif not triage.tenant_refs(event.object):
            self.detached.setdefault(event.name, event.received)


async def seed_namespaces(admin, n: int, mode: str) -> list[str]:
    tenants = max(1, (n + PER_TENANT - 1) // PER_TENANT)
    if mode == "capsule":
        seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=min(n, PER_TENANT), with_content=False,
                            timeout=1800)
        return seeded.namespaces
    # direct: one namespace per Tenant through Capsule, the rest copied from it by the admin.
    seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=1, with_content=False, timeout=1800)
    from responder.lab.seed import _create_ignoring_exists

    limit = asyncio.Semaphore(32)
    bodies: list[dict[str, Any]] = []
    for tenant, (template_name,) in seeded.tenants.items():
        template = await admin.get(f"/api/v1/namespaces/{template_name}")
        meta = template["metadata"]
        for j in range(2, min(n, PER_TENANT) + 1):
            name = template_name[: -len("01")] + f"{j:02d}"
            labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != "kubernetes.io/metadata.name"}
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": name, "labels": labels, "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": meta.get("ownerReferences") or []}}
            if meta.get("finalizers"):
                body["metadata"]["finalizers"] = list(meta["finalizers"])
            seeded.tenants[tenant].append(name)
            bodies.append(body)

    async def create(body: dict[str, Any]) -> None:
        async with limit:
            await _create_ignoring_exists(admin, "/api/v1/namespaces", body)

    await asyncio.gather(*(create(b) for b in bodies))
    # Capsule lists them in each Tenant's status (its finalizer deletes what is listed there).
    await wait_tenants_reconciled(admin, seeded, timeout=1800)
    return seeded.namespaces


async def trial(lab: Lab, n: int, variant: str, *, window: float, seed_mode: str) -> dict[str, Any]:
    out = sys.stderr
    work = lab.dir / "bench"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"namespaces": n, "variant": variant}
    async with lab.admin_client() as admin:
        t0 = time.monotonic()
        names = set(await seed_namespaces(admin, n, seed_mode))
        result["seed_seconds"] = round(time.monotonic() - t0, 1)
        result["seeded"] = len(names)
        print(f"bench: seeded {len(names)} namespaces in {result['seed_seconds']}s ({seed_mode})", file=out, flush=True)
        tracker = Tracker(names)
        watch = ResourceWatch(admin, "/api/v1/namespaces", resource="namespaces", stall_timeout=60,
                              params={"labelSelector": SEED_LABEL})
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(events_into(watch, queue))
        synced = asyncio.Event()

        async def consume() -> None:
            while True:
                event = await queue.get()
                if event.type == SYNCED:
                    synced.set()
                    continue
                tracker.feed(event)

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(synced.wait(), 60)
        proc: subprocess.Popen | None = None
        stdout_path = work / f"{variant}.stdout"
        stderr_path = work / f"{variant}.stderr"
        identity = None
        if variant == "naive":
            proc = subprocess.Popen(["bash", str(NAIVE_SCRIPT)], stdout=open(stdout_path, "w"),
                                    stderr=open(stderr_path, "w"), start_new_session=True,
                                    env={**os.environ, "KUBECONFIG": str(lab.kubeconfig)})
            await _wait_for_line(stdout_path, "ready", proc, 60)
        elif variant == "responder":
            identity = "responder"
            kubeconfig = lab.mint_user(identity)
            await bind_cluster_admin(admin, identity)
            # Containment only: the bench compares how many namespaces each way keeps (recovery is the drill's).
            proc = subprocess.Popen([sys.executable, "-m", "responder", "watch", "--headless", "--auto", "--yes",
                                     "--contain-only", "--kubeconfig", str(kubeconfig),
                                     "--journal", str(work / "journal"), "-o", "json"],
                                    stdout=open(stdout_path, "w"), stderr=open(stderr_path, "w"), start_new_session=True)
            await _wait_for_line(stderr_path, "watching ", proc, 60)
        await asyncio.sleep(1.0)  # the watches settle the same way in every trial
        sent = await delete_tenant_crd(admin)
        usage = None
        exited_at = None
        deadline = sent + window
        while time.time() < deadline:
            await asyncio.sleep(0.2)
            if proc is not None and exited_at is None:
                usage = _reap(proc)
                if usage is not None:
                    exited_at = time.time()
            if variant == "naive" and exited_at is None and "done " in stdout_path.read_text():
                exited_at = time.time()
            if len(tracker.lost) == len(names):
                break  # nothing left to save
            if exited_at is not None and time.time() > exited_at + 10:
                break  # the responder finished; 10 s more to see whether anything is lost after it
        if proc is not None and usage is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(50):
                usage = _reap(proc)
                if usage is not None:
                    break
                await asyncio.sleep(0.1)
            result["killed_at_window_end"] = True
        ended = time.time()
        listing = await admin.list_all("/api/v1/namespaces", labelSelector=SEED_LABEL)
        tenants = await admin.get_or_none(TENANT_API)
        pump.cancel()
        consumer.cancel()
        await asyncio.gather(pump, consumer, return_exceptions=True)
    live = {ns["metadata"]["name"]: ns for ns in listing["items"] if ns["metadata"]["name"] in names}
    alive_tenant_uids = {t["metadata"]["uid"] for t in (tenants or {}).get("items") or []
                         if not t["metadata"].get("deletionTimestamp")}
    saved = [nm for nm, ns in live.items() if not ns["metadata"].get("deletionTimestamp")
             and not any(r.get("uid") not in alive_tenant_uids for r in triage.tenant_refs(ns))]
    alive = [nm for nm, ns in live.items() if not ns["metadata"].get("deletionTimestamp")]

    detection = None
    if variant == "naive":
        detection = _naive_detection(stdout_path)
    elif variant == "responder":
        detection = _responder_detection(work / "journal")
    base = detection if detection is not None else sent
    alive_at_detection = sum(1 for nm in names if tracker.lost.get(nm, float("inf")) > base)
    detach_times = sorted(t - sent for nm, t in tracker.detached.items())
    loss_times = sorted(t - sent for t in tracker.lost.values())
    result.update({
        "saved": len(saved), "alive_at_detection": alive_at_detection,
        "saved_share": (len(saved) / alive_at_detection) if alive_at_detection else 0.0,
        "alive_at_end": len(alive), "lost": len(tracker.lost),
        "lost_after_detection": sum(1 for t in tracker.lost.values() if t > base),
        "window_used_s": round(ended - sent, 1),
        "detection_latency_s": round(detection - sent, 3) if detection is not None else None,
        "first_detach_s": _r(detach_times[0] if detach_times else None),
        "last_detach_s": _r(detach_times[-1] if detach_times else None),
        "first_loss_s": _r(loss_times[0] if loss_times else None),
        "last_loss_s": _r(loss_times[-1] if loss_times else None),
    })
    if variant == "naive":
        text = stdout_path.read_text()
        errors = sorted({" ".join(line.split()[3:])[:200] for line in text.splitlines() if line.startswith("failed ")})
        result["naive"] = {"patched": text.count("\npatched "), "failed": text.count("\nfailed "),
                           "finished": "\ndone " in text, "errors": errors[:3]}
    if variant == "responder":
        result["responder_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1) if usage else None
        result["responder"] = _responder_figures(work / "journal", sent) | _summary_figures(stdout_path)
        result["breaker_window"] = _audit_breaker_window(lab.audit_log, sent, detection, identity)
    return result


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _reap(proc: subprocess.Popen):
    """The child's resource usage once it exited (wait4: its own peak RSS), else None."""
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


async def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited early: {path.read_text()[-2000:]}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not print {needle!r} within {timeout:.0f}s")


def _naive_detection(stdout: Path) -> float | None:
    for line in stdout.read_text().splitlines():
        if line.startswith("detected "):
            return float(line.split()[1])
    return None


def _journal_records(journal_dir: Path) -> list[dict[str, Any]]:
    files = sorted(journal_dir.glob("inc-*.jsonl"))
    if not files:
        return []
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def _responder_detection(journal_dir: Path) -> float | None:
    for r in _journal_records(journal_dir):
        if r.get("kind") == "trigger":
            return float(r["trigger"]["event_received"])
    return None


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _responder_figures(journal_dir: Path, sent: float) -> dict[str, Any]:
    records = _journal_records(journal_dir)
    out: dict[str, Any] = {}
    trig = next((r for r in records if r.get("kind") == "trigger"), None)
    first = next((r for r in records if r.get("kind") == "intent"), None)
    scale = next((r for r in records if r.get("kind") == "intent" and r.get("action") == "scale-capsule"), None)
    if trig and first:
        out["first_write_after_detection_ms"] = round((_ts(first["ts"]) - trig["trigger"]["event_received"]) * 1000, 1)
    if scale:
        out["scale_to_zero_sent_s"] = round(_ts(scale["ts"]) - sent, 3)
    return out


def _summary_figures(stdout: Path) -> dict[str, Any]:
    try:
        summary = json.loads(stdout.read_text())
    except ValueError:
        return {"summary": "none (responder did not finish)"}
    steps = summary.get("steps") or {}
    return {"contained": summary.get("contained"),
            "breaker": (steps.get("breaker") or {}).get("breaker"),
            "breaker_step_s": (steps.get("breaker") or {}).get("seconds"),
            "detached": (steps.get("detach") or {}).get("detached"),
            "detach_s": (steps.get("detach") or {}).get("seconds"),
            "detach_per_second": (steps.get("detach") or {}).get("per_second")}


def _audit_breaker_window(audit_log: Path, sent: float, detection: float | None,
                          identity: str | None) -> dict[str, Any]:
    """Namespace DELETEs by anyone but responder after the incident started: which were admitted
    (the cascade) and when the first was refused (the breaker effective), from the audit log."""
    admitted, refused = [], []
    for event in read_audit(audit_log, since=sent - 1):
        ref = event.get("objectRef") or {}
        if event.get("verb") != "delete" or ref.get("resource") != "namespaces" or ref.get("subresource"):
            continue
        user = (event.get("user") or {}).get("username", "?")
        if user == identity or "dryRun=" in event.get("requestURI", ""):
            continue
        at = _ts(event["requestReceivedTimestamp"]) - sent
        (admitted if (event.get("responseStatus") or {}).get("code", 0) < 300 else refused).append((at, user))
    base = (detection - sent) if detection is not None else 0.0
    return {"foreign_deletes_admitted": len(admitted),
            "admitted_after_detection": sum(1 for at, _ in admitted if at > base),
            "last_admitted_s": _r(max((at for at, _ in admitted), default=None)),
            "first_refused_s": _r(min((at for at, _ in refused), default=None)),
            "deleters": sorted({u for _, u in admitted})}
