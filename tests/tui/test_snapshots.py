"""Snapshots (pytest-textual-snapshot) of the main screen idle, during containment, and the
confirmation modal, at 80x24 and 120x40. Clocks are frozen (FIXED_EPOCH), so elapsed times, the feed's
timestamps and the incident id are stable. Regenerate with `pytest tests/tui --snapshot-update`."""

from __future__ import annotations

import time

import pytest

from responder.tui.app import ResponderApp
from responder.tui.replay import ReplaySession, demo_scenario, idle_scenario
from responder.tui.screens.confirm import ConfirmScreen

from .conftest import frozen_clock

SIZES = [(80, 24), (120, 40)]


def app_for(scenario, tmp_path) -> tuple[ResponderApp, ReplaySession]:
    session = ReplaySession(scenario, journal_dir=tmp_path / "journal", clock=frozen_clock, speed=0)
    return ResponderApp(session, clock=frozen_clock, cursor_blink=False), session


async def settle(pilot, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the app did not reach the state to snapshot"
        await pilot.pause(0.02)
    app = pilot.app
    await app.settle()
    await pilot.pause()
    await app.settle()  # a second pass: widgets mounted by the first one have their size now
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_idle(snap_compare, tmp_path, size):
    app, _ = app_for(idle_scenario(), tmp_path)

    async def run_before(pilot) -> None:
        await settle(pilot, lambda: app.model.phase == "watching" and not app.model.pending)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_during_containment(snap_compare, tmp_path, size):
    """Frozen half way through the detach step: breaker tripped, progress bar, rows detached and at risk."""
    app, session = app_for(demo_scenario(hold_mid_detach=True), tmp_path)

    async def run_before(pilot) -> None:
        await session.reached("mid-detach")
        await settle(pilot, lambda: not app.model.pending)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_confirmation_modal(snap_compare, tmp_path, size):
    """--confirm mode: the breaker step waits for its confirmation; a wrong answer is typed."""
    app, _ = app_for(demo_scenario(confirm_steps=True), tmp_path)

    async def run_before(pilot) -> None:
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press(*"brake")

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_main_screen_no_color(snap_compare, tmp_path, monkeypatch):
    """NO_COLOR: Textual's monochrome filter applies; nothing in responder forces colours."""
    monkeypatch.setenv("NO_COLOR", "1")
    app, session = app_for(demo_scenario(hold_mid_detach=True), tmp_path)
    assert app.no_color

    async def run_before(pilot) -> None:
        await session.reached("mid-detach")
        await settle(pilot, lambda: not app.model.pending)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
