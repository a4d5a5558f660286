"""Faults during a live incident, on the lab, driven through the real program: the apiserver killed
and restarted mid-detach, etcd compacted so that the watches' resume fails with 410, a second writer
racing on the same namespaces, the apiserver throttling responder (APF, 429), and responder itself
killed with SIGKILL at random points of a full incident, then resumed.

In each: every namespace alive when responder detected the incident ends alive (and detached), and
nothing is done twice: the journal holds one successful detach per namespace and the audit log one
successful detach PATCH by responder per namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from responder.incident import triage
from responder.lab import faults
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.apply import bind_cluster_admin
from responder.lab.incident import read_audit
from responder.lab.seed import seed

from .incident_helpers import (CAPSULE_STOP_S, RESPONDER, WatchProcess, breaker_held, client_for, namespace_states,
                               read_journal, run_responder, trigger)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

LINE = os.environ.get("RESPONDER_FAULT_CAPSULE", "0.14")
RUNBOOK = Path(__file__).resolve().parents[2] / "runbooks" / "capsule-tenant-crd-deletion.yaml"
RESULTS = Path(os.environ.get("RESPONDER_RESULTS_DIR", "/tmp/responder-results"))
SEED = int(os.environ.get("RESPONDER_FAULT_SEED", "20260707"))
KILL_POINTS = int(os.environ.get("RESPONDER_FAULT_KILL_POINTS", "10"))
TENANT_REF_KIND = "Tenant"


# -- setting up ---------------------------------------------------------------------------------------


async def prepared(lab_manager, tenants: int, per_tenant: int, *, before_seed=None):
    """A fresh lab, responder's identity bound to cluster-admin, the seed; `before_seed(lab)` runs
    first (in a thread) to change the lab."""
    lab = await lab_manager.get(LINE, fresh=True)
    if before_seed is not None:
        await asyncio.to_thread(before_seed, lab)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        result = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant)
    return lab, kubeconfig, set(result.namespaces)


def runbook_with_concurrency(tmp_path: Path, concurrency: int) -> Path:
    """The shipped runbook with the detach step's PATCHes in flight lowered, so the detach lasts long
    enough to inject a fault in the middle of it."""
    path = tmp_path / f"detach-{concurrency}.yaml"
    text = RUNBOOK.read_text()
    assert "concurrency: 64" in text
    path.write_text(text.replace("concurrency: 64", f"concurrency: {concurrency}"))
    return path


def start_watch(kubeconfig: Path, journal_dir: Path, *extra: str) -> WatchProcess:
    """`responder -v watch --headless --auto --yes --contain-only`: -v logs every watch re-list
    (410) and every HTTP request with its status."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    out, err = journal_dir / "watch.stdout", journal_dir / "watch.stderr"
    proc = subprocess.Popen([*RESPONDER, "-v", "watch", "--headless", "--auto", "--yes", "--kubeconfig",
                             str(kubeconfig), "--journal", str(journal_dir), "-o", "json", "--contain-only", *extra],
                            stdout=open(out, "w"), stderr=open(err, "w"))
    return WatchProcess(proc, journal_dir, err, out)


def journal_records(watch: WatchProcess) -> list[dict[str, Any]]:
    path = watch.journal_path()
    if path is None:
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def detach_progress(records: list[dict[str, Any]]) -> tuple[int, int]:
    """(detach intents, detach outcomes) so far."""
    intents = {r["seq"] for r in records if r["kind"] == "intent" and r.get("action") == "detach"}
    outcomes = sum(1 for r in records if r["kind"] == "outcome" and r["intent"] in intents)
    return len(intents), outcomes


def detach_outcomes_before(records: list[dict[str, Any]], epoch: float) -> int:
    """Detach outcomes the journal stamped before `epoch` (seconds since the epoch)."""
    intents = {r["seq"] for r in records if r["kind"] == "intent" and r.get("action") == "detach"}
    return sum(1 for r in records if r["kind"] == "outcome" and r["intent"] in intents
               and datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() < epoch)


async def wait_journal(watch: WatchProcess, predicate, *, timeout: float = 60, poll: float = 0.002) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = journal_records(watch)
        if records and predicate(records):
            return records
        if watch.proc.poll() is not None:
            raise AssertionError(f"responder exited before the fault point: {watch.stderr_path.read_text()[-3000:]}")
        await asyncio.sleep(poll)
    raise AssertionError(f"fault point not reached in {timeout}s: {watch.stderr_path.read_text()[-3000:]}")


# -- what must hold afterwards -----------------------------------------------------------------------------


def ok_detaches(records: list[dict[str, Any]]) -> Counter:
    outcomes = {r["intent"]: r["status"] for r in records if r["kind"] == "outcome"}
    return Counter(r["target"] for r in records if r["kind"] == "intent" and r.get("action") == "detach"
                   and not r.get("dry_run") and outcomes.get(r["seq"]) == "ok")


def detach_patches(audit_log: Path, since: float, *, user: str = "responder") -> dict[str, Counter]:
    """namespace -> Counter of response codes of responder's persisted PATCHes of that namespace
    (responder's own program: its User-Agent; a racer with the same identity is told apart by its own)."""
    out: dict[str, Counter] = {}
    for event in read_audit(audit_log, since=since):
        ref = event.get("objectRef") or {}
        if (event.get("user") or {}).get("username") != user or event.get("verb") != "patch":
            continue
        if ref.get("resource") != "namespaces" or ref.get("subresource") or "dryRun=" in event.get("requestURI", ""):
            continue
        if not str(event.get("userAgent", "")).startswith("responder/"):
            continue
        code = (event.get("responseStatus") or {}).get("code", 0)
        out.setdefault(ref["name"], Counter())[code] += 1
    return out


def successes(codes: Counter) -> int:
    return sum(n for code, n in codes.items() if 200 <= code < 300)


async def tenant_refs_left(admin, names: set[str]) -> dict[str, list[str]]:
    listing = await admin.list_all("/api/v1/namespaces")
    out = {}
    for ns in listing["items"]:
        name = ns["metadata"]["name"]
        refs = [r["name"] for r in ns["metadata"].get("ownerReferences") or [] if triage.is_tenant_ref(r)]
        if name in names and refs:
            out[name] = refs
    return out


async def check_saved_once(lab, journal: list[dict[str, Any]], namespaces: set[str], tracker: faults.NamespaceTracker,
                           *, since: float, audit_may_miss: bool = False, client_vanished: bool = False,
                           alive_from: float | None = None) -> dict[str, Any]:
    """Every namespace alive at detection (or at `alive_from`) is alive and detached; one successful
    detach each in the journal; one successful detach PATCH each in the audit log (`audit_may_miss`:
    at most one, for a killed apiserver may have applied a request it never audited;
    `client_vanished`: responder was killed or its connections cut, and kube-apiserver persists a
    write whose client has gone but audits it 504 (measured on the lab), so a 504 may stand for it)."""
    trigger_rec = next(r for r in journal if r["kind"] == "trigger")
    detected = trigger_rec["trigger"]["event_received"]
    alive_at_detection = tracker.alive_at(alive_from if alive_from is not None else detected)
    lost_before = len(tracker.alive_at(detected) - alive_at_detection)
    async with client_for(lab.kubeconfig) as admin:
        states = await namespace_states(admin, namespaces)
        attached = await tenant_refs_left(admin, alive_at_detection)
    lost = sorted(n for n in alive_at_detection if states[n] != "alive")
    assert not lost, f"{len(lost)} namespaces alive at detection were lost: {lost[:10]}"
    assert not attached, f"still attached to a Tenant: {dict(list(attached.items())[:5])}"
    journal_ok = ok_detaches(journal)
    wrong = {n: journal_ok.get(n, 0) for n in alive_at_detection if journal_ok.get(n, 0) != 1}
    assert not wrong, f"journal: successful detaches per namespace should be 1: {dict(list(wrong.items())[:10])}"
    audit = detach_patches(lab.audit_log, since)
    audited = {n: successes(audit.get(n, Counter())) for n in alive_at_detection}
    if audit_may_miss:
        twice = {n: c for n, c in audited.items() if c > 1}
        assert not twice, f"audit: namespaces patched successfully more than once: {twice}"
    else:
        wrong = {n: c for n, c in audited.items()
                 if c > 1 or (c == 0 and not (client_vanished and audit.get(n, Counter())[504]))}
        assert not wrong, f"audit: successful detach PATCHes per namespace should be 1: {wrong}"
    codes = Counter()
    for c in audit.values():
        codes.update(c)
    return {"namespaces": len(namespaces), "alive_at_detection": len(alive_at_detection), "lost": len(lost),
            "lost_before_the_breaker_held": lost_before,
            "journal_ok_detaches": sum(journal_ok.values()), "audit_detach_codes": dict(sorted(codes.items())),
            "audited_successes": sum(audited.values())}


def journal_problems(records: list[dict[str, Any]]) -> list[str]:
    """What makes a journal inconsistent after a run (resumed or not) has completed."""
    problems = []
    seqs = [r["seq"] for r in records]
    if seqs != list(range(1, len(records) + 1)):
        problems.append("seq numbers are not 1..n")
    by_seq = {r["seq"]: r for r in records}
    outcome_count: Counter = Counter()
    for r in records:
        if r["kind"] != "outcome":
            continue
        intent = by_seq.get(r["intent"])
        if intent is None or intent["kind"] != "intent" or intent["seq"] > r["seq"]:
            problems.append(f"outcome {r['seq']} without an earlier intent {r['intent']}")
        outcome_count[r["intent"]] += 1
    problems += [f"intent {seq} has {n} outcomes" for seq, n in outcome_count.items() if n > 1]
    outcomes = {r["intent"]: r["status"] for r in records if r["kind"] == "outcome"}
    intents = [r for r in records if r["kind"] == "intent" and not r.get("dry_run")]
    done: Counter = Counter((r["step"], r["action"], r["target"]) for r in intents if outcomes.get(r["seq"]) == "ok")
    problems += [f"{key} succeeded {n} times" for key, n in done.items() if n > 1]
    # An intent left without an outcome after the run completed: only acceptable when a later intent
    # for the same write succeeded (the resumed run redid an idempotent write it could not confirm).
    for r in intents:
        if r["seq"] in outcomes:
            continue
        key = (r["step"], r["action"], r["target"])
        later_ok = any((i["step"], i["action"], i["target"]) == key and i["seq"] > r["seq"]
                       and outcomes.get(i["seq"]) == "ok" for i in intents)
        if r["action"] == "detach" or not later_ok:
            problems.append(f"intent {r['seq']} {key} left pending")
    # Steps finished before a resume are not run again.
    resumed_at = [r["seq"] for r in records if r["kind"] == "resumed"]
    if resumed_at:
        first = resumed_at[0]
        finished_before = {r["step"] for r in records if r["kind"] == "step" and r["seq"] < first
                           and r["status"] in ("finished", "skipped")}
        rerun = {r["step"] for r in records if r["kind"] == "step" and r["seq"] > first and r["status"] == "started"}
        problems += [f"step {s} finished before the crash and ran again" for s in sorted(finished_before & rerun)]
    return problems


def contain_steps_done(records: list[dict[str, Any]]) -> dict[str, str]:
    state: dict[str, str] = {}
    for r in records:
        if r["kind"] == "step":
            state[r["step"]] = r["status"]
    return state


def save_result(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}:", json.dumps(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"fault-{name}.json").write_text(json.dumps(result, indent=2))


async def run_incident(lab, kubeconfig: Path, namespaces: set[str], journal_dir: Path, *extra: str):
    """Tracker up, responder watching, the incident triggered. Returns (watch, tracker, audit_since)."""
    admin = client_for(lab.kubeconfig)
    tracker = faults.NamespaceTracker(admin, namespaces)
    await tracker.start()
    watch = start_watch(kubeconfig, journal_dir, *extra)
    watch.wait_watching()
    since = time.time() - 1
    await trigger(lab)
    return watch, tracker, since


async def finish(watch: WatchProcess, tracker: faults.NamespaceTracker, *, timeout: float = 300):
    rc, summary, stderr = await asyncio.to_thread(watch.finish, timeout)
    return rc, summary, stderr


# -- faults during a live incident -----------------------------------------------------------------------------


async def test_apiserver_killed_and_restarted_mid_detach(lab_manager, tmp_path):
    # 200 namespaces, one PATCH in flight: the detach lasts over a second (about 7 ms each), far
    # longer than this test's journal poll can lag on a loaded machine.
    lab, kubeconfig, namespaces = await prepared(lab_manager, 8, 25)
    watch, tracker, since = await run_incident(lab, kubeconfig, namespaces, tmp_path / "journal",
                                               "--runbook", str(runbook_with_concurrency(tmp_path, 1)))
    try:
        records = await wait_journal(watch, lambda rs: detach_progress(rs)[1] >= 8)
        restart_s = await asyncio.to_thread(faults.restart_apiserver, lab, kill=True)
        killed_at = time.time() - restart_s
        intents = detach_progress(records)[0]
        rc, summary, stderr = await finish(watch, tracker)
        assert rc == 0, stderr[-3000:]
        assert summary and summary["contained"], summary
        journal = read_journal(watch.journal_path())
        # The kill really landed in the middle of the detach step: by the journal's own clock, some
        # detaches were done before it and some after.
        done_at_kill = detach_outcomes_before(journal, killed_at)
        assert 8 <= done_at_kill < len(namespaces), (done_at_kill, killed_at)
        result = await check_saved_once(lab, journal, namespaces, tracker, since=since, audit_may_miss=True)
    finally:
        await tracker.stop()
        await tracker.client.aclose()
    assert journal_problems(journal) == []
    result.update({"capsule": LINE, "detach_outcomes_at_kill": done_at_kill, "detach_intents": intents,
                   "apiserver_restart_s": round(restart_s, 2), "steps": summary["steps"]})
    save_result("apiserver-restart", result)


async def test_etcd_compaction_makes_the_watch_resume_fail_with_410(lab_manager, tmp_path):
    # Without the watch cache the apiserver serves every watch from etcd, so a watch resuming from a
    # revision compacted away fails with 410 (with the cache, a resume may be served from memory).
    lab, kubeconfig, namespaces = await prepared(
        lab_manager, 8, 5, before_seed=lambda lab: faults.restart_apiserver(lab, flags=["--watch-cache=false"]))
    assert "--watch-cache=false" in faults.apiserver_argv(lab)
    admin = client_for(lab.kubeconfig)
    tracker = faults.NamespaceTracker(admin, namespaces)
    await tracker.start()
    try:
        watch = start_watch(kubeconfig, tmp_path / "journal")
        watch.wait_watching()
        since = time.time() - 1
        for i in range(2):  # move etcd's revision past the last one every stream of responder's has seen
            await admin.create("/api/v1/namespaces/default/configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"fault-rev-{i}"}})
        compacted = await asyncio.to_thread(faults.compact_etcd, lab)
        # responder's connections cut, and the incident starts while its watches are down: they resume
        # from revisions etcd no longer has, so the CRD's deletion can only reach responder by the
        # re-list that follows the 410.
        cut = faults.cut_connections(watch.proc.pid, lab.state()["ports"]["apiserver"])
        await trigger(lab)
        rc, summary, stderr = await finish(watch, tracker)
        assert rc == 0, stderr[-3000:]
        assert summary and summary["contained"], summary
        journal = read_journal(watch.journal_path())
        result = await check_saved_once(lab, journal, namespaces, tracker, since=since)
    finally:
        await tracker.stop()
        await admin.aclose()
    assert cut >= 1, "responder had no connection to the apiserver to cut"
    # The resume really failed with 410 and responder re-listed (its -v log says which streams).
    expired = sorted({line.split(": watch expired")[0].rsplit(" ", 1)[-1] for line in stderr.splitlines()
                      if "watch expired (410)" in line})
    assert "crd" in expired, f"the Tenant CRD's watch did not resume with 410 ({expired}): the test proved nothing"
    assert journal_problems(journal) == []
    result.update({"capsule": LINE, "compacted_revision": compacted, "connections_cut": cut,
                   "streams_410": expired, "steps": summary["steps"]})
    save_result("etcd-compaction-410", result)


# Found by this test: a detach PATCH applied by the apiserver whose response was lost (connection cut)
# was resent by KubeClient.request, refused by its own guard (422) and journaled 'failed'. Now the
# client marks the answer as `resent`, the engine leaves the intent pending and the detach step settles
# it by re-reading the namespace (as a resumed run does).
async def test_responder_connections_cut_mid_detach(lab_manager, tmp_path):
    lab, kubeconfig, namespaces = await prepared(lab_manager, 8, 5)
    watch, tracker, since = await run_incident(lab, kubeconfig, namespaces, tmp_path / "journal",
                                               "--runbook", str(runbook_with_concurrency(tmp_path, 1)))
    try:
        await wait_journal(watch, lambda rs: detach_progress(rs)[1] >= 8)
        cut = faults.cut_connections(watch.proc.pid, lab.state()["ports"]["apiserver"])
        rc, summary, stderr = await finish(watch, tracker)
        assert cut >= 1
        assert rc == 0, stderr[-3000:]
        journal = read_journal(watch.journal_path())
        result = await check_saved_once(lab, journal, namespaces, tracker, since=since, client_vanished=True)
    finally:
        await tracker.stop()
        await tracker.client.aclose()
    assert journal_problems(journal) == []
    save_result("connections-cut-mid-detach", {"capsule": LINE, "connections_cut": cut, **result})


async def test_second_writer_races_on_the_namespaces(lab_manager, tmp_path):
    lab, kubeconfig, namespaces = await prepared(lab_manager, 8, 5)
    async with client_for(lab.kubeconfig) as admin:
        role = await admin.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "racer-owner"},
            "rules": []})
    owner = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "racer-owner",
             "uid": role["metadata"]["uid"]}
    # The other writer has responder's identity (a second responder, or a colleague's kubectl with the
    # same credentials): once the breaker is tripped it is the only identity whose namespace writes pass
    # Capsule's fail-closed webhooks. Its User-Agent tells its writes apart in the audit log.
    racer = faults.Racer(client_for(kubeconfig), sorted(namespaces), owner=owner)
    watch, tracker, since = None, None, None
    try:
        admin = client_for(lab.kubeconfig)
        tracker = faults.NamespaceTracker(admin, namespaces)
        await tracker.start()
        watch = start_watch(kubeconfig, tmp_path / "journal")
        watch.wait_watching()
        since = time.time() - 1
        racer.start()
        await asyncio.sleep(0.5)
        await trigger(lab)
        await wait_journal(watch, lambda rs: contain_steps_done(rs).get("detach") in ("finished", "failed"),
                           timeout=300, poll=0.05)
        await asyncio.sleep(1.0)  # keep racing past the detach step
        stats = await racer.stop()
        rc, summary, stderr = await finish(watch, tracker)
        assert rc == 0, stderr[-3000:]
        assert summary and summary["contained"], summary
        journal = read_journal(watch.journal_path())
        result = await check_saved_once(lab, journal, namespaces, tracker, since=since)
        async with client_for(lab.kubeconfig) as admin2:
            final = {n["metadata"]["name"]: n for n in (await admin2.list_all("/api/v1/namespaces"))["items"]}
    finally:
        await racer.stop()
        await racer.client.aclose()
        if tracker is not None:
            await tracker.stop()
            await tracker.client.aclose()
    print("racer:", stats.statuses, stats.errors[:3])
    assert stats.statuses.get(409, 0) >= 10, f"the writers did not really race (409s: {stats.statuses})"
    # Responder's guarded patches met the other writer's changes (their `test` ops refused a moved
    # reference) and were redone from a fresh read, never applied to the wrong element.
    outcomes = {r["intent"]: r for r in journal if r["kind"] == "outcome"}
    refused = [outcomes[r["seq"]]["detail"] for r in journal if r["kind"] == "intent" and r.get("action") == "detach"
               and outcomes.get(r["seq"], {}).get("status") == "failed"]
    # Responder never clobbered the other writer: its last successful label and owner are there.
    clobbered = {n: (final[n]["metadata"].get("labels") or {}).get(faults.RACER_LABEL)
                 for n, value in stats.last_label.items()
                 if (final[n]["metadata"].get("labels") or {}).get(faults.RACER_LABEL) != value}
    assert not clobbered, clobbered
    owners_wrong = [n for n, has in stats.last_has_owner.items()
                    if any(r.get("uid") == owner["uid"] for r in final[n]["metadata"].get("ownerReferences") or []) != has]
    assert not owners_wrong, owners_wrong
    assert journal_problems(journal) == []
    result.update({"capsule": LINE, "racer_statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
                   "responder_detach_refused": len(refused), "refusals": refused[:3], "steps": summary["steps"]})
    save_result("racing-writer", result)


async def test_apiserver_throttles_responder(lab_manager, tmp_path):
    lab, kubeconfig, namespaces = await prepared(lab_manager, 8, 5)
    async with client_for(lab.kubeconfig) as admin:
        await faults.throttle_user(admin, "responder")
    refused_in_probe = await faults.wait_throttled(kubeconfig)
    try:
        watch, tracker, since = await run_incident(lab, kubeconfig, namespaces, tmp_path / "journal")
        try:
            rc, summary, stderr = await finish(watch, tracker)
            assert rc == 0, stderr[-3000:]
            assert summary and summary["contained"], summary
            journal = read_journal(watch.journal_path())
            result = await check_saved_once(lab, journal, namespaces, tracker, since=since)
        finally:
            await tracker.stop()
            await tracker.client.aclose()
    finally:
        async with client_for(lab.kubeconfig) as admin:
            await faults.remove_throttle(admin)
    # The throttle really hit responder's writes: the audit log has 429s for its detach PATCHes.
    throttled_writes = [e for e in read_audit(lab.audit_log, since=since)
                        if (e.get("user") or {}).get("username") == "responder"
                        and (e.get("responseStatus") or {}).get("code") == 429]
    assert result["audit_detach_codes"].get(429, 0) >= 1, result
    http_429 = sum(1 for line in stderr.splitlines() if "HTTP Request" in line and " 429 " in line)
    assert journal_problems(journal) == []
    result.update({"capsule": LINE, "probe_429": refused_in_probe, "audit_429_writes": len(throttled_writes),
                   "log_429_requests": http_429, "steps": summary["steps"]})
    save_result("apf-429", result)


# -- responder killed at random points ------------------------------------------------------------------------------


def _journal_len(path: Path) -> int:
    with open(path, "rb") as fh:
        return fh.read().count(b"\n")


async def test_sigkill_at_random_points_then_resume(lab_manager, tmp_path):
    tenants, per_tenant = 6, 4
    started = time.monotonic()
    # Calibration: one full incident without a kill, to learn how long the journal of a run is.
    lab, kubeconfig, namespaces = await prepared(lab_manager, tenants, per_tenant)
    watch, tracker, since = await run_incident(lab, kubeconfig, namespaces, tmp_path / "calibration")
    try:
        rc, summary, stderr = await finish(watch, tracker)
        assert rc == 0 and summary["contained"], stderr[-3000:]
        full = read_journal(watch.journal_path())
        await check_saved_once(lab, full, namespaces, tracker, since=since,
                               alive_from=breaker_held(full) + CAPSULE_STOP_S)
    finally:
        await tracker.stop()
        await tracker.client.aclose()
    total = len(full)
    rng = random.Random(SEED)
    # One point in each tenth of the run (records 2..total-2), so they spread across every step.
    span = total - 3
    points = [2 + rng.randrange(i * span // KILL_POINTS, max(i * span // KILL_POINTS + 1, (i + 1) * span // KILL_POINTS))
              for i in range(KILL_POINTS)]
    print(f"\nSIGKILL points (seed {SEED}, full journal {total} records, calibration "
          f"{time.monotonic() - started:.0f}s): {points}")
    runs, early = [], []
    for index, point in enumerate(points):
        t0 = time.monotonic()
        lab, kubeconfig, namespaces = await prepared(lab_manager, tenants, per_tenant)
        jdir = tmp_path / f"kill-{index:02d}"
        watch, tracker, since = await run_incident(lab, kubeconfig, namespaces, jdir)
        try:
            killed_at, path = None, None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                path = path or watch.journal_path()
                if path is not None and _journal_len(path) >= point:
                    watch.kill9()
                    killed_at = _journal_len(path)
                    break
                if watch.proc.poll() is not None:
                    break
                await asyncio.sleep(0.001)
            path = watch.journal_path()
            assert path is not None, watch.stderr_path.read_text()[-3000:]
            if killed_at is None:  # the run was shorter than the calibration run: resume a finished journal
                early.append(point)
            at_kill = read_journal(path)
            last = at_kill[-1]
            pending_at_kill = len([r for r in at_kill if r["kind"] == "intent"]) - len(
                {r["intent"] for r in at_kill if r["kind"] == "outcome"})
            r0 = time.monotonic()
            proc = await asyncio.to_thread(run_responder, "run", "--resume", str(path), "--kubeconfig", str(kubeconfig),
                                           "--journal", str(path.parent), "--yes", "--contain-only", "-o", "json")
            resume_s = time.monotonic() - r0
            assert proc.returncode == 0, f"point {point}: resume failed: {proc.stderr[-3000:]}"
            summary = json.loads(proc.stdout)
            assert summary["contained"] is True, (point, summary)
            journal = read_journal(path)
            problems = journal_problems(journal)
            assert problems == [], f"point {point} (killed after record {killed_at}): {problems}"
            steps = contain_steps_done(journal)
            assert all(steps.get(s) in ("finished", "skipped") for s in
                       ("breaker", "detach", "verify-breaker", "tenant-finalizers", "terminating")), steps
            # Killed before the breaker held (Capsule not yet scaled to 0), nothing stops Capsule or the
            # GC while responder is dead: what they delete before the resumed run trips the breaker is
            # lost whatever responder does (measured: a kill at record 5 and a resume 1.15 s later, and
            # Capsule 0.14 had deleted all 24 namespaces). Even without a kill, Capsule 0.14's Tenant
            # finalizer can delete a namespace between detection and the breaker (found in CI: 2 of 24,
            # 0.2 s after the CRD event). From the breaker on, nothing may be lost; the controller keeps
            # running until the lab's kubelet has stopped it (CAPSULE_STOP_S).
            held_at_kill = breaker_held(at_kill)
            alive_from = breaker_held(journal) + CAPSULE_STOP_S
            result = await check_saved_once(lab, journal, namespaces, tracker, since=since, alive_from=alive_from,
                                            client_vanished=True)
            async with client_for(lab.kubeconfig) as admin:
                deployment = await admin.get(f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/"
                                             f"{CAPSULE_DEPLOYMENT}")
            assert deployment["spec"]["replicas"] == 0
            scale = [r for r in journal if r["kind"] == "intent" and r.get("action") == "scale-capsule"]
            assert scale and all(r["undo"]["replicas"] == 1 for r in scale), scale
        finally:
            await tracker.stop()
            await tracker.client.aclose()
        run = {"point": point, "killed_at_record": killed_at, "breaker_held_at_kill": bool(held_at_kill),
               "last_record": {k: last.get(k) for k in ("kind", "step", "action", "status") if last.get(k)},
               "pending_at_kill": pending_at_kill, "resume_s": round(resume_s, 2),
               "iteration_s": round(time.monotonic() - t0, 1), **result}
        print(f"kill {index + 1}/{len(points)}:", json.dumps(run))
        runs.append(run)
    save_result("sigkill-points", {"capsule": LINE, "seed": SEED, "full_journal_records": total, "runs": runs,
                                   "finished_before_the_point": early, "seconds": round(time.monotonic() - started, 1)})
    assert len(early) <= 1, f"responder finished before these kill points: {early}"


# -- credentials that change under a running watch ------------------------------------------------------------------

ROTATION_NS = "auth-rotation"
ROTATION_CERT_USER = "auth-rotation-cert"


def _short_lived_client_cert(lab, user: str, valid_for: float, cert_path: Path, key_path: Path) -> float:
    """A client certificate for `user`, signed by the lab's CA, that expires `valid_for` seconds from
    now (written atomically over cert_path/key_path, as cert-manager rotates files). Returns its expiry
    (time.time())."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(lab.pki.ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(lab.pki.ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    expires = now + dt.timedelta(seconds=valid_for)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(expires)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _replace(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    _replace(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return expires.timestamp()


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def _rotation_kubeconfig(lab, path: Path, user: dict[str, Any], *, server_host: str = "127.0.0.1",
                         tls_server_name: str | None = None) -> Path:
    import yaml

    cluster: dict[str, Any] = {"server": f"https://{server_host}:{lab.state()['ports']['apiserver']}",
                               "certificate-authority": str(lab.pki.ca.cert)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                    "clusters": [{"name": "c", "cluster": cluster}],
                                    "users": [{"name": "u", "user": user}],
                                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


async def _bound_token(admin, secret: str) -> str:
    """A ServiceAccount token bound to a Secret of its own: deleting the Secret revokes the token
    (kube-apiserver caches a token's successful authentication for 10 s)."""
    created = await admin.create(f"/api/v1/namespaces/{ROTATION_NS}/secrets",
                                 {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}})
    request = await admin.create(
        f"/api/v1/namespaces/{ROTATION_NS}/serviceaccounts/watcher/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 600, "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": secret,
                                                               "uid": created["metadata"]["uid"]}}})
    return request["status"]["token"]


async def _next_added(queue: "asyncio.Queue", name: str, timeout: float, task: "asyncio.Task") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task.done():
            raise AssertionError(f"the watch ended: {task.exception()!r}")
        try:
            event = await asyncio.wait_for(queue.get(), 0.5)
        except asyncio.TimeoutError:
            continue
        if event.type == "ADDED" and event.name == name:
            return
    raise AssertionError(f"no ADDED event for {name} within {timeout:.0f}s")


async def _wait_for(predicate, timeout: float, what: str, task: "asyncio.Task | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if task is not None and task.done():
            raise AssertionError(f"the watch ended while waiting for {what}: {task.exception()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def test_watch_survives_credential_rotation(lab_manager, tmp_path):
    """A running ResourceWatch outlives its credentials, on a real kube-apiserver:

    - token: a ServiceAccount token in a kubeconfig `tokenFile` ending in a newline (as `kubectl create
      token > file` writes it); the token is revoked while the file is missing (the reload after the
      401 fails: the watch backs off and retries), then a new token is written: the watch reconnects
      with it and delivers a namespace created afterwards. Once the new token is revoked too and the
      file holds garbage, the attempt with the re-read credentials is refused and the watch raises
      Unauthorized.
    - client certificate: the kubeconfig's server is https://127.1 (not in the API server's
      certificate) with `tls-server-name: localhost`; the certificate expires and is rewritten on disk:
      after the 401 the client reconnects with the new certificate (its httpx connections replaced)
      and the watch delivers a namespace created afterwards.
    Each watch reconnects every 2 s (timeoutSeconds), which is what brings the 401s."""
    import logging
    import ssl

    from responder.cluster.client import KubeClient
    from responder.cluster.kubeconfig import load_cluster_access
    from responder.cluster.watch import ResourceWatch, events_into
    from responder.errors import Unauthorized
    from responder.lab.apply import apply_objects

    started = time.monotonic()
    lab = await lab_manager.get(LINE)
    port = lab.state()["ports"]["apiserver"]
    # The certificate phase relies on 127.1 not matching the API server's certificate: without
    # tls-server-name, TLS verification fails.
    ctx = ssl.create_default_context(cafile=str(lab.pki.ca.cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        _, writer = await asyncio.open_connection("127.1", port, ssl=ctx)
        writer.close()

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    watch_log = logging.getLogger("responder.cluster.watch")
    handler, old_level = Collect(), watch_log.level
    watch_log.addHandler(handler)
    watch_log.setLevel(logging.INFO)
    names = [f"{ROTATION_NS}-after-token", f"{ROTATION_NS}-after-cert"]
    clients: list[KubeClient] = []
    tasks: list[asyncio.Task] = []
    async with client_for(lab.kubeconfig) as admin:
        try:
            await apply_objects(admin, [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROTATION_NS}},
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "watcher", "namespace": ROTATION_NS}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "auth-rotation-watch-namespaces"},
                 "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "auth-rotation-watch-namespaces"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "auth-rotation-watch-namespaces"},
                 "subjects": [{"kind": "ServiceAccount", "name": "watcher", "namespace": ROTATION_NS},
                              {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ROTATION_CERT_USER}]},
            ])

            def watch_for(client: KubeClient) -> tuple[ResourceWatch, asyncio.Queue, asyncio.Task]:
                watch = ResourceWatch(client, "/api/v1/namespaces", resource="namespaces", timeout_seconds=2)
                queue: asyncio.Queue = asyncio.Queue()
                task = asyncio.create_task(events_into(watch, queue))
                clients.append(client)
                tasks.append(task)
                return watch, queue, task

            async def synced(queue: asyncio.Queue) -> None:
                try:
                    while (await asyncio.wait_for(queue.get(), 15)).type != "SYNCED":
                        pass
                except asyncio.TimeoutError:
                    raise AssertionError("the watch did not list within 15 s (TLS, credentials?)") from None

            async def token_phase() -> dict[str, Any]:
                token_file = tmp_path / "token"
                _replace(token_file, (await _bound_token(admin, "bind-1") + "\n").encode())
                kubeconfig = _rotation_kubeconfig(lab, tmp_path / "token.kubeconfig", {"tokenFile": str(token_file)})
                client = KubeClient(load_cluster_access(str(kubeconfig)))
                _, queue, task = watch_for(client)
                await synced(queue)
                # The token is revoked while the token file is missing: each 401 makes the client re-read
                # the kubeconfig, which fails (ConfigError): the watch must keep trying.
                token_file.unlink()
                await admin.delete(f"/api/v1/namespaces/{ROTATION_NS}/secrets/bind-1")
                await _wait_for(lambda: any("credentials not usable" in r for r in records), 30,
                                "a reload that fails (token file missing)", task)
                assert client.credentials.reloads == 0
                _replace(token_file, (await _bound_token(admin, "bind-2") + "\n").encode())
                await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": names[0]}})
                await _next_added(queue, names[0], 30, task)
                reloads = client.credentials.reloads
                assert reloads == 1, reloads
                # The re-read credentials refused too: the watch gives up, with Unauthorized.
                _replace(token_file, b"not-a-token\n")
                await admin.delete(f"/api/v1/namespaces/{ROTATION_NS}/secrets/bind-2")
                try:
                    await asyncio.wait_for(asyncio.shield(task), 30)
                except Unauthorized:
                    pass
                else:
                    raise AssertionError("the watch ended without an error")
                return {"reloads_before_giving_up": client.credentials.reloads}

            async def cert_phase() -> dict[str, Any]:
                cert, key = tmp_path / "client.crt", tmp_path / "client.key"
                expires = _short_lived_client_cert(lab, ROTATION_CERT_USER, 6, cert, key)
                kubeconfig = _rotation_kubeconfig(lab, tmp_path / "cert.kubeconfig",
                                                  {"client-certificate": str(cert), "client-key": str(key)},
                                                  server_host="127.1", tls_server_name="localhost")
                client = KubeClient(load_cluster_access(str(kubeconfig)))
                first_http = client._http
                _, queue, task = watch_for(client)
                await synced(queue)  # list (httpx) and watch over TLS verified against tls-server-name
                _short_lived_client_cert(lab, ROTATION_CERT_USER, 3600, cert, key)  # rotated on disk
                await asyncio.sleep(max(0.0, expires - time.time()) + 0.5)
                await _wait_for(lambda: client.credentials.reloads >= 1, 20, "a reload after the certificate expired",
                                task)
                await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": names[1]}})
                await _next_added(queue, names[1], 30, task)
                assert client._http is not first_http, "httpx kept the old client certificate"
                await client.get("/api/v1/namespaces/default")  # reads over the new connections too
                return {"reloads": client.credentials.reloads}

            async with asyncio.TaskGroup() as group:  # a phase that fails cancels the other
                token_run, cert_run = group.create_task(token_phase()), group.create_task(cert_phase())
            token_result, cert_result = token_run.result(), cert_run.result()
        finally:
            watch_log.removeHandler(handler)
            watch_log.setLevel(old_level)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in clients:
                await client.aclose()
            for name in (*names, ROTATION_NS):
                if await admin.get_or_none(f"/api/v1/namespaces/{name}"):
                    await admin.delete(f"/api/v1/namespaces/{name}")
            for kind in ("clusterrolebindings", "clusterroles"):
                if await admin.get_or_none(f"/apis/rbac.authorization.k8s.io/v1/{kind}/auth-rotation-watch-namespaces"):
                    await admin.delete(f"/apis/rbac.authorization.k8s.io/v1/{kind}/auth-rotation-watch-namespaces")
    print("credential rotation:", json.dumps({"token": token_result, "cert": cert_result,
                                              "seconds": round(time.monotonic() - started, 1)}))
