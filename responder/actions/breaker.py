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
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from responder import triage
from responder.actions.common import capsule_target
from responder.cluster.client import JSON_PATCH, MERGE_PATCH
from responder.engine import StepContext, StepOutcome
from responder.errors import ApiError
from responder.manifests import HOLD_BINDING, HOLD_POLICY
from responder.runbook.schema import ActionSpec, ParamSpec

EXEMPTION_NAME = "responder-breaker-exemption"
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
ADMISSION_V1 = "/apis/admissionregistration.k8s.io/v1"
HOLD_PATHS = {"ValidatingAdmissionPolicy": f"{ADMISSION_V1}/validatingadmissionpolicies",
              "ValidatingAdmissionPolicyBinding": f"{ADMISSION_V1}/validatingadmissionpolicybindings"}
HOLD_OBJECT_PATHS = {"ValidatingAdmissionPolicy": f"{HOLD_PATHS['ValidatingAdmissionPolicy']}/{HOLD_POLICY}",
                     "ValidatingAdmissionPolicyBinding":
                         f"{HOLD_PATHS['ValidatingAdmissionPolicyBinding']}/{HOLD_BINDING}"}


def namespace_hold_objects(identity: str, incident: str) -> list[dict[str, Any]]:
    """The policy refusing every DELETE of a tenant namespace (Capsule's label, or a Tenant owner) by
    anyone but `identity`, and its binding."""
    label = json.dumps(triage.TENANT_LABEL)
    tenant_owned = (f"(has(oldObject.metadata.labels) && {label} in oldObject.metadata.labels) || "
                    "(has(oldObject.metadata.ownerReferences) && oldObject.metadata.ownerReferences.exists(r, "
                    f"r.kind == {json.dumps(triage.TENANT_KIND)} && "
                    f"r.apiVersion.startsWith({json.dumps(triage.TENANT_GROUP + '/')})))")
    meta = {"labels": {"app.kubernetes.io/name": "responder", "app.kubernetes.io/component": "breaker"},
            "annotations": {HOLD_INCIDENT_ANNOTATION: incident}}
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": HOLD_POLICY, **meta},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["*"], "operations": ["DELETE"],
                                                    "resources": ["namespaces"]}]},
            "matchConditions": [{"name": "not-responder",
                                 "expression": f"request.userInfo.username != {json.dumps(identity)}"}],
            # On DELETE `object` is null; the namespace being deleted is `oldObject`.
            "validations": [{"expression": f"!({tenant_owned})", "reason": "Forbidden",
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


async def hold_namespaces(ctx: StepContext) -> str:
    """Create the namespace hold (journaled, undoable); 'held', 'dry-run' or why not. Never raises for a
    refusal: the breaker goes on without it."""
    for obj in namespace_hold_objects(ctx.options.identity, ctx.journal.incident_id):
        kind, name = obj["kind"], obj["metadata"]["name"]
        target = f"{kind}/{name}"
        if ctx.done_before(HOLD_ACTION, target):
            continue
        try:
            await ctx.write("hold-namespaces", target, "POST", HOLD_PATHS[kind], body=obj,
                            undo={"op": "delete", "path": HOLD_OBJECT_PATHS[kind]})
        except ApiError as exc:
            if exc.status == 409:  # left by an earlier run of this incident (resume): it is the same hold
                continue
            why = ("the API server serves no ValidatingAdmissionPolicy (Kubernetes < 1.30)" if exc.status == 404
                   else f"{exc.status} {exc.api_message[:200]}")
            ctx.log(f"NO NAMESPACE HOLD ({why}): Capsule's webhooks are the only breaker, and a Capsule >= 0.13 "
                    "still shutting down can delete namespaces until its process stops", level="warning")
            return f"unavailable: {why}"
    return "dry-run" if ctx.dry_run else "held"


def hold_intents(ctx: StepContext) -> list[dict[str, Any]]:
    """The hold's persisted creations not removed yet (undo plan entries)."""
    return [e for e in ctx.journal.undo_plan() if e.get("action") == HOLD_ACTION]


async def release_hold(ctx: StepContext) -> list[str]:
    """Delete the namespace hold this incident created (journaled; absent is fine). Returns what was removed."""
    removed = []
    for entry in hold_intents(ctx):
        path = entry["undo"]["path"]
        try:
            await ctx.write("release-hold", entry["target"], "DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise
        ctx.journal.mark_undone(entry["intent"])
        removed.append(entry["target"])
    return removed


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
        # The namespace hold goes out right behind it: it refuses namespace deletes while the Capsule
        # process is still shutting down.
        hold = asyncio.create_task(hold_namespaces(ctx)) if ctx.params.get("namespaceHold", True) else None
        try:
            if not ctx.done_before("scale-capsule", target.deployment):
                await ctx.write("scale-capsule", target.deployment, "PATCH", f"{target.deployment_path}/scale",
                                body={"spec": {"replicas": 0}}, content_type=MERGE_PATCH,
                                undo={"op": "scale", "path": f"{target.deployment_path}/scale", "replicas": original})
        finally:
            data["hold"] = await hold if hold is not None else "disabled"
        data["original_replicas"] = original
        if not guarding:
            # Still worth scaling to 0: it stops Capsule >= 0.13 deleting the namespaces itself, and its
            # webhooks, failing open without it, stop refusing responder's detach patches.
            held = data["hold"] == "held"
            ctx.log("BREAKER UNAVAILABLE: no Capsule webhook refuses namespace DELETEs when the controller is down "
                    "(no such webhook, or failurePolicy Ignore). Capsule is scaled to 0; "
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
        if not any(guards_namespace_delete(h) and fails_closed(h) for _, o in hooks for h in o.get("webhooks") or []):
            return StepOutcome("finished", "breaker unavailable: nothing to verify", {"breaker": "unavailable"})
        if ctx.dry_run:
            return StepOutcome("finished", "dry run: the breaker was not tripped", {"breaker": "dry-run"})
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
                if "failed calling webhook" in exc.api_message:
                    # The controller (0.13+) may have rewritten its configuration before it stopped.
                    await TripBreaker().ensure_exemption(ctx, await self._fresh_hooks(ctx))
                    ctx.journal.record("breaker-verified", step=ctx.step.id, probe=probe,
                                       refusal=exc.api_message[:300])
                    return "verified"
                last = f"{exc.status} {exc.api_message[:200]}"
            await asyncio.sleep(0.1)
        return f"not refused within {timeout:.0f}s: {last}"

    async def _fresh_hooks(self, ctx: StepContext) -> list[tuple[str, dict[str, Any]]]:
        """Read the configurations again (not from the watch): the controller may have just rewritten them."""
        from responder.observe import WEBHOOK_STREAMS, capsule_webhooks_in

        listings = {name: (await ctx.client.get(path)).get("items") or [] for name, _, path in WEBHOOK_STREAMS}
        return capsule_webhooks_in(lambda name: listings[name])
