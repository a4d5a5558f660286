"""`responder protect`: refuse deleting the Tenant CRD before an incident can start.

Deleting a CRD deletes every custom resource of its kind straight through storage, bypassing admission, so
neither Capsule's tenants webhook nor a Tenant's `spec.preventDeletion` can stop it. Admission does run on the
DELETE of the CRD itself: a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, GA since Kubernetes
1.30) evaluated in the API server, with no webhook to be down, refuses it unless the CRD carries the
annotation ALLOW_DELETE_ANNOTATION="true", which makes a deliberate deletion a two-step act.

One policy and one binding, both named PROTECT_POLICY (responder.manifests, where the RBAC for them lives).
Writes are server-side apply through KubeClient (fieldManager responder; dryRun=All with --dry-run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from responder.cluster.client import APPLY_PATCH, KubeClient
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK, ApiError, ConfigError
from responder.manifests import PROTECT_BINDING, PROTECT_POLICY, TENANT_CRD

ALLOW_DELETE_ANNOTATION = "responder.io/allow-delete"
ADMISSION_V1 = "/apis/admissionregistration.k8s.io/v1"
POLICY_PATH = f"{ADMISSION_V1}/validatingadmissionpolicies/{PROTECT_POLICY}"
BINDING_PATH = f"{ADMISSION_V1}/validatingadmissionpolicybindings/{PROTECT_BINDING}"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRDS_ENV = "RESPONDER_PROTECT_CRDS"  # comma-separated extra CRDs, like RESPONDER_PROTECTED for namespaces
LABELS = {"app.kubernetes.io/name": "responder", "app.kubernetes.io/component": "protect"}


def protected_crds(extra: list[str] | tuple[str, ...] = (), env: str | None = None) -> list[str]:
    """The Tenant CRD first, then --crd names and $RESPONDER_PROTECT_CRDS, without repeats."""
    env_value = os.environ.get(CRDS_ENV, "") if env is None else env
    names = [TENANT_CRD, *extra, *(n.strip() for n in env_value.split(",") if n.strip())]
    out: list[str] = []
    for name in names:
        if "." not in name:
            raise ConfigError(f"{name!r} is not a CRD name", fix="a CRD name is <plural>.<group>, e.g. "
                                                                 "tenants.capsule.clastix.io")
        if name not in out:
            out.append(name)
    return out


def deny_message(crd: str = "<name>") -> str:
    return (f"CRD {crd} is protected by responder protect: deleting a CRD deletes every object of its kind (the "
            f"Tenant CRD: every Tenant, then every tenant namespace with its content). To delete it on purpose, "
            f"annotate it first: kubectl annotate crd {crd} {ALLOW_DELETE_ANNOTATION}=true")


def _message_expression() -> str:
    """deny_message() as CEL, with the CRD's name filled in by the API server."""
    return " + oldObject.metadata.name + ".join(json.dumps(part) for part in deny_message("\0").split("\0"))


def policy_objects(crds: list[str]) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy and its binding."""
    key = json.dumps(ALLOW_DELETE_ANNOTATION)
    # On DELETE `object` is null; the CRD being deleted is `oldObject`.
    allowed = (f"has(oldObject.metadata.annotations) && {key} in oldObject.metadata.annotations && "
               f"oldObject.metadata.annotations[{key}] == \"true\"")
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": PROTECT_POLICY, "labels": dict(LABELS)},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apiextensions.k8s.io"], "apiVersions": ["*"], "operations": ["DELETE"],
                "resources": ["customresourcedefinitions"], "resourceNames": list(crds)}]},
            "validations": [{
                "expression": allowed,
                "message": deny_message(),
                # Names the CRD in the refusal; `message` is the fallback if this fails to evaluate.
                "messageExpression": _message_expression(),
                "reason": "Forbidden",
            }],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": PROTECT_BINDING, "labels": dict(LABELS)},
        "spec": {"policyName": PROTECT_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


@dataclass
class ProtectionStatus:
    """What doctor reports: is each CRD refused deletion by responder's policy?"""

    served: bool = True  # the API server serves admissionregistration.k8s.io/v1 policies
    policy: bool = False
    binding_denies: bool = False
    crds: list[str] = field(default_factory=list)  # the CRDs the policy names

    def protects(self, crd: str) -> bool:
        return self.served and self.policy and self.binding_denies and crd in self.crds


def protection_from(policy: dict[str, Any] | None, binding: dict[str, Any] | None) -> ProtectionStatus:
    """Pure: read our policy and binding (None = absent)."""
    status = ProtectionStatus(policy=policy is not None)
    if policy is not None:
        for rule in ((policy.get("spec") or {}).get("matchConstraints") or {}).get("resourceRules") or []:
            if "DELETE" in (rule.get("operations") or []) or "*" in (rule.get("operations") or []):
                status.crds.extend(rule.get("resourceNames") or [])
    spec = (binding or {}).get("spec") or {}
    status.binding_denies = spec.get("policyName") == PROTECT_POLICY and "Deny" in (spec.get("validationActions") or [])
    return status


async def read_protection(client: KubeClient) -> ProtectionStatus:
    """Our policy and binding as the API server has them; `served` is False before Kubernetes 1.30."""
    resources = (await client.get_or_none(ADMISSION_V1)) or {}
    if not any(r.get("name") == "validatingadmissionpolicies" for r in resources.get("resources") or []):
        return ProtectionStatus(served=False)
    return protection_from(await client.get_or_none(POLICY_PATH), await client.get_or_none(BINDING_PATH))


async def install(client: KubeClient, crds: list[str]) -> list[str]:
    """Server-side apply of the policy, then the binding (a binding without its policy refuses nothing)."""
    done = []
    for obj, path in zip(policy_objects(crds), (POLICY_PATH, BINDING_PATH)):
        await client.patch(path, obj, patch_type=APPLY_PATCH)
        done.append(f"{obj['kind']} {obj['metadata']['name']}: applied")
    return done


async def remove(client: KubeClient) -> list[str]:
    """Delete the binding first (it stops refusing at once), then the policy; absent ones are fine."""
    done = []
    for kind, path in (("ValidatingAdmissionPolicyBinding", BINDING_PATH), ("ValidatingAdmissionPolicy", POLICY_PATH)):
        try:
            await client.delete(path)
            done.append(f"{kind} {PROTECT_POLICY}: deleted")
        except ApiError as exc:
            if exc.status != 404:
                raise
            done.append(f"{kind} {PROTECT_POLICY}: not there")
    return done


async def verify(client: KubeClient, crds: list[str], timeout: float = 30.0) -> str:
    """Prove the policy refuses: a server-side dry-run DELETE of the first existing, unannotated CRD must be
    refused with our message. The API server loads new policies asynchronously, so poll. Dry run: nothing
    is deleted even if the policy is not effective yet."""
    probe = None
    for name in crds:
        crd = await client.get_or_none(f"{CRD_PATH}/{name}")
        if crd and ((crd["metadata"].get("annotations") or {}).get(ALLOW_DELETE_ANNOTATION) != "true"):
            probe = name
            break
    if probe is None:
        return "not verified: none of the CRDs exists without the allow-delete annotation"
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.delete(f"{CRD_PATH}/{probe}", dry_run=True)
        except ApiError as exc:
            if exc.status == 403 and ALLOW_DELETE_ANNOTATION in exc.api_message:
                return f"verified: a dry-run DELETE of {probe} is refused"
            if exc.status == 403:
                return f"not verified: this identity may not delete CRDs even in a dry run ({exc.api_message[:120]})"
            raise
        if time.monotonic() >= deadline:
            return f"NOT EFFECTIVE after {timeout:.0f}s: a dry-run DELETE of {probe} was still admitted"
        await asyncio.sleep(0.5)


# ---- command line ---------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protect",
                       help="refuse deleting the Tenant CRD (a ValidatingAdmissionPolicy) unless it is annotated "
                            f"{ALLOW_DELETE_ANNOTATION}=true")
    p.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG, merged, or ~/.kube/config)")
    p.add_argument("--context", help="the kubeconfig context to use")
    p.add_argument("--crd", action="append", default=[], metavar="NAME",
                   help=f"protect this CRD too (repeatable; also ${CRDS_ENV}, comma-separated)")
    p.add_argument("--dry-run", action="store_true", help="send the writes with dryRun=All: nothing persists")
    p.add_argument("--remove", action="store_true", help="delete responder's policy and binding")
    p.set_defaults(handler=cmd_protect)


def cmd_protect(args: argparse.Namespace) -> int:
    from responder.cluster.kubeconfig import load_cluster_access

    crds = protected_crds(args.crd)
    access = load_cluster_access(args.kubeconfig, args.context)

    async def go() -> int:
        # Fail fast when the cluster is unreachable instead of retrying for the incident write deadline.
        async with KubeClient(access, dry_run=args.dry_run, retry_deadline=10.0) as client:
            lines = await (remove(client) if args.remove else install(client, crds))
            suffix = " (dry run: nothing persisted)" if args.dry_run else ""
            for line in lines:
                print(line + suffix)
            if args.remove or args.dry_run:
                return EXIT_OK
            print(f"protected: {', '.join(crds)}")
            verdict = await verify(client, crds)
            print(verdict)
            return EXIT_NOT_CONTAINED if verdict.startswith("NOT EFFECTIVE") else EXIT_OK

    return asyncio.run(go())


__all__ = ["ALLOW_DELETE_ANNOTATION", "policy_objects", "protected_crds", "protection_from", "read_protection",
           "install", "remove", "verify", "add_parser", "ProtectionStatus"]
