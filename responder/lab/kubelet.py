"""The lab's stand-in for the kubelet, for two workloads: capsule-system/capsule-controller-manager and the
Pods of responder's guard (responder/lab/pods.py).

It watches Capsule's Deployment and keeps the local Capsule process in step with spec.replicas (0 = stopped,
>= 1 = one process running), restarting it if it dies, as a kubelet would restart a crashed container; and runs
each guard Pod (`responder lab up --guard` installs the chart) as a process of its own.
Run as `python -m responder.lab.kubelet STATE_DIR`; `responder lab up` starts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.cluster.watch import DELETED, SYNCED, TYPE_GONE, ResourceWatch, events_into
from responder.lab import processes
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.control_plane import Lab
from responder.lab.pods import GuardPods, stop_recorded

log = logging.getLogger("responder.lab.kubelet")

KUBELET_USER = "lab-kubelet"


class CapsuleKubelet:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.desired = 0
        self.record = lab.capsule_process()
        self.restarts = 0
        self._last_start = 0.0

    def _running(self) -> bool:
        return self.record is not None and processes.is_running(self.record)

    def reconcile(self) -> None:
        if self.desired > 0 and not self._running():
            # Back off on crash loops, like CrashLoopBackOff but short.
            wait = min(10.0, 0.5 * self.restarts) - (time.monotonic() - self._last_start)
            if self.record is not None and wait > 0:
                return
            argv, env = self.lab.capsule_argv_env()
            record, _ = processes.spawn("capsule", argv, log_dir=self.lab.logs, env=env, cwd=self.lab.dir)
            self.lab.capsule_record_file.write_text(json.dumps(record.to_json()))
            if self.record is not None:
                self.restarts += 1
            self.record = record
            self._last_start = time.monotonic()
            log.info("replicas=%d: started capsule pid %d", self.desired, record.pid)
        elif self.desired == 0 and self._running():
            assert self.record is not None
            processes.stop(self.record, grace=5.0)
            log.info("replicas=0: stopped capsule pid %d", self.record.pid)
            self.lab.capsule_record_file.unlink(missing_ok=True)
            self.record = None
            self.restarts = 0

    async def run(self) -> None:
        async with self.lab.admin_client() as client:
            watch = ResourceWatch(client, f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments",
                                  resource="deployments",
                                  params={"fieldSelector": f"metadata.name={CAPSULE_DEPLOYMENT}"}, stall_timeout=30)
            queue: asyncio.Queue = asyncio.Queue()
            pump = asyncio.create_task(events_into(watch, queue))
            while True:
                if pump.done():
                    pump.result()  # surface the watch's failure
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    self.reconcile()  # restart a crashed process even when nothing changes
                    continue
                if event.type in (SYNCED, TYPE_GONE):
                    continue
                if event.type == DELETED:
                    self.desired = 0
                else:
                    self.desired = int((event.object.get("spec") or {}).get("replicas", 1))
                self.reconcile()


async def run_kubelet(lab: Lab, kubelet: CapsuleKubelet, guard_pods: GuardPods) -> None:
    # The guard pods' TokenRequests under an identity of the kubelet's own, so the audit log tells them apart
    # from what the lab's admin (a test, a drill) writes.
    identity = lab.mint_user(KUBELET_USER, ("system:masters",))
    async with KubeClient(load_cluster_access(str(identity))) as client:
        await asyncio.gather(kubelet.run(), guard_pods.run(client))


def main() -> None:
    lab = Lab(Path(sys.argv[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kubelet = CapsuleKubelet(lab)
    stop_recorded(lab.dir)  # replicas a previous kubelet left: their pods start afresh
    guard_pods = GuardPods(lab.dir, lab.state()["ports"]["apiserver"], lab.pki.ca.cert)
    # `lab down` sends SIGTERM: leave through `finally` so the Capsule and guard processes go with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(run_kubelet(lab, kubelet, guard_pods))
    finally:
        guard_pods.stop_all()
        if kubelet.record is not None:
            processes.stop(kubelet.record, grace=5.0)
            lab.capsule_record_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
