"""`responder bench recover`: recovery after the fact at scale, against Velero's own restore, in one run.

On a fresh lab with Velero: N tenant namespaces with content (10 per Tenant), a Completed backup, then the
Tenant CRD deleted with no responder running and every tenant namespace gone. Then, timed in the same run:

1. responder: `responder run --yes` with no journal and no shadow copy (what existed comes from the backup),
   from its start to its exit: the CRD and the Tenants recreated, the namespaces restored, re-adopted, Capsule
   back and verified (its settle period included);
2. Velero alone: a Restore of the same namespaces from the same backup (under other names, through Velero's
   namespaceMapping, beside responder's), with nothing in its way (Capsule stopped and its webhook
   configurations set aside): from its creation to Completed with every namespace present. This is the least
   Velero needs; it leaves the namespaces without Tenants, owners or Capsule.

The figure is the ratio of the two. Progress on stderr throughout; JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.errors import EXIT_OK, ConfigError
from responder.incident import triage
from responder.lab.apply import bind_cluster_admin
from responder.lab.build import CAPSULE_VERSIONS
from responder.lab.capsule import CAPSULE_DEPLOYMENT, CAPSULE_NAMESPACE
from responder.lab.control_plane import Lab
from responder.lab.incident import CRD_PATH, delete_tenant_crd
from responder.lab.seed import CONTENT_KINDS, seed
from responder.lab.velero import create_backup, velero_path
from responder.incident.observe import WEBHOOK_STREAMS, capsule_webhooks_in

PER_TENANT = 10
SEED_CONCURRENCY = 32  # namespaces in creation at once, each followed by its content
BACKUP = "bench-recover-before"
IDENTITY = "responder"


def add_parser(bsub: argparse._SubParsersAction) -> None:
    recover = bsub.add_parser("recover", help="recovery after the fact: N lost namespaces, responder vs Velero alone")
    recover.add_argument("--namespaces", type=int, default=1000, help="lost tenant namespaces (10 per Tenant)")
    recover.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default="0.14")
    recover.add_argument("--state-dir", type=Path, default=None)
    recover.set_defaults(handler=cmd_bench_recover)


def progress(message: str) -> None:
    print(f"bench recover: {message}", file=sys.stderr, flush=True)


def cmd_bench_recover(args: argparse.Namespace) -> int:
    if args.namespaces < PER_TENANT or args.namespaces % PER_TENANT:
        raise ConfigError(f"bad --namespaces {args.namespaces}", fix=f"a multiple of {PER_TENANT}, e.g. 1000")
    lab = Lab(args.state_dir or (Lab().dir.parent / "bench-lab"))
    lab.down(wipe=True)
    progress(f"fresh lab with Velero (Capsule {args.capsule})")
    lab.up(capsule=args.capsule, velero=True, out=sys.stderr)
    try:
        result = asyncio.run(recover_once(lab, args.namespaces))
    finally:
        lab.down(wipe=True)
    print(json.dumps({"benchmark": "recover", "capsule": CAPSULE_VERSIONS[args.capsule],
                      "namespaces": args.namespaces, **result}, indent=2))
    return EXIT_OK


async def _tenant_namespaces(client: KubeClient) -> dict[str, dict[str, Any]]:
    listing = await client.list_all("/api/v1/namespaces")
    return {n["metadata"]["name"]: n for n in listing["items"]
            if triage.TENANT_LABEL in (n["metadata"].get("labels") or {})}


async def _wait(what: str, check, *, timeout: float, every: float = 2.0) -> float:
    """Poll `check` (async, returns (done, shown)) until done; progress on stderr; returns the seconds."""
    started = time.monotonic()
    shown_last = None
    while True:
        done, shown = await check()
        if shown != shown_last:
            progress(f"{what}: {shown} ({time.monotonic() - started:.0f}s)")
            shown_last = shown
        if done:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not done within {timeout:.0f}s ({shown})")
        await asyncio.sleep(every)


async def recover_once(lab: Lab, namespaces: int) -> dict[str, Any]:
    kubeconfig = lab.mint_user(IDENTITY)
    async with KubeClient(load_cluster_access(str(lab.kubeconfig))) as admin:
        await bind_cluster_admin(admin, IDENTITY)
        progress(f"seeding {namespaces // PER_TENANT} Tenants x {PER_TENANT} namespaces with content")

        counts: dict[str, int] = {}
        objects = namespaces * sum(CONTENT_KINDS.values())

        async def seeding_progress() -> None:
            started = time.monotonic()
            while True:
                await asyncio.sleep(10)
                progress(f"seeding: {counts.get('namespaces', 0)} of {namespaces} tenant namespaces, "
                         f"{counts.get('objects', 0)} of {objects} objects in them "
                         f"({time.monotonic() - started:.0f}s)")

        ticker = asyncio.create_task(seeding_progress())
        try:
            # Namespaces and their content side by side (see seed); Capsule then lists every namespace.
            seeded = await seed(admin, tenants=namespaces // PER_TENANT, namespaces_per_tenant=PER_TENANT, prefix="rb",
                                concurrency=SEED_CONCURRENCY, timeout=max(600.0, 2.0 * namespaces), counts=counts)
        finally:
            ticker.cancel()
        progress(f"seeded in {seeded.seconds:.0f}s; backing up")
        started = time.monotonic()
        backup = await create_backup(admin, BACKUP, timeout=3600)
        backup_s = time.monotonic() - started
        items = ((backup.get("status") or {}).get("progress") or {}).get("totalItems")
        progress(f"backup {BACKUP} Completed in {backup_s:.0f}s ({items} items); deleting the Tenant CRD, no "
                 "responder running")
        await delete_tenant_crd(admin)

        async def all_gone() -> tuple[bool, str]:
            left = len(set(await _tenant_namespaces(admin)) & set(seeded.namespaces))
            crd = await admin.get_or_none(CRD_PATH)
            return left == 0 and crd is None, f"{left} of {namespaces} tenant namespaces left"

        cascade_s = await _wait("the cascade", all_gone, timeout=1800)

    progress("responder run --yes (no journal, no shadow copy: what existed comes from the backup)")
    journal = lab.dir / "bench-recover-journal"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "responder", "run", "--yes", "--kubeconfig", str(kubeconfig),
                             "--journal", str(journal), "-o", "json"], stdout=subprocess.PIPE, stderr=sys.stderr,
                            text=True)
    out, _ = await asyncio.to_thread(proc.communicate)  # its progress (steps, Velero's items) goes to stderr
    responder_s = time.monotonic() - started
    summary = json.loads(out) if out.strip() else {}
    rec = summary.get("recovery") or {}
    steps = summary.get("steps") or {}
    restore_step_s = (steps.get("restore") or {}).get("seconds")
    progress(f"responder exited {proc.returncode} after {responder_s:.1f}s: verified {rec.get('verified')}, "
             f"{rec.get('restored')} of {rec.get('lost')} restored")

    async with KubeClient(load_cluster_access(str(lab.kubeconfig))) as admin:
        velero = await velero_alone(admin, seeded.namespaces)
    ratio = round(responder_s / velero["seconds"], 2) if velero.get("seconds") else None
    progress(f"Velero alone: {velero.get('seconds')}s; responder / Velero = {ratio}")
    return {"seeded_s": round(seeded.seconds, 1), "backup_s": round(backup_s, 1), "backup_items": items,
            "cascade_s": round(cascade_s, 1),
            "responder": {"seconds": round(responder_s, 1), "exit": proc.returncode, "verified": rec.get("verified"),
                          "lost": rec.get("lost"), "restored": rec.get("restored"), "known_from": rec.get("known_from"),
                          "restore_step_s": restore_step_s,
                          "steps": {k: {"status": v.get("status"), "seconds": v.get("seconds")}
                                    for k, v in steps.items()}},
            "velero_alone": velero, "ratio": ratio,
            "note": "responder: start to exit of `responder run --yes` (CRD, Tenants, restore, re-adoption, Capsule "
                    "back, verify with its 10 s settle); Velero alone: Restore created to Completed with every "
                    "namespace present, nothing in its way and nothing else done"}


async def velero_alone(admin: KubeClient, namespaces: list[str]) -> dict[str, Any]:
    """The same namespaces restored by Velero from the same backup, renamed beside responder's, with Capsule
    stopped and its webhook configurations set aside (they would refuse Velero's tenant namespaces)."""
    progress("Velero alone: stopping Capsule and setting its webhook configurations aside")
    deployment = f"/apis/apps/v1/namespaces/{CAPSULE_NAMESPACE}/deployments/{CAPSULE_DEPLOYMENT}"
    await admin.patch(f"{deployment}/scale", {"spec": {"replicas": 0}})

    async def capsule_stopped() -> tuple[bool, str]:
        status = (await admin.get(deployment)).get("status") or {}
        return not status.get("replicas"), f"{status.get('replicas') or 0} Capsule replicas"

    await _wait("Capsule stopping", capsule_stopped, timeout=120, every=0.5)
    listings = {name: (await admin.get(path)).get("items") or [] for name, _, path in WEBHOOK_STREAMS}
    paths = {kind: path for _, kind, path in WEBHOOK_STREAMS}
    for kind, obj in capsule_webhooks_in(lambda name: listings[name]):
        await admin.delete(f"{paths[kind]}/{obj['metadata']['name']}")
    mapping = {ns: f"{ns}-v"[:63] for ns in namespaces}
    name = "bench-recover-velero-alone"
    await admin.create(velero_path("restores"), {
        "apiVersion": "velero.io/v1", "kind": "Restore", "metadata": {"name": name, "namespace": "velero"},
        "spec": {"backupName": BACKUP, "includedNamespaces": namespaces, "namespaceMapping": mapping,
                 "includeClusterResources": False, "existingResourcePolicy": "none"}})

    async def restored() -> tuple[bool, str]:
        restore = await admin.get(velero_path("restores", name))
        status = restore.get("status") or {}
        phase = status.get("phase") or "New"
        done = phase in ("Completed", "PartiallyFailed", "Failed", "FailedValidation")
        present = len(set(mapping.values()) & {n["metadata"]["name"] for n in
                                               (await admin.list_all("/api/v1/namespaces"))["items"]})
        prog = status.get("progress") or {}
        return done and (present == len(mapping) or phase != "Completed"), \
            f"{phase} {prog.get('itemsRestored', 0)}/{prog.get('totalItems', '?')} items, {present} namespaces"

    seconds = await _wait("Velero alone", restored, timeout=3600, every=1.0)
    status = (await admin.get(velero_path("restores", name))).get("status") or {}
    return {"seconds": round(seconds, 1), "phase": status.get("phase"),
            "items_restored": (status.get("progress") or {}).get("itemsRestored"),
            "warnings": status.get("warnings"), "errors": status.get("errors")}
