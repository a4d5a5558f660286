"""`responder undo`: revert, newest first, the reversible writes a journal records."""

from __future__ import annotations

from typing import Any

from responder.actions.breaker import holds_of, release_request, restore_match_conditions_patch
from responder.cluster.client import JSON_PATCH, MERGE_PATCH, KubeClient
from responder.errors import ApiError, Forbidden, NotFound, Unauthorized
from responder.incident.journal import Journal


async def undo_journal(client: KubeClient, journal: Journal) -> dict[str, Any]:
    """Revert, newest first, what the journal says is reversible; each undo is journaled too."""
    undone, skipped, failed, unknown = [], [], [], []
    plan = journal.undo_plan()
    hold_entries = [e for e in plan if _undoes_the_hold(e)]  # by what the cluster holds, below
    # Writes whose answer never came (a crash, a cut connection, a resent write refused by its guard)
    # may have been applied: each is undone only where the cluster shows it was.
    unanswered = [{"intent": r["seq"], "target": r["target"], "undo": r["undo"], "request": r.get("request") or {},
                   "unanswered": True}
                  for r in journal.pending()
                  if r.get("undo") and not r.get("dry_run") and r.get("step") != "undo"
                  and not _undoes_the_hold({"undo": r["undo"]})]
    entries = sorted([e for e in plan if e not in hold_entries] + unanswered, key=lambda e: -e["intent"])
    for entry in entries:
        payload = entry["undo"] or {}
        op = payload.get("op")
        if entry.get("unanswered") and op not in ("scale", "webhook-match-conditions", "reattach"):
            unknown.append({"target": entry["target"], "op": op,
                            "reason": "its answer never came: check by hand whether it was applied"})
            continue
        seq = journal.intent("undo", f"undo-{op}", entry["target"], request={"undo_of": entry["intent"]})
        try:
            if op == "scale":
                reason = await _scale_back(client, payload, entry) if entry.get("unanswered") else None
                if reason:
                    journal.outcome(seq, "skipped", detail=reason)
                    skipped.append({"target": entry["target"], "reason": reason})
                    continue
                await client.patch(payload["path"], {"spec": {"replicas": payload["replicas"]}}, patch_type=MERGE_PATCH)
            elif op == "webhook-match-conditions":
                await _restore_match_conditions(client, payload)
            elif op == "reattach":
                reason = await _reattach(client, payload)
                if reason:
                    journal.outcome(seq, "skipped", detail=reason)
                    skipped.append({"target": entry["target"], "reason": reason})
                    continue
            else:
                journal.outcome(seq, "skipped", detail=f"no undo for {op}")
                skipped.append({"target": entry["target"], "reason": f"no undo for {op}"})
                continue
        except ApiError as exc:
            journal.outcome(seq, "failed", detail=f"{exc.status} {exc.api_message[:200]}")
            if isinstance(exc, (Forbidden, Unauthorized)):
                raise  # every other undo would be refused too: stop, exit 4 with the fix
            failed.append({"target": entry["target"], "error": exc.api_message[:200]})
            continue
        journal.outcome(seq, "ok")
        journal.mark_undone(entry["intent"])
        undone.append({"op": op, "target": entry["target"]})
    # The namespace hold by what the cluster holds, not by the journal: a crash between its POST and the
    # journaled answer leaves it out of the undo plan, and a later incident may have taken it over.
    hold_failed = False
    for kind, obj in (await holds_of(client, journal.incident_id)).items():
        target = f"{kind}/{obj['metadata']['name']}"
        method, path, body, content_type = release_request(kind, obj)
        seq = journal.intent("undo", "undo-release-hold", target, request={"method": method, "path": path})
        try:
            await client.request(method, path, body=body, content_type=content_type)
        except NotFound:
            pass
        except ApiError as exc:
            journal.outcome(seq, "failed", detail=f"{exc.status} {exc.api_message[:200]}")
            if isinstance(exc, (Forbidden, Unauthorized)):
                raise
            failed.append({"target": target, "error": exc.api_message[:200]})
            hold_failed = True
            continue
        journal.outcome(seq, "ok")
        undone.append({"op": "release-hold", "target": target})
    if not hold_failed:
        for entry in hold_entries:
            journal.mark_undone(entry["intent"])
    return {"journal": str(journal.path), "undone": undone, "skipped": skipped, "failed": failed, "unknown": unknown}


async def _scale_back(client: KubeClient, payload: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """For a scale write whose answer never came: None if the cluster shows it applied (undo it),
    else why not."""
    wanted = ((entry["request"].get("body") or {}).get("spec") or {}).get("replicas")
    current = await client.get_or_none(payload["path"])
    if current is None:
        return "the Deployment is gone"
    replicas = (current.get("spec") or {}).get("replicas", 0)  # a Scale at 0 omits it
    if wanted is None or replicas != wanted:
        return f"not applied: replicas are {replicas}, the unanswered write asked for {wanted}"
    return None


def _undoes_the_hold(entry: dict[str, Any]) -> bool:
    op = (entry["undo"] or {}).get("op")
    return op == "release-hold"


async def _restore_match_conditions(client: KubeClient, payload: dict[str, Any]) -> None:
    current = await client.get(payload["path"])
    ops = restore_match_conditions_patch(current, payload["webhooks"])
    if ops:
        await client.patch(payload["path"], ops, patch_type=JSON_PATCH)


async def _reattach(client: KubeClient, payload: dict[str, Any]) -> str | None:
    """Put removed Tenant references back, but only where the Tenant is alive with the same UID:
    a reference to a gone Tenant would make the garbage collector delete the namespace."""
    ns = await client.get_or_none(f"/api/v1/namespaces/{payload['namespace']}")
    if ns is None or ns["metadata"].get("uid") != payload.get("uid"):
        return "namespace gone or replaced"
    refs = []
    carried = {r.get("uid") for r in ns["metadata"].get("ownerReferences") or []}
    for ref in payload.get("ownerReferences") or []:
        if ref.get("uid") in carried:
            continue  # still there (a detach whose answer never came and that was not applied)
        tenant = await client.get_or_none(f"/apis/capsule.clastix.io/v1beta2/tenants/{ref['name']}")
        if tenant is None or tenant["metadata"].get("uid") != ref.get("uid") or tenant["metadata"].get("deletionTimestamp"):
            return f"Tenant {ref['name']} is gone or being deleted: re-attaching would get the namespace deleted"
        refs.append(ref)
    if not refs:
        return "nothing to re-attach"
    existing = ns["metadata"].get("ownerReferences")
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": payload["uid"]}]
    if existing is None:
        ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": refs})
    else:
        ops.extend({"op": "add", "path": "/metadata/ownerReferences/-", "value": r} for r in refs)
    await client.patch(f"/api/v1/namespaces/{payload['namespace']}", ops, patch_type=JSON_PATCH)
    return None
