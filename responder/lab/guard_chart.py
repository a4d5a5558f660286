"""`responder lab up --guard`: responder's own chart (charts/responder) installed with the lab's helm, as an
operator installs it (`helm install` against the lab's API server, namespace responder-system); the lab's kubelet
(responder/lab/pods.py) then runs each replica of its Deployment as a process. Ready when every replica answers
/readyz 200 and exactly one leads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import httpx

from responder.errors import LabError
from responder.lab.pods import SOURCE_ROOT, read_pods, replica_status
from responder.names import RESPONDER_NAMESPACE

CHART = SOURCE_ROOT / "charts" / "responder"
RELEASE = "responder"
GUARD_DEPLOYMENT = "responder-guard"


def helm(state_dir: Path, helm_binary: Path, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    """helm against the lab, its cache and config kept in the lab's state (not the user's)."""
    home = state_dir / "helm"
    env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"), KUBECONFIG=str(kubeconfig))
    return subprocess.run([str(helm_binary), *args, "--kube-context", "responder-lab"], capture_output=True,
                          text=True, env=env, timeout=300)


def install(state_dir: Path, helm_binary: Path, kubeconfig: Path, *, replicas: int = 2,
            out: TextIO = sys.stderr) -> None:
    """`helm install` of the chart (nothing when the release exists: kept state brings its pods back)."""
    if helm(state_dir, helm_binary, kubeconfig, "status", RELEASE, "--namespace", RESPONDER_NAMESPACE).returncode == 0:
        print(f"lab: responder's chart already installed (release {RELEASE})", file=out)
        return
    proc = helm(state_dir, helm_binary, kubeconfig, "install", RELEASE, str(CHART), "--namespace",
                RESPONDER_NAMESPACE, "--set", f"replicas={replicas}")
    if proc.returncode != 0:
        raise LabError(f"helm install of {CHART} failed: {proc.stderr.strip()[-800:]}",
                       fix="run `helm lint --strict charts/responder`; see the lab's kube-apiserver.log")
    print(f"lab: responder's chart installed (release {RELEASE}, {replicas} replicas)", file=out)


def uninstall(state_dir: Path, helm_binary: Path, kubeconfig: Path) -> None:
    proc = helm(state_dir, helm_binary, kubeconfig, "uninstall", RELEASE, "--namespace", RESPONDER_NAMESPACE)
    if proc.returncode != 0:
        raise LabError(f"helm uninstall failed: {proc.stderr.strip()[-800:]}", fix="see the lab's logs")


def leader_metric(metrics_url: str) -> float | None:
    """`responder_leader` from one replica's /metrics (None: not answering)."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return None
    match = re.search(r"^responder_leader (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def wait_ready(state_dir: Path, replicas: int, *, timeout: float = 120.0, out: TextIO = sys.stderr) -> list[dict]:
    """Until `replicas` replicas run, each /readyz 200, exactly one `responder_leader 1`; their status."""
    deadline = time.monotonic() + timeout
    last = "no replica started by the kubelet yet"
    while time.monotonic() < deadline:
        status = [replica_status(pod, entry) for pod, entry in sorted(read_pods(state_dir).items())]
        running = [r for r in status if r["running"]]
        if len(running) == replicas:
            ready = []
            for replica in running:
                try:
                    ready.append(httpx.get(replica["readyz"], timeout=5).status_code == 200)
                except httpx.HTTPError:
                    ready.append(False)
            leaders = [leader_metric(r["metrics"]) for r in running]
            if all(ready) and leaders.count(1.0) == 1:
                print(f"lab: guard ready: {replicas} replicas, leader {running[leaders.index(1.0)]['pod']}", file=out)
                return status
            last = f"ready {ready}, responder_leader {leaders}"
        else:
            last = f"{len(running)} of {replicas} replicas running"
        time.sleep(0.5)
    raise LabError(f"the guard did not become ready in {timeout:.0f}s: {last}",
                   fix=f"see the replicas' logs (guard-*.log) and kubelet.log in {state_dir / 'logs'}")
