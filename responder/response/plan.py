"""`responder plan`: what responder sees now and what each step would do. Never writes."""

from __future__ import annotations

from typing import Any

from responder.actions.breaker import fails_closed, guards_namespace_delete
from responder.incident import triage
from responder.response.session import Session


def build_plan(session: Session) -> dict[str, Any]:
    view = session.view()
    rows = triage.triage(view)
    hooks = session.observer.capsule_webhooks()
    guarding = [f"{k}/{o['metadata']['name']}:{h['name']}" for k, o in hooks for h in o.get("webhooks") or []
                if guards_namespace_delete(h) and fails_closed(h)]
    deployment = next(iter(session.observer.objects("deployment")), None)
    replicas = (deployment or {}).get("spec", {}).get("replicas") if deployment else None
    at_risk = [r for r in rows if r.state == triage.NsState.AT_RISK]
    terminating = [r for r in rows if r.state == triage.NsState.TERMINATING]
    held = [t["metadata"]["name"] for t in view.tenants.values() if t["metadata"].get("deletionTimestamp")]
    steps = []
    for step in session.runbook.steps:
        if step.action == "trip-breaker":
            what = (f"scale {session.options.capsule.namespace}/{session.options.capsule.deployment} from {replicas} "
                    f"to 0; exempt {session.identity} in {len(hooks)} Capsule webhook configurations"
                    if guarding else "breaker unavailable (no fail-closed namespace webhook): rely on speed")
            what += ("; mark the armed namespace hold" if session.hold_not_armed is None
                     else f"; create the namespace hold (not armed: {session.hold_not_armed})")
        elif step.action == "detach-namespaces":
            what = f"detach {len(at_risk)} at-risk namespaces"
        elif step.action == "release-tenant-finalizers":
            what = f"release {len(held)} terminating Tenants once their namespaces are detached"
        elif step.action == "handle-terminating":
            what = f"report content of {len(terminating)} Terminating namespaces; finalize the empty ones"
        else:
            what = step.description
        steps.append({"id": step.id, "phase": step.phase, "action": step.action, "would": what})
    return {
        "context": session.access.context, "identity": session.identity,
        "tenant_crd": "deleting" if view.crd_deleting else ("present" if view.crd_present else "absent"),
        "tenants": len(view.tenants), "capsule_replicas": replicas, "breaker_webhooks": guarding,
        "hold_armed": session.hold_not_armed is None,
        "self_hold": session.self_hold.to_json() | {"summary": session.self_hold.summary()},
        "counts": triage.count_by_state(rows),
        "namespaces": [{"name": r.name, "tenant": r.tenant, "state": r.state.value, "reason": r.reason}
                       for r in rows if r.state != triage.NsState.SAFE or r.tenant],
        "steps": steps,
    }


def print_plan_table(plan: dict[str, Any]) -> None:
    print(f"context {plan['context']}  identity {plan['identity']}  Tenant CRD {plan['tenant_crd']}  "
          f"Tenants {plan['tenants']}  Capsule replicas {plan['capsule_replicas']}  "
          f"hold {'armed' if plan.get('hold_armed') else 'not armed'}")
    if plan.get("self_hold"):
        print(f"self-arming hold {plan['self_hold']['summary']}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in plan["counts"].items() if v))
    rows = plan["namespaces"]
    if rows:
        w1 = max(9, *(len(r["name"]) for r in rows))
        w2 = max(6, *(len(r["tenant"] or "") for r in rows))
        print(f"{'NAMESPACE':<{w1}}  {'TENANT':<{w2}}  {'STATE':<11}  REASON")
        for r in rows:
            print(f"{r['name']:<{w1}}  {(r['tenant'] or '-'):<{w2}}  {r['state']:<11}  {r['reason']}")
    print("plan:")
    for s in plan["steps"]:
        print(f"  {s['id']:<18} {s['would']}")
