"""The app driven with Pilot on a replayed session: confirmation, help, quit, dry-run, plan, undo."""

from __future__ import annotations

import asyncio
import json

from textual.widgets import Button, DataTable, Input

from responder.incident.engine import ConfirmationRequest
from responder.tui.app import ResponderApp, TuiConfirmer
from responder.tui.replay import FIXED_EPOCH, ReplaySession, demo_scenario, idle_scenario, namespace_obj
from responder.tui.screens.confirm import ConfirmScreen, QuitScreen
from responder.tui.screens.help import HelpScreen
from responder.tui.screens.plan import PlanScreen
from responder.tui.widgets.triage_table import TriageTable

from .conftest import screen_text, wait_until

REQUEST = ConfirmationRequest("terminating", "handle-terminating",
                              "finalize 2 Terminating namespaces that still hold 14 objects "
                              "(their content stays orphaned in etcd)", ("tenant-a-ns-00", "tenant-b-ns-01"), "2")


async def started(app: ResponderApp, pilot, phase: str = "watching") -> None:
    await wait_until(pilot, lambda: app.model.phase == phase, what=f"phase {phase}")
    await app.settle()
    await pilot.pause()


# -- the main screen ------------------------------------------------------------------------------


async def test_idle_screen_shows_header_table_and_feed(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app, pilot)
        table = app.query_one(TriageTable)
        assert table.row_count == 102 + 13, "102 namespaces and 13 tenant group rows (12 tenants, no tenant)"
        text = screen_text(app)
        assert "ctx lab-capsule-0.14" in text and "as system:serviceaccount:responder:responder" in text
        assert "Capsule v0.14.0" in text and "mode auto" in text and "ARMED" in text
        assert "WATCHING" in text
        assert "▾ tenant-a (8)" in text and "tenant-a-ns-00" in text
        assert "102 ns  safe 96  protected 6" in text
        assert "SYNCED   namespaces  listed 102" in text
        assert "· breaker" in text and "(no incident journal yet)" in text


async def test_containment_end_to_end(make_app):
    app, session = make_app(demo_scenario())
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app, pilot, "contained")
        model = app.model
        assert dict(model.counts) == {"detached": 93, "protected": 6, "gone": 2, "terminating": 1}
        assert model.breaker()[0] == "verified"
        assert [s.id for s in model.steps.values()] == [s.id for s in session.runbook.steps if s.phase == "contain"]
        assert all(s.status == "finished" for s in model.steps.values())
        assert model.rows["tenant-c-ns-04"].state == "detached"
        text = screen_text(app)
        assert "CONTAINED" in text and "VERIFIED" in text and "✓ detach" in text
        assert "detached 93 namespaces" in text
        assert any("step terminating finished" in line for line in model.journal_tail)
        assert app.exit_code == 0


async def test_table_is_updated_in_place_and_offscreen_changes_show_when_scrolled_to(make_app):
    app, session = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        table = app.query_one(TriageTable)
        rows, structure = table.row_count, table._structure
        last = "tenant-l-ns-07"
        assert table.get_row_index(f"ns:{last}") > 60, "far below the visible rows"
        session.emit_watch(namespace_event(last, "tenant-l", terminating=True))
        await app.settle()
        await pilot.pause()
        assert (table.row_count, table._structure) == (rows, structure), "no row added, removed or re-sorted"
        assert str(table.get_cell(f"ns:{last}", "state")) == "terminating"
        table.move_cursor(row=table.get_row_index(f"ns:{last}"), animate=False)
        await pilot.pause()
        line = next(line for line in screen_text(app).splitlines() if last in line)
        assert "terminating" in line, line


def namespace_event(name: str, tenant: str, *, terminating: bool):
    from responder.cluster.watch import MODIFIED, WatchEvent

    return WatchEvent(MODIFIED, "namespaces",
                      namespace_obj(name, tenant, rv=7, terminating="2026-09-21T14:13:20Z" if terminating else None),
                      FIXED_EPOCH)


async def test_ten_thousand_rows_change_in_place(make_app):
    from responder.tui.bench import bench_scenario

    scenario, names = bench_scenario(10_000, 100)
    app, session = make_app(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await session.reached("bench", timeout=60)
        await wait_until(pilot, lambda: app.model.ready and not app.model.pending
                         and app.query_one(TriageTable).row_count == 10_100, timeout=60, what="10,000 rows")
        table = app.query_one(TriageTable)
        structure = table._structure
        from responder.cluster.watch import MODIFIED, WatchEvent
        from responder.incident.engine import EngineEvent

        for tenant, name in names[:1000]:
            session.emit_engine(EngineEvent("write", "detach", {"action": "detach", "target": name,
                                                                 "method": "PATCH", "dry_run": False}))
            session.emit_watch(WatchEvent(MODIFIED, "namespaces", namespace_obj(name, tenant, rv=3, owned=False)))
        await app.settle()
        await pilot.pause()
        assert app.model.counts == {"detached": 1000, "at-risk": 9000}
        assert table._structure == structure and table.row_count == 10_100
        assert str(table.get_cell(f"ns:{names[999][1]}", "state")) == "detached"
        assert str(table.get_cell(f"ns:{names[1000][1]}", "state")) == "at-risk"
        assert str(table.get_cell("tenant:tenant-000", "state")) == "100 detached"
        session.release("bench")


# -- confirmation -----------------------------------------------------------------------------------


async def test_confirm_modal_blocks_until_the_answer_is_typed(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        answer = asyncio.create_task(app.confirm(REQUEST))
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the modal")
        await pilot.pause()
        text = screen_text(app)
        assert "finalize 2 Terminating namespaces that still hold 14 objects" in text
        assert "2 writes:" in text and "tenant-a-ns-00" in text and "LIVE" in text
        confirm = app.screen.query_one("#confirm", Button)
        assert confirm.disabled
        await pilot.press("3")
        assert confirm.disabled, "a wrong answer keeps Confirm disabled"
        await pilot.press("enter")
        await pilot.pause()
        assert not answer.done() and isinstance(app.screen, ConfirmScreen), "Enter on a wrong answer does nothing"
        await pilot.click("#confirm")
        await pilot.pause()
        assert not answer.done(), "clicking the disabled button does nothing"
        await pilot.press("backspace", "2")
        assert not confirm.disabled
        await pilot.click("#confirm")
        assert await asyncio.wait_for(answer, 5) is True
        assert not isinstance(app.screen, ConfirmScreen)


async def test_confirm_modal_escape_refuses(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        answer = asyncio.create_task(app.confirm(REQUEST))
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the modal")
        await pilot.pause()
        await pilot.press("2")  # even with the right answer typed, Escape refuses
        await pilot.press("escape")
        assert await asyncio.wait_for(answer, 5) is False


async def test_engine_confirmations_go_through_the_modal(make_app):
    app, session = make_app(demo_scenario(confirm_steps=True))
    assert session.confirmer == app.confirm
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="breaker confirmation")
        await pilot.pause()
        assert app.screen.request.step == "breaker" and app.screen.request.answer == "breaker"
        assert app.model.waiting_confirmation == "breaker"
        await pilot.press(*"breaker", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.request.step == "detach",
                         what="detach confirmation")
        assert app.model.steps["breaker"].status == "finished"
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.model.steps["detach"].status == "skipped", what="detach refused")
        assert app.model.steps["detach"].summary == "not confirmed"
        assert app.model.rows["tenant-a-ns-05"].state == "at-risk", "a refused step writes nothing"
        answers = [json.loads(line)["answer"] for line in session.journal.path.read_text().splitlines()
                   if json.loads(line)["kind"] == "confirmation"]
        assert answers == ["yes", "no"]
        app.exit(0)


async def test_confirmer_refuses_when_no_app_runs():
    confirmer = TuiConfirmer()
    assert await confirmer(REQUEST) is False


# -- keys -------------------------------------------------------------------------------------------


async def test_question_mark_opens_help(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "toggle dry-run" in text and "command palette" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_quit_without_incident_exits_at_once(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == 0 and app.return_code == 0


async def test_quit_with_an_open_incident_asks_first(make_app):
    app, _ = make_app(demo_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot, "contained")
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        assert "Containment finished (contained)" in screen_text(app)
        await pilot.press("n")
        assert not isinstance(app.screen, QuitScreen) and app.is_running
        await pilot.press("q")
        await pilot.press("y")
        await pilot.pause()
    assert app.return_value == 0 and app.return_code == 0


async def test_quit_during_containment_exits_not_contained(make_app):
    app, session = make_app(demo_scenario(hold_mid_detach=True))
    async with app.run_test(size=(80, 24)) as pilot:
        await session.reached("mid-detach")
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        text = screen_text(app)
        assert "RUNNING" in text and "--resume" in text
        await pilot.press("y")
        await pilot.pause()
    assert app.return_value == 1 and app.return_code == 1


async def test_dry_run_toggles_only_before_an_incident(make_app):
    app, session = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await pilot.press("d")
        assert session.options.dry_run is True and session.client.dry_run is True, "options AND client"
        await app.settle()
        assert "mode dry-run" in screen_text(app)
        await pilot.press("d")
        assert session.options.dry_run is False and session.client.dry_run is False
    app, session = make_app(demo_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot, "contained")
        await pilot.press("d")
        assert session.options.dry_run is False and app.model.mode() == "auto"


async def test_dry_run_chosen_before_the_incident_is_used_by_it(make_app):
    scenario = demo_scenario()
    scenario.before_incident.insert(0, __import__("responder.tui.replay", fromlist=["Hold"]).Hold("before"))
    app, session = make_app(scenario)
    async with app.run_test(size=(120, 40)) as pilot:
        await session.reached("before")
        await pilot.press("d")
        session.release("before")
        await started(app, pilot, "dry-run-done")
        assert app.model.breaker() == ("armed", "dry run: nothing was tripped")
        assert app.model.counts.get("at-risk") == 93, "nothing was detached for real"
        assert app.exit_code == 0


async def test_plan_view(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app, pilot)
        await pilot.press("p")
        await wait_until(pilot, lambda: isinstance(app.screen, PlanScreen), what="the plan")
        await pilot.pause()
        plan = app.screen.plan
        assert plan["tenant_crd"] == "present" and plan["tenants"] == 12 and plan["capsule_replicas"] == 2
        assert plan["counts"]["safe"] == 96 and plan["counts"]["protected"] == 6
        assert [s["id"] for s in plan["steps"]] == [s.id for s in app.session.runbook.steps]
        assert app.screen.query_one(DataTable).row_count == len(plan["namespaces"]) > 0
        assert "scale capsule-system/capsule-controller-manager from 2 to 0" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, PlanScreen)


async def test_undo_asks_then_reverts(make_app):
    app, session = make_app(demo_scenario())
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app, pilot, "contained")
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="undo confirmation")
        await pilot.pause()
        request = app.screen.request
        assert request.answer == "95" and len(request.writes) == 95
        await pilot.press("9", "4", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen), "94 is not the answer"
        app.screen.query_one("#answer", Input).value = ""
        await pilot.press("9", "5", "enter")
        await wait_until(pilot, lambda: any("undo: 2 undone, 93 skipped, 0 failed" in line.text
                                            for line in app.model.feed), what="undo result")
        await app.settle()
        assert app.model.breaker()[0] == "armed", "Capsule scaled back"
        kinds = [json.loads(line)["kind"] for line in session.journal.path.read_text().splitlines()]
        assert kinds.count("undone") == 2


async def test_command_palette_lists_every_action(make_app):
    app, _ = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Quit responder", "Toggle dry-run", "Show plan", "Undo incident writes", "Help: keys"):
            assert title in titles
        assert "Quit" not in titles, "the built-in quit (which would not ask) is replaced"
        await pilot.press("ctrl+p")
        await pilot.press(*"dry")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.model.dry_run, what="dry-run from the palette")


async def test_session_failure_is_shown_and_sets_the_exit_code(tmp_path):
    class Unreachable(ReplaySession):
        async def start(self) -> None:
            from responder.errors import ClusterUnreachable

            raise ClusterUnreachable("cannot reach https://127.0.0.1:6443", fix="check the network")

    session = Unreachable(idle_scenario(), journal_dir=tmp_path)
    app = ResponderApp(session, clock=lambda: FIXED_EPOCH)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.model.phase == "error", what="the error")
        await app.settle()
        assert "ERROR" in screen_text(app) and "cannot reach" in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 3


# -- plumbing ---------------------------------------------------------------------------------------


def test_read_journal_takes_complete_lines_the_tail_and_every_intent(tmp_path):
    from responder.tui.app import read_journal

    path = tmp_path / "inc.jsonl"
    records = [{"seq": i, "kind": "intent" if i % 10 == 0 else "outcome", "target": f"ns-{i}"} for i in range(1, 51)]
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records) + '{"seq": 51, "ki')
    tail, intents, offset = read_journal(path, 0, 5)
    assert [r["seq"] for r in tail] == [46, 47, 48, 49, 50]
    assert [r["seq"] for r in intents] == [10, 20, 30, 40, 50]
    assert offset == path.read_bytes().rindex(b"\n") + 1, "the torn last line is read next time"
    with open(path, "a") as fh:
        fh.write('nd":"outcome"}\n')
    tail, intents, _ = read_journal(path, offset, 5)
    assert [r["seq"] for r in tail] == [51] and intents == []


async def test_log_records_go_to_the_feed_not_the_terminal(make_app):
    import logging
    import sys

    from responder.tui.app import logging_into

    app, _ = make_app(idle_scenario())
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)
    root.addHandler(terminal)
    try:
        with logging_into(app):  # as run_tui_async does, around the app's run
            assert terminal not in root.handlers, "no log line may tear the screen"
            async with app.run_test(size=(80, 24)) as pilot:
                await started(app, pilot)
                logging.getLogger("responder.incident.observe").warning("watch on namespaces interrupted, reconnecting")
                await app.settle()
                line = app.model.feed[-1]
                assert line.alert and "watch on namespaces interrupted" in line.text
        assert terminal in root.handlers, "restored afterwards"
    finally:
        root.removeHandler(terminal)


async def test_detection_decisions_reach_the_feed_routine_included(make_app):
    import logging

    from responder.incident.detect import DETECTION_LOGGER
    from responder.tui.app import logging_into

    app, _ = make_app(idle_scenario())
    detection, other = logging.getLogger(DETECTION_LOGGER), logging.getLogger("responder.incident.observe")
    levels = detection.level, other.level
    detection.setLevel(logging.INFO)  # as the command line sets it
    other.setLevel(logging.INFO)
    try:
        with logging_into(app):
            async with app.run_test(size=(80, 24)) as pilot:
                await started(app, pilot)
                detection.info("ROUTINE owner-deleted-namespace: namespace a-ns deleted by its owner or an admin")
                other.info("an info line of another part")
                detection.warning("NOTICE tenant-offboarded: Tenant b being deleted")
                await app.settle()
                lines = [line.text for line in app.model.feed]
                alerts = {line.text: line.alert for line in app.model.feed}
    finally:
        detection.setLevel(levels[0])
        other.setLevel(levels[1])
    routine = next(t for t in lines if "ROUTINE owner-deleted-namespace" in t)
    notice = next(t for t in lines if "NOTICE tenant-offboarded" in t)
    assert not alerts[routine] and alerts[notice]
    assert not any("an info line of another part" in t for t in lines)


async def test_an_on_screen_change_shows_in_the_next_frame_and_nothing_else_changes(make_app):
    app, session = make_app(idle_scenario())
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        before = screen_text(app).splitlines()
        session.emit_watch(namespace_event("tenant-a-ns-02", "tenant-a", terminating=True))
        await app.settle()
        await pilot.pause()
        after = screen_text(app).splitlines()
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        row = [a for b, a in changed if "tenant-a-ns-02" in a]
        assert row and "terminating" in row[0], changed
        assert "tenant-a-ns-01         safe" in "\n".join(after) and "tenant-a-ns-03         safe" in "\n".join(after)
        assert all("tenant-a-ns-0" not in a or "tenant-a-ns-02" in a for _, a in changed), "other rows untouched"
