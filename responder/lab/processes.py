"""Start and stop the lab's processes, by pid only, guarding against pid reuse."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid from ours
    argv0: str

    def to_json(self) -> dict:
        return asdict(self)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 on (the command name, field 2, may contain spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(record: ProcessRecord) -> float | None:
    """User + system CPU time the process has used so far; None once it is gone (or the pid reused)."""
    fields = _stat_fields(record.pid)
    if not fields or int(fields[19]) != record.start_ticks:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_running(record: ProcessRecord) -> bool:
    fields = _stat_fields(record.pid)  # field 3 (state) first, then start time at index 19
    return bool(fields) and int(fields[19]) == record.start_ticks and fields[0] != "Z"


def spawn(name: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[ProcessRecord, subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd)
    ticks = _start_ticks(proc.pid) or 0
    return ProcessRecord(name, proc.pid, ticks, argv[0]), proc


def stop(record: ProcessRecord, *, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace`; only if the pid is still the process we started."""
    if not is_running(record):
        return False
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_running(record):
            _reap(record.pid)
            return True
        _reap(record.pid)
        time.sleep(0.05)
    if is_running(record):
        os.kill(record.pid, signal.SIGKILL)
        for _ in range(100):
            _reap(record.pid)
            if not is_running(record):
                break
            time.sleep(0.05)
    return True


def kill(record: ProcessRecord) -> None:
    """SIGKILL at once (fault injection: a crashed component)."""
    if is_running(record):
        os.kill(record.pid, signal.SIGKILL)
        for _ in range(100):
            _reap(record.pid)
            if not is_running(record):
                return
            time.sleep(0.02)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
