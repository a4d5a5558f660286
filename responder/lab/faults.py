"""Fault injection on the lab, during a live incident: the apiserver killed and restarted (with the
command line it runs with, optionally with flags changed), etcd compacted to its current revision,
one process's connections to the apiserver cut (a network blip for that process only), the apiserver
throttling one user with API Priority and Fairness, and a second writer racing on namespaces.

Everything here reads the lab's own state (lab.json: ports and pids) and the running processes; it
changes nothing in how the lab is built or started.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, ResourceWatch, events_into
from responder.errors import ApiError, LabError
from responder.lab import processes
from responder.lab.apply import apply_objects
from responder.lab.control_plane import Lab

# -- kube-apiserver ---------------------------------------------------------------------------------


def process_argv(pid: int) -> list[str]:
    """The command line a running process was started with."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0") if a]


def with_flags(argv: list[str], flags: list[str]) -> list[str]:
    """argv with each `--name=value` in `flags` replacing the same flag (or appended)."""
    out = list(argv)
    for flag in flags:
        name = flag.split("=", 1)[0]
        out = [a for a in out if a.split("=", 1)[0] != name]
        out.append(flag)
    return out


def restart_apiserver(lab: Lab, *, flags: list[str] = (), kill: bool = True, timeout: float = 120.0) -> float:
    """Kill kube-apiserver (SIGKILL, or SIGTERM with `kill=False`) and start it again with the command
    line it was running with (read from /proc), `flags` overriding; the new pid is recorded in the
    lab's state so `lab down` stops it. Returns seconds from the kill until /readyz answers 200."""
    record = lab._records().get("kube-apiserver")
    if record is None or not processes.is_running(record):
        raise LabError("kube-apiserver is not running", fix="start the lab first")
    argv = with_flags(process_argv(record.pid), list(flags))
    (processes.kill if kill else processes.stop)(record)
    killed = time.monotonic()
    while processes.is_running(record) and time.monotonic() < killed + 10:
        time.sleep(0.02)  # the old process holds its port until it is gone
    log = lab.logs / "kube-apiserver.log"
    deadline = killed + timeout
    for attempt in range(5):
        offset = log.stat().st_size if log.exists() else 0
        new, _ = processes.spawn("kube-apiserver", argv, log_dir=lab.logs)
        lab._record(lab.state(), new)
        while time.monotonic() < deadline:
            if lab._apiserver_ready():
                return time.monotonic() - killed
            if not processes.is_running(new):
                break
            time.sleep(0.1)
        else:
            break
        with open(log, "rb") as fh:
            fh.seek(offset)
            tail = fh.read().decode(errors="replace").strip().splitlines()[-5:]
        if "address already in use" in " ".join(tail) and attempt < 4:
            time.sleep(0.5)  # the kernel has not released the listening socket yet: start it again
            continue
        raise LabError(f"kube-apiserver exited after the restart: {' | '.join(tail)}", fix=f"read {log}")
    raise LabError(f"kube-apiserver not ready {timeout:.0f}s after the restart", fix="read the log")


def apiserver_argv(lab: Lab) -> list[str]:
    return process_argv(lab._records()["kube-apiserver"].pid)


# -- etcd -------------------------------------------------------------------------------------------


def _etcd(lab: Lab, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """etcd's v3 JSON gateway (the lab's etcd listens on plain HTTP on loopback)."""
    url = f"http://127.0.0.1:{lab.state()['ports']['etcd']}{path}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def etcd_revision(lab: Lab) -> int:
    status = _etcd(lab, "/v3/maintenance/status", {})
    return int(status["header"]["revision"])


def compact_etcd(lab: Lab, revision: int | None = None) -> int:
    """Compact etcd's history up to `revision` (default: the current one), physically: every older
    revision is gone, so a watch resuming from one fails with 410 Gone. Returns the revision."""
    rev = revision if revision is not None else etcd_revision(lab)
    _etcd(lab, "/v3/kv/compaction", {"revision": str(rev), "physical": True})
    return rev


# -- one process's connections -----------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def connections_to(pid: int, port: int) -> list[int]:
    """Local ports of `pid`'s established TCP connections to 127.0.0.1:`port`."""
    inodes = _socket_inodes(pid)
    ports = []
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                ports.append(int(local.rsplit(":", 1)[1], 16))
    return ports


def cut_connections(pid: int, port: int) -> int:
    """Abort every TCP connection from process `pid` to 127.0.0.1:`port` (`ss -K`, needs
    CAP_NET_ADMIN): that process sees its streams and requests fail, nobody else does. Returns the
    number of connections cut."""
    local = connections_to(pid, port)
    if not local:
        return 0
    expr = " or ".join(f"sport = :{p}" for p in local)
    proc = subprocess.run(["ss", "-K", "-t", "-n", "state", "established", f"( {expr} ) and dport = :{port}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"ss -K failed: {proc.stderr.strip()}", fix="run as root (CAP_NET_ADMIN) on a kernel with "
                       "CONFIG_INET_DIAG_DESTROY")
    return len(local) - len(set(local) & set(connections_to(pid, port)))


# -- API Priority and Fairness -------------------------------------------------------------------------

FLOWCONTROL = "flowcontrol.apiserver.k8s.io/v1"


def throttle_objects(user: str, name: str, *, shares: int = 1, queue_length: int = 1) -> list[dict[str, Any]]:
    """A PriorityLevelConfiguration with the smallest share of the server's concurrency, no borrowing,
    one queue of `queue_length`, and a FlowSchema putting every request of `user` in it (ahead of the
    built-in schemas): beyond a few requests at a time the apiserver answers 429."""
    return [
        {"apiVersion": FLOWCONTROL, "kind": "PriorityLevelConfiguration", "metadata": {"name": name},
         "spec": {"type": "Limited", "limited": {
             "nominalConcurrencyShares": shares, "lendablePercent": 0, "borrowingLimitPercent": 0,
             "limitResponse": {"type": "Queue", "queuing": {"queues": 1, "handSize": 1,
                                                           "queueLengthLimit": queue_length}}}}},
        {"apiVersion": FLOWCONTROL, "kind": "FlowSchema", "metadata": {"name": name},
         "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 100,
                  "distinguisherMethod": {"type": "ByUser"},
                  "rules": [{"subjects": [{"kind": "User", "user": {"name": user}}],
                             "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                "clusterScope": True, "namespaces": ["*"]}],
                             "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
    ]


async def throttle_user(admin: KubeClient, user: str, name: str = "fault-throttle", **kwargs: Any) -> None:
    await apply_objects(admin, throttle_objects(user, name, **kwargs))


async def remove_throttle(admin: KubeClient, name: str = "fault-throttle") -> None:
    for path in (f"/apis/{FLOWCONTROL}/flowschemas/{name}", f"/apis/{FLOWCONTROL}/prioritylevelconfigurations/{name}"):
        try:
            await admin.delete(path)
        except ApiError as exc:
            if exc.status != 404:
                raise


async def wait_throttled(kubeconfig: Path, *, timeout: float = 30.0, burst: int = 40) -> int:
    """Until a burst of GETs as `kubeconfig`'s user meets 429s (the apiserver applies APF
    configuration asynchronously); returns how many of the burst were refused. GETs are not audited."""
    client = KubeClient(load_cluster_access(str(kubeconfig)), retry_deadline=0, http2=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            results = await asyncio.gather(*(client.get("/api/v1/namespaces", limit=500) for _ in range(burst)),
                                           return_exceptions=True)
            refused = sum(1 for r in results if isinstance(r, ApiError) and r.status == 429)
            if refused:
                return refused
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    raise LabError(f"no 429 for a burst of {burst} requests within {timeout:.0f}s", fix="check the FlowSchema")


# -- what happened to the namespaces -------------------------------------------------------------------


class NamespaceTracker:
    """Watches namespaces (as the admin) and remembers when each one was first seen Terminating or
    gone, to tell the namespaces alive when responder detected the incident from those lost before."""

    def __init__(self, client: KubeClient, names: set[str]) -> None:
        self.client = client
        self.names = set(names)
        self.lost_at: dict[str, float] = {}
        self._watch = ResourceWatch(client, "/api/v1/namespaces", resource="namespaces", stall_timeout=30)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.synced = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(events_into(self._watch, self._queue)),
                       asyncio.create_task(self._consume())]
        await asyncio.wait_for(self.synced.wait(), 60)

    async def _consume(self) -> None:
        while True:
            event = await self._queue.get()
            if event.type == SYNCED:
                present = {k[1] for k in self._watch.store}
                for name in self.names - present:
                    self.lost_at.setdefault(name, event.received)
                self.synced.set()
                continue
            if event.name not in self.names:
                continue
            if event.type == DELETED or (event.type in (ADDED, MODIFIED)
                                         and (event.object.get("metadata") or {}).get("deletionTimestamp")):
                self.lost_at.setdefault(event.name, event.received)

    def alive_at(self, when: float) -> set[str]:
        return {n for n in self.names if n not in self.lost_at or self.lost_at[n] > when}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- a second writer ------------------------------------------------------------------------------------

RACER_LABEL = "racer.responder.dev/n"


@dataclass
class RacerStats:
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (200 included)
    last_label: dict[str, str] = field(default_factory=dict)  # ns -> label value of the last write that took
    last_has_owner: dict[str, bool] = field(default_factory=dict)  # ns -> did it carry the extra owner
    errors: list[str] = field(default_factory=list)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class Racer:
    """Another writer on the same namespaces: read-modify-write with the resourceVersion as
    precondition (PUT), in a tight loop on every namespace at once, as a controller or `kubectl edit`
    would: 409 whenever someone else wrote between its read and its write. Each write sets a counter
    label; every fifth write of a namespace also puts an extra (non-Tenant) ownerReference first, or
    takes it out again, which moves the Tenant references that a guarded JSON patch tests by index."""

    def __init__(self, client: KubeClient, names: list[str], *, owner: dict[str, Any], toggle_every: int = 5,
                 user_agent: str = "racer/1") -> None:
        self.client = client
        self.names = list(names)
        self.owner = owner  # an ownerReference to an object that exists (the GC must not act on it)
        self.toggle_every = toggle_every
        self.stats = RacerStats()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._seq = 0
        # Its own User-Agent, so the audit log tells its writes from responder's even with one identity.
        client._http.headers["User-Agent"] = user_agent

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(name)) for name in self.names]

    async def stop(self) -> RacerStats:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.stats

    async def _work(self, name: str) -> None:
        writes = 0
        while not self._stop.is_set():
            if await self._race_once(name, with_owner=(writes // self.toggle_every) % 2 == 1):
                writes += 1

    async def _race_once(self, name: str, *, with_owner: bool) -> bool:
        try:
            ns = await self.client.get(f"/api/v1/namespaces/{name}")
        except ApiError as exc:
            self.stats.count(exc.status)
            return False
        self._seq += 1
        value = str(self._seq)
        body = copy.deepcopy(ns)
        meta = body["metadata"]
        meta.setdefault("labels", {})[RACER_LABEL] = value
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != self.owner["uid"]]
        meta["ownerReferences"] = ([dict(self.owner)] if with_owner else []) + refs
        if not meta["ownerReferences"]:
            meta.pop("ownerReferences")
        try:
            # PUT carries metadata.resourceVersion from the GET: a precondition, 409 if anyone wrote since.
            await self.client.request("PUT", f"/api/v1/namespaces/{name}", body=body,
                                      params={"fieldManager": "racer"})
        except ApiError as exc:
            self.stats.count(exc.status)
            if exc.status != 409 and len(self.stats.errors) < 20:
                self.stats.errors.append(f"{exc.status} {exc.api_message[:200]}")
            if exc.status >= 500:
                # Brief: 500s come while Capsule shuts down (its webhooks unreachable), right when
                # responder starts detaching; a long pause here made the writers miss each other (CI).
                await asyncio.sleep(0.005)
            return False
        self.stats.count(200)
        self.stats.last_label[name] = value
        self.stats.last_has_owner[name] = with_owner
        return True
