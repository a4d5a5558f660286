"""The circuit breaker: Capsule's own webhooks (failurePolicy Fail) refuse every namespace write once
the controller is down; responder exempts only itself and takes the controller down.

With the first write goes the namespace hold: a ValidatingAdmissionPolicy, evaluated in the API server
itself, that refuses every DELETE of a tenant namespace except responder's. It holds from the moment the
API server loads it, while the Capsule process is still shutting down (Capsule >= 0.13 deletes namespaces
itself, through its own still-serving webhooks) and whatever the webhooks' failurePolicy; recovery removes
it once Capsule is back. Where the API server has no such policies (before Kubernetes 1.30) or responder
may not create them, the breaker goes on without it and says so.

Order matters: scaling to 0 is the first write (it stops Capsule >= 0.13 deleting namespaces itself,
and the controller then cannot revert the exemption in its own dynamic webhook configuration); the
exemption follows. Then the breaker is verified: a server-side dry-run DELETE by responder is still
sent to the webhook (the exemption covers only responder's persisted writes), so a refusal proves
that every other identity, the garbage collector included, is refused too.

Breaker unavailable (no Capsule webhook refuses namespace DELETEs with the controller down, e.g. failurePolicy
Ignore): Capsule is still scaled to 0 and responder still exempted, in the webhooks that fail closed for other
writes (namespace and Tenant UPDATEs): without the exemption they would refuse responder's own detach patches
and finalizer releases, and only the hold would stand between the namespaces and Capsule's return.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from responder.incident import triage
from responder.actions.common import capsule_target
from responder.cluster.client import JSON_PATCH, MERGE_PATCH, KubeClient
from responder.incident.engine import StepContext, StepOutcome, WriteRequest
from responder.errors import ApiError, NotFound
from responder.names import (ARMED_HOLD_BINDING, ARMED_HOLD_POLICY, HOLD_BINDING, HOLD_PARAM, HOLD_PARAM_CRD,
                             HOLD_PARAM_GROUP, HOLD_PARAM_KIND, HOLD_PARAM_RESOURCE, HOLD_PARAM_VERSION,
                             HOLD_POLICY, SELF_HOLD_POLICY)
from responder.runbook.schema import ActionSpec, ParamSpec

EXEMPTION_NAME = "responder-breaker-exemption"
NOT_NEEDED = "not-needed"  # the breaker step's verdict when nothing alive was at risk
ADMISSION_PREFIX = {"ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
                    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations"}


def exemption_condition(identity: str, *others: str) -> dict[str, str]:
    """Skip the webhook for responder's persisted requests only (dry runs still go through it).
    Recovery widens it to exactly the other identities that must write while Capsule is down
    (Velero's, to restore namespaces), and removes it when Capsule comes back."""
    if others:
        who = "request.userInfo.username in [" + ", ".join(json.dumps(i) for i in (identity, *others)) + "]"
    else:
        who = f"request.userInfo.username == {json.dumps(identity)}"
    return {"name": EXEMPTION_NAME, "expression": f"!({who} && !(has(request.dryRun) && request.dryRun))"}


def widen_exemption_patch(obj: dict[str, Any], identities: list[str]) -> list[dict[str, Any]]:
    """JSON patch replacing the exemption's expression in every webhook that carries it, guarded by
    the object's resourceVersion (the object it was computed from) and each condition's name.
    Not by a test of the old expression: the server compares the stored JSON, in which Go escaped
    `&&` as `\u0026\u0026`, so a test of an expression with `&&` never matches (found on the lab)."""
    wanted = exemption_condition(*identities)["expression"]
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(obj.get("webhooks") or []):
        for j, cond in enumerate(hook.get("matchConditions") or []):
            if cond.get("name") == EXEMPTION_NAME and cond.get("expression") != wanted:
                path = f"/webhooks/{i}/matchConditions/{j}"
                ops += [{"op": "test", "path": f"{path}/name", "value": EXEMPTION_NAME},
                        {"op": "replace", "path": f"{path}/expression", "value": wanted}]
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if ops and rv:
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
    return ops


HOLD_ACTION = "hold-namespaces"  # the journal action of the hold's creations
HOLD_INCIDENT_ANNOTATION = "responder.dev/incident"
HOLD_IDENTITY_ANNOTATION = "responder.dev/identity"
ADMISSION_V1 = "/apis/admissionregistration.k8s.io/v1"
HOLD_PATHS = {"ValidatingAdmissionPolicy": f"{ADMISSION_V1}/validatingadmissionpolicies",
              "ValidatingAdmissionPolicyBinding": f"{ADMISSION_V1}/validatingadmissionpolicybindings"}
HOLD_PARAM_API_VERSION = f"{HOLD_PARAM_GROUP}/{HOLD_PARAM_VERSION}"
HOLD_PARAM_PATH = f"/apis/{HOLD_PARAM_API_VERSION}/{HOLD_PARAM_RESOURCE}/{HOLD_PARAM}"
# Every object that makes up a hold in the cluster: the incident's own policy and binding, and the
# armed hold's parameter object (marked with the incident while it holds).
HOLD_OBJECT_PATHS = {"ValidatingAdmissionPolicy": f"{HOLD_PATHS['ValidatingAdmissionPolicy']}/{HOLD_POLICY}",
                     "ValidatingAdmissionPolicyBinding":
                         f"{HOLD_PATHS['ValidatingAdmissionPolicyBinding']}/{HOLD_BINDING}",
                     HOLD_PARAM_KIND: HOLD_PARAM_PATH}
ARMED_HOLD_PATHS = {"ValidatingAdmissionPolicy": f"{HOLD_PATHS['ValidatingAdmissionPolicy']}/{ARMED_HOLD_POLICY}",
                    "ValidatingAdmissionPolicyBinding":
                        f"{HOLD_PATHS['ValidatingAdmissionPolicyBinding']}/{ARMED_HOLD_BINDING}",
                    HOLD_PARAM_KIND: HOLD_PARAM_PATH}
HOLD_LABELS = {"app.kubernetes.io/name": "responder", "app.kubernetes.io/component": "breaker"}


def tenant_owned_expression() -> str:
    """CEL: the namespace being deleted is a tenant namespace (Capsule's label, or a Tenant owner).
    On DELETE `object` is null; the namespace being deleted is `oldObject`."""
    label = json.dumps(triage.TENANT_LABEL)
    return (f"(has(oldObject.metadata.labels) && {label} in oldObject.metadata.labels) || "
            "(has(oldObject.metadata.ownerReferences) && oldObject.metadata.ownerReferences.exists(r, "
            f"r.kind == {json.dumps(triage.TENANT_KIND)} && "
            f"r.apiVersion.startsWith({json.dumps(triage.TENANT_GROUP + '/')})))")


NAMESPACE_DELETES = {"resourceRules": [{"apiGroups": [""], "apiVersions": ["*"], "operations": ["DELETE"],
                                        "resources": ["namespaces"]}]}


def namespace_hold_objects(identity: str, incident: str) -> list[dict[str, Any]]:
    """The policy refusing every DELETE of a tenant namespace (Capsule's label, or a Tenant owner) by
    anyone but `identity`, and its binding."""
    meta = {"labels": dict(HOLD_LABELS), "annotations": {HOLD_INCIDENT_ANNOTATION: incident}}
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": HOLD_POLICY, **meta},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": NAMESPACE_DELETES,
            "matchConditions": [{"name": "not-responder",
                                 "expression": f"request.userInfo.username != {json.dumps(identity)}"}],
            "validations": [{"expression": f"!({tenant_owned_expression()})", "reason": "Forbidden",
                             "message": f"tenant namespaces are held by responder's circuit breaker during incident "
                                        f"{incident}: no deletes until recovery ends (or `responder undo`)"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": HOLD_BINDING, **meta},
        "spec": {"policyName": HOLD_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def armed_hold_objects() -> list[dict[str, Any]]:
    """The armed hold `responder protect` installs ahead of an incident: the same refusal, keyed to a
    parameter object. A new policy or binding is enforced only at the API server's next policy refresh
    (up to ~1 s, `responder bench hold`); a parameter object is read at each evaluation, so marking it
    makes an installed policy hold within milliseconds. Unmarked, the policy refuses nothing; without
    the parameter (`parameterNotFoundAction: Allow`) neither. The breaker's mark names the incident and
    the identity let through (match conditions cannot read parameters, so the validation checks it).

    The parameter is a NamespaceHold, a kind of responder's own (hold_param_crd), not a ConfigMap: each API
    server keeps an informer over every object of a policy's parameter kind, and over every ConfigMap of a
    large cluster that is a lot of memory. `failurePolicy: Ignore`, because this policy sits there between
    incidents: if its parameter kind were gone (its CRD deleted), Fail would refuse every namespace DELETE
    in the cluster; Ignore leaves that case to the incident's own hold (Fail), and doctor says it is not armed."""
    annotations = "params.metadata.annotations"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": ARMED_HOLD_POLICY, "labels": dict(HOLD_LABELS)},
        "spec": {
            "failurePolicy": "Ignore",
            "paramKind": {"apiVersion": HOLD_PARAM_API_VERSION, "kind": HOLD_PARAM_KIND},
            "matchConstraints": NAMESPACE_DELETES,
            "variables": [
                {"name": "held", "expression": f"has({annotations}) && "
                                               f"{json.dumps(HOLD_INCIDENT_ANNOTATION)} in {annotations}"},
                {"name": "responder", "expression": f"has({annotations}) && "
                                                    f"{json.dumps(HOLD_IDENTITY_ANNOTATION)} in {annotations} && "
                                                    f"request.userInfo.username == "
                                                    f"{annotations}[{json.dumps(HOLD_IDENTITY_ANNOTATION)}]"},
            ],
            "validations": [{
                "expression": f"!variables.held || variables.responder || !({tenant_owned_expression()})",
                "reason": "Forbidden",
                "message": "tenant namespaces are held by responder's circuit breaker: no deletes until recovery ends "
                           "(or `responder undo`)",
                "messageExpression": "\"tenant namespaces are held by responder's circuit breaker during incident \" + "
                                     f"{annotations}[{json.dumps(HOLD_INCIDENT_ANNOTATION)}] + "
                                     "\": no deletes until recovery ends (or `responder undo`)\"",
            }],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": ARMED_HOLD_BINDING, "labels": dict(HOLD_LABELS)},
        "spec": {"policyName": ARMED_HOLD_POLICY, "validationActions": ["Deny"],
                 "paramRef": {"name": HOLD_PARAM, "parameterNotFoundAction": "Allow"}},
    }
    param = {"apiVersion": HOLD_PARAM_API_VERSION, "kind": HOLD_PARAM_KIND,
             "metadata": {"name": HOLD_PARAM, "labels": dict(HOLD_LABELS)},
             "spec": {"about": "responder's armed namespace hold: the breaker marks this object with the incident "
                               f"({HOLD_INCIDENT_ANNOTATION}) and its identity; the mark makes policy "
                               f"{ARMED_HOLD_POLICY} refuse tenant namespace deletes"}}
    return [policy, binding, param]


def hold_param_crd() -> dict[str, Any]:
    """The CustomResourceDefinition of the armed hold's parameter: cluster-scoped, one object expected,
    the mark in its annotations (a `spec.about` says what it is for)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": HOLD_PARAM_CRD, "labels": dict(HOLD_LABELS)},
        "spec": {
            "group": HOLD_PARAM_GROUP, "scope": "Cluster",
            "names": {"plural": HOLD_PARAM_RESOURCE, "singular": HOLD_PARAM_KIND.lower(), "kind": HOLD_PARAM_KIND,
                      "listKind": f"{HOLD_PARAM_KIND}List"},
            "versions": [{"name": HOLD_PARAM_VERSION, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {
                              "type": "object",
                              "description": "responder's armed namespace hold: its parameter object, marked by "
                                             "the breaker (annotations) during an incident",
                              "properties": {"spec": {"type": "object",
                                                      "properties": {"about": {"type": "string"}}}}}}}],
        },
    }


def armed_hold_in_place(objects: dict[str, dict[str, Any] | None]) -> str | None:
    """Pure: why the armed hold would not hold (None: armed). `objects` by kind, None = absent."""
    policy, binding, param = (objects.get(k) for k in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                                                       HOLD_PARAM_KIND))
    want_policy, want_binding, _ = armed_hold_objects()
    if policy is None or binding is None or param is None:
        missing = [k for k, v in (("policy", policy), ("binding", binding), (f"parameter {HOLD_PARAM_KIND}", param)) if v is None]
        return "not installed (" + ", ".join(missing) + " missing): run `responder protect`"
    if any((policy.get("spec") or {}).get(key) != want_policy["spec"][key]
           for key in ("validations", "paramKind", "failurePolicy")):
        return "the policy differs from this version's: run `responder protect` again"
    spec = binding.get("spec") or {}
    if spec.get("policyName") != ARMED_HOLD_POLICY or "Deny" not in (spec.get("validationActions") or []) \
            or spec.get("paramRef") != want_binding["spec"]["paramRef"]:
        return "the binding differs from this version's: run `responder protect` again"
    return None


async def read_armed_hold(client: KubeClient) -> str | None:
    """armed_hold_in_place() for the cluster; a refusal to read counts as not armed."""
    try:
        return armed_hold_in_place({kind: await client.get_or_none(path) for kind, path in ARMED_HOLD_PATHS.items()})
    except ApiError as exc:
        return f"cannot read it ({exc.status} {exc.reason})"


async def hold_namespaces(ctx: StepContext) -> str:
    """Put the namespace hold in place (journaled, undoable): mark the armed hold's parameter object if
    `responder protect` armed it (holds within milliseconds), and create this incident's own policy and
    binding either way (holds after the API server's next policy refresh, whatever happened to the armed
    one since the preflight read it). 'held', 'dry-run' or why not. Never raises for a refusal: the
    breaker goes on without it."""
    marking = asyncio.create_task(_mark_armed_hold(ctx)) if ctx.options.hold_armed else None
    try:
        created = await _create_incident_hold(ctx)
    except BaseException:
        # Not a refusal (those come back as strings): no write of this step may outlive it.
        if marking is not None:
            marking.cancel()
            await asyncio.gather(marking, return_exceptions=True)
        raise
    marked = await marking if marking is not None else "not armed"
    if created in ("held", "dry-run") or marked in ("held", "dry-run"):
        return "dry-run" if ctx.dry_run else "held"
    ctx.log(f"NO NAMESPACE HOLD ({created}; armed hold: {marked}): Capsule's webhooks are the only breaker, and a "
            "Capsule >= 0.13 still shutting down can delete namespaces until its process stops", level="warning")
    return f"unavailable: {created}"


def armed_hold_mark(ctx: StepContext) -> WriteRequest | None:
    """The write marking the armed hold's parameter object with this incident and responder's identity;
    None when the hold is not armed here or this incident marked it already."""
    target = f"{HOLD_PARAM_KIND}/{HOLD_PARAM}"
    if not ctx.options.hold_armed or ctx.done_before(HOLD_ACTION, target):
        return None
    mark = {"metadata": {"annotations": {HOLD_INCIDENT_ANNOTATION: ctx.journal.incident_id,
                                         HOLD_IDENTITY_ANNOTATION: ctx.options.identity}}}
    return WriteRequest(HOLD_ACTION, target, "PATCH", HOLD_PARAM_PATH, body=mark, content_type=MERGE_PATCH,
                        undo={"op": "release-hold", "path": HOLD_PARAM_PATH})


async def _mark_armed_hold(ctx: StepContext) -> str:
    """Mark the armed hold's parameter object (unless the breaker's first writes did)."""
    request = armed_hold_mark(ctx)
    if request is None:
        return "held"
    try:
        await ctx.write(request.action, request.target, request.method, request.path, body=request.body,
                        content_type=request.content_type, undo=request.undo)
    except ApiError as exc:
        return f"{exc.status} {exc.api_message[:200]}"
    return "dry-run" if ctx.dry_run else "held"


async def _create_incident_hold(ctx: StepContext) -> str:
    """Create this incident's policy and binding. A hold already there (409) is replaced by this
    incident's, guarded by its resourceVersion: it is this incident's own when a crash came between the
    POST and its journaled answer (the PUT then journals it, so recovery and undo know it), or one an
    earlier incident left behind (said loudly; this incident's recovery removes it with its own)."""
    for obj in namespace_hold_objects(ctx.options.identity, ctx.journal.incident_id):
        kind, name = obj["kind"], obj["metadata"]["name"]
        target = f"{kind}/{name}"
        if ctx.done_before(HOLD_ACTION, target):
            continue
        try:
            try:
                await ctx.write("hold-namespaces", target, "POST", HOLD_PATHS[kind], body=obj,
                                undo={"op": "release-hold", "path": HOLD_OBJECT_PATHS[kind]})
            except ApiError as exc:
                if exc.status != 409:
                    raise
                existing = await ctx.client.get(HOLD_OBJECT_PATHS[kind])
                owner = hold_incident(existing)
                if owner != ctx.journal.incident_id:
                    ctx.log(f"a namespace hold left by incident {owner or '(unknown)'} was still in place: "
                            f"{target} now belongs to this incident, and its recovery removes it", level="warning")
                replacement = {**obj, "metadata": {**obj["metadata"],
                                                   "resourceVersion": existing["metadata"]["resourceVersion"]}}
                await ctx.write("hold-namespaces", target, "PUT", HOLD_OBJECT_PATHS[kind], body=replacement,
                                undo={"op": "release-hold", "path": HOLD_OBJECT_PATHS[kind]})
        except ApiError as exc:
            return ("the API server serves no ValidatingAdmissionPolicy (Kubernetes < 1.30)" if exc.status == 404
                    else f"{exc.status} {exc.api_message[:200]}")
    return "dry-run" if ctx.dry_run else "held"


def hold_incident(obj: dict[str, Any]) -> str | None:
    """The incident a hold object belongs to (its annotation; on the armed hold's parameter, its mark)."""
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(HOLD_INCIDENT_ANNOTATION)


async def holds_in_place(client: KubeClient) -> dict[str, dict[str, Any]]:
    """The hold objects holding now, by kind: the truth recovery, verify and undo go by (a journal can
    miss one: a crash between a write and its journaled answer). The armed hold's parameter object
    counts only while marked."""
    found = {}
    for kind, path in HOLD_OBJECT_PATHS.items():
        try:
            obj = await client.get_or_none(path)
        except ApiError as exc:
            if kind == HOLD_PARAM_KIND and exc.status == 403:  # not armed here, and responder may not read it
                continue
            raise
        if obj is not None and (kind != HOLD_PARAM_KIND or hold_incident(obj)):
            found[kind] = obj
    return found


async def holds_of(client: KubeClient, incident: str) -> dict[str, dict[str, Any]]:
    """The hold objects in the cluster that belong to `incident`, by kind: those of `holds_in_place`
    whose `hold_incident` it is."""
    return {kind: obj for kind, obj in (await holds_in_place(client)).items() if hold_incident(obj) == incident}


def release_request(kind: str, obj: dict[str, Any]) -> tuple[str, str, Any, str]:
    """(method, path, body, content type) lifting one hold object: the incident's policy and binding are
    deleted (guarded by UID); the armed hold's parameter is unmarked, guarded by a `test` that the mark
    is still this incident's, and stays, armed for the next incident. A guard that fails (409, 422)
    means the object changed hands meanwhile."""
    path = HOLD_OBJECT_PATHS[kind]
    if kind == HOLD_PARAM_KIND:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        ops: list[dict[str, Any]] = [{"op": "test", "path": _annotation_path(HOLD_INCIDENT_ANNOTATION),
                                      "value": annotations.get(HOLD_INCIDENT_ANNOTATION)}]
        ops += [{"op": "remove", "path": _annotation_path(key)}
                for key in (HOLD_INCIDENT_ANNOTATION, HOLD_IDENTITY_ANNOTATION) if key in annotations]
        return "PATCH", path, ops, JSON_PATCH
    return ("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": obj["metadata"]["uid"]}},
            "application/json")


def _annotation_path(key: str) -> str:
    """JSON pointer to an annotation (RFC 6901: `~` and `/` escaped)."""
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


def hold_intents(ctx: StepContext) -> list[dict[str, Any]]:
    """The hold's journaled writes not marked removed yet (undo plan entries)."""
    return [e for e in ctx.journal.undo_plan() if e.get("action") == HOLD_ACTION]


async def release_hold(ctx: StepContext) -> list[str]:
    """Lift the hold objects in the cluster that belong to this incident (journaled). A hold of another
    incident is left and said. Returns what was lifted."""
    removed = []
    for kind, obj in (await holds_in_place(ctx.client)).items():
        target = f"{kind}/{obj['metadata']['name']}"
        owner = hold_incident(obj)
        if owner != ctx.journal.incident_id:
            ctx.log(f"{target} belongs to incident {owner or '(unknown)'}, not this one: left in place "
                    f"(`responder undo` that incident's journal removes it)", level="warning")
            continue
        method, path, body, content_type = release_request(kind, obj)
        try:
            await ctx.write("release-hold", target, method, path, body=body, content_type=content_type)
        except ApiError as exc:
            if exc.status not in (404, 409, 422):  # gone, or changed hands meanwhile (release_request)
                raise
            continue
        removed.append(target)
    for entry in hold_intents(ctx):  # none of this incident's hold is left in the cluster
        ctx.journal.mark_undone(entry["intent"])
    return removed


async def hold_left_in_place(client: KubeClient, incident: str) -> list[str]:
    """What verify says of the hold: each object still holding, with its incident."""
    return [f"{kind}/{obj['metadata']['name']} (incident {hold_incident(obj) or 'unknown'}"
            + (", this one)" if hold_incident(obj) == incident else ")")
            for kind, obj in (await holds_in_place(client)).items()]


def webhook_path(kind: str, name: str) -> str:
    return f"/apis/admissionregistration.k8s.io/v1/{ADMISSION_PREFIX[kind]}/{name}"


def _rule_matches(rule: dict[str, Any], group: str, resource: str, operation: str) -> bool:
    groups = rule.get("apiGroups") or []
    resources = rule.get("resources") or []
    operations = rule.get("operations") or []
    return ((group in groups or "*" in groups) and (resource in resources or "*" in resources or "*/*" in resources)
            and (operation in operations or "*" in operations))


def guards_namespace_delete(webhook: dict[str, Any]) -> bool:
    return any(_rule_matches(r, "", "namespaces", "DELETE") for r in webhook.get("rules") or [])


def fails_closed(webhook: dict[str, Any]) -> bool:
    return webhook.get("failurePolicy", "Fail") == "Fail"


def exemption_patch(obj: dict[str, Any], identity: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """JSON patch adding the exemption to every fail-closed webhook of one configuration, and the
    original matchConditions per webhook (the undo record)."""
    ops: list[dict[str, Any]] = []
    originals: dict[str, Any] = {}
    condition = exemption_condition(identity)
    for i, hook in enumerate(obj.get("webhooks") or []):
        if not fails_closed(hook):
            continue
        existing = hook.get("matchConditions")
        if any(c.get("name") == EXEMPTION_NAME for c in existing or []):
            continue
        originals[hook["name"]] = existing
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
        if existing is None:
            ops.append({"op": "add", "path": f"/webhooks/{i}/matchConditions", "value": [condition]})
        else:
            ops.append({"op": "add", "path": f"/webhooks/{i}/matchConditions/-", "value": condition})
    return ops, originals


def restore_match_conditions_patch(current: dict[str, Any], originals: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON patch putting each named webhook's matchConditions back as recorded (None: had none)."""
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(current.get("webhooks") or []):
        if hook["name"] not in originals:
            continue
        original = originals[hook["name"]]
        if original is None and "matchConditions" not in hook or original == hook.get("matchConditions"):
            continue
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
        if original is None:
            ops.append({"op": "remove", "path": f"/webhooks/{i}/matchConditions"})
        else:
            ops.append({"op": "add", "path": f"/webhooks/{i}/matchConditions", "value": original})
    return ops


def something_to_save(view: triage.ClusterView) -> str | None:
    """What the breaker would save, in words (the first found), or None when nothing alive is at risk.

    Worth an outage only for: a live namespace with a dying or dangling Tenant reference (the garbage
    collector or Capsule deletes it), a protected one too (responder leaves it alone, the garbage
    collector does not), or a tenant namespace Terminating while its Tenant is dying or gone (its
    content is still there; frozen, it can be backed up first). Found after the fact, with every tenant
    namespace gone, the breaker saves nothing and would only refuse every namespace write in the cluster.
    Stops at the first find: this runs before the breaker's first write."""
    for name, ns in view.namespaces.items():
        refs = triage.tenant_refs(ns)
        meta = ns.get("metadata") or {}
        if name in view.protected:
            if not meta.get("deletionTimestamp") and any(triage.owner_status(r, view) != triage.ALIVE for r in refs):
                return f"protected namespace {name} carries a dying or dangling Tenant reference"
            continue
        if meta.get("deletionTimestamp"):
            tenant = (refs[0].get("name") if refs else None) or (meta.get("labels") or {}).get(triage.TENANT_LABEL)
            if tenant and not _tenant_alive(tenant, view):
                return f"tenant namespace {name} is Terminating while its Tenant {tenant} is dying or gone"
            continue
        if any(triage.owner_status(r, view) != triage.ALIVE for r in refs):
            return f"namespace {name} carries a dying or dangling Tenant reference"
    return None


async def fresh_capsule_hooks(client: KubeClient) -> list[tuple[str, dict[str, Any]]]:
    """Capsule's webhook configurations read now, not from the watch: the controller may have just
    rewritten them."""
    from responder.incident.observe import WEBHOOK_STREAMS, capsule_webhooks_in

    listings = {name: (await client.get(path)).get("items") or [] for name, _, path in WEBHOOK_STREAMS}
    return capsule_webhooks_in(lambda name: listings[name])


def breaker_tripped(records: list[dict[str, Any]]) -> bool:
    """This incident's journal holds a (not dry-run) scale of Capsule to 0: Capsule must come back."""
    return any(r.get("kind") == "intent" and r.get("action") == "scale-capsule" and not r.get("dry_run")
               for r in records)


def _tenant_alive(name: str, view: triage.ClusterView) -> bool:
    tenant = view.tenants.get(name)
    return (tenant is not None and not (tenant.get("metadata") or {}).get("deletionTimestamp")
            and view.crd_present and not view.crd_deleting)


class TripBreaker:
    spec = ActionSpec(
        name="trip-breaker",
        description="Scale the Capsule controller to 0 and exempt responder in Capsule's fail-closed webhooks.",
        params={"capsuleNamespace": ParamSpec(str, default="capsule-system"),
                "capsuleDeployment": ParamSpec(str, default="capsule-controller-manager"),
                "namespaceHold": ParamSpec(bool, default=True,
                                           description="also refuse tenant namespace DELETEs in the API server "
                                                       "(a ValidatingAdmissionPolicy) until recovery ends")},
    )

    async def run(self, ctx: StepContext) -> StepOutcome:
        target = capsule_target(ctx)
        if ctx.earlier_intent("scale-capsule", target.deployment) is None:
            at_stake = something_to_save(ctx.observer.view(protected=ctx.options.protected))
            if at_stake is None:
                ctx.log("breaker not tripped: no live namespace is at risk and no tenant namespace is Terminating "
                        "with its Tenant gone; Capsule keeps running", level="warning")
                return StepOutcome("finished", "breaker not tripped: nothing alive to save",
                                   {"breaker": NOT_NEEDED})
        return await self.trip(ctx)

    async def trip(self, ctx: StepContext) -> StepOutcome:
        """Scale Capsule to 0, hold tenant namespaces, exempt responder: whatever is at stake (recovery
        trips it to restore while Capsule's webhooks would refuse the restore)."""
        target = capsule_target(ctx)
        hooks = ctx.observer.capsule_webhooks()
        guarding = [(kind, obj, h) for kind, obj in hooks for h in obj.get("webhooks") or []
                    if guards_namespace_delete(h) and fails_closed(h)]
        data: dict[str, Any] = {"webhooks": [f"{k}/{o['metadata']['name']}" for k, o in hooks]}
        # 1. Scale to 0 (first write). Keep the replicas from before the incident for undo.
        deployment = next(iter(ctx.observer.objects("deployment")), None)
        earlier = ctx.earlier_intent("scale-capsule", target.deployment)
        if earlier is not None and earlier.get("undo"):
            original = earlier["undo"]["replicas"]
        else:
            original = int(((deployment or {}).get("spec") or {}).get("replicas", 1)) if deployment else None
            if not original:
                original = ctx.observer.shadow.capsule_replicas or 1
        holding = bool(ctx.params.get("namespaceHold", True))
        # No Deployment (watched, or answered 404): Capsule was uninstalled - webhooks, Deployment and CRD
        # deleted together, as `helm uninstall` or an Argo CD prune does. Nothing to scale, and not a failure.
        uninstalled = deployment is None and earlier is None
        first = []
        if not uninstalled and not ctx.done_before("scale-capsule", target.deployment):
            first.append(WriteRequest("scale-capsule", target.deployment, "PATCH", f"{target.deployment_path}/scale",
                                      body={"spec": {"replicas": 0}}, content_type=MERGE_PATCH,
                                      undo={"op": "scale", "path": f"{target.deployment_path}/scale",
                                            "replicas": original}))
        mark = armed_hold_mark(ctx) if holding else None
        if mark is not None:
            first.append(mark)
        # The armed hold's mark goes out with it, one fsync for both intents: the mark refuses namespace
        # deletes within milliseconds, while the Capsule process is still shutting down (0.14 deletes a
        # deleted Tenant's namespaces itself). Over the watches' connection: the bulk pool's first requests
        # would wait for TLS handshakes.
        answers = await ctx.write_many(first, in_flight=len(first), bulk=False) if first else []
        # The incident's own policy and binding (and the mark, had it failed above) right behind.
        hold = asyncio.create_task(hold_namespaces(ctx)) if holding else None
        try:
            for request, answer in zip(first, answers):
                if request.action == "scale-capsule" and isinstance(answer, NotFound):
                    uninstalled = True
                elif request.action == "scale-capsule" and isinstance(answer, ApiError):
                    raise answer
        finally:
            data["hold"] = await hold if hold is not None else "disabled"
        data["original_replicas"] = original
        if uninstalled:
            if guarding:  # webhooks left behind refuse namespace writes with no backend: responder's too
                await self.ensure_exemption(ctx, hooks)
            held = data["hold"] == "held"
            ctx.log(f"CAPSULE UNINSTALLED: its Deployment {target.namespace}/{target.deployment} is not there "
                    "(deleted with its webhooks and CRD, as `helm uninstall` or a prune does; or "
                    "--capsule-deployment names another): nothing to scale. "
                    + ("The namespace hold is what holds: it refuses deletes of tenant namespaces in the API "
                       "server; detach races the garbage collector." if held else
                       "No namespace hold either: containment relies on detach speed against the garbage "
                       "collector."), level="warning")
            data["breaker"] = "capsule-uninstalled"
            return StepOutcome("finished", "Capsule uninstalled: nothing to scale; "
                                           + ("the namespace hold holds" if held else "relying on detach speed"), data)
        if not guarding:
            # Still worth scaling to 0: it stops Capsule >= 0.13 deleting the namespaces itself. Its webhooks
            # that still fail closed (those guarding namespace and Tenant UPDATEs: Capsule 0.14's
            # namespaces.mutating.projectcapsule.dev among them) refuse every write once the controller is
            # down, responder's detach patches and finalizer releases included: exempt responder there too.
            await self.ensure_exemption(ctx, hooks)
            held = data["hold"] == "held"
            ctx.log("BREAKER UNAVAILABLE: no Capsule webhook refuses namespace DELETEs when the controller is down "
                    "(no such webhook, or failurePolicy Ignore). Capsule is scaled to 0 and responder exempted in its "
                    "webhooks that still fail closed; "
                    + ("the namespace hold refuses deletes of tenant namespaces in the API server, and detach "
                       "races the garbage collector." if held else
                       "containment relies on detach speed against the garbage collector."), level="warning")
            data["breaker"] = "unavailable"
            return StepOutcome("finished", f"breaker unavailable: Capsule scaled to 0 (was {original}); "
                                           + ("namespace hold in place" if held else "relying on speed"), data)

        # 2. Exempt responder (and only responder) in every fail-closed Capsule webhook.
        await self.ensure_exemption(ctx, hooks)

        if ctx.dry_run:
            data["breaker"] = "dry-run"
            return StepOutcome("finished", "dry run: breaker writes sent with dryRun=All; nothing changed", data)
        # Verification is its own step (verify-breaker), after detach: detaching must not wait for the
        # controller to finish shutting down.
        data["breaker"] = "tripped"
        hold = "namespace hold in place" if data["hold"] == "held" else f"namespace hold {data['hold']}"
        return StepOutcome("finished", f"Capsule scaled to 0 (was {original}); responder exempted; {hold}", data)

    async def ensure_exemption(self, ctx: StepContext, hooks: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, obj in hooks:
            name = obj["metadata"]["name"]
            target = f"{kind}/{name}"
            ops, originals = exemption_patch(obj, ctx.options.identity)
            if not ops:
                continue
            earlier = ctx.earlier_intent("exempt-responder", target)
            undo_originals = (earlier or {}).get("undo", {}).get("webhooks") if earlier and earlier.get("undo") else originals
            try:
                await ctx.write("exempt-responder", target, "PATCH", webhook_path(kind, name), body=ops,
                                content_type=JSON_PATCH,
                                undo={"op": "webhook-match-conditions", "kind": kind, "name": name,
                                      "path": webhook_path(kind, name), "webhooks": undo_originals})
            except NotFound:
                continue  # deleted meanwhile (Capsule being uninstalled): it refuses nothing any more
            except ApiError as exc:
                if exc.status in (409, 422):  # changed under us (e.g. the controller reconciled): read again
                    fresh = await ctx.client.get(webhook_path(kind, name))
                    ops, _ = exemption_patch(fresh, ctx.options.identity)
                    if ops:
                        await ctx.write("exempt-responder-retry", target, "PATCH", webhook_path(kind, name),
                                        body=ops, content_type=JSON_PATCH,
                                        undo={"op": "webhook-match-conditions", "kind": kind, "name": name,
                                              "path": webhook_path(kind, name), "webhooks": undo_originals})
                else:
                    raise


class VerifyBreaker:
    spec = ActionSpec(
        name="verify-breaker",
        description="Prove the breaker holds: a dry-run namespace DELETE by responder must be refused by Capsule's webhook.",
        params={"verifyTimeout": ParamSpec((int, float), default=30, description="seconds to wait for the refusal")},
    )

    async def run(self, ctx: StepContext) -> StepOutcome:
        hooks = ctx.observer.capsule_webhooks()
        if not ctx.observer.objects("deployment"):
            return StepOutcome("finished", "Capsule uninstalled (no Deployment): nothing to verify; the namespace "
                               "hold is what holds", {"breaker": "capsule-uninstalled"})
        if not any(guards_namespace_delete(h) and fails_closed(h) for _, o in hooks for h in o.get("webhooks") or []):
            if not ctx.dry_run and breaker_tripped(ctx.journal.records()):
                # Nothing refuses namespace DELETEs, but the webhooks that still fail closed refuse responder's
                # own writes unless it is exempted, and the controller (0.13+) may have rewritten its
                # configuration on its way down: exempt again where the exemption is missing.
                await TripBreaker().ensure_exemption(ctx, await fresh_capsule_hooks(ctx.client))
            return StepOutcome("finished", "breaker unavailable: nothing to verify", {"breaker": "unavailable"})
        if ctx.dry_run:
            return StepOutcome("finished", "dry run: the breaker was not tripped", {"breaker": "dry-run"})
        if not breaker_tripped(ctx.journal.records()):
            return StepOutcome("finished", "breaker not tripped: nothing to verify", {"breaker": NOT_NEEDED})
        verdict = await self.verify(ctx, float(ctx.params.get("verifyTimeout", 30)))
        if verdict != "verified":
            ctx.log(f"BREAKER NOT VERIFIED: {verdict}. Containment relies on speed.", level="warning")
            return StepOutcome("finished", f"breaker not verified ({verdict})", {"breaker": verdict})
        return StepOutcome("finished", f"namespace deletes refused for everyone but {ctx.options.identity}",
                           {"breaker": "verified"})

    async def verify(self, ctx: StepContext, timeout: float) -> str:
        probe = next((n["metadata"]["name"] for n in ctx.observer.objects("namespaces")
                      if n["metadata"]["name"] not in ctx.options.protected
                      and not n["metadata"].get("deletionTimestamp")), None)
        if probe is None:
            return "no namespace to probe"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                await ctx.client.delete(f"/api/v1/namespaces/{probe}", dry_run=True)
                last = "a dry-run namespace DELETE was still admitted (Capsule still running?)"
            except ApiError as exc:
                if SELF_HOLD_POLICY in exc.api_message:
                    # The self-arming hold (`responder protect`) refuses first, responder too while the Tenant
                    # CRD is absent: every tenant namespace DELETE is refused in the API server itself.
                    ctx.journal.record("breaker-verified", step=ctx.step.id, probe=probe, by="self-arming hold",
                                       refusal=exc.api_message[:300])
                    return "verified"
                if "failed calling webhook" in exc.api_message:
                    # The controller (0.13+) may have rewritten its configuration before it stopped.
                    await TripBreaker().ensure_exemption(ctx, await fresh_capsule_hooks(ctx.client))
                    ctx.journal.record("breaker-verified", step=ctx.step.id, probe=probe,
                                       refusal=exc.api_message[:300])
                    return "verified"
                last = f"{exc.status} {exc.api_message[:200]}"
            await asyncio.sleep(0.1)
        return f"not refused within {timeout:.0f}s: {last}"
