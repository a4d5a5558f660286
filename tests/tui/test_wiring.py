"""`responder watch` without --headless: credentials, then preflight, then the TUI with a modal confirmer."""

from __future__ import annotations

import pytest

from responder.cli import respond as commands
from responder.cli import build_parser
from responder.errors import ResponderError
from responder.tui import app as tui_app


class FakeSession:
    """Records what cmd_watch does with the session; talks to no cluster."""

    calls: list[str] = []
    instances: list["FakeSession"] = []
    fail_preflight = False

    def __init__(self, access, options, *, confirmer=None) -> None:
        self.access, self.options, self.confirmer = access, options, confirmer
        self.journal = None
        FakeSession.instances.append(self)
        FakeSession.calls.append("session")

    async def preflight(self, *, attach: bool = False) -> None:
        FakeSession.calls.append("preflight attach" if attach else "preflight")
        if FakeSession.fail_preflight:
            raise ResponderError("the cluster refused responder's identity check")

    async def close(self) -> None:
        FakeSession.calls.append("close")


@pytest.fixture
def wired(monkeypatch, tmp_path):
    FakeSession.calls, FakeSession.instances, FakeSession.fail_preflight = [], [], False
    monkeypatch.setattr(commands, "load_cluster_access",
                        lambda kubeconfig, context: (FakeSession.calls.append("credentials")
                                                     or type("Access", (), {"context": "lab", "server": "s"})()))
    monkeypatch.setattr(commands, "Session", FakeSession)

    async def fake_run_tui(session, *, confirmer=None, **_):
        FakeSession.calls.append("tui")
        assert isinstance(confirmer, tui_app.TuiConfirmer) and session.confirmer is confirmer
        return 1

    monkeypatch.setattr(tui_app, "run_tui_async", fake_run_tui)
    return build_parser().parse_args(["watch", "--journal", str(tmp_path)])


def test_watch_runs_preflight_before_the_tui(wired):
    assert commands.cmd_watch(wired) == 1, "the TUI's exit code is the command's"
    # The TUI attaches where a guard leads (a headless watch refuses, LeaseHeld).
    assert FakeSession.calls == ["credentials", "session", "preflight attach", "tui", "close"]


def test_watch_preflight_failure_never_starts_the_tui(wired):
    FakeSession.fail_preflight = True
    with pytest.raises(ResponderError, match="identity check"):
        commands.cmd_watch(wired)
    assert "tui" not in FakeSession.calls and FakeSession.calls[-1] == "close"


def test_watch_options_reach_the_session(wired):
    args = build_parser().parse_args(["watch", "--confirm", "--dry-run", "--journal", str(wired.journal)])
    commands.cmd_watch(args)
    options = FakeSession.instances[-1].options
    assert options.dry_run is True and options.auto is False
