"""`responder plan`: what responder sees now and what each step would do. Never writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from responder.actions.breaker import fails_closed, guards_namespace_delete, something_to_save
from responder.errors import ApiError
from responder.incident import triage
from responder.recovery import decisions as recovery
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
                    if guarding else f"breaker unavailable (no fail-closed namespace DELETE webhook): scale "
                    f"{session.options.capsule.namespace}/{session.options.capsule.deployment} from {replicas} to 0; "
                    f"exempt {session.identity} in Capsule's webhooks that still fail closed; rely on speed")
            what += ("; mark the armed namespace hold" if session.hold_not_armed is None
                     else f"; create the namespace hold (not armed: {session.hold_not_armed})")
            if something_to_save(view) is None:
                what = ("none: nothing alive to save (no live namespace at risk, none Terminating with its Tenant "
                        f"gone); once something is: {what}")
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
        "conflicts": protected_conflicts(view),
        "namespaces": [{"name": r.name, "tenant": r.tenant, "state": r.state.value, "reason": r.reason}
                       for r in rows if r.state != triage.NsState.SAFE or r.tenant],
        "steps": steps,
    }


def protected_conflicts(view: triage.ClusterView) -> list[dict[str, str]]:
    """Protected namespaces that carry a Tenant ownerReference: responder never writes them, so it cannot
    detach them, and the garbage collector deletes them once that Tenant is gone or recreated."""
    return [{"namespace": name, "tenants": ", ".join(sorted({r.get("name") or "?" for r in triage.tenant_refs(ns)})),
             "why": "protected from responder, not from the garbage collector: remove its Tenant ownerReference "
                    "by hand, or stop protecting it"}
            for name, ns in sorted(view.namespaces.items()) if name in view.protected and triage.tenant_refs(ns)]


async def recovery_evidence(session: Session) -> dict[str, Any]:
    """Where what existed before the incident comes from, and what that says is lost. Reads only: the
    contents of a backup take a Velero DownloadRequest (a write), so `responder run` reads them, not plan."""
    view = session.view()
    witnessed = {ns: t for ns, t in session.known_before.items() if ns not in session.protected}
    live = dict(view.namespaces)
    lost = recovery.lost_namespaces(witnessed, live)
    surviving = sorted(name for name, ns in live.items() if name not in session.protected
                       and not ns["metadata"].get("deletionTimestamp")
                       and (triage.tenant_refs(ns) or (ns["metadata"].get("labels") or {}).get(triage.TENANT_LABEL)))
    base = f"/apis/velero.io/v1/namespaces/{session.options.velero_namespace}"
    try:
        backups = (await session.client.get(f"{base}/backups")).get("items") or []
        locations = (await session.client.get(f"{base}/backupstoragelocations")).get("items") or []
    except ApiError as exc:
        if exc.status != 404:
            raise
        backups, locations = [], []
    # responder's own rescue backups hold frozen namespaces only: never a record of what existed.
    backups = [b for b in backups if ((b.get("metadata") or {}).get("labels") or {}).get(
        "app.kubernetes.io/managed-by") != "responder"]
    choice = recovery.choose_backup(backups, lost, now=dt.datetime.now(dt.timezone.utc),
                                    storage_phases={b["metadata"]["name"]: (b.get("status") or {}).get("phase", "")
                                                    for b in locations})
    out: dict[str, Any] = {"backup": choice.backup, "rejected": choice.to_json()["rejected"],
                           "no_backup_reason": choice.reason or None, "surviving": len(surviving)}
    if session.tenant_record is not None:
        record = session.tenant_record
        out["record"] = {"written": record.written, "writer": record.writer, **record.counts()}
    if witnessed:
        out.update(source=session.evidence_source + (f", then backup {choice.backup}" if choice.backup else ""),
                   known=len(witnessed), lost=sorted(lost),
                   lost_percent=round(100 * len(lost) / len(witnessed), 1))
    elif choice.backup:
        # responder saw nothing before: the backup is the record. Every tenant namespace it holds that
        # is not alive now is lost; with none alive, that is all of them.
        out.update(source=f"backup {choice.backup}", known=None, lost=None,
                   lost_percent=100.0 if not surviving else None,
                   note=("no tenant namespace is left: every one the backup holds is lost" if not surviving else
                         f"{len(surviving)} tenant namespaces are alive; which others the backup holds is read "
                         "when `responder run` starts"))
    else:
        out.update(source=None, known=0, lost=[], lost_percent=None,
                   note="neither responder's shadow copy, nor the guard's record, nor a usable Velero backup says "
                        "what existed")
    return out


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
    for c in plan.get("conflicts") or []:
        print(f"CONFLICT: protected namespace {c['namespace']} has a Tenant ownerReference ({c['tenants']}): {c['why']}")
    rec = plan.get("recovery")
    if rec:
        lost = rec.get("lost_percent")
        print(f"what existed: from the {rec.get('source') or '(no evidence)'}; lost: "
              + (f"{lost} %" if lost is not None else "not known yet")
              + (f" ({len(rec['lost'])} namespaces)" if isinstance(rec.get("lost"), list) else "")
              + (f"; {rec['note']}" if rec.get("note") else ""))
    print("plan:")
    for s in plan["steps"]:
        print(f"  {s['id']:<18} {s['would']}")
