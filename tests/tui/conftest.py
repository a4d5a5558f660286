"""Helpers for the TUI tests: an app on a replayed session (no cluster), frozen clocks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from responder.tui.app import ResponderApp
from responder.tui.replay import FIXED_EPOCH, ReplaySession, Scenario, demo_scenario


def frozen_clock() -> float:
    return FIXED_EPOCH


@pytest.fixture
def make_app(tmp_path) -> Callable[..., tuple[ResponderApp, ReplaySession]]:
    """make_app(scenario) -> (app, session): a ResponderApp driving a ReplaySession, clocks frozen."""

    def make(scenario: Scenario | None = None, *, clock: Callable[[], float] = frozen_clock,
             **app_options) -> tuple[ResponderApp, ReplaySession]:
        session = ReplaySession(scenario or demo_scenario(), journal_dir=tmp_path / "journal", clock=clock,
                                speed=0)
        app = ResponderApp(session, clock=clock, cursor_blink=False, **app_options)
        return app, session

    return make


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


def screen_text(app: ResponderApp) -> str:
    """What the terminal shows now, as plain text (one line per row)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
