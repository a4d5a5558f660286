"""The incident lab: etcd, kube-apiserver, kube-controller-manager and the real Capsule controller as
local processes on loopback, with RBAC, client-cert identities and an audit log.

State lives in one directory (lab.json records ports, versions and the pid of every process the lab
started); `down` stops exactly those pids. Capsule runs as a process that the lab's "kubelet" keeps in
step with the capsule-system/capsule-controller-manager Deployment's replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.errors import ApiError, LabError
from responder.lab import pods, processes
from responder.lab import alertmanager as lab_alertmanager
from responder.lab import velero as lab_velero
from responder.lab.apply import apply_objects, wait_crds_established
from responder.lab.build import CAPSULE_VERSIONS, DEFAULT_CAPSULE, K8S_VERSION, capsule_component, ensure_built
from responder.lab.capsule import (CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE, CAPSULE_SERVICE_ACCOUNT, controller_args,
                                   objects_to_apply, render_chart)
from responder.lab.pki import LabPKI
from responder.names import RESPONDER_NAMESPACE
from responder.response.incident_object import INCIDENT_CRD, incident_crd
from responder.lab.processes import ProcessRecord

LAB_CONTEXT = "responder-lab"
CAPSULE_HEALTH_PORT = 10080  # hard-coded in Capsule: one lab per machine
ADMIN_USER = "lab-admin"
KCM_CONTROLLERS = "garbagecollector,namespace,deployment,replicaset,serviceaccount,clusterrole-aggregation"

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "verbs": ["get", "list", "watch"]},
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "Metadata"},
    ],
}


def default_state_dir() -> Path:
    base = os.environ.get("RESPONDER_LAB_DIR")
    if base:
        return Path(base)
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "responder" / "lab"


class Lab:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.dir = Path(state_dir or default_state_dir()).resolve()
        self.pki = LabPKI(self.dir / "pki")
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "lab.json"
        self.kubeconfig = self.dir / "kubeconfig"
        self.audit_log = self.dir / "audit" / "audit.log"

    # -- state ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {}
        return json.loads(self.state_file.read_text())

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _records(self) -> dict[str, ProcessRecord]:
        return {name: ProcessRecord(**rec) for name, rec in (self.state().get("processes") or {}).items()}

    def _record(self, state: dict[str, Any], record: ProcessRecord) -> None:
        state.setdefault("processes", {})[record.name] = record.to_json()
        self._save(state)

    def running(self) -> dict[str, bool]:
        return {name: processes.is_running(rec) for name, rec in self._records().items()}

    @property
    def capsule_record_file(self) -> Path:
        return self.dir / "capsule.pid.json"

    def capsule_process(self) -> ProcessRecord | None:
        if not self.capsule_record_file.exists():
            return None
        return ProcessRecord(**json.loads(self.capsule_record_file.read_text()))

    # -- kubeconfigs --------------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, user: str, *, cert: tuple[Path, Path] | None = None,
                         token: str | None = None) -> Path:
        port = self.state()["ports"]["apiserver"]
        user_entry: dict[str, Any] = {}
        if cert:
            user_entry = {"client-certificate": str(cert[0]), "client-key": str(cert[1])}
        if token:
            user_entry = {"token": token}
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": LAB_CONTEXT, "cluster": {"server": f"https://127.0.0.1:{port}",
                                                          "certificate-authority": str(self.pki.ca.cert)}}],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [{"name": LAB_CONTEXT, "context": {"cluster": LAB_CONTEXT, "user": user}}],
            "current-context": LAB_CONTEXT,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def mint_user(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for a new identity (client cert signed by the lab CA); no restart needed."""
        pair = self.pki.client(user, groups)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        return self.write_kubeconfig(self.dir / "users" / f"{safe}.kubeconfig", user, cert=(pair.cert, pair.key))

    def admin_client(self, **kwargs: Any) -> KubeClient:
        return KubeClient(load_cluster_access(str(self.kubeconfig)), **kwargs)

    # -- up / down ----------------------------------------------------------------------------------

    def up(self, *, capsule: str = DEFAULT_CAPSULE, velero: bool = False, alertmanager: bool = False,
           guard: bool = False, out: TextIO = sys.stderr) -> Path:
        """Start everything (building first if needed); returns the admin kubeconfig path. With
        `velero`, also the S3 server and the Velero server with a storage location Available; with
        `alertmanager`, also an Alertmanager (on a running lab: started beside it); with `guard`, responder's
        chart installed (2 replicas run by the kubelet, one leading)."""
        if capsule not in CAPSULE_VERSIONS:
            capsule_component(capsule)  # raises the clear error
        started = time.monotonic()
        current = self.state()
        if current and any(self.running().values()):
            if current.get("capsule") != capsule:
                raise LabError(f"a lab with Capsule {current.get('capsule')} is already running in {self.dir}",
                               fix="run `responder lab down --wipe` first, or use another --state-dir")
            print(f"lab: already running ({self.dir})", file=out)
            if alertmanager:
                self.start_alertmanager(out=out)
            if guard:
                self.install_guard(out=out)
            return self.kubeconfig
        if current.get("capsule") and current.get("capsule") != capsule:
            raise LabError(f"{self.dir} holds a lab with Capsule {current['capsule']}",
                           fix="run `responder lab down --wipe` first, or use another --state-dir")
        if processes.port_open(CAPSULE_HEALTH_PORT):
            raise LabError(f"port {CAPSULE_HEALTH_PORT} (Capsule's fixed health-probe port) is in use: another lab "
                           "(or a Capsule controller) is running on this machine",
                           fix="stop it first (`responder lab down`, with its --state-dir) and retry")
        binaries = ensure_built(["k8s", "helm", f"capsule-{capsule}"] + (["velero"] if velero else []), out=out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki.ensure()
        ports = current.get("ports") or {n: processes.free_port() for n in (
            "etcd", "etcd_peer", "apiserver", "webhook", "s3", "velero_metrics", "velero_profiler")}
        state = {"capsule": capsule, "velero": velero, "capsule_version": CAPSULE_VERSIONS[capsule], "kubernetes_version": K8S_VERSION,
                 "ports": ports, "binaries": {k: str(v) for k, v in binaries.items()}, "processes": {},
                 "started_at": time.time()}
        kept = self._capsule_installed(current)
        capsule_replicas = 1  # a new lab: the chart's Deployment
        if kept:
            state["capsule_args"] = current["capsule_args"]
            state["capsule_installed"] = True
        self._save(state)
        admin = self.pki.client(ADMIN_USER, ("system:masters",))
        self.write_kubeconfig(self.kubeconfig, ADMIN_USER, cert=(admin.cert, admin.key))
        try:
            self._start_etcd(state, binaries["etcd"])
            self._start_apiserver(state, binaries["kube-apiserver"])
            if kept:
                # The chart's objects are in etcd already, and Capsule's webhooks (failurePolicy Fail, on
                # this lab's recorded webhook port) refuse every namespace write until the controller
                # serves them again: nothing is applied until the kubelet has started it.
                print(f"lab: restarting on the state kept in {self.dir}", file=out)
                capsule_replicas = asyncio.run(self._kept_capsule_replicas())
                if capsule_replicas == 0 and velero:
                    self.down()
                    raise LabError(f"the state kept in {self.dir} has Capsule at 0 replicas (the breaker tripped), "
                                   "so Velero's install cannot pass Capsule's namespace webhooks",
                                   fix="`responder lab up` without --velero, scale capsule-system/"
                                       "capsule-controller-manager to 1, `responder lab down`, then `lab up --velero`")
            else:
                # Capsule's CRDs go in before kube-controller-manager starts, so that the garbage collector
                # watches Tenants from its first discovery pass, as in a cluster where Capsule has long been
                # installed (otherwise it only notices the new kind at its next 30 s discovery resync).
                asyncio.run(self._install_capsule(state, binaries["helm"], out))
                state["capsule_installed"] = True
                self._save(state)
            # The kubelet (and with it Capsule) starts while the garbage collector's informers sync.
            wait_gc = self._start_kcm(state, binaries["kube-controller-manager"])
            self._start_kubelet(state)
            wait_gc()
            if capsule_replicas == 0:
                # Kept state comes back as it was left, a tripped breaker included.
                print("lab: Capsule's Deployment is at 0 replicas (the breaker is tripped): its webhooks refuse "
                      "every namespace write until it is scaled back", file=out)
            else:
                # Velero's install creates its namespace, which passes Capsule's namespace webhooks.
                asyncio.run(self._wait_capsule_ready(out))
            if velero:
                self._start_velero(state, binaries, out)
                asyncio.run(self._wait_velero_ready(out))
            if alertmanager:
                self.start_alertmanager(out=out)
                state = self.state()
            if guard:
                self.install_guard(out=out)
        except BaseException:
            print(f"lab: start failed; logs in {self.logs}", file=out)
            raise
        state["ready_seconds"] = round(time.monotonic() - started, 2)
        self._save(state)
        print(f"lab: ready in {state['ready_seconds']:.1f}s (Kubernetes {K8S_VERSION}, Capsule "
              f"{CAPSULE_VERSIONS[capsule]})", file=out)
        return self.kubeconfig

    def install_guard(self, *, replicas: int = 2, out: TextIO = sys.stderr) -> list[dict[str, Any]]:
        """`helm install` of responder's chart; returns the replicas once ready (one leading)."""
        from responder.lab import guard_chart

        guard_chart.install(self.dir, Path(self.state()["binaries"]["helm"]), self.kubeconfig, replicas=replicas, out=out)
        return guard_chart.wait_ready(self.dir, replicas, out=out)

    def uninstall_guard(self, *, timeout: float = 90.0) -> None:
        """`helm uninstall`; returns once the kubelet has stopped every replica (their pods gone)."""
        from responder.lab import guard_chart

        guard_chart.uninstall(self.dir, Path(self.state()["binaries"]["helm"]), self.kubeconfig)
        self._wait("the guard's replicas stopped", lambda: not self.guard_replicas(), timeout)

    def guard_replicas(self) -> list[dict[str, Any]]:
        """Each guard replica the kubelet runs: pod, pid, restarts, health and metrics URLs."""
        return [pods.replica_status(pod, entry) for pod, entry in sorted(pods.read_pods(self.dir).items())]

    def start_alertmanager(self, *, out: TextIO = sys.stderr) -> str:
        """Alertmanager beside the running lab (built first if needed); its URL. Already running: its URL."""
        state = self.state()
        running = self._records().get("alertmanager")
        if lab_alertmanager.url(state) and running and processes.is_running(running):
            return lab_alertmanager.url(state) or ""
        binary = ensure_built(["alertmanager"], out=out)["alertmanager"]
        address = lab_alertmanager.start(self, state, binary)
        self._save(state)
        print(f"lab: Alertmanager on {address}", file=out)
        return address

    def _capsule_installed(self, state: dict[str, Any]) -> bool:
        """Whether kept state holds a completed Capsule install (its chart applied, its kubeconfig written)."""
        return bool(state.get("capsule_installed") and state.get("capsule_args")
                    and (self.dir / "capsule.kubeconfig").exists() and (self.dir / "etcd").is_dir())

    async def _kept_capsule_replicas(self) -> int:
        """The replicas kept state gives Capsule's Deployment (none: 0, as the kubelet reads it)."""
        async with self.admin_client() as client:
            deployment = await client.get_or_none(
                f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}")
        return int(((deployment or {}).get("spec") or {}).get("replicas", 1)) if deployment else 0

    def down(self, *, wipe: bool = False) -> list[str]:
        stopped = []
        # The kubelet first, so it does not restart Capsule; then Capsule, then the control plane.
        order = ["kubelet", "kube-controller-manager", "kube-apiserver", "etcd"]
        records = self._records()
        if "kubelet" in records and processes.stop(records["kubelet"]):
            stopped.append("kubelet")
        # Wiped state needs no graceful shutdown: SIGKILL (the kubelet above still stops its Pods itself).
        stop = processes.kill if wipe else processes.stop
        capsule = self.capsule_process()
        if capsule and processes.is_running(capsule):
            stop(capsule)
            stopped.append("capsule")
        self.capsule_record_file.unlink(missing_ok=True)
        stopped += pods.stop_recorded(self.dir)  # none unless the kubelet died before stopping them
        for name in ["alertmanager", "velero", "s3", *order[1:]]:
            if name in records and processes.is_running(records[name]):
                stop(records[name])
                stopped.append(name)
        state = self.state()
        if state:
            state["processes"] = {}
            self._save(state)
        if wipe and self.dir.exists():
            shutil.rmtree(self.dir)
        return stopped

    def status(self) -> dict[str, Any]:
        state = self.state()
        if not state:
            return {"state_dir": str(self.dir), "exists": False, "running": {}}
        running = self.running()
        capsule = self.capsule_process()
        running["capsule"] = bool(capsule and processes.is_running(capsule))
        return {"state_dir": str(self.dir), "exists": True, "kubeconfig": str(self.kubeconfig),
                "capsule": state.get("capsule_version"), "kubernetes": state.get("kubernetes_version"),
                "ports": state.get("ports"), "running": running, "ready_seconds": state.get("ready_seconds"),
                "alertmanager": lab_alertmanager.url(state) if running.get("alertmanager") else None,
                "audit_log": str(self.audit_log), "guard": self.guard_replicas()}

    # -- components ---------------------------------------------------------------------------------

    def _wait(self, what: str, check, timeout: float, record: ProcessRecord | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if record is not None and not processes.is_running(record):
                raise LabError(f"{what} exited during start; see {self.logs / (record.name + '.log')}",
                               fix="read the log; a port in use or stale state is the usual cause (lab down --wipe)")
            time.sleep(0.1)
        raise LabError(f"{what} not ready after {timeout:.0f}s; see {self.logs}", fix="read the logs in the state dir")

    def _start_etcd(self, state: dict[str, Any], binary: Path) -> None:
        p = state["ports"]
        data = self.dir / "etcd"
        argv = [str(binary), "--name=lab", f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{p['etcd']}", f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd_peer']}",
                f"--initial-cluster=lab=http://127.0.0.1:{p['etcd_peer']}",
                "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=8589934592"]
        record, _ = processes.spawn("etcd", argv, log_dir=self.logs)
        self._record(state, record)
        self._wait("etcd", lambda: processes.port_open(p["etcd"]), 30, record)

    def _apiserver_argv(self, state: dict[str, Any], binary: Path) -> list[str]:
        p = state["ports"]
        serving = self.pki.serving("apiserver")
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        policy = self.dir / "audit" / "policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        return [str(binary), f"--etcd-servers=http://127.0.0.1:{p['etcd']}", "--bind-address=127.0.0.1",
                f"--secure-port={p['apiserver']}", f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.pki.ca.cert}", "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--service-account-issuer=https://127.0.0.1:{p['apiserver']}",
                f"--service-account-key-file={self.pki.sa_pub}",
                f"--service-account-signing-key-file={self.pki.sa_key}",
                f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-maxsize=500", "--audit-log-maxbackup=2",
                # /debug/pprof for diagnosing where the API server's CPU goes (RESPONDER_LAB_PROFILING=1).
                f"--profiling={'true' if os.environ.get('RESPONDER_LAB_PROFILING') == '1' else 'false'}",
                "--endpoint-reconciler-type=none"]

    def _start_apiserver(self, state: dict[str, Any], binary: Path) -> None:
        record, _ = processes.spawn("kube-apiserver", self._apiserver_argv(state, binary), log_dir=self.logs)
        self._record(state, record)
        self._wait("kube-apiserver", self._apiserver_ready, 90, record)

    def restart_apiserver(self, *, kill: bool = True) -> float:
        """Fault injection: kill kube-apiserver and start it again; returns seconds until ready."""
        state = self.state()
        record = self._records()["kube-apiserver"]
        (processes.kill if kill else processes.stop)(record)
        t0 = time.monotonic()
        self._start_apiserver(state, Path(state["binaries"]["kube-apiserver"]))
        return time.monotonic() - t0

    def _apiserver_ready(self) -> bool:
        import ssl
        import urllib.request
        port = self.state()["ports"]["apiserver"]
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        admin = self.pki.client(ADMIN_USER, ("system:masters",))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _start_kcm(self, state: dict[str, Any], binary: Path) -> Callable[[], None]:
        """Starts kube-controller-manager; returns the wait for its garbage collector to be collecting."""
        pair = self.pki.client("system:kube-controller-manager")
        kc = self.write_kubeconfig(self.dir / "kcm.kubeconfig", "system:kube-controller-manager", cert=(pair.cert, pair.key))
        # Default rates on purpose: the garbage collector is the adversary and must not be tuned.
        argv = [str(binary), f"--kubeconfig={kc}", "--leader-elect=false", f"--controllers={KCM_CONTROLLERS}",
                "--use-service-account-credentials=true", f"--root-ca-file={self.pki.ca.cert}",
                f"--service-account-private-key-file={self.pki.sa_key}", "--secure-port=0",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"]
        log = self.logs / "kube-controller-manager.log"
        offset = log.stat().st_size if log.exists() else 0
        record, _ = processes.spawn("kube-controller-manager", argv, log_dir=self.logs)
        self._record(state, record)

        def gc_ready() -> bool:
            with open(log, "rb") as fh:
                fh.seek(offset)
                return b"Proceeding to collect garbage" in fh.read()

        return lambda: self._wait("the garbage collector", gc_ready, 60, record)

    async def _install_capsule(self, state: dict[str, Any], helm: Path, out: TextIO) -> None:
        webhook_url = f"https://127.0.0.1:{state['ports']['webhook']}"
        rendered = await asyncio.to_thread(render_chart, state["capsule"], helm, webhook_url=webhook_url,
                                           ca_pem=self.pki.ca.cert.read_bytes())
        state["capsule_args"] = controller_args(rendered)
        self._save(state)
        async with self.admin_client() as client:
            # responder's own namespace too, as where responder is installed: its writer Lease lives there.
            await apply_objects(client, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
                                         for name in (CAPSULE_NAMESPACE, RESPONDER_NAMESPACE)])
            # responder's own Incident CRD, as the chart installs it with the guard.
            await apply_objects(client, [incident_crd()])
            objs = objects_to_apply(rendered)
            crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
            await apply_objects(client, crds)
            await wait_crds_established(client, [c["metadata"]["name"] for c in crds] + [INCIDENT_CRD])
            await apply_objects(client, [o for o in objs if o["kind"] != "CustomResourceDefinition"])
            token = await client.create(
                f"/api/v1/namespaces/{CAPSULE_NAMESPACE}/serviceaccounts/{CAPSULE_SERVICE_ACCOUNT}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                 "spec": {"expirationSeconds": 365 * 24 * 3600}})
        self.write_kubeconfig(self.dir / "capsule.kubeconfig", f"system:serviceaccount:{CAPSULE_NAMESPACE}:"
                              f"{CAPSULE_SERVICE_ACCOUNT}", token=token["status"]["token"])
        certs = self.dir / "capsule-certs"
        certs.mkdir(exist_ok=True)
        serving = self.pki.serving("capsule-webhook")
        shutil.copy(serving.cert, certs / "tls.crt")
        shutil.copy(serving.key, certs / "tls.key")
        # Capsule 0.12 reads its certs from $TMPDIR/k8s-webhook-server/serving-certs.
        legacy = self.dir / "capsule-tmp" / "k8s-webhook-server" / "serving-certs"
        legacy.mkdir(parents=True, exist_ok=True)
        shutil.copy(serving.cert, legacy / "tls.crt")
        shutil.copy(serving.key, legacy / "tls.key")
        print(f"lab: Capsule {state['capsule_version']} chart applied ({len(objs)} objects)", file=out)

    def capsule_argv_env(self) -> tuple[list[str], dict[str, str]]:
        """How the kubelet starts the controller: the chart's args, with the webhook port and cert
        path for this lab, metrics off (its port is fixed and irrelevant here)."""
        state = self.state()
        binary = state["binaries"][f"capsule-{state['capsule']}"]
        port = state["ports"]["webhook"]
        args = [a for a in state.get("capsule_args") or []
                if not a.startswith(("--webhook-port", "--webhook-cert-path", "--metrics-addr",
                                     "--enable-leader-election"))]
        args += [f"--webhook-port={port}", "--metrics-addr=0", "--enable-leader-election=false"]
        if state["capsule"] != "0.12":
            args.append(f"--webhook-cert-path={self.dir / 'capsule-certs'}")
        # Capsule 0.12 reads $HOME/.kube/config outside a cluster (to learn the Kubernetes version), so
        # its HOME holds a copy of its kubeconfig.
        home = self.dir / "capsule-home"
        (home / ".kube").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.dir / "capsule.kubeconfig", home / ".kube" / "config")
        env = dict(os.environ, NAMESPACE=CAPSULE_NAMESPACE, SERVICE_ACCOUNT=CAPSULE_SERVICE_ACCOUNT, HOME=str(home),
                   KUBECONFIG=str(self.dir / "capsule.kubeconfig"), TMPDIR=str(self.dir / "capsule-tmp"))
        return [binary, *args], env

    def _start_velero(self, state: dict[str, Any], binaries: dict[str, Path], out: TextIO) -> None:
        lab_velero.start_object_store(self, state)
        asyncio.run(lab_velero.install(self, state, binaries["velero"], out))
        lab_velero.start_server(self, state, binaries["velero"], binaries["velero-plugin-for-aws"])

    async def _wait_velero_ready(self, out: TextIO) -> None:
        async with self.admin_client() as client:
            await lab_velero.wait_storage_available(client)
        print("lab: Velero running, storage location Available", file=out)

    def _start_kubelet(self, state: dict[str, Any]) -> None:
        argv = [sys.executable, "-m", "responder.lab.kubelet", str(self.dir)]
        record, _ = processes.spawn("kubelet", argv, log_dir=self.logs)
        self._record(state, record)

    async def _wait_capsule_ready(self, out: TextIO, timeout: float = 60.0) -> None:
        """Ready when a namespace dry-run CREATE passes Capsule's webhooks (so they are served)."""
        deadline = time.monotonic() + timeout
        last = ""
        async with self.admin_client() as client:
            while time.monotonic() < deadline:
                try:
                    webhooks = await client.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations")
                    names = [h["name"] for w in webhooks["items"] for h in w.get("webhooks") or []
                             if (w["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "capsule"
                             or w["metadata"]["name"].startswith("capsule")]
                    if any("namespaces" in n for n in names):
                        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                                    "metadata": {"name": "lab-readiness-probe"}},
                                            dry_run=True)
                        return
                    last = "Capsule's namespace webhook is not registered yet"
                except ApiError as exc:
                    last = exc.api_message
                await asyncio.sleep(0.2)
        raise LabError(f"Capsule did not become ready in {timeout:.0f}s: {last}",
                       fix=f"see {self.logs / 'capsule.log'} and {self.logs / 'kubelet.log'}")
