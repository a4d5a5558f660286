"""Drill scenarios: what the drill breaks before and during the incident, and how it puts its own
fault injection back afterwards. Used by `responder drill --scenario` (embedded lab or an existing
sandbox cluster) and by `responder drill --bench`.

- crd-deletion (default): DELETE the Tenant CRD (every Tenant goes with it).
- tenant-mass-deletion: DELETE every Tenant at once, concurrently (the CRD stays); responder must
  catch it as "Tenants deleted in a burst" (detect.TENANTS_VANISHED).
- breaker-unavailable: before the incident, set every Capsule webhook that guards namespace DELETEs
  to failurePolicy Ignore (in the live configurations and, for Capsule >= 0.13, in the
  CapsuleConfiguration the controller renders `capsule-dynamic-webhook` from), then delete the CRD.
  Scaling Capsule to 0 then no longer makes anyone's namespace DELETE fail: responder must say so and
  rely on speed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from responder.actions.breaker import fails_closed, guards_namespace_delete, webhook_path
from responder.cluster.client import JSON_PATCH, KubeClient
from responder.errors import LabError
from responder.lab.incident import delete_tenant_crd
from responder.incident.observe import WEBHOOK_STREAMS, capsule_webhooks_in

CRD_DELETION = "crd-deletion"
TENANT_MASS_DELETION = "tenant-mass-deletion"
BREAKER_UNAVAILABLE = "breaker-unavailable"
SCENARIOS = (CRD_DELETION, TENANT_MASS_DELETION, BREAKER_UNAVAILABLE)

TENANTS_PATH = "/apis/capsule.clastix.io/v1beta2/tenants"
CAPSULE_CONFIGURATIONS = "/apis/capsule.clastix.io/v1beta2/capsuleconfigurations"


async def prepare(admin: KubeClient, scenario: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Fault injection before the incident; returns what to put back (see `restore`)."""
    if scenario == BREAKER_UNAVAILABLE:
        return await disable_breaker(admin, timeout=timeout)
    return {}


async def trigger(admin: KubeClient, scenario: str) -> float:
    """Start the incident; returns the wall-clock time the first DELETE was sent."""
    if scenario == TENANT_MASS_DELETION:
        return await delete_all_tenants(admin)
    return await delete_tenant_crd(admin)


async def restore(admin: KubeClient, prepared: dict[str, Any]) -> list[str]:
    """Undo `prepare` (failurePolicy back to what it was); returns what was put back."""
    done = []
    for path, originals in (prepared.get("live") or {}).items():
        current = await admin.get_or_none(path)
        if current is None:
            continue
        ops = _policy_ops(current.get("webhooks") or [], "/webhooks", originals)
        if ops:
            await admin.patch(path, ops, patch_type=JSON_PATCH)
            done.append(path)
    for path, sections in (prepared.get("configuration") or {}).items():
        current = await admin.get_or_none(path)
        if current is None:
            continue
        ops = []
        for section, originals in sections.items():
            hooks = ((current.get("spec") or {}).get("admission") or {}).get(section, {}).get("webhooks") or []
            ops += _policy_ops(hooks, f"/spec/admission/{section}/webhooks", originals)
        if ops:
            await admin.patch(path, ops, patch_type=JSON_PATCH)
            done.append(path)
    return done


async def delete_all_tenants(admin: KubeClient) -> float:
    """`kubectl delete tenants --all`, but concurrently: every Tenant within a few milliseconds."""
    listing = await admin.list_all(TENANTS_PATH)
    names = [t["metadata"]["name"] for t in listing["items"]]
    sent = time.time()
    results = await asyncio.gather(*(admin.delete(f"{TENANTS_PATH}/{n}") for n in names), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception) and getattr(r, "status", None) != 404]
    if errors:
        raise errors[0]
    return sent


def _policy_ops(hooks: list[dict[str, Any]], base: str, originals: dict[str, str]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(hooks):
        if hook.get("name") in originals:
            ops.append({"op": "test", "path": f"{base}/{i}/name", "value": hook["name"]})
            ops.append({"op": "add", "path": f"{base}/{i}/failurePolicy", "value": originals[hook["name"]]})
    return ops


def breaker_hooks(webhooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The webhooks the breaker relies on: they guard namespace DELETE and fail closed."""
    return [h for h in webhooks if guards_namespace_delete(h) and fails_closed(h)]


async def _capsule_webhook_configurations(admin: KubeClient) -> list[tuple[str, dict[str, Any]]]:
    listings = {name: (await admin.get(path)).get("items") or [] for name, _, path in WEBHOOK_STREAMS}
    return capsule_webhooks_in(lambda name: listings[name])


async def disable_breaker(admin: KubeClient, *, timeout: float = 60.0) -> dict[str, Any]:
    """failurePolicy Ignore on every Capsule webhook guarding namespace DELETE; waits until no live
    Capsule webhook configuration fails closed for namespace DELETEs."""
    prepared: dict[str, Any] = {"live": {}, "configuration": {}}
    # Capsule >= 0.13 renders its dynamic webhook configuration from the CapsuleConfiguration:
    # change it there, or the controller puts failurePolicy Fail back.
    configs = await admin.get_or_none(CAPSULE_CONFIGURATIONS)
    for cfg in (configs or {}).get("items") or []:
        path = f"{CAPSULE_CONFIGURATIONS}/{cfg['metadata']['name']}"
        admission = (cfg.get("spec") or {}).get("admission") or {}
        sections: dict[str, dict[str, str]] = {}
        ops: list[dict[str, Any]] = []
        for section in ("validating", "mutating"):
            hooks = (admission.get(section) or {}).get("webhooks") or []
            originals = {h["name"]: h.get("failurePolicy", "Fail") for h in breaker_hooks(hooks)}
            if originals:
                sections[section] = originals
                ops += _policy_ops(hooks, f"/spec/admission/{section}/webhooks", {n: "Ignore" for n in originals})
        if ops:
            await admin.patch(path, ops, patch_type=JSON_PATCH)
            prepared["configuration"][path] = sections
    deadline = time.monotonic() + timeout
    while True:
        remaining = []
        for kind, obj in await _capsule_webhook_configurations(admin):
            hooks = obj.get("webhooks") or []
            closing = breaker_hooks(hooks)
            if not closing:
                continue
            path = webhook_path(kind, obj["metadata"]["name"])
            originals = prepared["live"].setdefault(path, {})
            for h in closing:
                originals.setdefault(h["name"], h.get("failurePolicy", "Fail"))
            remaining.append(path)
            try:
                await admin.patch(path, _policy_ops(hooks, "/webhooks", {h["name"]: "Ignore" for h in closing}),
                                  patch_type=JSON_PATCH)
            except Exception:  # the controller rewrote it under us: read again
                pass
        if not remaining:
            # Settled only if it stays so (the 0.14 controller may still be reconciling).
            await asyncio.sleep(1.0)
            if not any(breaker_hooks(o.get("webhooks") or []) for _, o in await _capsule_webhook_configurations(admin)):
                return prepared
        if time.monotonic() > deadline:
            raise LabError("Capsule's namespace webhooks still fail closed after setting failurePolicy Ignore",
                           fix="the Capsule controller keeps reverting them; check its configuration")
        await asyncio.sleep(0.5)
