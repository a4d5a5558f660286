"""The delete gate on the lab: a serving certificate for 127.0.0.1 from the lab's CA, and the webhook
configuration in URL mode pointing the lab's API server at a gate served on loopback (the headless watch's
`--gate-listen`, or a session's own server in the detection bench)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from responder.cluster.client import KubeClient
from responder.errors import ApiError, LabError
from responder.guard.gate_server import DeleteGateServer, server_tls
from responder.incident.delete_gate import GARBAGE_COLLECTOR, GateDecision, GateRequest
from responder.lab.apply import apply_objects
from responder.lab.control_plane import Lab
from responder.names import HOLD_POLICY
from responder.ops.delete_gate_webhook import CONFIGURATION_NAME, WEBHOOK_NAME, delete_gate_webhook

CONFIGURATION_PATH = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{CONFIGURATION_NAME}"


def gate_cert_dir(lab: Lab) -> Path:
    """A directory holding tls.crt and tls.key for 127.0.0.1, signed by the lab's CA (as a mounted Secret)."""
    pair = lab.pki.serving("delete-gate")
    out = lab.dir / "delete-gate"
    out.mkdir(exist_ok=True)
    for source, name in ((pair.cert, "tls.crt"), (pair.key, "tls.key")):
        shutil.copyfile(source, out / name)
    (out / "tls.key").chmod(0o600)
    return out


async def install_delete_gate(admin: KubeClient, lab: Lab, port: int, *, users: tuple[str, ...] | None = None) -> None:
    """The gate's ValidatingWebhookConfiguration, calling https://127.0.0.1:`port`/delete-gate."""
    bundle = base64.b64encode(lab.pki.ca.cert.read_bytes()).decode()
    kwargs = {"users": users} if users else {}
    await apply_objects(admin, [delete_gate_webhook(url=f"https://127.0.0.1:{port}", ca_bundle=bundle, **kwargs)])


async def remove_delete_gate(admin: KubeClient) -> None:
    if await admin.get_or_none(CONFIGURATION_PATH) is not None:
        await admin.delete(CONFIGURATION_PATH)


async def gate_in_force(admin: KubeClient, namespace: str, *, timeout: float = 15.0,
                        reached: Callable[[], bool] | None = None) -> None:
    """Wait until the API server sends the garbage collector's namespace DELETEs to the gate: a dry-run DELETE
    of `namespace` (a tenant namespace whose Tenant is alive) as the collector, refused by the gate, or
    `reached()` true (the gate's server counted a request), or refused by responder's namespace hold: admission
    policies are evaluated before webhooks, so a hold in force answers first and the gate is moot while it
    holds. Dry run: nothing is deleted even if it were admitted."""
    collector = admin.with_options(impersonate=GARBAGE_COLLECTOR,
                                   impersonate_groups=("system:serviceaccounts", "system:authenticated"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                await collector.delete(f"/api/v1/namespaces/{namespace}", dry_run=True)
                answer = "admitted"
            except ApiError as exc:
                if exc.status == 403 and (WEBHOOK_NAME in str(exc) or f"'{HOLD_POLICY}" in str(exc)):
                    return
                answer = f"{exc.status}: {str(exc)[:200]}"
            if reached is not None and reached():
                return
            if time.monotonic() > deadline:
                raise LabError(f"the delete gate is not in force {timeout:.0f}s after its configuration was "
                               f"applied (a dry-run DELETE of {namespace} as the garbage collector: {answer})",
                               fix="read the lab's kube-apiserver.log for webhook calls to 127.0.0.1")
            await asyncio.sleep(0.2)
    finally:
        await collector.aclose()


@asynccontextmanager
async def delete_gate_served(lab: Lab, admin: KubeClient, decide: Callable[[GateRequest], GateDecision], *,
                             users: tuple[str, ...], probe_namespace: str) -> AsyncIterator[DeleteGateServer]:
    """The gate served on loopback with `decide` (a session's), the API server calling it, until the end."""
    server = DeleteGateServer(decide, server_tls(gate_cert_dir(lab)))
    port = await server.start("127.0.0.1", 0)
    try:
        await install_delete_gate(admin, lab, port, users=users)
        await gate_in_force(admin, probe_namespace, reached=lambda: sum(server.decisions.values()) > 0)
        yield server
    finally:
        await remove_delete_gate(admin)
        await server.stop()
