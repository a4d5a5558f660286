"""The TUI on the lab (Pilot `run_test`): a real incident driven from the app, confirmation modals that
hold each destructive recovery step until answered, and the table and runbook panel reaching the end state."""

from __future__ import annotations

import asyncio
import re

import pytest
from textual.widgets import Input

from responder.incident import triage
from responder.cluster.kubeconfig import load_cluster_access
from responder.lab.apply import bind_cluster_admin
from responder.lab.seed import seed
from responder.lab.velero import create_backup
from responder.incident.observe import TENANTS_PATH
from responder.response.session import Session, SessionOptions, resolve_runbook
from responder.tui.app import ResponderApp, TuiConfirmer
from responder.tui.screens.confirm import ConfirmScreen

from ..tui.conftest import screen_text as text_of
from ..tui.conftest import wait_until as until
from .incident_helpers import trigger

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1200)]

KEY_NAMES = {"-": "minus", ".": "full_stop", " ": "space"}  # Textual's key names for these characters
RECOVER_CONFIRMED = ("wait-lost-gone", "recreate-tenants", "restore", "readopt", "restore-capsule")


async def test_real_incident_driven_from_the_tui_to_readopted(lab_manager, tmp_path):
    lab = await lab_manager.get("0.14", fresh=True, velero=True)
    kubeconfig = lab.mint_user("responder")
    async with lab.admin_client() as admin:
        await bind_cluster_admin(admin, "responder")
        seeded = await seed(admin, tenants=4, namespaces_per_tenant=3)
        await create_backup(admin, "before-the-incident")
    # tenant-001's namespaces are deleted (while responder watches) just before the CRD: lost, restored by Velero.
    lost = [ns for ns in seeded.namespaces if ns.startswith("tenant-001-")]

    confirmer = TuiConfirmer()
    session = Session(load_cluster_access(str(kubeconfig)),
                      SessionOptions(runbook=resolve_runbook(None), journal_dir=tmp_path / "journal", auto=True,
                                     yes=False), confirmer=confirmer)
    await session.preflight()
    app = ResponderApp(session, confirmer=confirmer, cursor_blink=False)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.model.phase == "watching", 60, "WATCHING")
            async with lab.admin_client() as admin:
                await asyncio.gather(*(admin.delete(f"/api/v1/namespaces/{ns}") for ns in lost))
            await trigger(lab)
            # Containment runs on its own (auto); recovery's writes each wait in a modal.
            for step in RECOVER_CONFIRMED:
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) or app.model.phase in
                            ("recovered", "not-recovered", "error"), 600, f"the {step} confirmation")
                assert isinstance(app.screen, ConfirmScreen), (app.model.phase, app.model.phase_detail)
                request = app.screen.request
                assert request.step == step
                assert app.model.waiting_confirmation == step
                # The modal lists the writes the step is about to make.
                writes = "\n".join(request.writes)
                if step == "recreate-tenants":
                    assert all(f"create Tenant {t} " in writes for t in seeded.tenants), writes
                    await until(pilot, lambda: "create Tenant " in text_of(app), 10, "the writes shown in the modal")
                elif step == "restore":
                    counts = [int(n) for n in re.findall(r"create Velero Restore \S+ from backup \S+: (\d+) namespaces",
                                                         writes)]
                    assert counts and sum(counts) == len(lost), writes  # from the rescue and/or the chosen backup
                elif step == "readopt":
                    assert all(f"namespace {ns}'s ownerReference" in writes for ns in seeded.namespaces), writes
                elif step == "restore-capsule":
                    assert "capsule-controller-manager to 1 replicas" in writes, writes
                if step == "recreate-tenants":
                    assert "CONTAINED" in text_of(app) or app.model.steps["detach"].status == "finished"
                    # The modal blocks the step: nothing is written while it waits.
                    await pilot.pause(2.0)
                    async with lab.admin_client() as admin:
                        try:
                            tenants = (await admin.get(TENANTS_PATH))["items"]
                        except Exception:  # the Tenant type itself is gone until the step recreates it
                            tenants = []
                    assert tenants == [], "a Tenant was recreated before the operator confirmed"
                    assert app.model.steps[step].status != "finished"
                await pilot.pause(0.3)  # the modal focuses its input once mounted
                await pilot.press(*[KEY_NAMES.get(c, c) for c in request.answer])
                typed = app.screen.query_one(Input).value
                assert typed == request.answer, (typed, request.answer)
                await pilot.press("enter")
                await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen)
                            or app.screen.request.step != step, 30, f"{step} accepted")
            await until(pilot, lambda: app.model.phase in ("recovered", "not-recovered", "error"), 900, "recovery")
            await app.settle()
            await pilot.pause()
            assert app.model.phase == "recovered", app.model.phase_detail
            assert {r["kind"] for r in session.journal.records()} >= {"recovery-restore"}
            states = {ns: app.model.rows[ns].state for ns in seeded.namespaces}
            assert set(states.values()) == {"re-adopted"}, states
            steps = {sid: s.status for sid, s in app.model.steps.items()}
            assert all(status == "finished" for status in steps.values()), steps
            text = text_of(app)
            assert "RECOVERED" in text and f"re-adopted {len(seeded.namespaces)}" in text, text
            assert app.exit_code == 0
            app.exit(0)
    finally:
        await session.close()

    async with lab.admin_client() as admin:
        live = {n["metadata"]["name"]: n for n in (await admin.get("/api/v1/namespaces"))["items"]}
        tenants = {t["metadata"]["name"]: t for t in (await admin.get(TENANTS_PATH))["items"]}
    for ns in seeded.namespaces:
        owner = tenants[ns.rsplit("-ns-", 1)[0]]
        assert any(ref.get("uid") == owner["metadata"]["uid"] for ref in triage.tenant_refs(live[ns])), ns
