"""The lab's kubelet for responder's guard: every Pod of the chart's Deployment (the ReplicaSet controller
creates them; nothing schedules them) runs as a local process, as a kubelet would run its container.

A pod's process gets what the container would: the chart's args; the env its spec gives (values, the
Downward API's fieldRefs: POD_NAME, POD_NAMESPACE, ..., and Secret and ConfigMap keys); KUBERNETES_SERVICE_HOST/PORT; and its ServiceAccount's
projected volume (a TokenRequest token bound to the pod, renewed at 80 % of its life as the kubelet does, the
lab CA, the namespace), which the `kubernetes` package's in-cluster loader reads (responder/lab/pod_exec.py
points the loader at the pod's copy of /var/run/secrets/kubernetes.io/serviceaccount). No kubeconfig and no
host environment reach it. What a container image would hold is the source tree (the Dockerfile copies it to
/opt/responder); emptyDir and ConfigMap volumes are directories under the lab's state, and each container port
is mapped to a free local port (the args' `--port=N` rewritten) on loopback (`--bind=127.0.0.1`).

A process that dies is restarted (same pod, a short back-off); a pod deleted (scaled down, `helm uninstall`)
has its process stopped with SIGTERM, then SIGKILL after the pod's grace period. `<state>/guard-pods.json`
lists each replica: pod, pid, restarts, port (`responder lab status` shows it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import responder
from responder.cluster.client import KubeClient
from responder.cluster.watch import SYNCED, TYPE_GONE, ResourceWatch, events_into
from responder.lab import processes
from responder.lab.processes import ProcessRecord
from responder.names import RESPONDER_NAMESPACE

log = logging.getLogger("responder.lab.pods")

GUARD_SELECTOR = "app.kubernetes.io/name=responder,app.kubernetes.io/component=guard"
IMAGE_ROOT = "/opt/responder"  # the Dockerfile's WORKDIR: the source tree, runbooks beside the package
SOURCE_ROOT = Path(responder.__file__).resolve().parent.parent
TOKEN_SECONDS = 3600  # the kubelet's default for a projected ServiceAccount token
TOKEN_RENEW_SHARE = 0.8  # renewed at 80 % of its life, as the kubelet does
MAX_GRACE = 30.0


def pods_file(state_dir: Path) -> Path:
    return state_dir / "guard-pods.json"


def read_pods(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The replicas the kubelet runs: pod name -> {pid, start_ticks, port, restarts, ...}."""
    path = pods_file(state_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def replica_record(entry: dict[str, Any]) -> ProcessRecord:
    return ProcessRecord(**{k: entry[k] for k in ("name", "pid", "start_ticks", "argv0")})


def replica_status(pod: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One replica as `responder lab status` shows it."""
    base = f"http://127.0.0.1:{entry['port']}"
    return {"pod": pod, "pid": entry["pid"], "running": processes.is_running(replica_record(entry)),
            "restarts": entry["restarts"], "healthz": f"{base}/healthz", "readyz": f"{base}/readyz",
            "metrics": f"{base}/metrics", "log": entry["log"]}


def field_value(pod: dict[str, Any], path: str) -> str:
    """The Downward API's fieldRef values a pod without a node can have."""
    meta, spec = pod["metadata"], pod["spec"]
    values = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
              "spec.nodeName": spec.get("nodeName", "lab"), "status.podIP": "127.0.0.1",
              "status.hostIP": "127.0.0.1"}
    if path in values:
        return values[path]
    if path.startswith("metadata.labels['") or path.startswith("metadata.annotations['"):
        kind, _, key = path.partition("['")
        return ((meta.get(kind.split(".")[1]) or {}).get(key.rstrip("']")) or "")
    raise ValueError(f"fieldRef {path} is not supported by the lab's kubelet")


KEY_REFS = {"secretKeyRef": "secrets", "configMapKeyRef": "configmaps"}


def key_refs(container: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (resource, name, key) of each env value read from a Secret or ConfigMap."""
    refs = []
    for entry in container.get("env") or []:
        for ref_kind, resource in KEY_REFS.items():
            ref = (entry.get("valueFrom") or {}).get(ref_kind)
            if ref:
                refs.append((resource, ref["name"], ref["key"]))
    return refs


def container_env(pod: dict[str, Any], container: dict[str, Any], api_port: int,
                  values: dict[tuple[str, str, str], str] | None = None) -> dict[str, str]:
    """A container's environment: the service variables every pod gets, then its spec's env (`values`: what
    its Secret and ConfigMap key references hold, by `key_refs`; one missing leaves the variable unset)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port),
           "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port)}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif (entry.get("valueFrom") or {}).get("fieldRef"):
            env[entry["name"]] = field_value(pod, entry["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            for ref_kind, resource in KEY_REFS.items():
                ref = (entry.get("valueFrom") or {}).get(ref_kind)
                if ref and (resource, ref["name"], ref["key"]) in (values or {}):
                    env[entry["name"]] = (values or {})[(resource, ref["name"], ref["key"])]
    return env


def container_argv(container: dict[str, Any], *, mounts: dict[str, Path], ports: dict[int, int]) -> list[str]:
    """The container's command and args as a local process: paths under its mounts and the image's root mapped
    to local directories, container ports to local ones, the endpoint on loopback."""
    command = list(container.get("command") or ["responder"])  # the image's ENTRYPOINT
    if command[0] != "responder":
        raise ValueError(f"the lab runs only responder's image (command {command[0]!r})")
    prefixes = {**{path: str(local) for path, local in mounts.items()}, IMAGE_ROOT: str(SOURCE_ROOT)}

    def local(arg: str) -> str:
        for path in sorted(prefixes, key=len, reverse=True):
            if path in arg:
                return arg.replace(path, prefixes[path])
        return arg

    args = [local(str(a)) for a in [*command[1:], *(container.get("args") or [])]]
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name == "--port" and value.isdigit() and int(value) in ports:
            args[i] = f"--port={ports[int(value)]}"
    if not any(a == "--bind" or a.startswith("--bind=") for a in args):
        args.append("--bind=127.0.0.1")
    return args


@dataclass
class Replica:
    pod: str
    uid: str
    record: ProcessRecord | None
    port: int
    restarts: int = 0
    last_start: float = 0.0
    token_renew_at: float = 0.0


class GuardPods:
    """Keeps one process per guard Pod in responder-system."""

    def __init__(self, state_dir: Path, api_port: int, ca_cert: Path) -> None:
        self.dir = state_dir
        self.api_port = api_port
        self.ca_cert = ca_cert
        self.replicas: dict[str, Replica] = {}
        self.logs = state_dir / "logs"

    def pod_dir(self, pod: str) -> Path:
        return self.dir / "pods" / pod

    def _save(self) -> None:
        data = {r.pod: {**r.record.to_json(), "port": r.port, "restarts": r.restarts, "uid": r.uid,
                        "log": str(self.logs / f"{r.record.name}.log")}
                for r in self.replicas.values() if r.record is not None}
        tmp = pods_file(self.dir).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(pods_file(self.dir))

    async def _write_token(self, client: KubeClient, pod: dict[str, Any], replica: Replica) -> None:
        """The projected ServiceAccount volume: a token bound to this pod, the CA, the namespace."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName", "default")
        review = await client.create(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": TOKEN_SECONDS,
                      "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}})
        volume = self.pod_dir(replica.pod) / "serviceaccount"
        volume.mkdir(parents=True, exist_ok=True)
        for name, content in (("ca.crt", self.ca_cert.read_text()), ("namespace", meta["namespace"]),
                              ("token", review["status"]["token"])):
            tmp = volume / f".{name}.tmp"
            tmp.write_text(content)
            tmp.chmod(0o600)
            tmp.replace(volume / name)  # atomic, as the kubelet's projected volume updates are
        replica.token_renew_at = time.monotonic() + TOKEN_SECONDS * TOKEN_RENEW_SHARE

    async def _volumes(self, client: KubeClient, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Path]:
        """Each mounted emptyDir and ConfigMap volume as a directory of the pod's."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            local = self.pod_dir(pod["metadata"]["name"]) / "volumes" / mount["name"]
            if "emptyDir" in volume:
                local.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume:
                config_map = await client.get(
                    f"/api/v1/namespaces/{pod['metadata']['namespace']}/configmaps/{volume['configMap']['name']}")
                local.mkdir(parents=True, exist_ok=True)
                for key, value in (config_map.get("data") or {}).items():
                    (local / key).write_text(value)
            else:
                continue  # the ServiceAccount's projected volume: pod_exec points the loader at it
            mounts[mount["mountPath"]] = local
        return mounts

    async def _start(self, client: KubeClient, pod: dict[str, Any], replica: Replica) -> None:
        container = pod["spec"]["containers"][0]
        await self._write_token(client, pod, replica)
        mounts = await self._volumes(client, pod, container)
        ports = {int(p["containerPort"]): replica.port for p in (container.get("ports") or [])[:1]}
        args = container_argv(container, mounts=mounts, ports=ports)
        values = {}
        for resource, name, key in key_refs(container):
            obj = await client.get_or_none(f"/api/v1/namespaces/{pod['metadata']['namespace']}/{resource}/{name}")
            if resource == "secrets" and obj and key in (obj.get("data") or {}):
                values[(resource, name, key)] = base64.b64decode(obj["data"][key]).decode()
            elif obj and key in (obj.get("data") or {}):
                values[(resource, name, key)] = obj["data"][key]
        env = container_env(pod, container, self.api_port, values)
        home = self.pod_dir(replica.pod) / "home"
        home.mkdir(parents=True, exist_ok=True)
        env |= {"HOME": str(home), "TMPDIR": str(home)}
        argv = [sys.executable, "-m", "responder.lab.pod_exec", str(self.pod_dir(replica.pod) / "serviceaccount"), *args]
        record, _ = processes.spawn(f"guard-{replica.pod}", argv, log_dir=self.logs, env=env,
                                    cwd=self.pod_dir(replica.pod))
        if replica.record is not None:
            replica.restarts += 1
        replica.record, replica.last_start = record, time.monotonic()
        self._save()
        log.info("pod %s: started pid %d (port %d, restarts %d)", replica.pod, record.pid, replica.port,
                 replica.restarts)

    async def reconcile(self, client: KubeClient, pods: dict[str, dict[str, Any]]) -> None:
        # Deleted pods, and pods recreated under the same name (their process belongs to the old one).
        for name in [n for n, r in self.replicas.items() if n not in pods or pods[n]["metadata"]["uid"] != r.uid]:
            replica = self.replicas.pop(name)
            if replica.record is not None:
                await asyncio.to_thread(processes.stop, replica.record, grace=MAX_GRACE)
                log.info("pod %s deleted: stopped pid %d", name, replica.record.pid)
            self._save()
        for name, pod in pods.items():
            replica = self.replicas.get(name)
            if replica is None:
                replica = self.replicas[name] = Replica(name, pod["metadata"]["uid"], None, processes.free_port())
            running = replica.record is not None and processes.is_running(replica.record)
            if not running:
                # Back off on crash loops, like CrashLoopBackOff but short.
                wait = min(10.0, 0.5 * replica.restarts) - (time.monotonic() - replica.last_start)
                if replica.record is None or wait <= 0:
                    try:
                        await self._start(client, pod, replica)
                    except Exception as exc:  # one pod's failure must not stop the others
                        log.error("pod %s: cannot start: %s", name, exc)
                        replica.last_start = time.monotonic()
            elif time.monotonic() >= replica.token_renew_at:
                await self._write_token(client, pod, replica)

    async def run(self, client: KubeClient) -> None:
        watch = ResourceWatch(client, f"/api/v1/namespaces/{RESPONDER_NAMESPACE}/pods", resource="pods",
                              params={"labelSelector": GUARD_SELECTOR}, stall_timeout=30)
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(events_into(watch, queue))
        synced = False
        while True:
            if pump.done():
                pump.result()  # surface the watch's failure
            try:
                event = await asyncio.wait_for(queue.get(), timeout=0.5)
                synced = synced or event.type == SYNCED
                if event.type == TYPE_GONE:
                    continue
            except asyncio.TimeoutError:
                pass  # restart a dead process even when nothing changes
            if synced:
                pods = {obj["metadata"]["name"]: obj for obj in watch.store.values()
                        if not obj["metadata"].get("deletionTimestamp")}
                await self.reconcile(client, pods)

    def stop_all(self) -> None:
        for replica in self.replicas.values():
            if replica.record is not None:
                processes.stop(replica.record, grace=MAX_GRACE)
        self.replicas.clear()
        pods_file(self.dir).unlink(missing_ok=True)


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the replicas recorded in guard-pods.json (the kubelet gone first); their names."""
    stopped = [f"guard-{pod}" for pod, entry in read_pods(state_dir).items()
               if processes.stop(replica_record(entry), grace=MAX_GRACE)]
    pods_file(state_dir).unlink(missing_ok=True)
    return stopped
