"""The self-arming namespace hold: the API server contains the cascade with no responder process running.

A ValidatingAdmissionPolicy may take any kind as its parameter. This one takes the Tenant CRD itself
(`paramKind` CustomResourceDefinition, `paramRef` naming it), so the API server arms it the moment the CRD
is deleted: its informer over CRDs sees the deletionTimestamp, and every DELETE of a tenant namespace is
refused from then on, the garbage collector's and Capsule's own included. Between incidents it refuses
nothing.

Three states of the Tenant CRD arm it:
- being deleted (a deletionTimestamp): the validation fails;
- absent: the binding's `parameterNotFoundAction: Deny` refuses. The API server resolves parameters before
  it evaluates match conditions, so that binding selects tenant namespaces by Capsule's label
  (`objectSelector`), and its refusal carries the API server's fixed text: the binding's name says why and
  the way out;
- recreated (the seed's case: a pipeline re-applies the CRD and the Tenants, with new UIDs, while the
  namespaces still point at the old ones): the policy records the UID of the CRD responder last adopted, and
  a different UID fails the validation. The namespaces stay held until responder has re-adopted them and
  records the new UID (`rekey_request`, at the end of recovery, where the incident's own hold is lifted).

The exemptions (responder's identities, named at install) are match conditions: they apply while the CRD
exists (being deleted or recreated), not while it is absent, when every DELETE of a labelled namespace is
refused. responder never deletes namespaces (its breaker probe is a dry run), so that costs it nothing.

A second binding (`parameterNotFoundAction: Allow`) covers namespaces with a Tenant ownerReference but no
Capsule label, while the CRD exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from responder.actions.breaker import ADMISSION_V1, HOLD_LABELS, NAMESPACE_DELETES, tenant_owned_expression
from responder.cluster.client import JSON_PATCH, KubeClient
from responder.cluster.discovery import CRD_PATH
from responder.errors import ApiError
from responder.incident import triage
from responder.incident.engine import StepContext
from responder.names import (RESPONDER_NAMESPACE, SELF_HOLD_BINDING, SELF_HOLD_OWNED_BINDING, SELF_HOLD_POLICY,
                             TENANT_CRD)

SELF_HOLD_LABELS = {**HOLD_LABELS, "app.kubernetes.io/component": "self-hold"}
ADOPTED_CRD_ANNOTATION = "responder.dev/adopted-tenant-crd-uid"
EXEMPT_ANNOTATION = "responder.dev/exempt"
GUARD_IDENTITY = f"system:serviceaccount:{RESPONDER_NAMESPACE}:responder"
SELF_HOLD_PATHS = {
    "ValidatingAdmissionPolicy": f"{ADMISSION_V1}/validatingadmissionpolicies/{SELF_HOLD_POLICY}",
    "ValidatingAdmissionPolicyBinding": f"{ADMISSION_V1}/validatingadmissionpolicybindings/{SELF_HOLD_BINDING}",
    "ValidatingAdmissionPolicyBinding/owned":
        f"{ADMISSION_V1}/validatingadmissionpolicybindings/{SELF_HOLD_OWNED_BINDING}",
}
TENANT_CRD_PATH = f"{CRD_PATH}/{TENANT_CRD}"
WAY_OUT = "`responder run` recovers and lifts it; to remove Capsule on purpose, run `responder protect --remove` first"


def deny_message() -> str:
    return (f"ValidatingAdmissionPolicy {SELF_HOLD_POLICY} (responder protect) refuses deleting tenant namespaces: "
            f"the Tenant CRD {TENANT_CRD} is being deleted, or was recreated and responder has not re-adopted its "
            f"namespaces yet (the garbage collector and Capsule would delete every tenant namespace). {WAY_OUT}")


def _message_expression() -> str:
    """deny_message() with the namespace and the CRD's state filled in by the API server."""
    why = ("(has(params.metadata.deletionTimestamp) ? \"is being deleted\" : "
           "\"was recreated (UID \" + params.metadata.uid + \", responder adopted \" + variables.adoptedCRD + "
           "\") and responder has not re-adopted its namespaces yet\")")
    return (f"{json.dumps(f'ValidatingAdmissionPolicy {SELF_HOLD_POLICY} (responder protect) refuses deleting tenant namespace ')}"
            f" + oldObject.metadata.name + {json.dumps(f': the Tenant CRD {TENANT_CRD} ')} + {why} + "
            f"{json.dumps(' (the garbage collector and Capsule would delete every tenant namespace). ' + WAY_OUT)}")


def self_hold_objects(crd_uid: str, exempt: list[str]) -> list[dict[str, Any]]:
    """The policy (keyed to the Tenant CRD's UID `crd_uid`, letting `exempt` through while the CRD exists) and
    its two bindings: labelled tenant namespaces, refused also while the CRD is absent; namespaces with only a
    Tenant ownerReference, while it exists."""
    who = "[" + ", ".join(json.dumps(i) for i in exempt) + "]"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": SELF_HOLD_POLICY, "labels": dict(SELF_HOLD_LABELS),
                     "annotations": {ADOPTED_CRD_ANNOTATION: crd_uid, EXEMPT_ANNOTATION: ",".join(exempt)}},
        "spec": {
            "failurePolicy": "Fail",  # with Ignore, `parameterNotFoundAction: Deny` would admit
            "paramKind": {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"},
            "matchConstraints": NAMESPACE_DELETES,
            "matchConditions": [{"name": "tenant-namespace", "expression": tenant_owned_expression()},
                                {"name": "not-responder", "expression": f"!(request.userInfo.username in {who})"}],
            "variables": [{"name": "adoptedCRD", "expression": json.dumps(crd_uid)}],
            "validations": [{
                "expression": "params.metadata.uid == variables.adoptedCRD && !has(params.metadata.deletionTimestamp)",
                "reason": "Forbidden", "message": deny_message(), "messageExpression": _message_expression(),
            }],
        },
    }
    labelled = {"matchExpressions": [{"key": triage.TENANT_LABEL, "operator": "Exists"}]}
    unlabelled = {"matchExpressions": [{"key": triage.TENANT_LABEL, "operator": "DoesNotExist"}]}
    bindings = [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name, "labels": dict(SELF_HOLD_LABELS)},
         "spec": {"policyName": SELF_HOLD_POLICY, "validationActions": ["Deny"],
                  "paramRef": {"name": TENANT_CRD, "parameterNotFoundAction": absent},
                  "matchResources": {"objectSelector": selector}}}
        for name, absent, selector in ((SELF_HOLD_BINDING, "Deny", labelled),
                                       (SELF_HOLD_OWNED_BINDING, "Allow", unlabelled))]
    return [policy, *bindings]


@dataclass
class SelfHoldState:
    """What doctor, plan, the TUI and recovery say of the self-arming hold."""

    installed: bool
    in_force: bool = False
    why: str = ""  # in force: why; not installed or incomplete: what is missing
    adopted_uid: str | None = None
    crd_uid: str | None = None  # the Tenant CRD's UID now (None: absent)
    crd_deleting: bool = False

    def summary(self) -> str:
        if not self.installed:
            return f"not installed ({self.why})"
        return f"IN FORCE: {self.why}" if self.in_force else "dormant (the Tenant CRD is the one responder adopted)"

    def to_json(self) -> dict[str, Any]:
        return {"installed": self.installed, "in_force": self.in_force, "why": self.why,
                "adopted_crd_uid": self.adopted_uid, "tenant_crd_uid": self.crd_uid}


def self_hold_state(objects: dict[str, dict[str, Any] | None], crd: dict[str, Any] | None) -> SelfHoldState:
    """Pure: the self-arming hold's state from its objects (by SELF_HOLD_PATHS key, None = absent) and the
    Tenant CRD (None = absent)."""
    missing = [key.split("/")[0] + (f" {key.split('/')[1]}" if "/" in key else "")
               for key, obj in objects.items() if obj is None]
    if missing:
        return SelfHoldState(False, why=", ".join(missing) + " missing: run `responder protect --only self-hold`")
    policy = objects["ValidatingAdmissionPolicy"] or {}
    adopted = ((policy.get("metadata") or {}).get("annotations") or {}).get(ADOPTED_CRD_ANNOTATION)
    want = self_hold_objects(adopted or "", [])[0]["spec"]
    spec = policy.get("spec") or {}
    if not adopted or any(spec.get(k) != want[k] for k in ("paramKind", "validations", "variables", "failurePolicy")):
        return SelfHoldState(False, why="the policy differs from this version's: run `responder protect --only self-hold`")
    for key, obj in objects.items():
        if key.startswith("ValidatingAdmissionPolicyBinding"):
            bspec = (obj or {}).get("spec") or {}
            if bspec.get("policyName") != SELF_HOLD_POLICY or "Deny" not in (bspec.get("validationActions") or []):
                return SelfHoldState(False, why=f"binding {obj['metadata']['name']} differs from this version's: "
                                                "run `responder protect --only self-hold`")
    state = SelfHoldState(True, adopted_uid=adopted, crd_uid=(crd or {}).get("metadata", {}).get("uid"),
                          crd_deleting=bool((crd or {}).get("metadata", {}).get("deletionTimestamp")))
    if crd is None:
        state.in_force, state.why = True, f"the Tenant CRD {TENANT_CRD} is absent"
    elif state.crd_deleting:
        state.in_force, state.why = True, f"the Tenant CRD {TENANT_CRD} is being deleted"
    elif state.crd_uid != adopted:
        state.in_force, state.why = True, (f"the Tenant CRD {TENANT_CRD} was recreated (UID {state.crd_uid}, "
                                           f"responder adopted {adopted}): held until responder re-adopts its "
                                           "namespaces")
    return state


async def read_self_hold(client: KubeClient) -> SelfHoldState:
    """self_hold_state() for the cluster; a refusal to read counts as not installed."""
    try:
        objects = {key: await client.get_or_none(path) for key, path in SELF_HOLD_PATHS.items()}
        crd = await client.get_or_none(TENANT_CRD_PATH)
    except ApiError as exc:
        return SelfHoldState(False, why=f"cannot read it ({exc.status} {exc.reason})")
    return self_hold_state(objects, crd)


def rekey_request(policy: dict[str, Any], crd_uid: str) -> list[dict[str, Any]]:
    """JSON patch recording `crd_uid` as the adopted Tenant CRD (the lift, once responder has re-adopted the
    namespaces into that CRD's Tenants), guarded by the policy's resourceVersion."""
    fresh = self_hold_objects(crd_uid, [])[0]
    variables = (policy.get("spec") or {}).get("variables") or []
    index = next(i for i, v in enumerate(variables) if v.get("name") == "adoptedCRD")
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": policy["metadata"]["resourceVersion"]},
            {"op": "replace", "path": f"/spec/variables/{index}", "value": fresh["spec"]["variables"][0]},
            {"op": "replace", "path": "/metadata/annotations/" + ADOPTED_CRD_ANNOTATION.replace("/", "~1"),
             "value": crd_uid}]


async def lift_self_hold(ctx: StepContext) -> str | None:
    """Once recovery has re-adopted every namespace into the Tenants of the Tenant CRD now present: record that
    CRD as the adopted one (journaled, action release-hold), so the hold is dormant again and arms itself at the
    next deletion. Returns what was lifted; None when it was not in force, or the CRD is not there to adopt."""
    state = await read_self_hold(ctx.client)
    if not state.in_force or state.crd_uid is None or state.crd_deleting:
        return None
    path = SELF_HOLD_PATHS["ValidatingAdmissionPolicy"]
    target = f"ValidatingAdmissionPolicy/{SELF_HOLD_POLICY}"
    try:
        await ctx.write("release-hold", target, "PATCH", path, body=rekey_request(await ctx.client.get(path), state.crd_uid),
                        content_type=JSON_PATCH)
    except ApiError as exc:
        if exc.status not in (404, 409, 422):  # gone, or changed meanwhile (its resourceVersion guard)
            raise
        return None
    return target


__all__ = ["lift_self_hold", "SELF_HOLD_PATHS", "GUARD_IDENTITY", "ADOPTED_CRD_ANNOTATION", "SelfHoldState", "deny_message",
           "self_hold_objects", "self_hold_state", "read_self_hold", "rekey_request"]
