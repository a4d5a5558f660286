"""The real program in a real terminal: `python -m responder.tui.demo` (a replayed incident, no cluster)
in tmux; read the screen with capture-pane, quit with q, answer the prompt, check the exit code."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (Debian: apt-get install -y tmux); "
                                                     "this test drives the real program in a terminal")


class Tmux:
    """One private tmux server (its own socket): nothing else's sessions are touched."""

    def __init__(self) -> None:
        self.socket = f"responder-tui-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        assert TMUX is not None
        return subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=15)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "demo").stdout

    def wait_for(self, text: str, timeout: float = 60.0, each: Callable[[str], object] | None = None) -> str:
        """The first screen showing `text`; `each` sees every screen captured on the way."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if each is not None:
                each(screen)
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")


def test_demo_runs_in_a_terminal_and_quits_cleanly(tmp_path):
    tmux = Tmux()
    rc_file = tmp_path / "exit-code"
    command = (f"{shlex.quote(sys.executable)} -m responder.tui.demo --speed 0.2 "
               f"--journal-dir {shlex.quote(str(tmp_path / 'journal'))}; echo $? > {shlex.quote(str(rc_file))}")
    started = tmux("new-session", "-d", "-s", "demo", "-x", "100", "-y", "30", "-c", str(REPO), command)
    assert started.returncode == 0, started.stderr
    try:
        screen = tmux.wait_for("CONTAINED")
        # The header, the table and the runbook as a person sees them.
        assert "ctx lab-capsule-0.14" in screen and "as system:serviceaccount:responder:responder" in screen
        assert "Capsule v0.14.0" in screen and "VERIFIED" in screen
        assert "namespaces by tenant" in screen and "▾ tenant-a (8)" in screen
        assert "tenant-a-ns-03" in screen and "detached" in screen
        assert "✓ detach" in screen
        tmux("send-keys", "-t", "demo", "q")
        tmux.wait_for("Quit responder with an incident open?")
        tmux("send-keys", "-t", "demo", "y")
        deadline = time.monotonic() + 30
        while not rc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rc_file.exists(), f"the demo did not exit; the screen was:\n{tmux.screen()}"
        assert rc_file.read_text().strip() == "0", "contained: exit code 0"
        journals = list((tmp_path / "journal").glob("inc-*.jsonl"))
        assert len(journals) == 1 and '"kind":"step"' in journals[0].read_text()
    finally:
        tmux("kill-server")
