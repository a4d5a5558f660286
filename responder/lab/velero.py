"""Real Velero in the lab: its server as a local process (Velero's documented run-locally mode), the
AWS object-store plugin, and moto's S3 server on loopback as the object storage.

Velero runs as its own ServiceAccount (velero/velero, bound to cluster-admin as Velero's chart binds
it), so the API server, the audit log and Capsule's webhooks see the identity a real install has.
Its CRDs come from the built binary itself (`velero install --crds-only --dry-run -o yaml`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx
import yaml

from responder.cluster.client import KubeClient
from responder.errors import ApiError, LabError
from responder.lab import processes


class LabHost(Protocol):
    """What Velero's set-up needs of the lab it joins (responder.lab.control_plane.Lab, which calls it)."""

    dir: Path
    logs: Path

    def _record(self, state: dict[str, Any], record: processes.ProcessRecord) -> None: ...
    def _wait(self, what: str, check: Callable[[], bool], timeout: float,
              record: processes.ProcessRecord | None = None) -> None: ...
    def admin_client(self, **kwargs: Any) -> KubeClient: ...
    def write_kubeconfig(self, path: Path, user: str, **kwargs: Any) -> None: ...


VELERO_NAMESPACE = "velero"
VELERO_SERVICE_ACCOUNT = "velero"
VELERO_USER = f"system:serviceaccount:{VELERO_NAMESPACE}:{VELERO_SERVICE_ACCOUNT}"
BUCKET = "velero"
BSL_NAME = "default"
VELERO_API = "/apis/velero.io/v1"
VELERO_IMAGE_TAG = "v1.18.3"  # the version gomod/velero/go.mod pins (the Deployment object only names it)
# moto accepts any credentials; these only have to be well-formed.
_CREDENTIALS = "[default]\naws_access_key_id = lab\naws_secret_access_key = lab-secret-key\n"


def velero_path(resource: str, name: str | None = None, namespace: str = VELERO_NAMESPACE) -> str:
    base = f"{VELERO_API}/namespaces/{namespace}/{resource}"
    return f"{base}/{name}" if name else base


def crd_objects(velero: Path) -> list[dict[str, Any]]:
    """Velero's CRDs as the binary that will serve them renders them."""
    proc = subprocess.run([str(velero), "install", "--crds-only", "--dry-run", "-o", "yaml"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LabError(f"`velero install --crds-only` failed: {proc.stderr.strip()[:400]}",
                       fix="rebuild Velero: responder lab build --velero")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    items: list[dict[str, Any]] = []
    for doc in docs:
        items.extend(doc.get("items") or []) if doc.get("kind") == "List" else items.append(doc)
    return [i for i in items if i.get("kind") == "CustomResourceDefinition"]


def start_object_store(lab: LabHost, state: dict[str, Any]) -> None:
    """moto's S3 server on loopback, with Velero's bucket."""
    port = state["ports"]["s3"]
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("moto.server") is None:
        raise LabError("the lab's S3 server (moto) is not installed",
                       fix="pip install 'responder[lab]' (./dev does this)")
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    record, _ = processes.spawn("s3", argv, log_dir=lab.logs)
    lab._record(state, record)
    lab._wait("moto S3 server", lambda: processes.port_open(port), 60, record)
    # moto does not check signatures: a plain PUT creates the bucket (path style, as Velero uses it).
    response = httpx.put(f"http://127.0.0.1:{port}/{BUCKET}", timeout=10)
    if response.status_code not in (200, 409):
        raise LabError(f"could not create the S3 bucket: {response.status_code} {response.text[:200]}",
                       fix=f"see {lab.logs / 's3.log'}")


async def install(lab: LabHost, state: dict[str, Any], velero: Path, out: TextIO) -> None:
    """CRDs, namespace, ServiceAccount and its kubeconfig, the storage location."""
    from responder.lab.apply import apply_objects, wait_crds_established

    crds = await asyncio.to_thread(crd_objects, velero)
    async with lab.admin_client() as client:
        await apply_objects(client, crds)
        await wait_crds_established(client, [c["metadata"]["name"] for c in crds])
        await apply_objects(client, [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VELERO_NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": VELERO_SERVICE_ACCOUNT, "namespace": VELERO_NAMESPACE}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "velero"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": VELERO_SERVICE_ACCOUNT, "namespace": VELERO_NAMESPACE}]},
            backup_storage_location(state["ports"]["s3"]),
            # The server runs as a local process, but Velero's restore item actions look up their own
            # Deployment (the pod-volume action reads its image for the restore helper): the object a real
            # install has, at 0 replicas. Found on the lab: without it a restore with pods ends
            # PartiallyFailed ('deployments.apps "velero" not found').
            server_deployment(),
        ])
        token = await client.create(
            f"/api/v1/namespaces/{VELERO_NAMESPACE}/serviceaccounts/{VELERO_SERVICE_ACCOUNT}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 365 * 24 * 3600}})
    lab.write_kubeconfig(lab.dir / "velero.kubeconfig", VELERO_USER, token=token["status"]["token"])
    credentials = lab.dir / "velero-credentials"
    credentials.write_text(_CREDENTIALS)
    credentials.chmod(0o600)
    print(f"lab: Velero CRDs ({len(crds)}) and storage location applied", file=out)


def server_deployment() -> dict[str, Any]:
    labels = {"component": "velero", "deploy": "velero"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "velero", "namespace": VELERO_NAMESPACE, "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "serviceAccountName": VELERO_SERVICE_ACCOUNT,
                         "containers": [{"name": "velero", "image": f"velero/velero:{VELERO_IMAGE_TAG}",
                                         "command": ["/velero"], "args": ["server"]}]}}}}


def backup_storage_location(s3_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
        "metadata": {"name": BSL_NAME, "namespace": VELERO_NAMESPACE},
        "spec": {"provider": "aws", "default": True,
                 "objectStorage": {"bucket": BUCKET},
                 "config": {"region": "us-east-1", "s3ForcePathStyle": "true",
                            "s3Url": f"http://127.0.0.1:{s3_port}"}},
    }


def start_server(lab: LabHost, state: dict[str, Any], velero: Path, plugin: Path) -> None:
    plugins = lab.dir / "velero-plugins"
    plugins.mkdir(exist_ok=True)
    link = plugins / plugin.name
    if not link.exists():
        link.symlink_to(plugin)
    p = state["ports"]
    argv = [str(velero), "server", f"--kubeconfig={lab.dir / 'velero.kubeconfig'}", f"--namespace={VELERO_NAMESPACE}",
            f"--plugin-dir={plugins}", f"--metrics-address=127.0.0.1:{p['velero_metrics']}",
            f"--profiler-address=127.0.0.1:{p['velero_profiler']}", "--log-level=info",
            # Short sync periods: a lab's backups and storage state show up in seconds, not minutes.
            "--backup-sync-period=10s", "--store-validation-frequency=5s",
            # responder submits a Restore only once the lost namespaces are gone; keep a stuck one short.
            "--terminating-resource-timeout=2m"]
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(lab.dir / "velero-credentials"), "HOME": str(lab.dir),
           "PATH": "/usr/bin:/bin"}
    record, _ = processes.spawn("velero", argv, log_dir=lab.logs, env=env, cwd=lab.dir)
    lab._record(state, record)


async def wait_storage_available(client: KubeClient, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        bsl = await client.get_or_none(velero_path("backupstoragelocations", BSL_NAME))
        phase = ((bsl or {}).get("status") or {}).get("phase", "")
        if phase == "Available":
            return
        await asyncio.sleep(0.5)
    raise LabError(f"Velero's storage location is not Available after {timeout:.0f}s (phase {phase or 'unset'})",
                   fix="see velero.log and s3.log in the lab's logs directory")


async def create_schedule_and_backup(client: KubeClient, *, name: str = "lab-daily", timeout: float = 300.0,
                                     out: TextIO = sys.stderr) -> dict[str, Any]:
    """A Schedule of the whole cluster (cluster resources included, so Tenants and the Tenant CRD are
    in it) and a first Backup from it now, as `velero backup create --from-schedule` makes it (the
    schedule's template and its schedule-name label: Velero 1.18's controller does not run a new
    schedule at once, found on the lab). Returns that Backup when Completed."""
    schedule = {
        "apiVersion": "velero.io/v1", "kind": "Schedule",
        "metadata": {"name": name, "namespace": VELERO_NAMESPACE},
        "spec": {"schedule": "0 3 * * *", "skipImmediately": False,
                 "template": {"includedNamespaces": ["*"], "includeClusterResources": True,
                              "snapshotVolumes": False, "ttl": "720h0m0s"}},
    }
    try:
        await client.create(velero_path("schedules"), schedule)
    except ApiError as exc:
        if exc.status != 409:
            raise
    labels = {"velero.io/schedule-name": name}
    first = f"{name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    await client.create(velero_path("backups"), {
        "apiVersion": "velero.io/v1", "kind": "Backup",
        "metadata": {"name": first, "namespace": VELERO_NAMESPACE, "labels": labels},
        "spec": schedule["spec"]["template"]})
    return await wait_backup(client, labels, name=first, timeout=timeout, out=out)


async def create_backup(client: KubeClient, name: str, *, included: list[str] | None = None,
                        timeout: float = 300.0, out: TextIO = sys.stderr) -> dict[str, Any]:
    body = {"apiVersion": "velero.io/v1", "kind": "Backup",
            "metadata": {"name": name, "namespace": VELERO_NAMESPACE},
            "spec": {"includedNamespaces": included or ["*"], "includeClusterResources": True,
                     "snapshotVolumes": False, "ttl": "720h0m0s"}}
    await client.create(velero_path("backups"), body)
    return await wait_backup(client, {}, name=name, timeout=timeout, out=out)


async def wait_backup(client: KubeClient, labels: dict[str, str], *, name: str | None = None,
                      timeout: float, out: TextIO) -> dict[str, Any]:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if name:
            found = [b for b in [await client.get_or_none(velero_path("backups", name))] if b]
        else:
            found = (await client.get(velero_path("backups"), params={"labelSelector": selector}))["items"]
        for backup in found:
            status = backup.get("status") or {}
            phase = status.get("phase", "")
            progress = status.get("progress") or {}
            note = f"backup {backup['metadata']['name']}: {phase or 'New'} {progress.get('itemsBackedUp', 0)}/" \
                   f"{progress.get('totalItems', '?')}"
            if note != last:
                print(f"lab: {note}", file=out, flush=True)
                last = note
            if phase == "Completed":
                return backup
            if phase in ("Failed", "FailedValidation", "PartiallyFailed"):
                raise LabError(f"backup {backup['metadata']['name']} ended {phase}: "
                               f"{status.get('failureReason') or status.get('validationErrors')}",
                               fix="see velero.log in the lab's logs directory")
        await asyncio.sleep(1.0)
    raise LabError(f"no Completed backup after {timeout:.0f}s ({last or 'none created'})", fix="see velero.log")
