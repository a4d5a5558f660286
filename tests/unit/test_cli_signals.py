"""A headless run stopped with SIGTERM (how systemd, Kubernetes and CI stop a process) ends like
Ctrl-C: "interrupted", exit 5 (README: Exit codes), not a silent 143. No cluster: the kubeconfig points
at a closed port, so the run is still in its preflight's retries when the signal comes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .kubeconfigs import unreachable_kubeconfig


def test_sigterm_ends_a_headless_watch_as_interrupted_with_exit_5(tmp_path: Path):
    config = unreachable_kubeconfig(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "responder", "watch", "--headless", "--kubeconfig", str(config),
                             "--journal", str(tmp_path / "incidents")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Signalled once it catches SIGTERM (its handler installed; a loaded machine may take seconds to get there),
    # while it retries the unreachable server (for 10 s).
    deadline = time.monotonic() + 30
    while not _catches_sigterm(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, err
    assert "interrupted" in err


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False
