"""A real Alertmanager on the lab's loopback, receiving the guard's alerts (`lab up --alertmanager`).

Built from its Go module like the rest of the lab (responder/lab/gomod/alertmanager). One member, no
cluster gossip, a route to a receiver that sends nothing: the alerts it holds are read back through its
v2 API (GET /api/v2/alerts), as an on-call's tooling would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import httpx

from responder.errors import LabError
from responder.lab import processes

CONFIG = """\
# The lab's Alertmanager: holds what the guard sends; notifies nobody.
route:
  receiver: lab-hold
  group_by: [alertname, cluster, incident]
  group_wait: 1s
receivers:
  - name: lab-hold
"""


class LabHost(Protocol):
    dir: Path
    logs: Path

    def _record(self, state: dict[str, Any], record: processes.ProcessRecord) -> None: ...

    def _wait(self, what: str, check, timeout: float, record: processes.ProcessRecord | None = None) -> None: ...


def url(state: dict[str, Any]) -> str | None:
    port = (state.get("ports") or {}).get("alertmanager")
    return f"http://127.0.0.1:{port}" if port and state.get("alertmanager") else None


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start(lab: LabHost, state: dict[str, Any], binary: Path) -> str:
    """Start it (state's ports get an `alertmanager` entry) and wait until it is ready; returns its URL."""
    ports = state.setdefault("ports", {})
    ports.setdefault("alertmanager", processes.free_port())
    port = ports["alertmanager"]
    directory = lab.dir / "alertmanager"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(CONFIG)
    argv = [str(binary), f"--config.file={directory / 'alertmanager.yml'}", f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]  # one member: no gossip port
    record, _ = processes.spawn("alertmanager", argv, log_dir=lab.logs)
    lab._record(state, record)
    lab._wait("Alertmanager", lambda: _ready(port), 60, record)
    state["alertmanager"] = True
    return f"http://127.0.0.1:{port}"


async def alerts(base_url: str, *, active: bool = True) -> list[dict[str, Any]]:
    """What Alertmanager holds now (GET /api/v2/alerts)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base_url}/api/v2/alerts", params={"active": str(active).lower(),
                                                                        "silenced": "true", "inhibited": "true"})
    if response.status_code != 200:
        raise LabError(f"Alertmanager answered {response.status_code} to GET /api/v2/alerts",
                       fix="see the lab's alertmanager.log")
    return response.json()
