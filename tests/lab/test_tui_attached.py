"""The TUI attached to the guard's incident, on the lab (Capsule 0.14, no Velero; Pilot `run_test`): a guard
leads (recovery waits for approvals), another replica stands by; `responder watch`'s session, started by an
on-call user, attaches to it instead of refusing; the Tenant CRD deleted, the TUI shows the guard's incident live;
its confirmation modal becomes an approval on the Incident with the on-call's identity, and the guard runs the
step. The audit log shows no other write by the on-call's user. Then the on-call takes the Lease over (`T`,
confirmed in the modal): the Lease names the TUI, the leader stops and exits (6) and, restarted as its pod would
be, stands by with the other replica (both `responder_leader 0`); no replica writes after the takeover (audit
log); the TUI resumes the guard's incident and runs the next recovery step itself, as the on-call."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import Input

from responder.cluster.kubeconfig import load_cluster_access
from responder.cluster.lease import RETRY_PERIOD, parse_time
from responder.errors import EXIT_LEASE_HELD
from responder.lab.apply import bind_cluster_admin
from responder.lab.incident import persisted_writes_by
from responder.lab.seed import seed
from responder.response.incident_object import INCIDENT_RESOURCE, INCIDENTS_PATH
from responder.response.session import Session, SessionOptions, resolve_runbook
from responder.tui.app import ResponderApp, TuiConfirmer
from responder.tui.screens.confirm import ConfirmScreen

from ..tui.conftest import screen_text as text_of
from ..tui.conftest import wait_until as until
from .incident_helpers import trigger
from .test_guard import LEASE_PATH, fresh_incident_lab, guard_kubeconfig, poll, sa_user, start_guard

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

KEY_NAMES = {"-": "minus", ".": "full_stop", " ": "space"}
ONCALL = "oncall-alice"


async def test_the_tui_attaches_to_the_guards_incident_approves_a_step_and_takes_over(lab_manager, tmp_path):
    lab = await fresh_incident_lab(lab_manager)
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=3, namespaces_per_tenant=3, prefix="attach", with_content=False)
        kubeconfig = await guard_kubeconfig(lab, admin, "guard", tmp_path)
        await bind_cluster_admin(admin, ONCALL)
    oncall_kubeconfig = lab.mint_user(ONCALL)
    guard = start_guard("a", kubeconfig, tmp_path)  # recovery: approval (the default)
    guards = [guard]
    session: Session | None = None
    try:
        guard.wait_for("leading")
        standby = start_guard("b", kubeconfig, tmp_path)  # the second replica (same ServiceAccount, as the chart's)
        guards.append(standby)
        async with lab.admin_client() as admin:
            transitions = (await admin.get(LEASE_PATH))["spec"].get("leaseTransitions", 0)
        since = time.time()  # the on-call's writes from here: the preflight's included
        confirmer = TuiConfirmer()
        session = Session(load_cluster_access(str(oncall_kubeconfig)),
                          SessionOptions(runbook=resolve_runbook(None), journal_dir=tmp_path / "tui-journal",
                                         auto=True, yes=False), confirmer=confirmer)
        await session.preflight(attach=True)  # where a guard leads: attached, not refused
        guard_identity = guard.identity()
        assert session.attached_to == guard_identity and session.leadership is None
        assert session.identity == ONCALL
        place = session.attached_to.split("/")[1]
        app = ResponderApp(session, confirmer=confirmer, cursor_blink=False)
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.model.phase == "watching", 60, "WATCHING")
            await app.settle()
            await pilot.pause()
            text = text_of(app)
            assert f"ATTACHED to guard {place}" in text and "mode attached" in text, text

            await trigger(lab)
            # The guard contains on its own; the TUI shows its Incident, then asks for the step it waits on.
            await until(pilot, lambda: app.model.guard_incident != "", 120, "the guard's Incident")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen)
                        or app.model.phase in ("recovered", "not-recovered", "not-contained"), 300,
                        "the approval modal")
            assert isinstance(app.screen, ConfirmScreen), (app.model.phase, app.model.phase_detail)
            step = app.screen.request.step
            name = app.model.guard_incident
            async with lab.admin_client() as admin:
                incident = await admin.get(f"{INCIDENTS_PATH}/{name}")
            status = incident["status"]
            assert status["phase"] == "WaitingForApproval" and status["waitingFor"] == step, status
            assert all(s["status"] == "finished" for s in status["steps"] if s["phase"] == "contain"), status
            assert app.model.waiting_confirmation == step
            await app.settle()
            await pilot.pause()
            text = text_of(app)
            assert "RECOVERING" in text and f"waiting for approval of {step}" in text, text
            assert app.model.guard_counts.get("detached", 0) > 0, app.model.guard_counts
            # The table: the namespaces the guard detached show as detached (its snapshot and the cluster say so).
            await until(pilot, lambda: all(app.model.rows.get(ns) is not None and app.model.rows[ns].state
                                           == "detached" for ns in seeded.namespaces), 30, "rows detached")
            print(f"\nattached TUI: the guard {place} contained ({app.model.guard_counts}); asked to approve {step}")
            print("\n".join(text.splitlines()[:3]))

            await pilot.pause(0.3)  # the modal focuses its input once mounted
            await pilot.press(*[KEY_NAMES.get(c, c) for c in step])
            assert app.screen.query_one(Input).value == step
            await pilot.press("enter")

            # The approval is on the Incident with the on-call's identity, and the guard runs the step.
            async def step_ran() -> dict | None:
                async with lab.admin_client() as admin:
                    current = await admin.get(f"{INCIDENTS_PATH}/{name}")
                status = current.get("status") or {}
                ran = [s for s in status.get("steps") or [] if s.get("id") == step]
                # The guard records the step started and the approval it acted on in its status (not always in
                # one write): wait for both.
                recorded = any(a.get("step") == step for a in status.get("approvals") or [])
                return current if ran and ran[0].get("status") in ("running", "finished") and recorded else None

            deadline = time.monotonic() + 120
            current = await step_ran()
            while current is None and time.monotonic() < deadline:
                await pilot.pause(0.5)
                current = await step_ran()
            assert current is not None, guard.stderr()[-3000:]
            approvals = current["spec"]["approvals"]
            assert [(a["step"], a["approver"]) for a in approvals] == [(step, ONCALL)], approvals
            assert any(a["step"] == step and a["approver"] == ONCALL for a in current["status"]["approvals"])
            await until(pilot, lambda: step in app.model.approvals, 30, "the approval shown")
            assert any(f"step {step} approved by {ONCALL}" in line.detail for line in app.model.feed)
            assert not session.incident_opened.is_set() and session.journal is None  # it ran nothing itself

            # The audit log: the approval is the on-call's only write. (The lab does not audit Leases: the Lease
            # still names the guard, with the transitions it had, so the TUI never took it.)
            await pilot.pause(1.0)  # a request's audit event is written once its answer completes
            writes = persisted_writes_by(lab.audit_log, ONCALL, since=since)
            assert [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name")) for e in writes] == [
                ("patch", INCIDENT_RESOURCE, name)], writes
            async with lab.admin_client() as admin:
                lease = (await admin.get(LEASE_PATH))["spec"]
            assert lease["holderIdentity"] == guard.identity() and lease.get("leaseTransitions", 0) == transitions, \
                lease

            # -- taking over: the guard waits on its next step; the on-call takes the Lease instead ------------
            takeover_part = time.monotonic()
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.request.step != step,
                        120, "the guard waiting on its next step")
            following = app.screen.request.step
            await pilot.press("escape")  # not approved: this TUI will run it itself
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), 10, "the approval refused")
            standby.wait_for("standby")
            asked_at = time.monotonic()
            await pilot.press("T")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the takeover modal")
            request = app.screen.request
            assert request.step == "take-over" and f"from the guard {place}" in request.summary, request.summary
            assert f"Incident {name}" in request.summary and "stand by" in request.summary, request.summary
            await pilot.pause(0.3)
            await pilot.press(*[KEY_NAMES.get(c, c) for c in "take-over"])
            await pilot.press("enter")
            await until(pilot, lambda: app.taken_over is not None or app.failure is not None, 60, "taken over")
            assert app.failure is None and session.leadership is not None, app.failure
            me = session.leadership.elector.me
            async with lab.admin_client() as admin:
                lease = (await admin.get(LEASE_PATH))["spec"]
            assert lease["holderIdentity"] == me and lease["leaseTransitions"] == transitions + 1, lease
            taken_at = parse_time(lease["acquireTime"])  # the takeover instant (this machine's clock)
            assert taken_at is not None

            # The leader reads the TUI's name at its next renewal: it stops writing and exits (6).
            assert await asyncio.to_thread(poll, lambda: guard.proc.poll() is not None, 30), guard.stderr()[-3000:]
            stopped_s = time.time() - taken_at  # an upper bound: polled
            assert guard.proc.returncode == EXIT_LEASE_HELD, guard.stderr()[-3000:]
            assert f"lost the Lease to {me}" in guard.stderr(), guard.stderr()[-3000:]
            assert stopped_s <= 2 * RETRY_PERIOD + 6, stopped_s
            restarted = start_guard("a2", kubeconfig, tmp_path)  # as its pod's kubelet restarts it
            guards.append(restarted)

            # This TUI leads: the guard's incident resumed, its next step asked here and run as the on-call.
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 120, "the TUI's own confirmation")
            led_s = time.monotonic() - asked_at
            assert app.screen.request.step == following, (app.screen.request, following)
            await app.settle()
            await pilot.pause()
            text = text_of(app)
            assert f"LEADING (took over from guard {place})" in text and "ATTACHED" not in text, text
            assert session.journal is not None and session.journal.incident_id == incident["spec"]["incidentId"]
            taken = [r for r in session.journal.records() if r["kind"] == "leadership"]
            assert [(r["event"], r["holder"], r["previous_holder"]) for r in taken] == [
                ("taken-over", me, guard_identity)], taken
            await pilot.pause(0.3)
            await pilot.press(*[KEY_NAMES.get(c, c) for c in following])
            await pilot.press("enter")
            await until(pilot, lambda: session.journal.step_state().get(following) in ("finished", "failed"), 180,
                        f"{following} run by the TUI")
            assert session.journal.step_state()[following] == "finished", session.journal.step_state()
            print(f"attached TUI: took the Lease over; the guard stopped {stopped_s:.1f}s later; {following} asked "
                  f"here {led_s:.1f}s after T; run in {time.monotonic() - asked_at - led_s:.1f}s")

            restarted.wait_for("standby")
            assert restarted.leader_metric() == 0.0 and standby.leader_metric() == 0.0
            await pilot.pause(1.0)  # the audit events of the last answers
            assert persisted_writes_by(lab.audit_log, sa_user("guard"), since=taken_at) == []  # no replica wrote
            ours = [e for e in persisted_writes_by(lab.audit_log, ONCALL, since=taken_at)
                    if e["objectRef"].get("resource") != INCIDENT_RESOURCE]
            assert ours, f"no write of {following} by {ONCALL}"
            async with lab.admin_client() as admin:
                current = await admin.get(f"{INCIDENTS_PATH}/{name}")
            ran = next(s for s in current["status"]["steps"] if s["id"] == following)
            assert current["status"]["leader"] == me and ran["leader"] == me, current["status"]
            app.exit(0)
        await session.close()  # releases the Lease: a replica leads again and carries the incident on
        session = None
        assert await asyncio.to_thread(poll, lambda: 1.0 in (restarted.leader_metric(), standby.leader_metric()),
                                       2 * RETRY_PERIOD + 5)
        print(f"attached TUI: the takeover part took {time.monotonic() - takeover_part:.1f}s")
    finally:
        if session is not None:
            await session.close()
        for each in guards:
            if each.proc.poll() is None:
                each.proc.kill()
                each.proc.wait()
