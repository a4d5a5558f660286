"""`responder protect`: refuse deleting the Tenant CRD before an incident can start, and arm the
breaker's namespace hold.

Deleting a CRD deletes every custom resource of its kind straight through storage, bypassing admission, so
neither Capsule's tenants webhook nor a Tenant's `spec.preventDeletion` can stop it. Admission does run on the
DELETE of the CRD itself: a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, GA since Kubernetes
1.30) evaluated in the API server, with no webhook to be down, refuses it unless the CRD carries the
annotation ALLOW_DELETE_ANNOTATION="true", which makes a deliberate deletion a two-step act.

One policy and one binding, both named PROTECT_POLICY (responder.ops.manifests, where the RBAC for them lives).
Writes are server-side apply through KubeClient (fieldManager responder; dryRun=All with --dry-run).

The armed hold (responder.actions.breaker.armed_hold_objects): a second policy and binding, dormant,
and their parameter, a NamespaceHold (a small cluster-scoped kind of responder's own, whose CRD is
installed first). They refuse nothing until the breaker marks the parameter with an incident; then every
tenant namespace DELETE but responder's is refused within milliseconds, where a policy created during the
incident waits for the API server's next policy refresh (up to ~1 s). Installing them needs create on
CRDs, which responder's own role does not grant: run it as a cluster admin.

The self-arming hold (responder.actions.self_hold, `--only self-hold`): a policy whose parameter
is the Tenant CRD itself, so the API server refuses tenant namespace deletes from the moment that CRD is
deleted, with no responder process running, until responder has recovered and re-adopted the namespaces.
It records the Tenant CRD's UID at install, so the Tenant CRD must exist; installing it again while it is in
force keeps the recorded UID (it never lifts a hold in force).
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
from responder.actions.breaker import ARMED_HOLD_PATHS, armed_hold_objects, hold_param_crd, read_armed_hold
from responder.actions.self_hold import (ADOPTED_CRD_ANNOTATION, GUARD_IDENTITY, SELF_HOLD_PATHS, TENANT_CRD_PATH,
                                        read_self_hold, self_hold_objects)
from responder.cluster.discovery import CRD_PATH, wait_crd_established
from responder.errors import EXIT_FORBIDDEN, EXIT_NOT_CONTAINED, EXIT_OK, ApiError, ConfigError, Forbidden
from responder.names import HOLD_PARAM_CRD, HOLD_PARAM_KIND, PROTECT_BINDING, PROTECT_POLICY, TENANT_CRD

ALLOW_DELETE_ANNOTATION = "responder.dev/allow-delete"
ADMISSION_V1 = "/apis/admissionregistration.k8s.io/v1"
POLICY_PATH = f"{ADMISSION_V1}/validatingadmissionpolicies/{PROTECT_POLICY}"
BINDING_PATH = f"{ADMISSION_V1}/validatingadmissionpolicybindings/{PROTECT_BINDING}"
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


async def arm_hold(client: KubeClient) -> list[str]:
    """Install the armed hold (server-side apply): the parameter's CRD, once its kind is served the
    parameter, then the policy and last the binding. Unmarked, they refuse nothing."""
    existing = await client.get_or_none(f"{CRD_PATH}/{HOLD_PARAM_CRD}")
    if existing is not None and existing["metadata"].get("deletionTimestamp"):
        raise ConfigError(f"the CRD {HOLD_PARAM_CRD} is being deleted (an earlier `responder protect --remove`)",
                          fix=f"wait until `kubectl get crd {HOLD_PARAM_CRD}` finds nothing, then run "
                              "`responder protect --only hold` again")
    await client.patch(f"{CRD_PATH}/{HOLD_PARAM_CRD}", hold_param_crd(), patch_type=APPLY_PATCH)
    done = [f"CustomResourceDefinition {HOLD_PARAM_CRD}: applied"]
    if client.dry_run and existing is None:  # a dry-run apply creates nothing for the rest to refer to
        return done + [f"{HOLD_PARAM_KIND}, ValidatingAdmissionPolicy and binding: not sent (their kind's CRD does "
                       "not exist before the real run)"]
    if not await wait_crd_established(client, HOLD_PARAM_CRD):
        raise ConfigError(f"the CRD {HOLD_PARAM_CRD} was not Established within 30 s",
                          fix=f"`kubectl get crd {HOLD_PARAM_CRD} -o yaml` (its status conditions say why); then run "
                              "`responder protect --only hold` again")
    policy, binding, param = armed_hold_objects()
    for obj, path in ((param, ARMED_HOLD_PATHS[HOLD_PARAM_KIND]),
                      (policy, ARMED_HOLD_PATHS["ValidatingAdmissionPolicy"]),
                      (binding, ARMED_HOLD_PATHS["ValidatingAdmissionPolicyBinding"])):
        await client.patch(path, obj, patch_type=APPLY_PATCH)
        done.append(f"{obj['kind']} {obj['metadata']['name']}: applied")
    return done


def self_hold_exemptions(users: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The identities the self-arming hold lets through while the Tenant CRD exists: the guard's ServiceAccount
    and the users named with --responder-user, without repeats."""
    out = [GUARD_IDENTITY]
    for user in users:
        if not user.strip():
            raise ConfigError("--responder-user is empty", fix="name the username responder runs as (`kubectl auth "
                                                               "whoami` with its kubeconfig)")
        if user.strip() not in out:
            out.append(user.strip())
    return out


async def install_self_hold(client: KubeClient, exempt: list[str]) -> list[str]:
    """Server-side apply of the self-arming hold: the policy first, then its bindings (a binding without its
    policy refuses nothing). Records the Tenant CRD's UID, or keeps the one recorded while the hold is in force."""
    crd = await client.get_or_none(TENANT_CRD_PATH)
    if crd is None or crd["metadata"].get("deletionTimestamp"):
        raise ConfigError(f"the Tenant CRD {TENANT_CRD} is {'absent' if crd is None else 'being deleted'}: the "
                          "self-arming hold records the UID of the CRD it protects",
                          fix="recover first (`responder run`), then run `responder protect --only self-hold` again")
    uid = crd["metadata"]["uid"]
    state = await read_self_hold(client)
    if state.installed and state.in_force and state.adopted_uid:
        uid = state.adopted_uid  # never lift a hold in force by installing again
    done = []
    for obj, path in zip(self_hold_objects(uid, exempt), SELF_HOLD_PATHS.values()):
        await client.patch(path, obj, patch_type=APPLY_PATCH)
        done.append(f"{obj['kind']} {obj['metadata']['name']}: applied")
    return done


async def remove_self_hold(client: KubeClient) -> list[str]:
    """Delete the self-arming hold's bindings, then its policy."""
    paths = list(SELF_HOLD_PATHS.items())
    return await _delete_each(client, [(key.split("/")[0], path) for key, path in paths[1:] + paths[:1]])


async def _delete_each(client: KubeClient, objects: list[tuple[str, str]]) -> list[str]:
    """DELETE each (kind, path) in order; absent ones are fine. One line each for the operator."""
    done = []
    for kind, path in objects:
        name = path.rsplit("/", 1)[-1]
        try:
            await client.delete(path)
            done.append(f"{kind} {name}: deleted")
        except ApiError as exc:
            if exc.status != 404:
                raise
            done.append(f"{kind} {name}: not there")
    return done


async def disarm_hold(client: KubeClient, timeout: float = 30.0) -> list[str]:
    """Delete the armed hold: binding, policy, parameter, and last the parameter's CRD, then wait until
    the CRD is gone (its deletion finishes asynchronously, and arming again before that would fail)."""
    crd_path = f"{CRD_PATH}/{HOLD_PARAM_CRD}"
    done = await _delete_each(client, [(kind, ARMED_HOLD_PATHS[kind]) for kind in
                                       ("ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy", HOLD_PARAM_KIND)]
                              + [("CustomResourceDefinition", crd_path)])
    deadline = time.monotonic() + timeout
    while not client.dry_run and await client.get_or_none(crd_path) is not None:
        if time.monotonic() >= deadline:
            done.append(f"CustomResourceDefinition {HOLD_PARAM_CRD}: still Terminating after {timeout:.0f}s")
            break
        await asyncio.sleep(0.2)
    return done


async def remove(client: KubeClient) -> list[str]:
    """Delete the binding first (without it the policy refuses nothing), then the policy."""
    return await _delete_each(client, [("ValidatingAdmissionPolicyBinding", BINDING_PATH),
                                       ("ValidatingAdmissionPolicy", POLICY_PATH)])


async def verify(client: KubeClient, crds: list[str], timeout: float = 30.0, *, removed: bool = False) -> str:
    """Prove the policy refuses (or, `removed`, no longer refuses): a server-side dry-run DELETE of the first
    existing, unannotated CRD must be refused with our message (or admitted). The API server loads policy
    changes asynchronously (about once a second), so poll. Dry run: nothing is deleted either way."""
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
            if removed:
                return f"verified: a dry-run DELETE of {probe} is admitted again"
        except ApiError as exc:
            if exc.status == 403 and ALLOW_DELETE_ANNOTATION in exc.api_message:
                if not removed:
                    return f"verified: a dry-run DELETE of {probe} is refused"
            elif exc.status == 403:
                return f"not verified: this identity may not delete CRDs even in a dry run ({exc.api_message[:120]})"
            else:
                raise
        if time.monotonic() >= deadline:
            return (f"NOT EFFECTIVE after {timeout:.0f}s: a dry-run DELETE of {probe} was still "
                    + ("refused" if removed else "admitted"))
        await asyncio.sleep(0.5)


# ---- command line ---------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protect",
                       help="refuse deleting the Tenant CRD (a ValidatingAdmissionPolicy) unless it is annotated "
                            f"{ALLOW_DELETE_ANNOTATION}=true, and arm the breaker's namespace hold")
    p.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG, merged, or ~/.kube/config)")
    p.add_argument("--context", help="the kubeconfig context to use")
    p.add_argument("--crd", action="append", default=[], metavar="NAME",
                   help=f"protect this CRD too (repeatable; also ${CRDS_ENV}, comma-separated)")
    p.add_argument("--dry-run", action="store_true", help="send the writes with dryRun=All: nothing persists")
    p.add_argument("--remove", action="store_true", help="delete responder's policies, bindings, the hold's "
                                                          "parameter and its CRD")
    p.add_argument("--only", choices=("crds", "hold", "self-hold"),
                   help="only the CRD protection, only the armed namespace hold, or only the self-arming hold "
                        "(default: all three)")
    p.add_argument("--responder-user", action="append", default=[], metavar="USERNAME",
                   help=f"the self-arming hold lets this username through too (repeatable; {GUARD_IDENTITY}, the "
                        "guard's ServiceAccount, always)")
    p.set_defaults(handler=cmd_protect)


def cmd_protect(args: argparse.Namespace) -> int:
    from responder.cluster.kubeconfig import load_cluster_access

    crds = protected_crds(args.crd)
    exempt = self_hold_exemptions(args.responder_user)
    access = load_cluster_access(args.kubeconfig, args.context)

    do_crds, do_hold, do_self_hold = (args.only in (None, "crds"), args.only in (None, "hold"),
                                      args.only in (None, "self-hold"))

    async def go() -> int:
        # Fail fast when the cluster is unreachable instead of retrying for the incident write deadline.
        async with KubeClient(access, dry_run=args.dry_run, retry_deadline=10.0) as client:
            suffix = " (dry run: nothing persisted)" if args.dry_run else ""
            rc = EXIT_OK
            if do_crds:
                for line in await (remove(client) if args.remove else install(client, crds)):
                    print(line + suffix)
                if not args.dry_run:
                    if not args.remove:
                        print(f"protected: {', '.join(crds)}")
                    verdict = await verify(client, crds, removed=args.remove)
                    print(verdict)
                    rc = EXIT_NOT_CONTAINED if verdict.startswith("NOT EFFECTIVE") else EXIT_OK
            if do_hold:
                try:
                    lines = await (disarm_hold(client) if args.remove else arm_hold(client))
                except Forbidden as exc:
                    print(f"namespace hold NOT armed: {exc.api_message[:200]}. Installing it applies a CRD, a "
                          "policy and its binding (server-side apply): run `responder protect --only hold` once as "
                          "a cluster admin")
                    return EXIT_FORBIDDEN
                for line in lines:
                    print(line + suffix)
                if not args.remove and not args.dry_run:
                    why = await read_armed_hold(client)
                    print("namespace hold armed: dormant until the breaker marks it" if why is None
                          else f"namespace hold NOT armed: {why}")
                    rc = rc or (EXIT_OK if why is None else EXIT_NOT_CONTAINED)
            if do_self_hold:
                rc = rc or await _self_hold_command(client, args, exempt, suffix)
            return rc

    return asyncio.run(go())


async def _self_hold_command(client: KubeClient, args: argparse.Namespace, exempt: list[str], suffix: str) -> int:
    """Install or remove the self-arming hold and say what is in the cluster afterwards."""
    try:
        lines = await (remove_self_hold(client) if args.remove else install_self_hold(client, exempt))
    except ConfigError as exc:
        print(f"self-arming hold NOT installed: {exc.message}; fix: {exc.fix}")
        return EXIT_NOT_CONTAINED
    except Forbidden as exc:
        print(f"self-arming hold NOT installed: {exc.api_message[:200]}. Run `responder protect --only self-hold` "
              "once as a cluster admin")
        return EXIT_FORBIDDEN
    for line in lines:
        print(line + suffix)
    if args.dry_run:
        return EXIT_OK
    if args.remove:
        left = [path.rsplit("/", 1)[-1] for path in SELF_HOLD_PATHS.values() if await client.get_or_none(path) is not None]
        print(f"self-arming hold NOT removed: still there: {', '.join(left)}" if left
              else "self-arming hold removed: none of its objects is left")
        return EXIT_NOT_CONTAINED if left else EXIT_OK
    state = await read_self_hold(client)
    print(f"self-arming hold {state.summary()}; lets through: {', '.join(exempt)}")
    if state.installed and state.in_force:
        print(f"the recorded Tenant CRD UID ({ADOPTED_CRD_ANNOTATION}) was kept: the hold stays in force until "
              "`responder run` recovers and re-adopts the namespaces")
    return EXIT_OK if state.installed else EXIT_NOT_CONTAINED


__all__ = ["install_self_hold", "remove_self_hold", "self_hold_exemptions", "ALLOW_DELETE_ANNOTATION", "policy_objects", "protected_crds", "protection_from", "read_protection",
           "install", "remove", "verify", "arm_hold", "disarm_hold", "add_parser", "ProtectionStatus"]
