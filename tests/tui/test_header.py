"""The header's status line: whether the namespace hold is armed ahead of the incident, next to the breaker,
and what gives way on a narrow terminal so that neither is cut."""

from __future__ import annotations

import pytest
from rich.text import Text
from textual.widgets import Static

from responder.tui.app import ResponderApp
from responder.tui.replay import ReplaySession, demo_scenario, idle_scenario

from .conftest import frozen_clock, screen_text, wait_until

WHY_NOT = "not installed (policy missing)"


def status_line(app: ResponderApp) -> str:
    return screen_text(app).splitlines()[1]


def styles_of(app: ResponderApp, word: str) -> set[str]:
    """The styles the status line gives `word` (as the header built it, before the terminal's colours)."""
    text = app.query_one("#status", Static).content
    assert isinstance(text, Text)
    start = text.plain.index(word)
    return {str(span.style) for span in text.spans if span.start <= start < span.end}


async def idle(app: ResponderApp, pilot) -> None:
    await wait_until(pilot, lambda: app.model.phase == "watching" and not app.model.pending, what="watching")
    await app.settle()
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_header_says_the_hold_is_armed(make_app, size):
    app, session = make_app(idle_scenario())
    assert session.hold_not_armed is None
    async with app.run_test(size=size) as pilot:
        await idle(app, pilot)
        line = status_line(app)
        assert "breaker ARMED  hold ARMED" in line, line
        assert "NOT ARMED" not in screen_text(app)
        assert styles_of(app, "hold ARMED") == set()  # the label plain, the state bold like the breaker's
        assert styles_of(app, "ARMED  hold") == {"bold"}
        assert not any("hold NOT ARMED" in line.text for line in app.model.feed)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_header_says_the_hold_is_not_armed_and_the_feed_says_why(make_app, size):
    app, session = make_app(idle_scenario())
    session.hold_not_armed = WHY_NOT  # as the preflight's read_armed_hold() says it
    async with app.run_test(size=size) as pilot:
        await idle(app, pilot)
        line = status_line(app)
        assert "breaker ARMED  hold NOT ARMED" in line, line
        text = app.query_one("#status", Static).content
        assert isinstance(text, Text)
        not_armed = text.plain.index("NOT ARMED")
        assert any(str(s.style) == "bold underline" for s in text.spans if s.start == not_armed), "it stands out"
        notes = [f.text for f in app.model.feed if "hold NOT ARMED" in f.text]
        assert len(notes) == 1 and WHY_NOT in notes[0] and "responder protect --only hold" in notes[0]


async def test_header_hold_unknown_for_a_session_without_the_attribute(tmp_path):
    session = ReplaySession(idle_scenario(), journal_dir=tmp_path / "journal", clock=frozen_clock, speed=0)
    del session.hold_not_armed  # an older session object
    app = ResponderApp(session, clock=frozen_clock, cursor_blink=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await idle(app, pilot)
        line = status_line(app)
        assert "hold ?" in line and "ARMED  hold" in line, line
        assert app.model.hold()[0] == "unknown"


async def test_narrow_header_drops_capsule_version_before_cutting_breaker_or_hold(make_app):
    """80 columns, the longest mode, the breaker tripped and the hold not armed: the version goes, the rest shows."""
    app, session = make_app(demo_scenario(hold_mid_detach=True))
    session.hold_not_armed = WHY_NOT
    app.model.yes = True  # as `--yes` would have made it
    async with app.run_test(size=(80, 24)) as pilot:
        await session.reached("mid-detach")
        await wait_until(pilot, lambda: not app.model.pending, what="rows applied")
        await app.settle()
        await pilot.pause()
        line = status_line(app)
        assert "mode auto --yes  velero: Available  breaker TRIPPED  hold NOT ARMED" in line, line
        assert "Capsule v0.14.0" not in line
        await pilot.resize_terminal(120, 24)
        await pilot.pause(0.2)
        line = status_line(app)
        assert "Capsule v0.14.0  mode auto --yes  velero: Available  breaker TRIPPED  hold NOT ARMED" in line, line


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_a_watch_stream_that_stopped_shows_first_as_blind_until_it_is_back(make_app, size):
    app, session = make_app(idle_scenario())
    async with app.run_test(size=size) as pilot:
        await idle(app, pilot)
        assert "BLIND" not in status_line(app)
        session.observer.stream_errors = {"namespaces": "Unauthorized: token expired"}  # as ClusterObserver sets it
        await wait_until(pilot, lambda: "BLIND" in status_line(app), what="BLIND shown")
        line = status_line(app)
        assert line.lstrip().startswith("BLIND: namespaces"), line  # before everything else, never dropped
        assert "hold ARMED" in line, line
        assert styles_of(app, "BLIND: namespaces") == {"bold reverse"}
        session.observer.stream_errors = {}
        await wait_until(pilot, lambda: "BLIND" not in status_line(app), what="BLIND gone")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_header_says_the_self_arming_hold_is_in_force_and_drops_it_dormant_when_narrow(make_app, size):
    from responder.actions.self_hold import SelfHoldState

    app, session = make_app(idle_scenario())
    assert app.model.self_hold == ""  # the replay's demo cluster has none installed: not shown (doctor says so)
    session.self_hold = SelfHoldState(True, in_force=True, why="the Tenant CRD tenants.capsule.clastix.io is absent")
    async with app.run_test(size=size) as pilot:
        await idle(app, pilot)
        app._read_hold()
        await app.settle()
        await pilot.pause()
        line = status_line(app)
        assert "hold ARMED  self-hold IN FORCE" in line, line  # kept even at 80 columns
        assert "bold reverse" in styles_of(app, "IN FORCE")
        session.self_hold = SelfHoldState(True)  # lifted: dormant
        app._read_hold()
        await app.settle()
        await pilot.pause()
        line = status_line(app)
        assert ("self-hold DORMANT" in line) == (size[0] >= 120), line  # a narrow terminal drops it first
