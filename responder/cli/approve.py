"""`responder approve INCIDENT STEP`: approve a recovery step the guard waits on (for scripts; the TUI attached
to the guard's incident approves through the same `responder.response.approval.approve_step`). The approver is
who the API server says the caller is (SelfSubjectReview).

It writes only the Incident's spec.approvals (responder's own record, which the guard leading the cluster
reads), so it takes no writer Lease. Bad input (no such Incident, an ended one, a step that does not wait for
approval or has finished) is refused with one message and exit 2 before anything is written.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.errors import EXIT_OK, ConfigError
from responder.response.approval import approve_step
from responder.response.console import emit
from responder.response.incident_object import INCIDENT_CRD, incident_name


def add_parser(sub: argparse._SubParsersAction) -> None:
    approve = sub.add_parser("approve", help="approve a recovery step of the guard's incident (spec.approvals)")
    approve.add_argument("incident", metavar="INCIDENT",
                         help="the Incident's name or id (as `kubectl get incidents -n responder-system` lists it; "
                              "incident/NAME accepted)")
    approve.add_argument("step", metavar="STEP", help="the recovery step's id (the Incident's status.approvalSteps)")
    approve.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG, merged, or ~/.kube/config)")
    approve.add_argument("--context", help="the kubeconfig context to use")
    approve.add_argument("--dry-run", action="store_true", help="send the approval with dryRun=All: nothing persists")
    approve.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    approve.set_defaults(handler=cmd_approve)


def object_name(text: str) -> str:
    """INCIDENT as kubectl takes it: NAME, incident/NAME, incidents/NAME, incidents.responder.dev/NAME; an
    incident id (its upper-case letters) names the same object."""
    kind, _, name = text.rpartition("/")
    if kind and kind not in ("incident", "incidents", INCIDENT_CRD, "inc"):
        raise ConfigError(f"{text!r} does not name an Incident", fix="pass the Incident's name, or incident/NAME")
    try:
        return incident_name(name)
    except ValueError:
        raise ConfigError(f"{text!r} does not name an Incident", fix="pass the Incident's name, or incident/NAME") from None


def cmd_approve(args: argparse.Namespace) -> int:
    name = object_name(args.incident)
    if not args.step.strip():
        raise ConfigError("the step is empty", fix="pass the recovery step's id (the Incident's status.approvalSteps)")
    access = load_cluster_access(args.kubeconfig, args.context)

    async def go() -> dict[str, Any]:
        async with KubeClient(access) as client:
            return await approve_step(client, name, args.step, dry_run=args.dry_run)

    result = asyncio.run(go())
    if args.output:
        emit(result, args.output)
    else:
        what = "already approved" if result["already"] else ("would approve (dry run)" if args.dry_run else "approved")
        print(f"incident.{INCIDENT_CRD.split('.', 1)[1]}/{name}: step {args.step} {what} by {result['approver']}"
              f" at {result['approvedAt']}", file=sys.stdout)
    return EXIT_OK
