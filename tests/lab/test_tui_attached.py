"""The TUI attached to the guard's incident, on the lab (Capsule 0.14, no Velero; Pilot `run_test`): a guard
leads (recovery waits for approvals); `responder watch`'s session, started by an on-call user, attaches to it
instead of refusing; the Tenant CRD deleted, the TUI shows the guard's incident live; its confirmation modal
becomes an approval on the Incident with the on-call's identity, and the guard runs the step. The audit log
shows no other write by the on-call's user."""

from __future__ import annotations

import asyncio
import time

import pytest
from textual.widgets import Input

from responder.cluster.kubeconfig import load_cluster_access
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
from .test_guard import LEASE_PATH, fresh_incident_lab, guard_kubeconfig, start_guard

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

KEY_NAMES = {"-": "minus", ".": "full_stop", " ": "space"}
ONCALL = "oncall-alice"


async def test_the_tui_attaches_to_the_guards_incident_and_approves_a_step(lab_manager, tmp_path):
    lab = await fresh_incident_lab(lab_manager)
    async with lab.admin_client() as admin:
        seeded = await seed(admin, tenants=3, namespaces_per_tenant=3, prefix="attach", with_content=False)
        kubeconfig = await guard_kubeconfig(lab, admin, "guard", tmp_path)
        await bind_cluster_admin(admin, ONCALL)
    oncall_kubeconfig = lab.mint_user(ONCALL)
    guard = start_guard("a", kubeconfig, tmp_path)  # recovery: approval (the default)
    session: Session | None = None
    try:
        guard.wait_for("leading")
        async with lab.admin_client() as admin:
            transitions = (await admin.get(LEASE_PATH))["spec"].get("leaseTransitions", 0)
        since = time.time()  # the on-call's writes from here: the preflight's included
        confirmer = TuiConfirmer()
        session = Session(load_cluster_access(str(oncall_kubeconfig)),
                          SessionOptions(runbook=resolve_runbook(None), journal_dir=tmp_path / "tui-journal",
                                         auto=True, yes=False), confirmer=confirmer)
        await session.preflight(attach=True)  # where a guard leads: attached, not refused
        assert session.attached_to == guard.identity() and session.leadership is None
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
            app.exit(0)
        await session.close()
        session = None

        # The audit log: the approval is the on-call's only write. (The lab does not audit Leases: the Lease
        # still names the guard, with the transitions it had, so the TUI never took it.)
        await asyncio.sleep(1.0)  # a request's audit event is written once its answer completes
        writes = persisted_writes_by(lab.audit_log, ONCALL, since=since)
        assert [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name")) for e in writes] == [
            ("patch", INCIDENT_RESOURCE, name)], writes
        async with lab.admin_client() as admin:
            lease = (await admin.get(LEASE_PATH))["spec"]
        assert lease["holderIdentity"] == guard.identity() and lease.get("leaseTransitions", 0) == transitions, lease
    finally:
        if session is not None:
            await session.close()
        if guard.proc.poll() is None:
            guard.proc.kill()
            guard.proc.wait()
