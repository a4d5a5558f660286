"""`responder doctor`: before any incident, check that responder could contain and recover one, and explain.

Checks (each a CheckResult: ok, finding or info):
  permissions    one SelfSubjectAccessReview per (verb, group, resource[/subresource]) of responder's role,
                 from the same table as `responder manifests rbac` (responder.ops.manifests.access_checks); what
                 is denied is printed as a ClusterRole fragment
  capsule        the controller Deployment and Capsule's version (from its image tag)
  breaker        a Capsule webhook that matches namespace DELETEs with failurePolicy Fail: what makes
                 scaling Capsule to 0 a breaker (same predicates as responder.actions.breaker)
  velero         velero.io served, a BackupStorageLocation Available, and for each tenant namespace the age of
                 the newest Completed Backup covering it
  tenant-crd-protection   responder protect's ValidatingAdmissionPolicy refuses deleting the Tenant CRD
  namespace-hold the breaker's namespace hold is armed (`responder protect`): it then holds within
                 milliseconds of the breaker's first write instead of after the API server's policy refresh
  self-arming-hold        the self-arming hold (`responder protect`) is installed and dormant: the API server
                 refuses tenant namespace deletes by itself once the Tenant CRD is deleted (a finding when it is
                 missing, or in force: an incident not recovered yet)
  crd-keep       `helm.sh/resource-policy: keep` on Capsule's CRDs (else `helm uninstall` deletes them)
  prevent-deletion        Tenants' spec.preventDeletion, and why it does not help against CRD deletion

Exit codes: 0 ready; 1 findings; 2 cannot check (cluster unreachable, or the identity review or the access
reviews themselves refused); responder.errors has the shared codes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import fnmatch
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import yaml

from responder.incident import triage
from responder.actions.breaker import fails_closed, guards_namespace_delete, read_armed_hold
from responder.actions.self_hold import SelfHoldState, read_self_hold
from responder.cluster.client import KubeClient
from responder.response.console import positive_number
from responder.errors import (EXIT_BAD_INPUT, EXIT_FORBIDDEN, EXIT_NOT_CONTAINED, EXIT_OK, EXIT_UNREACHABLE, ApiError,
                             ResponderError)
from responder.cluster.lease import lease_path, record_from
from responder.names import DEFAULT_VELERO_NAMESPACE, RESPONDER_NAMESPACE, WRITER_LEASE
from responder.ops.manifests import AccessCheck, access_checks, missing_role, missing_rules
from responder.incident.observe import TENANT_CRD, TENANTS_PATH, WEBHOOK_STREAMS, CapsuleTarget, capsule_webhooks_in
from responder.ops.protect import ProtectionStatus, protected_crds, read_protection

EXIT_READY = EXIT_OK
EXIT_FINDINGS = EXIT_NOT_CONTAINED  # 1: findings remain
EXIT_CANNOT_CHECK = EXIT_BAD_INPUT  # 2: nothing could be checked (like a failed preflight)

OK, FINDING, INFO = "ok", "finding", "info"
KEEP_ANNOTATION = "helm.sh/resource-policy"
CAPSULE_GROUPS = ("capsule.clastix.io", "projectcapsule.dev")
VELERO_V1 = "/apis/velero.io/v1"
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
LIST_LIMIT = 10  # names shown in a summary before "+N more"


@dataclass
class CheckResult:
    check: str
    status: str  # ok | finding | info
    summary: str
    details: list[str] = field(default_factory=list)
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorOptions:
    capsule: CapsuleTarget = field(default_factory=CapsuleTarget)
    velero_namespace: str = DEFAULT_VELERO_NAMESPACE
    max_backup_age_hours: float = 24.0
    protect_crds: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()  # --protect / $RESPONDER_PROTECTED, as the response commands take them


class CannotCheck(ResponderError):
    """Doctor could not run its checks at all."""

    exit_code = EXIT_CANNOT_CHECK


def exit_code(results: list[CheckResult]) -> int:
    return EXIT_FINDINGS if any(r.status == FINDING for r in results) else EXIT_READY


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:LIST_LIMIT])
    return shown + (f" (+{len(names) - LIST_LIMIT} more)" if len(names) > LIST_LIMIT else "")


# ---- pure checks ---------------------------------------------------------------------------------------------


def permissions_result(checks: list[AccessCheck], allowed: list[bool], *,
                       capsule_deployment: str) -> tuple[CheckResult, dict[str, Any] | None]:
    """The permissions check and, when something is denied, the ClusterRole fragment that grants it."""
    denied = [c for c, ok in zip(checks, allowed) if not ok]
    if not denied:
        return CheckResult("permissions", OK, f"all {len(checks)} access checks allowed"), None
    fragment = missing_role(missing_rules(denied, capsule_deployment=capsule_deployment))
    uses = sorted({u for c in denied for u in c.permission.used_by})
    return CheckResult("permissions", FINDING, f"{len(denied)} of {len(checks)} permissions missing "
                       f"(needed by: {', '.join(uses)})", [c.label for c in denied],
                       "grant the missing rules below (or apply `responder manifests rbac`)",
                       {"denied": [c.resource_attributes() for c in denied]}), fragment


def capsule_version(deployment: dict[str, Any] | None) -> str | None:
    """Capsule's version from its controller image tag (e.g. ghcr.io/projectcapsule/capsule:v0.14.0)."""
    containers = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    for container in sorted(containers, key=lambda c: c.get("name") != "manager"):
        image = (container.get("image") or "").split("@", 1)[0]  # drop a digest; the tag is the version
        last = image.rsplit("/", 1)[-1]  # a registry port ("registry:5000/...") is not a tag
        if "capsule" in image and ":" in last:
            return last.rsplit(":", 1)[1]
    return None


def capsule_result(deployment: dict[str, Any] | None, target: CapsuleTarget) -> CheckResult:
    if deployment is None:
        return CheckResult("capsule", FINDING, f"no Deployment {target.namespace}/{target.deployment}",
                           fix="pass --capsule-namespace/--capsule-deployment: the breaker scales this Deployment")
    version = capsule_version(deployment)
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    return CheckResult("capsule", OK, f"Capsule {version or 'version unknown'} "
                       f"({target.namespace}/{target.deployment}, replicas {replicas})",
                       data={"version": version, "replicas": replicas})


def breaker_result(hooks: list[tuple[str, dict[str, Any]]]) -> CheckResult:
    guarding = [f"{kind}/{obj['metadata']['name']}: {h['name']}" for kind, obj in hooks
                for h in obj.get("webhooks") or [] if guards_namespace_delete(h) and fails_closed(h)]
    if guarding:
        return CheckResult("breaker", OK, f"effective: {len(guarding)} Capsule webhook(s) refuse namespace DELETEs "
                           "when the controller is down (failurePolicy Fail)", guarding)
    seen = [f"{kind}/{obj['metadata']['name']}" for kind, obj in hooks]
    return CheckResult("breaker", FINDING, "not effective: no Capsule webhook matches namespace DELETE with "
                       "failurePolicy Fail, so scaling Capsule to 0 stops nothing; containment would rely on speed",
                       seen or ["no Capsule webhook configuration found"],
                       "keep Capsule's namespace webhook at failurePolicy Fail (the chart's default)")


def backup_covers(backup: dict[str, Any], namespace: str) -> bool:
    """Velero's namespace filter: includedNamespaces empty or matching (globs since v1.18), not excluded."""
    spec = backup.get("spec") or {}
    included = spec.get("includedNamespaces") or []
    excluded = spec.get("excludedNamespaces") or []
    if included and not any(fnmatch.fnmatchcase(namespace, pattern) for pattern in included):
        return False
    return not any(fnmatch.fnmatchcase(namespace, pattern) for pattern in excluded)


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def newest_backup_ages(backups: list[dict[str, Any]], namespaces: list[str], now: float,
                       created: dict[str, float] | None = None) -> dict[str, float | None]:
    """Seconds since the newest Completed Backup covering each namespace (None: no such backup). A backup
    that started before the namespace was created (`created`: name -> epoch seconds) does not hold it, even
    when its filter matches every namespace."""
    done = []
    for b in backups:
        status = b.get("status") or {}
        if status.get("phase") != "Completed":
            continue
        started = _timestamp(status.get("startTimestamp") or (b.get("metadata") or {}).get("creationTimestamp"))
        at = _timestamp(status.get("completionTimestamp")) or started
        if at is not None:
            done.append((at, started if started is not None else at, b))
    done.sort(key=lambda item: item[0], reverse=True)
    born = created or {}
    ages: dict[str, float | None] = {}
    for ns in namespaces:
        ages[ns] = next((now - at for at, started, b in done
                         if backup_covers(b, ns) and started >= born.get(ns, float("-inf"))), None)
    return ages


def velero_results(bsls: list[dict[str, Any]], backups: list[dict[str, Any]], tenant_namespaces: list[str], *,
                   namespace: str, now: float, max_age_hours: float,
                   created: dict[str, float] | None = None) -> list[CheckResult]:
    out = []
    available = [b["metadata"]["name"] for b in bsls if (b.get("status") or {}).get("phase") == "Available"]
    if available:
        out.append(CheckResult("velero-location", OK, f"BackupStorageLocation Available: {', '.join(available)}"))
    else:
        phases = [f"{b['metadata']['name']}: {(b.get('status') or {}).get('phase') or 'no phase'}" for b in bsls]
        out.append(CheckResult("velero-location", FINDING, f"no BackupStorageLocation is Available in {namespace}: "
                               "restores would fail validation", phases or ["none found"],
                               "check the Velero server and its object storage (velero backup-location get)"))
    ages = newest_backup_ages(backups, sorted(tenant_namespaces), now, created)
    missing = [ns for ns, age in ages.items() if age is None]
    stale = [ns for ns, age in ages.items() if age is not None and age > max_age_hours * 3600]
    data = {"newest_backup_age_s": {ns: (round(a) if a is not None else None) for ns, a in ages.items()}}
    if not tenant_namespaces:
        out.append(CheckResult("velero-backups", INFO, "no tenant namespaces to cover", data=data))
    elif missing or stale:
        details = ([f"no Completed backup: {_names(missing)}"] if missing else []) + \
                  ([f"newest backup older than {max_age_hours:g} h: {_names(stale)}"] if stale else [])
        out.append(CheckResult("velero-backups", FINDING, f"{len(missing) + len(stale)} of {len(ages)} tenant "
                               "namespaces have no recent Completed backup", details,
                               "schedule Velero backups that include the tenant namespaces", data))
    else:
        oldest = max(a for a in ages.values() if a is not None)
        out.append(CheckResult("velero-backups", OK, f"all {len(ages)} tenant namespaces covered by a Completed "
                               f"backup; the oldest newest-backup is {oldest / 3600:.1f} h old", data=data))
    return out


def protection_result(status: ProtectionStatus, crds: list[str]) -> CheckResult:
    if not status.served:
        return CheckResult("tenant-crd-protection", FINDING, "Tenant CRD not protected: this API server does not "
                           "serve ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes >= 1.30)",
                           fix="restrict who may delete CRDs with RBAC")
    unprotected = [c for c in crds if not status.protects(c)]
    if TENANT_CRD in unprotected:
        return CheckResult("tenant-crd-protection", FINDING, "Tenant CRD not protected: nothing refuses "
                           f"`kubectl delete crd {TENANT_CRD}`, the start of the incident", unprotected,
                           "run `responder protect`")
    if unprotected:
        return CheckResult("tenant-crd-protection", FINDING, f"not protected: {', '.join(unprotected)}",
                           fix=f"run `responder protect {' '.join('--crd ' + c for c in unprotected)}`")
    return CheckResult("tenant-crd-protection", OK, f"deletion refused by responder protect: {', '.join(crds)}")


def self_hold_result(state: SelfHoldState) -> CheckResult:
    """The self-arming hold: installed and dormant is the healthy state; in force means an incident is on."""
    if not state.installed:
        return CheckResult("self-arming-hold", FINDING, f"self-arming hold not installed ({state.why}): with no "
                           "responder process running, nothing refuses the garbage collector's and Capsule's "
                           "namespace deletes once the Tenant CRD is deleted",
                           fix="run `responder protect --only self-hold` as a cluster admin (with --responder-user for "
                               "the username responder runs as, if not the guard's ServiceAccount)",
                           data=state.to_json())
    if state.in_force:
        return CheckResult("self-arming-hold", FINDING, f"self-arming hold IN FORCE: {state.why}; tenant namespaces "
                           "cannot be deleted", fix="run `responder run` to recover (it lifts the hold once the "
                                                    "namespaces are re-adopted)", data=state.to_json())
    return CheckResult("self-arming-hold", OK, "installed, dormant: the API server refuses tenant namespace deletes "
                                               "by itself once the Tenant CRD is deleted", data=state.to_json())


def hold_result(why_not: str | None) -> CheckResult:
    if why_not is None:
        return CheckResult("namespace-hold", OK, "armed: the breaker's first write makes the API server refuse every "
                                                 "tenant namespace DELETE but responder's within milliseconds")
    return CheckResult("namespace-hold", FINDING, f"namespace hold not armed ({why_not}): during an incident the "
                       "breaker creates it, and the API server enforces it only at its next policy refresh (up to "
                       "~1 s), a window in which a Capsule still shutting down, or the garbage collector, can delete "
                       "tenant namespaces", fix="run `responder protect --only hold` as a cluster admin")


def crd_keep_result(crds: list[dict[str, Any]]) -> CheckResult:
    capsule = [c for c in crds if (c.get("spec") or {}).get("group") in CAPSULE_GROUPS]
    if not capsule:
        return CheckResult("crd-keep", FINDING, "no Capsule CRDs found", fix="is Capsule installed?")
    without = sorted(c["metadata"]["name"] for c in capsule
                     if ((c["metadata"].get("annotations") or {}).get(KEEP_ANNOTATION) != "keep"))
    if without:
        return CheckResult("crd-keep", FINDING, f"{len(without)} of {len(capsule)} Capsule CRDs lack "
                           f"`{KEEP_ANNOTATION}: keep`: `helm uninstall` of Capsule would delete them, and every "
                           "Tenant and tenant namespace with them", without,
                           "set the chart value crds.keep=true (not in Capsule's values.yaml, but the template "
                           "reads it) or annotate the CRDs")
    return CheckResult("crd-keep", OK, f"all {len(capsule)} Capsule CRDs carry `{KEEP_ANNOTATION}: keep`")


def prevent_deletion_result(tenants: list[dict[str, Any]] | None) -> CheckResult:
    note = ("spec.preventDeletion is enforced by Capsule's webhook on a Tenant DELETE only; deleting the Tenant CRD "
            "removes Tenants through storage, bypassing admission, so it does not help against this incident")
    if tenants is None:
        return CheckResult("prevent-deletion", INFO, "Tenants not readable (Tenant CRD absent?)", [note])
    on = [t["metadata"]["name"] for t in tenants if (t.get("spec") or {}).get("preventDeletion")]
    return CheckResult("prevent-deletion", INFO, f"{len(on)} of {len(tenants)} Tenants have preventDeletion",
                       [note], data={"tenants": on})


def protected_conflict_result(namespaces: list[dict[str, Any]], protected: frozenset[str]) -> CheckResult:
    """Protected namespaces that carry a Tenant ownerReference: responder never writes them, so it cannot
    detach them during an incident, and the garbage collector deletes them with their Tenant."""
    conflicts = sorted(n["metadata"]["name"] for n in namespaces
                       if n["metadata"]["name"] in protected and triage.tenant_refs(n))
    if not conflicts:
        return CheckResult("protected-conflict", OK, "no protected namespace is owned by a Tenant")
    return CheckResult("protected-conflict", FINDING,
                       f"{len(conflicts)} protected namespaces carry a Tenant ownerReference: protected from "
                       "responder, not from the garbage collector; an incident deletes them", conflicts,
                       "remove their Tenant ownerReference by hand, or stop protecting them (--protect)")


def tenant_namespaces(namespaces: list[dict[str, Any]]) -> list[str]:
    """Namespaces that belong to a Tenant (ownerReference or Capsule's tenant label)."""
    return sorted(n["metadata"]["name"] for n in namespaces
                  if triage.tenant_refs(n) or (n["metadata"].get("labels") or {}).get(triage.TENANT_LABEL))


# ---- reading the cluster -------------------------------------------------------------------------------------


async def review_access(client: KubeClient, checks: list[AccessCheck]) -> list[bool]:
    """SelfSubjectAccessReviews, concurrently (they create nothing)."""
    async def one(check: AccessCheck) -> bool:
        review = await client.request("POST", SSAR_PATH, dry_run=False, body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": check.resource_attributes()}})
        return bool((review.get("status") or {}).get("allowed"))

    return list(await asyncio.gather(*(one(c) for c in checks)))


def writer_lease_result(namespace: dict[str, Any] | None, lease: dict[str, Any] | None, now: float) -> CheckResult:
    """The writer Lease every writing responder holds first (responder.cluster.lease): its namespace must
    exist, or every writing command refuses at its preflight; who holds it now is for information."""
    if namespace is None:
        return CheckResult("writer-lease", FINDING, f"the namespace {RESPONDER_NAMESPACE} does not exist: responder "
                           f"keeps its writer Lease ({WRITER_LEASE}) there, so `watch`, `run` and `undo` would refuse "
                           "to start during an incident", fix=f"kubectl create namespace {RESPONDER_NAMESPACE}")
    record = record_from(lease) if lease is not None else None
    if record is None or not record.holder:
        return CheckResult("writer-lease", OK, f"{RESPONDER_NAMESPACE}/{WRITER_LEASE} free: the first responder to "
                                               "write takes it")
    age = "never" if record.renewed_at is None else f"{max(0.0, now - record.renewed_at):.0f}s ago"
    return CheckResult("writer-lease", INFO, f"held by {record.holder} (renewed {age}): while it renews, other "
                       "responders refuse to write (exit 6); a holder that stopped renewing is taken over after "
                       f"{record.duration:.0f}s", data={"holder": record.holder, "transitions": record.transitions})


async def _guarded(name: str, results: list[CheckResult], coro) -> None:
    """A refused or failed read is a finding about that check, not the end of the doctor."""
    try:
        results.extend(await coro)
    except ApiError as exc:
        results.append(CheckResult(name, FINDING, f"could not check: {exc.status} {exc.reason or ''}".rstrip(),
                                   [exc.api_message[:300]], "see the permissions check"))


async def run_checks(client: KubeClient, options: DoctorOptions) -> dict[str, Any]:
    from responder.response.session import whoami

    try:
        identity = await whoami(client)
        checks = access_checks(capsule_namespace=options.capsule.namespace,
                               capsule_deployment=options.capsule.deployment,
                               velero_namespace=options.velero_namespace)
        allowed = await review_access(client, checks)
    except ApiError as exc:
        raise CannotCheck(f"the cluster refused doctor's own reviews: {exc}",
                          fix="grant create on selfsubjectreviews.authentication.k8s.io and "
                              "selfsubjectaccessreviews.authorization.k8s.io") from None
    perms, fragment = permissions_result(checks, allowed, capsule_deployment=options.capsule.deployment)
    results = [perms]

    async def capsule() -> list[CheckResult]:
        deployment = await client.get_or_none(options.capsule.deployment_path)
        listings = {name: (await client.get(path)).get("items") or [] for name, _, path in WEBHOOK_STREAMS}
        return [capsule_result(deployment, options.capsule),
                breaker_result(capsule_webhooks_in(lambda name: listings[name]))]

    async def velero() -> list[CheckResult]:
        if await client.get_or_none(VELERO_V1) is None:
            return [CheckResult("velero", FINDING, "Velero is not installed: velero.io/v1 is not served (no Velero "
                                "CRDs), so responder cannot restore what an incident deletes",
                                fix="install Velero with a BackupStorageLocation and a Schedule covering tenant "
                                    "namespaces")]
        ns = options.velero_namespace
        bsls = (await client.list_all(f"{VELERO_V1}/namespaces/{ns}/backupstoragelocations"))["items"]
        backups = (await client.list_all(f"{VELERO_V1}/namespaces/{ns}/backups"))["items"]
        namespaces = (await client.list_all("/api/v1/namespaces"))["items"]
        created = {n["metadata"]["name"]: _timestamp(n["metadata"].get("creationTimestamp")) for n in namespaces}
        return velero_results(bsls, backups, tenant_namespaces(namespaces), namespace=ns, now=time.time(),
                              max_age_hours=options.max_backup_age_hours,
                              created={k: v for k, v in created.items() if v is not None})

    async def protection() -> list[CheckResult]:
        crds = (await client.list_all(CRDS_PATH))["items"]
        status = await read_protection(client)
        return [protection_result(status, protected_crds(options.protect_crds)), crd_keep_result(crds),
                hold_result(await read_armed_hold(client)), self_hold_result(await read_self_hold(client))]

    async def tenants() -> list[CheckResult]:
        listing = await client.get_or_none(TENANTS_PATH)
        namespaces = (await client.list_all("/api/v1/namespaces"))["items"]
        protected = triage.protected_namespaces(options.capsule.namespace, options.velero_namespace,
                                                options.protected)
        return [prevent_deletion_result(None if listing is None else listing.get("items") or []),
                protected_conflict_result(namespaces, protected)]

    async def writer_lease() -> list[CheckResult]:
        namespace = await client.get_or_none(f"/api/v1/namespaces/{RESPONDER_NAMESPACE}")
        lease = await client.get_or_none(lease_path(RESPONDER_NAMESPACE, WRITER_LEASE))
        return [writer_lease_result(namespace, lease, time.time())]

    await _guarded("capsule", results, capsule())
    await _guarded("velero", results, velero())
    await _guarded("tenant-crd-protection", results, protection())
    await _guarded("prevent-deletion", results, tenants())
    await _guarded("writer-lease", results, writer_lease())
    code = exit_code(results)
    return {"context": client.access.context, "server": client.access.display_server, "identity": identity,
            "ready": code == EXIT_READY, "checks": [asdict(r) for r in results], "missing_permissions": fragment}


# ---- output and command line -----------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> str:
    lines = [f"context {report['context']}  identity {report['identity']}  server {report['server']}"]
    width = max(len(c["check"]) for c in report["checks"])
    for c in report["checks"]:
        lines.append(f"{c['status'].upper():<8} {c['check']:<{width}}  {c['summary']}")
        lines.extend(f"{'':<{width + 11}}{d}" for d in c["details"][:LIST_LIMIT])
        if len(c["details"]) > LIST_LIMIT:
            lines.append(f"{'':<{width + 11}}(+{len(c['details']) - LIST_LIMIT} more; -o yaml shows all)")
        if c["fix"] and c["status"] == FINDING:
            lines.append(f"{'':<{width + 11}}fix: {c['fix']}")
    findings = sum(c["status"] == FINDING for c in report["checks"])
    lines.append("ready" if report["ready"] else f"not ready: {findings} finding(s)")
    if report["missing_permissions"]:
        lines.append("missing permissions, as a ClusterRole fragment to merge into responder's role:")
        lines.append(yaml.safe_dump(report["missing_permissions"], sort_keys=False).rstrip("\n"))
    return "\n".join(lines) + "\n"


# --max-backup-age: 0 or less would call every backup stale.
positive_hours = positive_number("hours")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from responder.response.console import cluster_flags

    p = sub.add_parser("doctor", parents=[cluster_flags()],
                       help="before an incident: check permissions, Capsule's breaker, Velero, CRD protection")
    p.add_argument("--crd", action="append", default=[], metavar="NAME",
                   help="also expect this CRD protected by `responder protect --crd` (also $RESPONDER_PROTECT_CRDS)")
    p.add_argument("--max-backup-age", type=positive_hours, default=24.0, metavar="HOURS",
                   help="a tenant namespace's newest Completed backup older than this is a finding (default 24)")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from responder.cluster.kubeconfig import load_cluster_access

    access = load_cluster_access(args.kubeconfig, args.context)
    options = DoctorOptions(capsule=CapsuleTarget(args.capsule_namespace, args.capsule_deployment),
                            velero_namespace=args.velero_namespace, max_backup_age_hours=args.max_backup_age,
                            protect_crds=tuple(args.crd),
                            protected=tuple(getattr(args, "protect", ()) or ()) + tuple(
                                p for p in os.environ.get("RESPONDER_PROTECTED", "").split(",") if p))

    async def go() -> dict[str, Any]:
        # Fail fast when the cluster is unreachable instead of retrying for the write deadline.
        async with KubeClient(access, retry_deadline=10.0) as client:
            return await run_checks(client, options)

    try:
        report = asyncio.run(go())
    except ResponderError as exc:  # unreachable, or the reviews refused: nothing could be checked
        print(f"error: doctor could not check: {exc}", file=sys.stderr)
        # The README's codes, as every command: 3 unreachable, 4 refused; else 2, like a failed preflight.
        return exc.exit_code if exc.exit_code in (EXIT_UNREACHABLE, EXIT_FORBIDDEN) else EXIT_CANNOT_CHECK
    if args.output == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(report, sort_keys=False))
    else:
        sys.stdout.write(render_table(report))
    return EXIT_READY if report["ready"] else EXIT_FINDINGS


__all__ = ["CheckResult", "DoctorOptions", "run_checks", "exit_code", "permissions_result", "breaker_result",
           "velero_results", "protection_result", "crd_keep_result", "prevent_deletion_result", "backup_covers",
           "newest_backup_ages", "capsule_version", "protected_conflict_result", "tenant_namespaces", "add_parser", "EXIT_CANNOT_CHECK"]
