"""The Incident in the cluster, on the lab (Capsule 0.14, no Velero): two guard replicas under one ServiceAccount.
The leader is SIGKILLed in the middle of detaching; the standby leads within the Lease's duration, resumes the
incident from the Incident (and the cluster), detaches the rest with no namespace written twice, and the Incident
shows Contained, then WaitingForApproval. `responder approve` refuses bad input with exit 2 and writes nothing;
each recovery step runs once it is approved, once. A third replica stands by; the second leader is SIGKILLed in the
middle of the approved re-adoption (the recovery step with the most writes here): the third leads, inherits what
the dead leader re-adopted, re-adopts the rest without a second approval, no namespace written twice; the Incident
ends Recovered. Every namespace stays alive (>= 99 % at each poll) until 120 s after the CRD's deletion.

The namespace count is lean for CI ($RESPONDER_GUARD_FAILOVER_NAMESPACES, default 60); detach runs at 4 requests
in flight and re-adoption at 1, so the kills land mid-step. 1,000 namespaces: set the variable (docs/guard.md)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from responder.cluster.lease import LEASE_DURATION, RETRY_PERIOD
from responder.errors import EXIT_BAD_INPUT
from responder.lab.control_plane import ADMIN_USER
from responder.guard.takeover import INHERITED
from responder.lab.apply import apply_objects
from responder.lab.incident import persisted_writes_by
from responder.incident import triage
from responder.incident.observe import TENANTS_PATH
from responder.lab.seed import seed
from responder.names import RESPONDER_NAMESPACE
from responder.response.incident_object import INCIDENTS_PATH, RECOVERED, WAITING
from responder.response.session import REPO_RUNBOOKS, DEFAULT_RUNBOOK

from .incident_helpers import namespace_states, read_journal, run_responder, trigger
from .test_guard import GuardProcess, _epoch, fresh_incident_lab, guard_kubeconfig, poll, sa_user, start_guard

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1200)]

NAMESPACES = int(os.environ.get("RESPONDER_GUARD_FAILOVER_NAMESPACES", "60"))
PER_TENANT = 10


def lean_runbook(directory: Path) -> Path:
    """The shipped runbook with detach at 4 requests in flight and re-adoption at 1: the kills land mid-step at
    CI's scale."""
    runbook = yaml.safe_load((REPO_RUNBOOKS / DEFAULT_RUNBOOK).read_text())
    for step in runbook["spec"]["steps"]:
        if step["id"] in ("detach", "readopt"):
            step.setdefault("params", {})["concurrency"] = 4 if step["id"] == "detach" else 1
    path = directory / "runbook.yaml"
    path.write_text(yaml.safe_dump(runbook, sort_keys=False))
    return path


def kill_mid_detach(guard: GuardProcess, journal_dir: Path, timeout: float) -> dict[str, int]:
    """SIGKILL the guard as soon as its journal holds an answered detach write; what its journal held then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in journal_dir.glob("inc-*.jsonl"):
            text = path.read_text()
            if '"action":"detach"' in text and '"kind":"outcome"' in text[text.index('"action":"detach"'):]:
                guard.proc.send_signal(signal.SIGKILL)
                guard.proc.wait()
                records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                detach = {r["seq"] for r in records if r["kind"] == "intent" and r.get("action") == "detach"}
                ok = sum(1 for r in records if r["kind"] == "outcome" and r["intent"] in detach and r["status"] == "ok")
                return {"intents": len(detach), "ok": ok}
        time.sleep(0.002)
    raise AssertionError(f"no detach within {timeout}s: {guard.stderr()[-3000:]}")


async def kill_at_first_readoption(guard: GuardProcess, journal_dir: Path, admin, names: set[str],
                                   timeout: float) -> dict[str, float]:
    """SIGKILL the guard as soon as the cluster shows its first re-adoption: a seeded namespace (each was detached)
    carries a Tenant ownerReference again. Polled from before the approval on a warm connection: a batch's outcomes
    reach the journal file when it syncs (group commit), at the batch's end unless another record syncs first, so
    the journal may show no answer before the last. What its journal and the cluster held then."""
    def adopted(items: list[dict]) -> int:
        return sum(1 for n in items if n["metadata"]["name"] in names and triage.tenant_refs(n))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = adopted((await admin.get("/api/v1/namespaces")).get("items") or [])
        if seen:
            guard.proc.send_signal(signal.SIGKILL)
            guard.proc.wait()
            killed = time.monotonic()
            break
    else:
        raise AssertionError(f"no namespace re-adopted within {timeout}s: {guard.stderr()[-3000:]}")
    path = next(journal_dir.glob("inc-*.jsonl"))
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"intents": sum(1 for r in records if r["kind"] == "intent" and r.get("action") == "readopt"),
            "seen": seen, "adopted": adopted((await admin.get("/api/v1/namespaces")).get("items") or []),
            "killed": killed}


def split_by_leader(journal: list[dict], action: str) -> tuple[list[str], list[str]]:
    """The targets of a journal's answered `action` writes: (inherited from the cluster at takeover, its own)."""
    intents = {r["seq"]: r["target"] for r in journal if r["kind"] == "intent" and r.get("action") == action}
    ok = [r for r in journal if r["kind"] == "outcome" and r["intent"] in intents and r["status"] == "ok"]
    return ([intents[r["intent"]] for r in ok if r["detail"] == INHERITED],
            [intents[r["intent"]] for r in ok if r["detail"] != INHERITED])


def namespace_patches(audit_log: Path, user: str, since: float, killed_epoch: float) -> tuple[Counter, set[str]]:
    """`user`'s namespace PATCHes since `since`: per namespace, how many were answered; which were sent before the
    kill (the dead leader's PATCHes in flight at the kill may have reached etcd while their answer was lost with
    the connection: the API server then logs an error code for a write that persisted)."""
    events = [e for e in persisted_writes_by(audit_log, user, since=since)
              if e["objectRef"].get("resource") == "namespaces" and e["verb"] == "patch"]
    answered = Counter(e["objectRef"]["name"] for e in events if (e.get("responseStatus") or {}).get("code", 0) < 300)
    by_dead = {e["objectRef"]["name"] for e in events if _epoch(e["requestReceivedTimestamp"]) < killed_epoch}
    return answered, by_dead


def answered_before(audit_log: Path, user: str, since: float, killed_epoch: float) -> set[str]:
    """The namespaces `user` PATCHed with an answer (2xx) to a request received before the kill."""
    return {e["objectRef"]["name"] for e in persisted_writes_by(audit_log, user, since=since)
            if e["objectRef"].get("resource") == "namespaces" and e["verb"] == "patch"
            and (e.get("responseStatus") or {}).get("code", 0) < 300
            and _epoch(e["requestReceivedTimestamp"]) < killed_epoch}


async def incident_now(admin) -> dict:
    items = (await admin.get(INCIDENTS_PATH)).get("items") or []
    assert len(items) == 1, [i["metadata"]["name"] for i in items]
    return items[0]


async def test_the_standby_resumes_from_the_incident_and_recovery_runs_as_approved(lab_manager, tmp_path):
    lab = await fresh_incident_lab(lab_manager)
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=NAMESPACES // PER_TENANT, namespaces_per_tenant=PER_TENANT,
                            prefix="failover", with_content=False)
        # One ServiceAccount for both replicas, as the chart runs them: the breaker's exemption names it.
        kubeconfig = await guard_kubeconfig(lab, admin, "guard", tmp_path)
    namespaces = set(seeded.namespaces)
    runbook = lean_runbook(tmp_path)
    guards: list[GuardProcess] = []
    alive_poll: asyncio.Task | None = None
    try:
        a = start_guard("a", kubeconfig, tmp_path, "--runbook", str(runbook))
        guards.append(a)
        a.wait_for("leading")
        b = start_guard("b", kubeconfig, tmp_path, "--runbook", str(runbook))
        guards.append(b)
        b.wait_for("standby")
        assert poll(lambda: b.get("/readyz").status_code == 200, 60)

        # The Tenant CRD deleted; the leader SIGKILLed as its detach begins.
        started = await trigger(lab)
        at_kill = await asyncio.to_thread(kill_mid_detach, a, tmp_path / "journal-a", 120)
        killed = time.monotonic()
        assert 0 < at_kill["intents"] and at_kill["ok"] < len(namespaces), at_kill  # mid-detach
        b.wait_for("resumed from the cluster", timeout=LEASE_DURATION + 4 * RETRY_PERIOD + 30)
        takeover_s = time.monotonic() - killed
        assert takeover_s <= LEASE_DURATION + 2 * RETRY_PERIOD + 5, takeover_s
        # The next standby, for the failover in the middle of recovery.
        c = start_guard("c", kubeconfig, tmp_path, "--runbook", str(runbook))
        guards.append(c)

        # Contained by the new leader, then waiting for the first recovery step's approval.
        async def phase_is(*phases: str) -> dict | None:
            async with lab.admin_client() as admin:
                incident = await incident_now(admin)
            return incident if (incident.get("status") or {}).get("phase") in phases else None

        deadline = time.monotonic() + 180
        incident = None
        while time.monotonic() < deadline and incident is None:
            incident = await phase_is(WAITING)
            await asyncio.sleep(0.5)
        assert incident is not None, b.stderr()[-4000:]
        status = incident["status"]
        contain = [s for s in status["steps"] if s["phase"] == "contain"]
        assert contain and all(s["status"] == "finished" for s in contain), contain
        assert status["leader"] == b.identity() and status["takeovers"] >= 1, status
        assert status["namespaces"]["at-risk"] == 0, status["namespaces"]
        name = incident["metadata"]["name"]
        print(f"\nguard failover: {len(namespaces)} namespaces; the leader killed with {at_kill['intents']} detach "
              f"intents journaled ({at_kill['ok']} answered); the standby resumed {takeover_s:.1f}s later; "
              f"{status['phase']} waiting for {status['waitingFor']}")

        # Nothing lost, no namespace detached twice: each alive namespace detached by exactly one leader.
        async with lab.admin_client() as admin:
            states = await namespace_states(admin, namespaces)
        alive = sum(1 for s in states.values() if s == "alive")
        assert alive / len(namespaces) >= 0.99, Counter(states.values())
        alive_names = {n for n, s in states.items() if s == "alive"}
        # The new leader's journal: the dead leader's writes inherited from the cluster, the rest its own.
        journal = read_journal(next((tmp_path / "journal-b").glob("inc-*.jsonl")))
        assert any(r["kind"] == "takeover" for r in journal)
        inherited, own = split_by_leader(journal, "detach")
        print(f"guard failover: detach writes inherited from the cluster {len(inherited)}, made by the new leader "
              f"{len(own)}")
        assert len(set(inherited)) == len(inherited) and len(set(own)) == len(own), (inherited, own)
        assert not set(inherited) & set(own), sorted(set(inherited) & set(own))
        assert set(inherited) | set(own) >= alive_names, sorted(alive_names - set(inherited) - set(own))

        # The audit log agrees. A request's event is written when its answer completes: give the last ones a moment.
        # The dead leader's PATCHes in flight at the kill may have reached etcd while their answer was lost with
        # the connection (the API server then logs an error code for a write that persisted): the new leader
        # found those detached and inherited them, so for the dead leader any PATCH sent counts.
        killed_epoch = time.time() - (time.monotonic() - killed)

        def detach_patches() -> tuple[Counter, set[str]]:
            return namespace_patches(lab.audit_log, sa_user("guard"), started, killed_epoch)

        deadline = time.monotonic() + 15
        answered, by_dead = detach_patches()
        while not set(own) <= set(answered) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            answered, by_dead = detach_patches()
        # No namespace written twice: one answered PATCH at most, whichever leader sent it.
        assert max(answered.values()) == 1, [n for n, c in answered.items() if c > 1]
        assert set(own) <= set(answered), sorted(set(own) - set(answered))
        assert set(inherited) <= by_dead, sorted(set(inherited) - by_dead)
        unanswered = sorted(set(inherited) - set(answered))
        if unanswered:
            print(f"guard failover: detached by the dead leader with the answer lost at the kill: {unanswered}")

        # Bad input: one message, exit 2, nothing written.
        since = time.time()
        kc = ["--kubeconfig", str(lab.kubeconfig)]
        for args, words in ((["no-such-incident", "restore"], "no Incident no-such-incident"),
                            ([name, "detach"], "not a recovery step"),
                            ([f"pod/{name}", "restore"], "does not name an Incident")):
            proc = run_responder("approve", *args, *kc, timeout=60)
            assert proc.returncode == EXIT_BAD_INPUT and words in proc.stderr, (args, proc.stderr)
            assert proc.stderr.count("error:") == 1, proc.stderr
        assert persisted_writes_by(lab.audit_log, ADMIN_USER, since=since) == []

        # >= 99 % alive at every poll until 120 s after the CRD's deletion, polled beside the recovery below.
        async def alive_until(until: float) -> tuple[int, int]:
            fewest, polls = len(namespaces), 0
            async with lab.admin_client() as admin:
                while True:
                    states = await namespace_states(admin, namespaces)
                    fewest, polls = min(fewest, sum(1 for s in states.values() if s == "alive")), polls + 1
                    if time.time() >= until:
                        return fewest, polls
                    await asyncio.sleep(2)

        alive_poll = asyncio.create_task(alive_until(started + 120))

        # Each recovery step waits for its approval, and runs once approved. The leader is SIGKILLed at its first
        # answered re-adoption write; the third replica leads and finishes it with no second approval.
        c.wait_for("standby")
        approved: list[str] = []
        readopt_kill: dict[str, float] = {}
        deadline = time.monotonic() + 600
        final = None
        while time.monotonic() < deadline:
            final = await phase_is(RECOVERED, "Failed")
            if final is not None:
                break
            async with lab.admin_client() as admin:
                waiting = ((await incident_now(admin)).get("status") or {}).get("waitingFor")
            if waiting and waiting not in approved:
                approved_at = time.time()
                async with lab.admin_client() as watcher:
                    await watcher.get("/api/v1/namespaces")  # a warm connection before the step can start
                    killer = (asyncio.create_task(kill_at_first_readoption(b, tmp_path / "journal-b", watcher,
                                                                           namespaces, 120))
                              if waiting == "readopt" else None)
                    proc = await asyncio.to_thread(run_responder, "approve", name, waiting, *kc, "-o", "json",
                                                   timeout=60)
                    assert proc.returncode == 0, proc.stderr
                    assert json.loads(proc.stdout)["approver"] == ADMIN_USER
                    approved.append(waiting)
                    at_readopt = await killer if killer is not None else None
                if at_readopt is not None:
                    readopt_kill = {"approved": approved_at, "killed": at_readopt["killed"]}
                    assert 0 < at_readopt["intents"] and at_readopt["adopted"] < len(namespaces), at_readopt
                    c.wait_for("resumed from the cluster", timeout=LEASE_DURATION + 4 * RETRY_PERIOD + 30)
                    readopt_kill["takeover_s"] = time.monotonic() - readopt_kill["killed"]
                    print(f"guard failover mid-recovery: the leader killed with {at_readopt['intents']} re-adoption "
                          f"intents journaled, {at_readopt['seen']} namespaces seen re-adopted "
                          f"({at_readopt['adopted']} just after the kill); the third replica resumed "
                          f"{readopt_kill['takeover_s']:.1f}s later")
                    assert readopt_kill["takeover_s"] <= LEASE_DURATION + 2 * RETRY_PERIOD + 5, readopt_kill
            await asyncio.sleep(0.5)
        assert final is not None and final["status"]["phase"] == RECOVERED, (final or {}).get("status", c.stderr()[-4000:])
        status = final["status"]
        assert [a["step"] for a in status["approvals"]] == approved == status["approvalSteps"], status
        assert all(a["approver"] == ADMIN_USER for a in status["approvals"])
        recover = {s["id"]: s["status"] for s in status["steps"] if s["phase"] == "recover"}
        print(f"guard recovery: {recover}")
        # No Velero on this lab: choose-backup finds no backup and the restore has nothing to do (skipped); every
        # Tenant is recreated from the shadow copy, every namespace re-adopted, Capsule back, verified.
        assert recover["verify"] == "finished" and recover["restore"] in ("finished", "skipped"), recover
        assert all(recover[step] == "finished" for step in approved if step != "restore"), recover
        assert status["leader"] == c.identity() and status["takeovers"] >= 2, status
        assert "readopt" in approved and readopt_kill, approved
        readopt_entry = [s for s in status["steps"] if s["id"] == "readopt"]
        assert len(readopt_entry) == 1 and readopt_entry[0]["leader"] == c.identity(), readopt_entry
        print(f"guard recovery: readopt {readopt_entry[0]['summary']!r}")
        journal_b = read_journal(next((tmp_path / "journal-b").glob("inc-*.jsonl")))
        journal_c = read_journal(next((tmp_path / "journal-c").glob("inc-*.jsonl")))
        both = journal_b + journal_c
        # Each approved step started once and finished once over the two leaders, only after its approval; the
        # re-adoption started under both (the second resumed it) and finished once, under the third replica.
        started_steps = Counter(r["step"] for r in both if r["kind"] == "step" and r["status"] == "started")
        finished_steps = Counter(r["step"] for r in both if r["kind"] == "step" and r["status"] == "finished"
                                 and INHERITED not in (r.get("detail") or ""))
        assert all(finished_steps[step] == 1 for step in approved), finished_steps
        assert all(started_steps[step] == (2 if step == "readopt" else 1) for step in approved), started_steps
        for step in approved:  # finished only after its approval, in the journal of the leader that finished it
            journal = next(j for j in (journal_b, journal_c) if any(
                r["kind"] == "step" and r["step"] == step and r["status"] == "finished"
                and INHERITED not in (r.get("detail") or "") for r in j))
            approval = next(r["seq"] for r in journal if r["kind"] == "approval" and r["step"] == step)
            assert any(r["kind"] == "step" and r["step"] == step and r["status"] == "finished" and r["seq"] > approval
                       for r in journal), step
        # The dead leader's re-adoptions in the new leader's journal as inherited, the rest its own, none twice.
        readopt_inherited, readopt_own = split_by_leader(journal_c, "readopt")
        print(f"guard recovery: re-adoptions inherited from the cluster {len(readopt_inherited)}, made by the new "
              f"leader {len(readopt_own)}")
        assert readopt_inherited, journal_c[-20:]
        assert len(set(readopt_inherited)) == len(readopt_inherited) and len(set(readopt_own)) == len(readopt_own)
        assert not set(readopt_inherited) & set(readopt_own), sorted(set(readopt_inherited) & set(readopt_own))
        assert set(readopt_inherited) | set(readopt_own) >= alive_names, \
            sorted(alive_names - set(readopt_inherited) - set(readopt_own))
        readopt_killed_epoch = time.time() - (time.monotonic() - readopt_kill["killed"])
        answered, by_dead = namespace_patches(lab.audit_log, sa_user("guard"), readopt_kill["approved"],
                                              readopt_killed_epoch)
        deadline = time.monotonic() + 15
        while not set(readopt_own) <= set(answered) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            answered, by_dead = namespace_patches(lab.audit_log, sa_user("guard"), readopt_kill["approved"],
                                                  readopt_killed_epoch)
        assert max(answered.values()) == 1, [n for n, count in answered.items() if count > 1]
        assert set(readopt_own) <= set(answered), sorted(set(readopt_own) - set(answered))
        assert set(readopt_inherited) <= by_dead, sorted(set(readopt_inherited) - by_dead)
        # Every re-adoption the dead leader had answered is the new leader's inherited write.
        dead_answered = answered_before(lab.audit_log, sa_user("guard"), readopt_kill["approved"], readopt_killed_epoch)
        assert dead_answered and dead_answered <= set(readopt_inherited), sorted(dead_answered - set(readopt_inherited))
        unanswered = sorted(set(readopt_inherited) - set(answered))
        if unanswered:
            print(f"guard recovery: re-adopted by the dead leader with the answer lost at the kill: {unanswered}")
        # No Tenant created twice: one answered POST per seeded Tenant, by the leader that ran recreate-tenants.
        creates = [e for e in persisted_writes_by(lab.audit_log, sa_user("guard"), since=started)
                   if e["objectRef"].get("resource") == "tenants" and e["verb"] == "create"
                   and (e.get("responseStatus") or {}).get("code", 0) < 300]
        created = [e["objectRef"].get("name") for e in creates if e["objectRef"].get("name")]
        assert len(creates) == len(seeded.tenants) and len(set(created)) == len(created), creates
        c.wait_for("incident handled (exit 0)", timeout=60)
        # Every namespace alive and adopted again, each by its live Tenant's UID, once (verify's result).
        async with lab.admin_client() as admin:
            states = await namespace_states(admin, namespaces)
            live = {n["metadata"]["name"]: n for n in (await admin.list_all("/api/v1/namespaces"))["items"]}
            tenants = {t["metadata"]["name"]: t["metadata"]["uid"]
                       for t in (await admin.get(TENANTS_PATH)).get("items") or []}
        assert sum(1 for s in states.values() if s == "alive") / len(namespaces) >= 0.99
        for ns in alive_names:
            refs = triage.tenant_refs(live[ns])
            assert len(refs) == 1 and refs[0]["uid"] == tenants.get(refs[0]["name"]), (ns, refs)
        fewest, polls = await alive_poll
        print(f"guard failover: at least {fewest}/{len(namespaces)} alive at each of {polls} polls until 120 s after "
              "the CRD's deletion")
        assert fewest / len(namespaces) >= 0.99, fewest
        assert c.stop() == 0, c.stderr()[-3000:]
    finally:
        if alive_poll is not None:
            alive_poll.cancel()
        for guard in guards:
            if guard.proc.poll() is None:
                guard.proc.kill()
                guard.proc.wait()


async def test_approvals_land_while_the_guard_rewrites_the_incidents_status(lab_manager):
    # The guard rewrites the Incident's status about once a second; approvals must land whatever the guard
    # writes meanwhile (guarded by the resourceVersion, every status write failed them: a 422 naming no cause).
    from responder.lab.apply import wait_crds_established
    from responder.response.approval import approve_step
    from responder.response.incident_object import (INCIDENT_CRD, IncidentStore, approvals_of, incident_crd,
                                                    new_incident, now_rfc3339)

    lab = await lab_manager.get("0.14")
    steps = ["wait-lost-gone", "recreate-tenants", "readopt", "restore-capsule", "verify-recovery"]
    async with lab.admin_client() as admin:
        await apply_objects(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RESPONDER_NAMESPACE}},
                                    incident_crd()])
        await wait_crds_established(admin, [INCIDENT_CRD])
        store = IncidentStore(admin)
        incident_id = f"inc-approvals-{int(time.time())}"
        name = (await store.create(new_incident(incident_id, {"kind": "crd-deleting"}, recovery="approval")))["metadata"]["name"]
        await store.patch_status(name, {"phase": WAITING, "approvalSteps": steps, "waitingFor": steps[0]})
        rewrites = 0

        async def guard_rewrites() -> None:
            nonlocal rewrites
            while True:
                await store.patch_status(name, {"updatedAt": now_rfc3339(), "namespaces": {"detached": rewrites}})
                rewrites += 1
                await asyncio.sleep(0)

        writer = asyncio.create_task(guard_rewrites())
        try:
            # Several approvers at once too: each approval tests the list it read, so none overwrites another.
            for result in await asyncio.gather(*(approve_step(admin, name, step) for step in steps)):
                assert result["approver"] == ADMIN_USER and not result["already"], result
        finally:
            writer.cancel()
        approvals = approvals_of(await store.get(name))
        assert sorted(approvals) == sorted(steps) and rewrites > len(steps), (approvals, rewrites)
        await admin.delete(store.path(name))
