"""The TUI attached to a guard that leads the cluster: the model follows the guard's Incident (phase, steps,
counts, approvals, the step waiting), and the app (Pilot, on a replayed cluster) says it is attached, shows
the guard's incident live, and turns a confirmed modal into one approval; it runs no step of its own."""

from __future__ import annotations

import asyncio
from typing import Any

from responder.cluster.watch import MODIFIED
from responder.response.attach import GuardView
from responder.tui.app import ResponderApp
from responder.tui.replay import ReplaySession, idle_scenario, namespace_obj
from responder.tui.screens.confirm import ConfirmScreen

from .conftest import frozen_clock, screen_text, wait_until
from .test_state import TS, ev, listed, new_model, states

GUARD = "guard/responder-guard-7c9d-x2/3f2a1b.1.ab12cd"
STANDBY = "guard/responder-guard-7c9d-q8/3f2a1b.1.ee34ff"
KEY_NAMES = {"-": "minus"}


def guard_incident(phase: str, *, waiting: str | None = None, approvals: list | None = None,
                   steps: list | None = None, counts: dict | None = None, leader: str = GUARD) -> dict[str, Any]:
    return {"metadata": {"name": "inc-20261202t100000z-ab12", "creationTimestamp": "2026-12-02T10:00:00Z"},
            "spec": {"incidentId": "inc-20261202T100000Z-ab12", "recovery": "approval",
                     "trigger": {"kind": "crd-deleting", "reason": "the Tenant CRD is being deleted",
                                 "event_received": 1_700_000_000.0},
                     "approvals": list(approvals or [])},
            "status": {"phase": phase, "leader": leader, "waitingFor": waiting,
                       "approvalSteps": ["recreate-tenants", "readopt"],
                       "namespaces": counts or {"detached": 4, "safe": 1, "protected": 1},
                       "steps": steps if steps is not None else [
                           {"id": "breaker", "phase": "contain", "status": "finished", "summary": "Capsule at 0",
                            "startedAt": "2026-12-02T10:00:00Z", "finishedAt": "2026-12-02T10:00:01Z"},
                           {"id": "detach", "phase": "contain", "status": "finished", "summary": "4 detached",
                            "startedAt": "2026-12-02T10:00:01Z", "finishedAt": "2026-12-02T10:00:02Z"}]}}


# -- the model ------------------------------------------------------------------------------------


def test_the_model_follows_the_guards_incident():
    model = new_model(steps=[("breaker", "trip-breaker", ""), ("detach", "detach-namespaces", "")])
    model.set_attached(GUARD)
    assert model.attached_place == "responder-guard-7c9d-x2" and model.mode() == "attached"
    model.apply_guard_incident(guard_incident("Contained"), at=1000.0)
    assert model.incident is not None and model.incident.id == "inc-20261202T100000Z-ab12"
    assert model.incident.kind == "crd-deleting" and model.incident.at == 1_700_000_000.0
    assert model.phase == "contained"
    assert model.phase_detail == "Contained (guard responder-guard-7c9d-x2); detached 4"
    assert {sid: s.status for sid, s in model.steps.items()} == {
        "breaker": "finished", "detach": "finished", "recreate-tenants": "pending", "readopt": "pending"}
    assert model.waiting_confirmation is None

    model.apply_guard_incident(guard_incident("WaitingForApproval", waiting="recreate-tenants"), at=1001.0)
    assert model.phase == "recovering" and model.waiting_confirmation == "recreate-tenants"
    assert "waiting for approval of recreate-tenants" in model.phase_detail
    assert model.steps["recreate-tenants"].status == "waiting"

    approval = {"step": "recreate-tenants", "approver": "oncall@example.com", "approvedAt": "2026-12-02T10:05:00Z"}
    model.apply_guard_incident(guard_incident("Recovering", approvals=[approval]), at=1001.5)
    assert model.waiting_confirmation is None  # approved: the guard has not started it yet
    assert (model.steps["recreate-tenants"].status, model.steps["recreate-tenants"].note) == ("pending", "approved")
    running = [*guard_incident("Recovering")["status"]["steps"],
               {"id": "recreate-tenants", "phase": "recover", "status": "running", "startedAt": "2026-12-02T10:05:01Z"}]
    model.apply_guard_incident(guard_incident("Recovering", approvals=[approval], steps=running), at=1002.0)
    assert model.waiting_confirmation is None and model.steps["recreate-tenants"].status == "running"
    assert model.approvals == {"recreate-tenants": "oncall@example.com"}
    notes = [line.detail for line in model.feed]
    assert "step recreate-tenants approved by oncall@example.com at 2026-12-02T10:05:00Z" in notes
    assert "Incident inc-20261202t100000z-ab12: WaitingForApproval (recreate-tenants)" in notes

    # A failover: the standby leads now (the Lease and the Incident say so).
    model.set_attached(STANDBY, at=1003.0)
    assert model.attached_place == "responder-guard-7c9d-q8" and model.feed[-1].alert
    model.apply_guard_incident(guard_incident("Failed", leader=STANDBY, steps=running), at=1004.0)
    assert model.phase == "not-recovered" and model.phase_detail.startswith("Failed (guard responder-guard-7c9d-q8)")


def test_namespaces_the_guard_detached_show_as_detached():
    """The guard's journal is on its own disk: its snapshot (who owned what) and the namespaces now say it."""
    model = listed(new_model(), crd_deleting=TS)
    model.set_attached(GUARD)
    model.flush()
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-0", "alpha", rv=3, owned=False)))
    model.mark_guard_detached({"alpha-0": "alpha", "alpha-1": "alpha", "gone": "alpha"})
    model.flush()
    assert model.detached == {"alpha-0": "alpha"}  # alpha-1 still carries its Tenant reference: at risk
    assert states(model)["alpha-0"] == "detached" and states(model)["alpha-1"] == "at-risk"


# -- the app --------------------------------------------------------------------------------------


class ScriptedGuard:
    """The follower: what the guard's Lease and Incident say now (the test moves it along)."""

    def __init__(self) -> None:
        self.holder = GUARD
        self.incident: dict[str, Any] | None = None
        self.looks = 0

    async def look(self) -> GuardView:
        self.looks += 1
        return GuardView(self.holder, self.incident)


async def test_attached_the_tui_shows_the_guards_incident_and_its_confirmation_is_an_approval(tmp_path):
    session = ReplaySession(idle_scenario(), journal_dir=tmp_path / "journal", clock=frozen_clock, speed=0)
    session.attached_to = GUARD  # type: ignore[attr-defined]  # as Session.preflight(attach=True) sets it
    guard = ScriptedGuard()
    approved: list[tuple[Any, str, str, bool]] = []

    async def approve(client, name: str, step: str, *, dry_run: bool) -> dict[str, Any]:
        approved.append((client, name, step, dry_run))
        approval = {"step": step, "approver": session.identity, "approvedAt": "2026-12-02T10:05:00Z"}
        guard.incident = guard_incident("Recovering", approvals=[approval])
        return {"incident": name, "step": step, "already": False, "dry_run": dry_run, **approval}

    app = ResponderApp(session, clock=frozen_clock, cursor_blink=False, follower=guard, approve=approve,
                       attach_poll=0.02)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.model.phase == "watching" and guard.looks > 0, what="watching")
        await app.settle()
        await pilot.pause()
        text = screen_text(app)
        assert "ATTACHED to guard responder-guard-7c9d-x2" in text and "mode attached" in text, text
        assert "the guard responder-guard-7c9d-x2 leads" in text, text

        # The guard contains: shown live from its Incident.
        guard.incident = guard_incident("Contained")
        await wait_until(pilot, lambda: app.model.phase == "contained", what="the guard's Contained")
        await app.settle()
        await pilot.pause()
        text = screen_text(app)
        assert "CONTAINED" in text and "inc-20261202T100000Z-ab12" in text, text
        assert "Contained (guard responder-guard-7c9d-x2); detached 4" in text, text

        # It waits for an approval: the modal asks; refused, nothing is written and the guard keeps waiting.
        guard.incident = guard_incident("WaitingForApproval", waiting="recreate-tenants")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the approval modal")
        await pilot.pause(0.3)
        assert app.screen.request.step == "recreate-tenants" and app.screen.request.answer == "recreate-tenants"
        assert app.screen.request.writes == (f"add {{step: recreate-tenants, approver: {session.identity}}} to "
                                             "spec.approvals of Incident inc-20261202t100000z-ab12",)
        text = screen_text(app)
        assert "spec.approvals" in text and "Confirm step recreate-tenants" in text, text
        assert app.screen.request.summary.startswith("The guard responder-guard-7c9d-x2 waits for the approval of")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="refused")
        await pilot.pause(0.3)  # several looks later: not asked again on its own
        assert approved == [] and not isinstance(app.screen, ConfirmScreen)
        assert any("approval of recreate-tenants refused" in line.detail for line in app.model.feed)
        await app.settle()
        await pilot.pause()
        assert "waiting for approval of recreate-tenants" in screen_text(app)  # the banner says so
        assert app.model.waiting_confirmation == "recreate-tenants"

        # `a` asks again; confirmed, it is approved (once), as the on-call, and the guard goes on.
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the modal again")
        await pilot.pause(0.3)
        await pilot.press(*[KEY_NAMES.get(c, c) for c in "recreate-tenants"])
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.model.phase_detail.startswith("Recovering"), what="Recovering")
        assert [(name, step, dry) for _, name, step, dry in approved] == [
            ("inc-20261202t100000z-ab12", "recreate-tenants", False)]
        assert approved[0][0] is session.client  # the session's own credentials: the on-call's identity
        assert app.model.waiting_confirmation is None
        assert any(f"step recreate-tenants approved by {session.identity}" in line.detail for line in app.model.feed)
        await pilot.pause(0.2)
        assert len(approved) == 1 and not isinstance(app.screen, ConfirmScreen)

        # Attached, the TUI ran nothing itself: no incident of its own, no containment, no journal.
        assert not session.incident_opened.is_set() and session.journal is None and not session.contain_finished
        await pilot.press("u")  # undo writes: refused while attached
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("q")  # the guard handles the incident whether this TUI runs or not: quits at once
        await asyncio.sleep(0)
    assert app.return_code == 0


# -- taking over -----------------------------------------------------------------------------------


class FakeTakeover:
    """What `take_over_from_guard` leaves running (responder.guard.takeover.TakenOver), recorded."""

    def __init__(self, previous: str) -> None:
        self.previous = previous
        self.finished: list[int] = []
        self.closed = 0

    async def finish(self, code: int) -> None:
        self.finished.append(code)

    async def close(self) -> None:
        self.closed += 1


async def test_not_attached_taking_over_is_refused_with_one_message(make_app):
    app, session = make_app(idle_scenario())
    calls: list[Any] = []

    async def take_over(*args: Any) -> Any:
        calls.append(args)

    app.take_over = take_over
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.model.phase == "watching", what="watching")
        assert "Take over" not in screen_text(app)  # the key is offered only while attached
        await pilot.press("T")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, ConfirmScreen) and calls == []
        assert not any(line.detail.startswith("take over refused") for line in app.model.feed)  # the key is inert
        app.action_take_over()  # as the command palette's "Take over from the guard" calls it
        await pilot.pause(0.1)
        assert not isinstance(app.screen, ConfirmScreen) and calls == []
        refusals = [line.detail for line in app.model.feed if line.detail.startswith("take over refused")]
        assert refusals == ["take over refused: this responder is not attached to a guard: it is the cluster's "
                            "writer itself, or another one holds the Lease (it refused at start); there is nothing "
                            "to take over"], refusals
        await pilot.press("q")


async def test_attached_taking_over_asks_first_cancel_changes_nothing_confirm_leads(tmp_path):
    from responder.incident.detect import Trigger
    from responder.tui.replay import ReplayJournal

    session = ReplaySession(idle_scenario(), journal_dir=tmp_path / "journal", clock=frozen_clock, speed=0)
    session.attached_to = GUARD  # type: ignore[attr-defined]
    guard = ScriptedGuard()
    guard.incident = guard_incident("WaitingForApproval", waiting="recreate-tenants")
    calls: list[tuple[Any, str]] = []
    taken = FakeTakeover(GUARD)

    async def take_over(sess: Any, holder: str) -> FakeTakeover:
        calls.append((sess, holder))
        # As take_over_from_guard leaves the session: no longer attached, the guard's incident open here.
        sess.attached_to = ""
        sess.trigger = Trigger("crd-deleting", "the Tenant CRD is being deleted", frozen_clock())
        sess.journal = ReplayJournal(tmp_path / "journal", "inc-20261202T100000Z-ab12", frozen_clock, [])
        sess.incident_opened.set()
        return taken

    async def approve(*args: Any, **kw: Any) -> dict[str, Any]:
        raise AssertionError("no approval is written in this test")

    app = ResponderApp(session, clock=frozen_clock, cursor_blink=False, follower=guard, approve=approve,
                       attach_poll=0.02, take_over=take_over)
    async with app.run_test(size=(120, 40)) as pilot:
        # The guard waits for an approval: its modal comes first; refused, the guard keeps waiting.
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the approval modal")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="refused")

        # T (in the footer while attached) asks first, naming the guard's pod, the incident and what it means.
        assert "Take over" in screen_text(app), screen_text(app)
        await pilot.press("T")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the takeover modal")
        await pilot.pause(0.3)
        request = app.screen.request
        assert (request.step, request.answer) == ("take-over", "take-over")
        for words in ("from the guard responder-guard-7c9d-x2", "inc-20261202T100000Z-ab12",
                      "Incident inc-20261202t100000z-ab12", "stop writing and stand by", "the one writer for the "
                      "cluster", "until you quit it and it releases the Lease"):
            assert words in request.summary, (words, request.summary)
        assert request.writes[0] == f"update Lease responder-system/responder: holderIdentity {GUARD} -> this TUI " \
                                    f"(as {session.identity})"
        text = screen_text(app)
        assert "Confirm step take-over" in text and "LIVE" in text, text
        # A stray key does not confirm: Enter with nothing typed rings the bell; Escape cancels.
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen) and calls == []
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="cancelled")
        await pilot.pause(0.2)
        assert calls == [] and app.attached_to == GUARD and app.model.attached == GUARD
        assert session.attached_to == GUARD and not session.incident_opened.is_set()
        assert any("take over refused: the guard responder-guard-7c9d-x2 keeps leading" == line.detail
                   for line in app.model.feed)
        await app.settle()
        await pilot.pause()
        assert "ATTACHED to guard responder-guard-7c9d-x2" in screen_text(app)

        # Confirmed (the answer typed): the takeover runs once, and the TUI leads the incident itself.
        await pilot.press("T")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the takeover modal again")
        await pilot.pause(0.3)
        await pilot.press(*[KEY_NAMES.get(c, c) for c in "take-over"])
        await pilot.press("enter")
        await wait_until(pilot, lambda: session.contain_finished, what="containment resumed here")
        await wait_until(pilot, lambda: app.model.phase == "contained", what="led here")
        assert calls == [(session, GUARD)]
        assert app.attached_to == "" and app.model.attached == "" and app.taken_over is taken
        assert taken.finished == [0]
        await app.settle()
        await pilot.pause()
        text = screen_text(app)
        assert "LEADING (took over from guard responder-guard-7c9d-x2)" in text and "ATTACHED" not in text, text
        assert "mode auto" in text, text
        assert any(line.detail.startswith("took the writer Lease over from the guard responder-guard-7c9d-x2")
                   for line in app.model.feed)
        looks = guard.looks
        await pilot.pause(0.2)
        assert guard.looks == looks  # the guard's Incident is no longer followed: this TUI leads it
        assert "Take over" not in text  # not attached any more: no longer offered, and refused
        await pilot.press("T")
        app.action_take_over()
        await pilot.pause(0.1)
        assert not isinstance(app.screen, ConfirmScreen) and len(calls) == 1
        assert app.model.feed[-1].detail.startswith("take over refused: this responder is not attached")
        app.exit(0)
    assert taken.closed == 1
