"""`responder manifests rbac`: the least-privilege RBAC responder needs, printed for `kubectl apply -f -`.

Everything comes from one declarative table, PERMISSIONS: one row per PolicyRule, saying exactly which
verbs on which resources, who uses them (the watches, an action, undo) and why. `rbac_rules` turns the
table into PolicyRules; `rbac_manifests` wraps them in a ClusterRole, a ClusterRoleBinding and, for a
ServiceAccount identity, the ServiceAccount. `responder doctor` checks the same table with one
SelfSubjectAccessReview per (verb, group, resource[/subresource]) (`access_checks`) and prints what is
denied as a ClusterRole fragment (`missing_rules`), so the role and the checks cannot drift apart.

No wildcard verbs, and no wildcard resources except the one content-counting rule (CONTENT_COUNTING),
which the handle-terminating step cannot do without: it must count what is left in a Terminating
namespace across every namespaced type the cluster serves, and those types (CRDs included) are only
known at run time from discovery.

Not granted here because every authenticated user has them by default: discovery (`/api`, `/apis`,
ClusterRole system:discovery). The two self reviews are listed anyway (system:basic-user grants them
too) so the role still works on a cluster that removed those defaults.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from responder.errors import ConfigError
from responder.response.incident_object import incident_crd
from responder.names import (DEFAULT_CAPSULE_DEPLOYMENT, DEFAULT_CAPSULE_NAMESPACE, DEFAULT_VELERO_NAMESPACE, HOLD_BINDING,
                             HOLD_PARAM, HOLD_PARAM_GROUP, HOLD_PARAM_RESOURCE, HOLD_POLICY, PROTECT_BINDING,
                             PROTECT_POLICY, RESPONDER_NAMESPACE, SELF_HOLD_POLICY, TENANT_RECORD_OBJECTS, WRITER_LEASE)

RBAC_API = "rbac.authorization.k8s.io"
# Placeholders in the table, replaced by the real names when rules or checks are made.
CAPSULE_DEPLOYMENT = "<capsule-deployment>"
CAPSULE_NAMESPACE = "<capsule-namespace>"
VELERO_NAMESPACE = "<velero-namespace>"

IDENTITY_KINDS = ("ServiceAccount", "User")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate"})


@dataclass(frozen=True)
class Permission:
    """One PolicyRule of responder's ClusterRole, with the reason it exists."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    used_by: tuple[str, ...]  # "watch", runbook actions by name, "undo", "preflight", "doctor"
    why: str
    read_only: bool = False  # part of the --read-only role (doctor, plan)
    resource_names: tuple[str, ...] = ()
    # Where doctor checks a namespaced resource (a placeholder above); "" = cluster-scoped or every namespace.
    namespace: str = ""

    @property
    def wildcard(self) -> bool:
        return "*" in self.resources or self.group == "*" or "*" in self.verbs


# The table. Order is the order of the rules in the ClusterRole: reads first, then writes.
PERMISSIONS: tuple[Permission, ...] = (
    # ---- watches and reads (the --read-only role) -------------------------------------------------------------
    Permission("apiextensions.k8s.io", ("customresourcedefinitions",), ("get", "list", "watch"),
               ("watch", "doctor"),
               "detect the Tenant CRD's deletion (watched with fieldSelector metadata.name); doctor reads Capsule's "
               "CRDs (helm.sh/resource-policy) and the CRDs protect guards. Not limited by name: Capsule's CRD "
               "names differ between versions, and CRDs hold schemas, not data",
               read_only=True),
    Permission("capsule.clastix.io", ("tenants",), ("get", "list", "watch"),
               ("watch", "release-tenant-finalizers", "undo"),
               "watch Tenants (detection, triage, the shadow copy); undo checks a Tenant's UID before re-attaching",
               read_only=True),
    Permission("", ("namespaces",), ("get", "list", "watch"),
               ("watch", "detach-namespaces", "handle-terminating", "undo"),
               "watch namespaces (triage); re-read one before a guarded write, on resume and on undo",
               read_only=True),
    Permission("apps", ("deployments",), ("get", "list", "watch"),
               ("watch", "trip-breaker"),
               "watch the Capsule controller Deployment (its replicas are journaled so undo can restore them; "
               "doctor reads Capsule's version from its image); only that Deployment (a ClusterRole cannot name "
               "its namespace: bind a Role in the Capsule namespace instead if you want that too)",
               read_only=True, resource_names=(CAPSULE_DEPLOYMENT,), namespace=CAPSULE_NAMESPACE),
    Permission("admissionregistration.k8s.io", ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"),
               ("get", "list", "watch"),
               ("watch", "trip-breaker", "verify-breaker", "undo"),
               "find Capsule's webhook configurations (their names differ between Capsule versions, so no "
               "resourceNames)",
               read_only=True),
    Permission("authentication.k8s.io", ("selfsubjectreviews",), ("create",),
               ("preflight",),
               "who am I: the username the breaker exemption names (creates nothing)",
               read_only=True),
    Permission("authorization.k8s.io", ("selfsubjectaccessreviews",), ("create",),
               ("doctor",),
               "check responder's own permissions before an incident (creates nothing)",
               read_only=True),
    Permission("admissionregistration.k8s.io", ("validatingadmissionpolicies", "validatingadmissionpolicybindings"),
               ("get", "list", "watch"),
               ("doctor", "protect", "trip-breaker", "restore-capsule", "verify-recovery", "undo"),
               "doctor checks that the Tenant CRD is protected against deletion (responder protect's policy); "
               "the breaker, recovery, verify and undo find the namespace hold, and its incident, in the cluster",
               read_only=True),
    Permission(HOLD_PARAM_GROUP, (HOLD_PARAM_RESOURCE,), ("get",),
               ("preflight", "doctor", "restore-capsule", "verify-recovery", "undo"),
               "is the namespace hold armed (its parameter, a NamespaceHold), and is it marked by an incident; only "
               "that name",
               read_only=True, resource_names=(HOLD_PARAM,)),
    Permission("velero.io", ("backups", "restores", "backupstoragelocations", "downloadrequests", "schedules"),
               ("get", "list", "watch"),
               ("doctor", "restore"),
               "doctor checks the BackupStorageLocation is Available and each tenant namespace has a recent Completed "
               "Backup; recovery picks the backup, follows the Restore and reads its results",
               read_only=True, namespace=VELERO_NAMESPACE),
    Permission("coordination.k8s.io", ("leases",), ("get",),
               ("preflight", "guard", "undo", "doctor"),
               "who holds the writer Lease (one writer per cluster): read before taking it; a standby guard reads it "
               "to take over; doctor shows the holder; only that name",
               read_only=True, resource_names=(WRITER_LEASE,), namespace=RESPONDER_NAMESPACE),
    Permission("", ("configmaps",), ("get",),
               ("preflight", "plan"),
               "read the tenant record the guard keeps between incidents (what existed, when responder has no shadow "
               "copy of its own); only its index and chunk names",
               read_only=True, resource_names=TENANT_RECORD_OBJECTS, namespace=RESPONDER_NAMESPACE),
    Permission("responder.dev", ("incidents",), ("get", "list", "watch"),
               ("guard", "approve"),
               "the Incident in the cluster (incidents.responder.dev): a new guard leader finds the open one and "
               "resumes it, the leader reads the approvals recovery steps wait on; `responder approve` reads it",
               namespace=RESPONDER_NAMESPACE),
    # ---- writes ---------------------------------------------------------------------------------------------
    Permission("apps", ("deployments/scale",), ("patch",),
               ("trip-breaker", "undo"),
               "scale the Capsule controller to 0 (journal action scale-capsule); undo and recovery scale it back",
               resource_names=(CAPSULE_DEPLOYMENT,), namespace=CAPSULE_NAMESPACE),
    Permission("admissionregistration.k8s.io", ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"),
               ("patch", "update"),
               ("trip-breaker", "verify-breaker", "undo", "restore"),
               "add responder's own matchCondition exemption to Capsule's fail-closed webhooks (exempt-responder); "
               "undo and recovery put the original matchConditions back"),
    Permission("", ("namespaces",), ("patch",),
               ("detach-namespaces", "undo"),
               "remove dying Tenant ownerReferences and Capsule finalizers (detach); undo re-attaches"),
    Permission("", ("namespaces",), ("update",),
               ("readopt-namespaces",),
               "recovery: re-adopt restored namespaces into their recreated Tenants (Velero strips ownerReferences)"),
    Permission("", ("namespaces",), ("delete",),
               ("verify-breaker",),
               "the breaker probe: a namespace DELETE sent ONLY with dryRun=All, which Capsule's webhook must refuse. "
               "RBAC cannot restrict a verb to dry runs, so delete is granted; responder never sends it without "
               "dryRun=All (KubeClient.delete(..., dry_run=True))"),
    Permission("", ("namespaces/finalize",), ("update",),
               ("handle-terminating",),
               "finalize empty Terminating namespaces (journal action finalize); irreversible, never undone"),
    Permission("capsule.clastix.io", ("tenants",), ("patch",),
               ("release-tenant-finalizers",),
               "remove Capsule's finalizer from Tenants already being deleted (release-finalizer); irreversible"),
    Permission("capsule.clastix.io", ("tenants",), ("create", "update"),
               ("recreate-tenants", "readopt-namespaces"),
               "recovery: recreate the Tenants from the shadow copy, then update them once their namespaces are back"),
    Permission("apiextensions.k8s.io", ("customresourcedefinitions",), ("create",),
               ("recreate-tenant-crd",),
               "recovery: recreate the Tenant CRD from the shadow copy when it is gone (create cannot be limited by "
               "name; responder never deletes or patches CRDs)"),
    Permission("velero.io", ("backups", "restores", "backupstoragelocations", "downloadrequests", "schedules"),
               ("create",),
               ("restore",),
               "recovery: create the Restore (and a DownloadRequest for its results); backups, schedules and "
               "locations for a safety backup before restoring",
               namespace=VELERO_NAMESPACE),
    Permission("admissionregistration.k8s.io", ("validatingadmissionpolicies", "validatingadmissionpolicybindings"),
               ("create",),
               ("protect", "trip-breaker"),
               "responder protect: install the policy that refuses deleting the Tenant CRD; the breaker: the namespace "
               "hold, a policy that refuses every DELETE of a tenant namespace but responder's (create cannot be "
               "limited by name; server-side apply of a new object needs it)"),
    Permission(HOLD_PARAM_GROUP, (HOLD_PARAM_RESOURCE,), ("patch",),
               ("trip-breaker", "restore-capsule", "undo"),
               "the armed namespace hold (`responder protect`): the breaker marks its parameter NamespaceHold with the "
               "incident, recovery and undo unmark it; only that name",
               resource_names=(HOLD_PARAM,)),
    Permission("admissionregistration.k8s.io", ("validatingadmissionpolicies", "validatingadmissionpolicybindings"),
               ("update", "delete"),
               ("trip-breaker", "restore-capsule", "undo"),
               "take over a namespace hold already in place (a crash before its creation was journaled, or an earlier "
               "incident's); remove it once Capsule is back (or on undo); only those two names",
               resource_names=tuple(sorted({HOLD_POLICY, HOLD_BINDING}))),
    Permission("admissionregistration.k8s.io", ("validatingadmissionpolicies",), ("patch",),
               ("restore-capsule",),
               "lift the self-arming hold (`responder protect`) once recovery has re-adopted every namespace: record "
               "the Tenant CRD present then as the adopted one in its policy (journal action release-hold); only "
               "that name",
               resource_names=(SELF_HOLD_POLICY,)),
    Permission("admissionregistration.k8s.io", ("validatingadmissionpolicies", "validatingadmissionpolicybindings"),
               ("update", "patch", "delete"),
               ("protect",),
               "responder protect: update its own policy and binding, and `--remove` them; only those two names",
               resource_names=tuple(sorted({PROTECT_POLICY, PROTECT_BINDING}))),
    Permission("coordination.k8s.io", ("leases",), ("update",),
               ("preflight", "guard", "undo"),
               "one writer per cluster: every responder that writes (a guard replica, the TUI, a headless run, "
               "undo) takes and renews the writer Lease before its first write, and releases it at the end; only "
               "that name",
               resource_names=(WRITER_LEASE,), namespace=RESPONDER_NAMESPACE),
    Permission("", ("configmaps",), ("patch",),
               ("guard",),
               "the guard's leader keeps the tenant record current between incidents (an index and gzipped JSON "
               "chunks in two banks). The ConfigMaps come with this role (and the chart), so responder needs no "
               "create; only those names",
               resource_names=TENANT_RECORD_OBJECTS, namespace=RESPONDER_NAMESPACE),
    Permission("coordination.k8s.io", ("leases",), ("create",),
               ("preflight", "guard", "undo"),
               "the first responder on a cluster creates the writer Lease (create cannot be limited by name)",
               namespace=RESPONDER_NAMESPACE),
    Permission("responder.dev", ("incidents",), ("create", "patch"),
               ("guard", "approve"),
               "the guard's leader creates one Incident per incident (responder's own record, never a tenant's "
               "object); `responder approve` adds to its spec.approvals (create cannot be limited by name)",
               namespace=RESPONDER_NAMESPACE),
    Permission("responder.dev", ("incidents/status",), ("patch",),
               ("guard",),
               "the guard's leader keeps the Incident's status current: phase, steps, counts, approvals acted on",
               namespace=RESPONDER_NAMESPACE),
    # ---- the one wildcard -----------------------------------------------------------------------------------
    Permission("*", ("*",), ("list",),
               ("handle-terminating",),
               "CONTENT COUNTING: list every namespaced type the cluster serves (found by discovery at run time, CRDs "
               "included) to count what is left in a Terminating namespace before finalizing it. list only: no get, "
               "no watch, no writes. It lets responder read Secrets' data too (RBAC has no metadata-only list). "
               "Do NOT remove it: a type responder cannot list counts as empty, and an empty-looking namespace "
               "gets finalized, orphaning its content"),
)

# The content-counting rule: the only one allowed to use "*".
CONTENT_COUNTING = next(p for p in PERMISSIONS if p.wildcard)


def permissions(read_only: bool = False) -> list[Permission]:
    """The table rows of the full role, or of the read-only (doctor/plan) role."""
    return [p for p in PERMISSIONS if p.read_only or not read_only]


def _rule(p: Permission, capsule_deployment: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": [p.group], "resources": list(p.resources), "verbs": list(p.verbs)}
    if p.resource_names:
        rule["resourceNames"] = [capsule_deployment if n == CAPSULE_DEPLOYMENT else n for n in p.resource_names]
    return rule


def rbac_rules(read_only: bool = False, *, capsule_deployment: str = DEFAULT_CAPSULE_DEPLOYMENT) -> list[dict[str, Any]]:
    """The ClusterRole's PolicyRules, in table order."""
    return [_rule(p, capsule_deployment) for p in permissions(read_only)]


@dataclass(frozen=True)
class AccessCheck:
    """One SelfSubjectAccessReview doctor sends: can I `verb` this resource (this object)?"""

    permission: Permission
    verb: str
    group: str
    resource: str
    subresource: str = ""
    name: str = ""
    namespace: str = ""

    def resource_attributes(self) -> dict[str, str]:
        attrs = {"verb": self.verb, "group": self.group, "resource": self.resource}
        attrs.update({k: v for k, v in (("subresource", self.subresource), ("name", self.name),
                                         ("namespace", self.namespace)) if v})
        return attrs

    @property
    def label(self) -> str:
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f" {self.name}" if self.name else ""
        ns = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {res}{'.' + self.group if self.group else ''}{where}{ns}"


def _placeholders(capsule_namespace: str, capsule_deployment: str, velero_namespace: str) -> dict[str, str]:
    return {CAPSULE_DEPLOYMENT: capsule_deployment, CAPSULE_NAMESPACE: capsule_namespace,
            VELERO_NAMESPACE: velero_namespace}


def access_checks(read_only: bool = False, *, capsule_namespace: str = DEFAULT_CAPSULE_NAMESPACE,
                  capsule_deployment: str = DEFAULT_CAPSULE_DEPLOYMENT,
                  velero_namespace: str = DEFAULT_VELERO_NAMESPACE) -> list[AccessCheck]:
    """One check per (verb, group, resource[/subresource]) of the role, from the same table as the rules.
    A rule limited to resourceNames is checked on its first name; the content-counting rule is checked as
    "*"/"*" (only a wildcard rule allows that review)."""
    names = _placeholders(capsule_namespace, capsule_deployment, velero_namespace)
    checks = []
    for p in permissions(read_only):
        for res in p.resources:
            base, _, sub = res.partition("/")
            for verb in p.verbs:
                checks.append(AccessCheck(p, verb, p.group, base, sub,
                                          names.get(p.resource_names[0], p.resource_names[0]) if p.resource_names else "",
                                          names.get(p.namespace, p.namespace)))
    return checks


def missing_rules(denied: list[AccessCheck], *, capsule_deployment: str = DEFAULT_CAPSULE_DEPLOYMENT) -> list[dict[str, Any]]:
    """The PolicyRules that would grant exactly the denied checks, in table order: per table row, resources
    denied the same verbs share one rule; resourceNames are kept from the row."""
    out: list[dict[str, Any]] = []
    for p in PERMISSIONS:
        verbs_by_resource: dict[str, list[str]] = {}
        for check in denied:
            if check.permission != p:
                continue
            res = f"{check.resource}/{check.subresource}" if check.subresource else check.resource
            verbs_by_resource.setdefault(res, [])
            if check.verb not in verbs_by_resource[res]:
                verbs_by_resource[res].append(check.verb)
        by_verbs: dict[tuple[str, ...], list[str]] = {}
        for res in p.resources:  # table order
            if res in verbs_by_resource:
                verbs = tuple(v for v in p.verbs if v in verbs_by_resource[res])
                by_verbs.setdefault(verbs, []).append(res)
        for verbs, resources in by_verbs.items():
            rule = _rule(Permission(p.group, tuple(resources), verbs, p.used_by, p.why,
                                    resource_names=p.resource_names), capsule_deployment)
            out.append(rule)
    return out


def missing_role(rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A ClusterRole fragment with the missing rules, for the operator to merge into responder's role."""
    return {"apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRole",
            "metadata": {"name": role_name()}, "rules": rules}


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """RBAC's own matching, for checks against these rules: does any rule allow this request?
    `resource` may name a subresource ("deployments/scale"); `name` is the object's name (None: any/list)."""
    for rule in rules:
        if "nonResourceURLs" in rule:
            continue
        groups, resources, verbs = rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        names = rule.get("resourceNames") or []
        if not (group in groups or "*" in groups):
            continue
        if not (verb in verbs or "*" in verbs):
            continue
        base, _, sub = resource.partition("/")
        if not (resource in resources or "*" in resources or (sub and f"*/{sub}" in resources)):
            continue
        if names and (name is None or name not in names):
            continue
        return True
    return False


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _object_suffix(name: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.") or "identity"


def role_name(read_only: bool = False) -> str:
    return "responder-read-only" if read_only else "responder"


def rbac_manifests(*, identity_kind: str = "ServiceAccount", name: str = "responder",
                   namespace: str = RESPONDER_NAMESPACE, read_only: bool = False,
                   capsule_deployment: str = DEFAULT_CAPSULE_DEPLOYMENT) -> list[dict[str, Any]]:
    """[ServiceAccount,] ClusterRole, ClusterRoleBinding for responder's identity."""
    if identity_kind not in IDENTITY_KINDS:
        raise ConfigError(f"unknown identity kind {identity_kind!r}", fix=f"use one of {', '.join(IDENTITY_KINDS)}")
    if not name:
        raise ConfigError("the identity name is empty", fix="pass --name")
    if identity_kind == "ServiceAccount":
        if not _DNS_SUBDOMAIN.match(name):
            raise ConfigError(f"{name!r} is not a valid ServiceAccount name",
                              fix="use lower-case letters, digits, '-' and '.'")
        if not _DNS_LABEL.match(namespace or ""):
            raise ConfigError(f"{namespace!r} is not a valid namespace name",
                              fix="use lower-case letters, digits and '-' (at most 63)")
    if not _DNS_SUBDOMAIN.match(capsule_deployment or ""):
        raise ConfigError(f"{capsule_deployment!r} is not a valid Deployment name", fix="pass --capsule-deployment")
    labels = {"app.kubernetes.io/name": "responder", "app.kubernetes.io/component": "rbac"}
    role = role_name(read_only)
    binding = role if name == "responder" else f"{role}-{_object_suffix(name)}"
    docs: list[dict[str, Any]] = []
    if identity_kind == "ServiceAccount":
        docs.append({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)}})
        subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    else:
        subject = {"apiGroup": RBAC_API, "kind": "User", "name": name}
    docs.append({"apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRole",
                 "metadata": {"name": role, "labels": dict(labels)},
                 "rules": rbac_rules(read_only, capsule_deployment=capsule_deployment)})
    docs.append({"apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": binding, "labels": dict(labels)},
                 "roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": role},
                 "subjects": [subject]})
    if not read_only:
        docs += tenant_record_configmaps()
    return docs


def tenant_record_configmaps() -> list[dict[str, Any]]:
    """The tenant record's ConfigMaps, empty: the guard fills them (patch only, never create)."""
    return [{"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": name, "namespace": RESPONDER_NAMESPACE,
                          "labels": {"app.kubernetes.io/name": "responder",
                                     "app.kubernetes.io/component": "tenant-record"}}}
            for name in TENANT_RECORD_OBJECTS]


# ---- rendering ------------------------------------------------------------------------------------------------


def _comment(text: str, width: int = 100, indent: str = "") -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(indent) + 2 + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return [f"{indent}# {ln}" for ln in lines]


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=1000)


def render_yaml(docs: list[dict[str, Any]], *, read_only: bool = False) -> str:
    """Multi-document YAML; every ClusterRole rule is preceded by a comment saying who needs it and why."""
    header = ["# responder RBAC, generated by `responder manifests rbac"
              + (" --read-only" if read_only else "") + "`.",
              *_comment("Least privilege: every rule below is needed by the watches, a runbook action or undo; "
                        "see responder/ops/manifests.py (PERMISSIONS). API discovery (/api, /apis) comes from the "
                        "default system:discovery ClusterRole every authenticated user has."),
              *(_comment("Read-only role for `responder doctor` and `responder plan`: no write verbs, no content "
                         "counting. It cannot contain an incident.") if read_only else []),
              ]
    rows = permissions(read_only)
    out: list[str] = list(header)
    for doc in docs:
        out.append("---")
        if doc.get("kind") == "ServiceAccount":
            out.extend(_comment(f"The namespace {doc['metadata']['namespace']} must exist "
                                f"(kubectl create namespace {doc['metadata']['namespace']})."))
        if doc.get("kind") != "ClusterRole":
            out.append(_dump(doc).rstrip("\n"))
            continue
        rest = {k: v for k, v in doc.items() if k != "rules"}
        out.append(_dump(rest).rstrip("\n"))
        out.append("rules:")
        for p, rule in zip(rows, doc["rules"]):
            out.append("")
            out.extend(_comment(f"[{', '.join(p.used_by)}] {p.why}."))
            out.append(_dump([rule]).rstrip("\n"))
    return "\n".join(out) + "\n"


def chart_rules_yaml() -> str:
    """The Helm chart's ClusterRole rules (charts/responder/files/rules.yaml), from the same table, with the
    Capsule Deployment's name left to the chart's values. Regenerate the file with
    `python -c 'from responder.ops.manifests import chart_rules_yaml as r; print(r(), end="")' > charts/responder/files/rules.yaml`."""
    placeholder = "capsule-deployment-placeholder"
    rules = _dump(rbac_rules(False, capsule_deployment=placeholder))
    return ("# Generated from `responder manifests rbac`'s table (responder/ops/manifests.py, PERMISSIONS): do not "
            "edit;\n# regenerate with responder.ops.manifests.chart_rules_yaml().\n"
            + rules.replace(placeholder, "'{{ .Values.capsule.deployment }}'"))


# ---- command line ---------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """`manifests` and its `rbac`; returns the kinds, for `manifests guard` (responder.ops.guard_manifests)."""
    manifests = sub.add_parser("manifests", help="print Kubernetes manifests responder needs (RBAC, the guard, the Incident CRD)")
    kinds = manifests.add_subparsers(dest="manifest", required=True)
    rbac = kinds.add_parser("rbac", help="least-privilege ClusterRole + ClusterRoleBinding (+ ServiceAccount)")
    rbac.add_argument("--identity-kind", choices=IDENTITY_KINDS, default="ServiceAccount",
                      help="who responder runs as (default ServiceAccount)")
    rbac.add_argument("--name", default="responder", help="the ServiceAccount or User name (default responder)")
    rbac.add_argument("--namespace", default=RESPONDER_NAMESPACE,
                      help="the ServiceAccount's namespace (default responder-system)")
    rbac.add_argument("--read-only", action="store_true",
                      help="only the watches/reads and the self reviews: for doctor and plan")
    rbac.add_argument("--capsule-deployment", default=DEFAULT_CAPSULE_DEPLOYMENT,
                      help="the Capsule controller Deployment the scale rule is limited to")
    rbac.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    rbac.set_defaults(handler=cmd_rbac)
    crd = kinds.add_parser("crd", help="responder's own CustomResourceDefinition: incidents.responder.dev (the "
                                       "Incident the guard keeps; the chart installs it)")
    crd.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    crd.set_defaults(handler=cmd_crd)
    return kinds


def incident_crd_yaml() -> str:
    """The Incident CRD as YAML: `responder manifests crd` prints it, charts/responder/crds/incidents.yaml holds it."""
    return "# Generated from responder.response.incident_object.incident_crd(): do not edit.\n" + _dump(incident_crd())


def cmd_crd(args: argparse.Namespace) -> int:
    if args.output == "json":
        sys.stdout.write(json.dumps(incident_crd(), indent=2) + "\n")
    else:
        sys.stdout.write(incident_crd_yaml())
    return 0


def cmd_rbac(args: argparse.Namespace) -> int:
    docs = rbac_manifests(identity_kind=args.identity_kind, name=args.name, namespace=args.namespace,
                          read_only=args.read_only, capsule_deployment=args.capsule_deployment)
    if args.output == "json":
        sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2) + "\n")
    else:
        sys.stdout.write(render_yaml(docs, read_only=args.read_only))
    return 0


__all__ = ["PERMISSIONS", "CONTENT_COUNTING", "Permission", "rbac_rules", "rbac_manifests", "render_yaml", "allows",
           "permissions", "add_parser", "WRITE_VERBS", "chart_rules_yaml", "incident_crd_yaml", "AccessCheck", "access_checks", "missing_rules", "missing_role"]
