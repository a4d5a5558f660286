"""`responder lab ...`: build, start, seed and stop the local incident lab."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path

from responder.errors import EXIT_OK, LabError
from responder.lab.build import CAPSULE_VERSIONS, DEFAULT_CAPSULE, ensure_built


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the local incident lab (etcd, kube-apiserver, kube-controller-manager, Capsule)")
    lab.add_argument("--state-dir", type=Path, default=None,
                     help="where the lab keeps its state (default: $RESPONDER_LAB_DIR or ~/.local/state/responder/lab)")
    labsub = lab.add_subparsers(dest="lab_command", required=True)
    build = labsub.add_parser("build", help="build the lab's binaries from Go modules (cached)")
    build.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), action="append",
                       help="Capsule line(s) to build (default: all)")
    build.add_argument("--velero", action="store_true", help="also build the Velero server and its S3 plugin")
    build.add_argument("--alertmanager", action="store_true", help="also build Alertmanager (the guard's alerts)")
    up = labsub.add_parser("up", help="start the lab in the background and print the kubeconfig path")
    up.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default=DEFAULT_CAPSULE)
    up.add_argument("--velero", action="store_true", help="also run Velero with an S3 server (moto) on loopback")
    up.add_argument("--alertmanager", action="store_true",
                    help="also run Alertmanager on loopback (its URL in `lab status`); on a running lab, start it")
    up.add_argument("--guard", action="store_true",
                    help="also install responder's chart (helm install, 2 replicas run by the lab's kubelet)")
    down = labsub.add_parser("down", help="stop every process the lab started")
    down.add_argument("--wipe", action="store_true", help="also delete the lab's state directory")
    labsub.add_parser("status", help="what runs, where, and since when")
    labsub.add_parser("env", help="print `export KUBECONFIG=...` for the lab")
    user = labsub.add_parser("user", help="mint a user (client certificate) and print its kubeconfig path")
    user.add_argument("name")
    user.add_argument("--group", action="append", default=[])
    seed = labsub.add_parser("seed", help="create Tenants, namespaces (as their owners) and content")
    seed.add_argument("--tenants", type=int, default=20)
    seed.add_argument("--namespaces-per-tenant", type=int, default=10)
    seed.add_argument("--prefix", default="tenant")
    seed.add_argument("--backup", action="store_true",
                      help="then create a Velero Schedule and wait for its first Completed Backup (lab up --velero)")
    for p in (build, up, down, user, seed):
        p.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    lab.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from responder.lab.control_plane import Lab

    lab = Lab(args.state_dir)
    cmd = args.lab_command
    if cmd == "build":
        lines = args.capsule or sorted(CAPSULE_VERSIONS)
        # Velero last: the lab tests that need no Velero can start while it builds (tests/conftest.py).
        ensure_built(["k8s", "helm", *(f"capsule-{c}" for c in lines), *(["alertmanager"] if args.alertmanager else []),
                      *(["velero"] if args.velero else [])])
        return EXIT_OK
    if cmd == "up":
        print(lab.up(capsule=args.capsule, velero=args.velero, alertmanager=args.alertmanager, guard=args.guard))
        return EXIT_OK
    if cmd == "down":
        stopped = lab.down(wipe=args.wipe)
        print(f"lab: stopped {', '.join(stopped) or 'nothing (not running)'}"
              + (f"; wiped {lab.dir}" if args.wipe else f"; state kept in {lab.dir}"))
        return EXIT_OK
    if cmd == "status":
        print(json.dumps(lab.status(), indent=2))
        return EXIT_OK
    if cmd == "env":
        if not lab.kubeconfig.exists():
            raise LabError(f"no lab in {lab.dir}", fix="run `responder lab up` first")
        print(f"export KUBECONFIG={shlex.quote(str(lab.kubeconfig))}")
        return EXIT_OK
    if cmd == "user":
        print(lab.mint_user(args.name, tuple(args.group)))
        return EXIT_OK
    if cmd == "seed":
        from responder.lab.seed import seed
        from responder.lab.velero import create_schedule_and_backup

        if args.tenants < 1 or args.namespaces_per_tenant < 1:
            raise LabError("--tenants and --namespaces-per-tenant must be at least 1", fix="pass positive numbers")

        async def go():
            async with lab.admin_client() as client:
                result = await seed(client, tenants=args.tenants, namespaces_per_tenant=args.namespaces_per_tenant,
                                    prefix=args.prefix)
                backup = await create_schedule_and_backup(client) if args.backup else None
            return result, backup

        result, backup = asyncio.run(go())
        print(json.dumps(result.to_json() | {"tenants": len(result.tenants)}
                         | ({"backup": backup["metadata"]["name"]} if backup else {}), indent=2))
        return EXIT_OK
    print(f"unknown lab command {cmd}", file=sys.stderr)
    return 2
