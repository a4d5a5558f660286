"""The README's main command as an on-call engineer runs it: `responder drill` in a real terminal
(tmux) shows responder's TUI through the incident and its recovery, announces the verdict, and
prints the scorecard once the operator quits with q."""

from __future__ import annotations

import re
import shlex
import sys
import time

import pytest

from ..tui.test_tmux import REPO, TMUX, Tmux

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900),
              pytest.mark.skipif(TMUX is None, reason="tmux is not installed (Debian: apt-get install -y tmux)")]


def test_drill_in_a_terminal_shows_the_tui_then_the_scorecard(lab_manager, tmp_path):
    lab_manager.release()
    tmux = Tmux()
    rc_file = tmp_path / "exit-code"
    command = (f"{shlex.quote(sys.executable)} -m responder drill --tenants 2 --namespaces-per-tenant 3 "
               f"--observe 5 --state-dir {shlex.quote(str(tmp_path / 'lab'))}; echo $? > {shlex.quote(str(rc_file))}; "
               f"sleep 600")
    started = tmux("new-session", "-d", "-s", "demo", "-x", "120", "-y", "40", "-c", str(REPO), command)
    assert started.returncode == 0, started.stderr
    try:
        # The app itself, while the drill runs: the header and the runbook as a person sees them.
        screen = tmux.wait_for("namespaces by tenant", timeout=420)
        assert "ctx responder-lab" in screen, screen
        # The event feed shows the drill's own notes (it once stayed blank in a terminal). They are
        # looked for on every screen until the verdict: the feed shows its newest lines, and Velero's
        # periodic MODIFIED events may push the last note out of view just as the verdict appears.
        note = re.compile(r"\d\d:\d\d:\d\d\.\d{3} NOTE\s+responder")
        notes_seen: list[str] = []
        # the notification: "... - press q for the scorecard"
        screen = tmux.wait_for("DRILL PASSED", timeout=420, each=lambda s: notes_seen.extend(note.findall(s)))
        assert "RECOVERED" in screen, screen
        assert "re-adopted" in screen, screen
        assert notes_seen, f"the event feed never showed a note of the drill; the last screen was:\n{screen}"
        tmux("send-keys", "-t", "demo", "q")
        deadline = time.monotonic() + 30
        while not rc_file.exists() and time.monotonic() < deadline:
            if "Quit responder with an incident open?" in tmux.screen():
                tmux("send-keys", "-t", "demo", "y")
            time.sleep(0.3)
        assert rc_file.exists(), f"the drill did not exit after q; the screen was:\n{tmux.screen()}"
        screen = tmux.screen()
        assert rc_file.read_text().strip() == "0", screen
        # Back on the normal screen: the scorecard.
        assert "DRILL PASSED" in screen and "present at the end           6 of 6" in screen, screen
        assert "restored / re-adopted" in screen and "recovery verified            True" in screen, screen
    finally:
        tmux("kill-server")
        # The drill stops its own lab on exit; make sure of it even when the test failed midway.
        from responder.lab.control_plane import Lab

        Lab(tmp_path / "lab").down(wipe=True)
