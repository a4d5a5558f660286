"""`responder report JOURNAL`: a postmortem written from the incident journal alone.

`build_report(records)` is pure: journal records in, a JSON-compatible dict out (what `-o json` prints).
`render_markdown(report)` turns that dict into the Markdown postmortem (the default output).

Robust to older or partial journals: every field is optional, nothing is assumed beyond `seq` and `kind`.
Never prints request or response bodies, nor undo payloads (the journal is redacted already; the report
does not rely on that): only actions, targets, statuses, counts and the journal's own detail strings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from responder.errors import ResponderError
from responder.names import SELF_HOLD_POLICY

COLLAPSE_AFTER = 50  # namespace lists longer than this are cut in Markdown (JSON keeps them whole)
DETAIL_MAX = 300

# Journal action names of the writes that `responder undo` can never revert, and why.
IRREVERSIBLE = {
    "finalize": "the namespace was already Terminating; clearing its spec.finalizers let the API server remove it. "
                "A namespace cannot be brought back (restore it from backup); any content left in it stays "
                "orphaned in etcd until a namespace of the same name is created again.",
    "release-finalizer": "the Tenant was already being deleted; removing Capsule's finalizer let the API server "
                         "remove it. Recreate it from the shadow copy or your GitOps source, not with `undo`.",
}
NO_UNDO_PAYLOAD = "no undo payload was journaled for this write: revert it by hand if needed."
UNDO_STEP = "undo"
CAPSULE_WEBHOOK = "Capsule's webhook"  # what refuses the breaker's probe, unless the journal names another
_CONTENT_LEFT = re.compile(r"^(?P<ns>\S+) is Terminating with content left: (?P<content>.*)$")


# ---- helpers ----------------------------------------------------------------------------------------------------


def _epoch(ts: Any) -> float | None:
    """RFC3339 (the journal's `ts`) or epoch seconds -> epoch seconds; None when unreadable."""
    if isinstance(ts, bool):
        return None
    if isinstance(ts, (int, float)):
        return float(ts)
    if isinstance(ts, str) and ts:
        try:
            value = _dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    return None


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    value = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _family(action: Any) -> str:
    """`exempt-responder-retry` is the same write as `exempt-responder`, tried again."""
    action = str(action or "")
    return action[: -len("-retry")] if action.endswith("-retry") else action


def _text(value: Any, limit: int = DETAIL_MAX) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_undo_write(intent: dict[str, Any]) -> bool:
    return intent.get("step") == UNDO_STEP or str(intent.get("action") or "").startswith("undo-")


# ---- Capsule left at 0 -----------------------------------------------------------------------------------------

def capsule_left_down(records: list[dict[str, Any]]) -> int | None:
    """The replicas Capsule had before the breaker scaled it to 0, when it has not been brought back
    since (neither by recovery's restore-replicas nor by `responder undo`); None when it is not down."""
    ok = {r["intent"] for r in records if r.get("kind") == "outcome" and r.get("status") == "ok"}
    undone = {r["intent"] for r in records if r.get("kind") == "undone"}
    intents = [r for r in records if r.get("kind") == "intent" and not r.get("dry_run") and r["seq"] in ok]
    scaled = [r for r in intents if r.get("action") == "scale-capsule" and r["seq"] not in undone]
    if not scaled or any(r.get("action") == "restore-replicas" for r in intents):
        return None
    return int((scaled[0].get("undo") or {}).get("replicas") or 1)


def capsule_down_warning(replicas: int, journal_path: str | None) -> str:
    """The first line of every output while Capsule is left at 0: what that means and how to undo it."""
    journal = journal_path or "JOURNAL"
    return (f"CAPSULE IS AT 0 REPLICAS (it had {replicas}): its fail-closed webhooks refuse every namespace "
            f"create, update and delete in the cluster. Bring it back with `responder undo {journal}` "
            f"(or finish recovery with `responder run --resume {journal} --yes`)")


# ---- the report -------------------------------------------------------------------------------------------------


def build_report(records: list[dict], *, journal_path: str | None = None) -> dict[str, Any]:
    """Everything the postmortem says, from the journal records alone. `journal_path` only fills in
    the undo command; without it the command shows a placeholder."""
    records = [r for r in records if isinstance(r, dict)]
    opened = next((r for r in records if r.get("kind") == "incident-opened"), None)
    meta = dict((opened or {}).get("meta") or {})
    if opened is not None:  # tolerate an older layout with the fields on the record itself
        for key in ("trigger", "context", "server", "identity", "dry_run", "runbook"):
            if key not in meta and key in opened:
                meta[key] = opened[key]
    incident = (opened or {}).get("incident") or next((r.get("incident") for r in records if r.get("incident")), None)

    # -- detection: t0 of the whole timeline ----------------------------------------------------------------
    trigger_records = [r for r in records if r.get("kind") == "trigger"]
    detection = dict((trigger_records[0].get("trigger") if trigger_records else None) or meta.get("trigger") or {})
    event_received = _epoch(detection.get("event_received"))
    first_ts = next((e for e in (_epoch(r.get("ts")) for r in records) if e is not None), None)
    t0 = event_received if event_received is not None else first_ts
    t0_source = "detection" if event_received is not None else ("first journal record" if t0 is not None else None)

    def elapsed(ts: Any) -> float | None:
        e = _epoch(ts)
        if e is None or t0 is None:
            return None
        # `ts` has millisecond resolution, event_received more: what looks a hair early is simultaneous.
        return max(0.0, round(e - t0, 3)) if e - t0 > -0.001 else round(e - t0, 3)

    trigger = {
        "kind": detection.get("kind"),
        "reason": detection.get("reason"),
        "detected_at": _rfc3339(event_received),
        "event_received": event_received,
        "objects": list(detection.get("objects") or []),
        "journaled_after_s": trigger_records[0].get("journaled_after_s") if trigger_records else None,
    }

    # -- writes ---------------------------------------------------------------------------------------------
    intents = [r for r in records if r.get("kind") == "intent" and isinstance(r.get("seq"), int)]
    outcomes: dict[int, dict] = {}  # the last outcome wins, as in Journal._outcomes
    for r in records:
        if r.get("kind") == "outcome" and isinstance(r.get("intent"), int):
            outcomes[r["intent"]] = r
    undone = {r["intent"] for r in records if r.get("kind") == "undone" and isinstance(r.get("intent"), int)}
    dry_run = bool(meta.get("dry_run")) if "dry_run" in meta else (bool(intents) and all(i.get("dry_run") for i in intents))

    def status(intent: dict) -> str:
        out = outcomes.get(intent["seq"])
        return str(out.get("status")) if out else "pending"

    incident_writes = [i for i in intents if not _is_undo_write(i)]
    undo_writes = [i for i in intents if _is_undo_write(i)]
    # A write that failed or was left pending but later succeeded (retry, resume) is not a failure.
    settled_ok = {(_family(i.get("action")), i.get("target")) for i in incident_writes
                  if status(i) in ("ok", "skipped")}

    def entry(i: dict) -> dict[str, Any]:
        out = outcomes.get(i["seq"]) or {}
        return {"intent": i["seq"], "ts": i.get("ts"), "step": i.get("step"), "action": i.get("action"),
                "target": i.get("target"), "status": status(i), "dry_run": bool(i.get("dry_run")),
                "detail": _text(out.get("detail")), "undone": i["seq"] in undone}

    counts = Counter(status(i) for i in incident_writes)
    first_write = incident_writes[0] if incident_writes else None
    first_write_info = None
    if first_write is not None:
        at = _epoch(first_write.get("ts"))
        first_write_info = {"intent": first_write["seq"], "ts": first_write.get("ts"), "step": first_write.get("step"),
                            "action": first_write.get("action"), "target": first_write.get("target"),
                            "latency_ms": round((at - event_received) * 1000, 1)
                            if at is not None and event_received is not None else None}

    def by_target(actions: set[str]) -> list[dict[str, Any]]:
        """One entry per target: ok if any attempt succeeded, else the last attempt's status."""
        per: dict[str, dict[str, Any]] = {}
        for i in incident_writes:
            if _family(i.get("action")) not in actions:
                continue
            e = entry(i)
            prev = per.get(str(i.get("target")))
            if prev is None or prev["status"] != "ok":
                e["attempts"] = (prev or {}).get("attempts", 0) + 1
                per[str(i.get("target"))] = e
            else:
                prev["attempts"] += 1
        return list(per.values())

    def names(entries: list[dict[str, Any]], wanted: str = "ok") -> list[str]:
        return [str(e["target"]) for e in entries if e["status"] == wanted]

    scale = [i for i in incident_writes if _family(i.get("action")) == "scale-capsule"]
    capsule_scaled = None
    if scale:
        first_undo = next((i.get("undo") for i in scale if isinstance(i.get("undo"), dict)), {}) or {}
        ok = [i for i in scale if status(i) == "ok"]
        path = str(first_undo.get("path") or "")
        m = re.search(r"/namespaces/([^/]+)/deployments/([^/]+)", path)
        capsule_scaled = {
            "deployment": f"{m.group(1)}/{m.group(2)}" if m else scale[0].get("target"),
            "from": first_undo.get("replicas") if isinstance(first_undo.get("replicas"), int) else None,
            "to": 0,
            "status": "ok" if ok else status(scale[-1]),
            "dry_run": all(i.get("dry_run") for i in (ok or scale)),
            "undone": any(i["seq"] in undone for i in ok),
        }

    webhooks = by_target({"exempt-responder"})
    for w in webhooks:
        kind, _, name = str(w["target"]).partition("/")
        w["kind"], w["name"] = (kind, name) if name else (None, kind)
    detach = by_target({"detach"})
    tenants = by_target({"release-finalizer"})
    finalize = by_target({"finalize"})
    hold = by_target({"hold-namespaces"})
    hold_removed = by_target({"release-hold"})
    for h in hold:  # removed by recovery, or by `responder undo` (journaled as undone)
        h["removed"] = h.get("undone") or any(r["target"] == h["target"] and r["status"] == "ok" for r in hold_removed)
    known = {"scale-capsule", "exempt-responder", "detach", "release-finalizer", "finalize", "hold-namespaces",
             "release-hold"}
    other = [entry(i) for i in incident_writes if _family(i.get("action")) not in known]

    failures = [entry(i) for i in incident_writes
                if status(i) == "failed" and (_family(i.get("action")), i.get("target")) not in settled_ok]
    recovered = [entry(i) for i in incident_writes
                 if status(i) == "failed" and (_family(i.get("action")), i.get("target")) in settled_ok]
    pending = [entry(i) for i in incident_writes if status(i) == "pending"]
    unsettled = [p for p in pending if (_family(p["action"]), p["target"]) not in settled_ok]

    # -- resumes: what was pending when a run resumed, and how it settled --------------------------------------
    resumes = []
    resume_triggers = trigger_records[1:]
    for r in records:
        if r.get("kind") != "resumed":
            continue
        seqs = [s for s in r.get("pending") or [] if isinstance(s, int)]
        settled: Counter = Counter()
        details: Counter = Counter()
        still = 0
        for s in seqs:
            later = [o for o in records if o.get("kind") == "outcome" and o.get("intent") == s
                     and isinstance(o.get("seq"), int) and o["seq"] > r.get("seq", 0)]
            if later:
                settled[str(later[-1].get("status"))] += 1
                details[_text(later[-1].get("detail"), 120) or "(no detail)"] += 1
            else:
                still += 1
        trig = next((t for t in resume_triggers if isinstance(t.get("seq"), int) and t["seq"] < r.get("seq", 0)), None)
        resumes.append({"seq": r.get("seq"), "ts": r.get("ts"), "elapsed_s": elapsed(r.get("ts")),
                        "reason": ((trig or {}).get("trigger") or {}).get("reason"),
                        "pending_at_resume": len(seqs), "settled": dict(settled),
                        "settled_details": dict(details.most_common()), "not_settled": still})

    # -- other facts --------------------------------------------------------------------------------------------
    warnings = [{"seq": r.get("seq"), "ts": r.get("ts"), "elapsed_s": elapsed(r.get("ts")), "step": r.get("step"),
                 "level": str(r.get("level")).lower(), "message": _text(r.get("message"), 500)}
                for r in records if r.get("kind") == "log" and str(r.get("level", "")).lower() in
                ("warning", "warn", "error", "critical")]
    orphaned = [{"seq": r.get("seq"), "ts": r.get("ts"), "step": r.get("step"),
                 "namespace": r.get("namespace") or r.get("target")}
                for r in records if r.get("kind") == "orphaned-content"]
    content_left = []
    for r in records:
        if r.get("kind") == "log":
            m = _CONTENT_LEFT.match(str(r.get("message") or ""))
            if m:
                content_left.append({"namespace": m.group("ns"), "content": _text(m.group("content"), 200),
                                     "ts": r.get("ts")})
    verified = [{"seq": r.get("seq"), "ts": r.get("ts"), "elapsed_s": elapsed(r.get("ts")), "probe": r.get("probe"),
                 "by": r.get("by") or CAPSULE_WEBHOOK} for r in records if r.get("kind") == "breaker-verified"]
    # The self-arming hold (`responder protect`): as the run found it, and its lift by recovery.
    found = next((r for r in records if r.get("kind") == "self-hold"), None)
    self_hold = None if found is None else {
        "installed": found.get("installed"), "in_force": found.get("in_force"), "why": found.get("why"),
        "lifted": any(r["status"] == "ok" and str(r["target"]).startswith(f"ValidatingAdmissionPolicy/{SELF_HOLD_POLICY}")
                      for r in hold_removed)}
    confirmations = [{"seq": r.get("seq"), "ts": r.get("ts"), "step": r.get("step"), "answer": r.get("answer"),
                      "summary": _text(r.get("summary"), 200)}
                     for r in records if r.get("kind") == "confirmation"]

    # -- steps and the timeline ---------------------------------------------------------------------------------
    steps: dict[str, dict[str, Any]] = {}
    timeline: list[dict[str, Any]] = []

    def row(r: dict | None, event: str, *, step: Any = None, detail: str = "", ts: Any = None,
            warning: bool = False) -> None:
        at = ts if ts is not None else (r or {}).get("ts")
        timeline.append({"seq": (r or {}).get("seq"), "ts": at, "elapsed_s": elapsed(at), "event": event,
                         "step": step, "detail": _text(detail), "warning": warning})

    if event_received is not None:
        row(None, "detection", detail=f"{trigger['kind'] or 'trigger'}: {trigger['reason'] or ''}".strip(": "),
            ts=trigger["detected_at"])
    undo_started = False
    for r in records:
        kind = r.get("kind")
        if kind == "incident-opened":
            row(r, "incident opened", detail="journal created")
        elif kind == "step" or (isinstance(kind, str) and kind.startswith("step-")):
            st = r.get("status") or (kind[len("step-"):] if kind != "step" else "")
            name = r.get("step")
            info = steps.setdefault(str(name), {"step": name, "runs": 0, "status": None, "started_at": None,
                                                "ended_at": None, "detail": "", "duration_s": None})
            if st == "started":
                info["runs"] += 1
                info["started_at"] = r.get("ts")
            else:
                info["status"], info["ended_at"], info["detail"] = st, r.get("ts"), _text(r.get("detail"))
                s0, s1 = _epoch(info["started_at"]), _epoch(r.get("ts"))
                info["duration_s"] = round(s1 - s0, 3) if s0 is not None and s1 is not None else None
            row(r, f"step {st}", step=name, detail=r.get("detail") or "", warning=st == "failed")
        elif kind == "intent" and first_write is not None and r.get("seq") == first_write["seq"]:
            latency = first_write_info["latency_ms"] if first_write_info else None
            row(r, "first write", step=r.get("step"),
                detail=f"{r.get('action')} {r.get('target')}"
                       + (f" ({latency} ms after detection)" if latency is not None else ""))
        elif kind == "intent" and _is_undo_write(r) and not undo_started:
            undo_started = True
            row(r, "undo started", step=UNDO_STEP, detail=f"{len(undo_writes)} undo writes")
        elif kind == "log" and str(r.get("level", "")).lower() in ("warning", "warn", "error", "critical"):
            row(r, "WARNING", step=r.get("step"), detail=r.get("message") or "", warning=True)
        elif kind == "breaker-verified":
            row(r, "breaker verified", step=r.get("step"),
                detail=f"a dry-run DELETE of namespace {r.get('probe')} was refused by "
                       f"{r.get('by') or CAPSULE_WEBHOOK}")
        elif kind == "self-hold" and r.get("in_force"):
            row(r, "self-arming hold in force", step=r.get("step"), detail=str(r.get("why") or ""))
        elif kind == "orphaned-content":
            row(r, "ORPHANED CONTENT", step=r.get("step"),
                detail=f"namespace {r.get('namespace')} finalized with content left", warning=True)
        elif kind == "resumed":
            row(r, "resumed", detail=f"{len(r.get('pending') or [])} writes were pending (crash)")
        elif kind == "confirmation" and r.get("answer") == "no":
            row(r, "confirmation declined", step=r.get("step"), detail=r.get("summary") or "", warning=True)

    # -- namespaces saved / lost (only when some record carries them) -------------------------------------------
    outcome_counts = None
    for r in records:
        if r.get("kind") in ("intent", "outcome"):
            continue  # request/response payloads are not facts about the incident's outcome
        for candidate in (r, *(v for v in r.values() if isinstance(v, dict))):
            if isinstance(candidate.get("saved"), int) or isinstance(candidate.get("lost"), int):
                outcome_counts = {"saved": candidate.get("saved") if isinstance(candidate.get("saved"), int) else None,
                                  "lost": candidate.get("lost") if isinstance(candidate.get("lost"), int) else None,
                                  "source": f"{r.get('kind')} record {r.get('seq')}"}
                break

    # -- undo ---------------------------------------------------------------------------------------------------
    # The rules of Journal.undo_plan: succeeded for real (ok, not a dry run), has an undo payload, not undone.
    reversible = [{"intent": i["seq"], "step": i.get("step"), "action": i.get("action"), "target": i.get("target"),
                   "op": (i.get("undo") or {}).get("op") if isinstance(i.get("undo"), dict) else None}
                  for i in intents
                  if status(i) == "ok" and not i.get("dry_run") and i.get("undo") is not None and i["seq"] not in undone]
    reversible.reverse()  # newest first: the order `responder undo` applies them
    irreversible = [{"intent": i["seq"], "step": i.get("step"), "action": i.get("action"), "target": i.get("target"),
                     "why": IRREVERSIBLE.get(_family(i.get("action")), NO_UNDO_PAYLOAD)}
                    for i in incident_writes if status(i) == "ok" and not i.get("dry_run")
                    and (_family(i.get("action")) in IRREVERSIBLE or i.get("undo") is None)]
    undo_history = Counter(status(i) for i in undo_writes)
    path = os.path.abspath(journal_path) if journal_path else None
    undo = {
        "command": f"responder undo {shlex.quote(path) if path else '<journal.jsonl>'}",
        "context": meta.get("context"),
        "reversible": reversible,
        "reversible_by_action": dict(Counter(str(e["action"]) for e in reversible)),
        "irreversible": irreversible,
        "undone": len(undone),
        "undo_writes": dict(undo_history),
        "undo_failures": [entry(i) for i in undo_writes if status(i) == "failed"],
    }

    down = None if dry_run else capsule_left_down(records)
    return {
        # First: Capsule left at 0 is what the reader must act on before anything else.
        **({"capsule_down": capsule_down_warning(down, path)} if down is not None else {}),
        "incident": incident,
        "journal": path,
        "cluster": {"context": meta.get("context"), "server": meta.get("server")},
        "identity": meta.get("identity"),
        "dry_run": dry_run,
        "runbook": meta.get("runbook"),
        "trigger": trigger,
        "opened_at": (opened or {}).get("ts"),
        "last_record_at": records[-1].get("ts") if records else None,
        "timeline_origin": t0_source,
        "first_write": first_write_info,
        "steps": list(steps.values()),
        "timeline": timeline,
        "warnings": warnings,
        "writes": {"total": len(incident_writes), **{k: counts.get(k, 0) for k in ("ok", "failed", "skipped", "pending")},
                   "dry_run": sum(1 for i in incident_writes if i.get("dry_run"))},
        "actions": {
            "capsule_scaled": capsule_scaled,
            "webhooks_exempted": webhooks,
            "namespace_hold": hold,
            "namespace_hold_armed": meta.get("hold_armed"), "namespace_hold_not_armed": meta.get("hold_not_armed"),
            "breaker_verified": verified,
            "self_arming_hold": self_hold,
            "namespaces_detached": {"count": len(names(detach)), "names": names(detach),
                                    "not_detached": [e for e in detach if e["status"] != "ok"]},
            "tenants_released": {"count": len(names(tenants)), "names": names(tenants),
                                 "not_released": [e for e in tenants if e["status"] != "ok"]},
            "namespaces_finalized": {"count": len(names(finalize)), "names": names(finalize),
                                     "not_finalized": [e for e in finalize if e["status"] != "ok"]},
            "other_writes": other,
        },
        "orphaned_content": orphaned,
        "terminating_with_content": content_left,
        "failures": failures,
        "recovered": recovered,
        "pending": pending,
        "unsettled": unsettled,
        "resumes": resumes,
        "confirmations": confirmations,
        "namespaces": outcome_counts,
        "recovery": recovery_section(records),
        "undo": undo,
    }


def recovery_section(records: list[dict]) -> dict[str, Any] | None:
    """What the recover phase found and did, from its journal records (the last of each kind)."""
    latest = {r["kind"]: r for r in records if str(r.get("kind", "")).startswith("recovery-")}
    if not latest:
        return None
    plan = latest.get("recovery-plan") or {}
    restore = latest.get("recovery-restore") or {}
    tenants = latest.get("recovery-tenants") or {}
    gone = latest.get("recovery-gone") or {}
    verify = latest.get("recovery-verify") or {}
    lost = sorted(plan.get("lost") or {})
    restored = sorted(restore.get("restored") or [])
    return {
        "backup": plan.get("backup"), "no_backup_reason": plan.get("reason") if not plan.get("backup") else None,
        "rejected_backups": plan.get("rejected") or [],
        "lost": lost, "restored": restored, "not_restored": sorted(set(lost) - set(restored)),
        "restore": {k: restore.get(k) for k in ("restore", "phase", "items_restored", "total_items", "failure_reason")},
        "restore_warnings": restore.get("warnings") or [], "restore_errors": restore.get("errors") or [],
        "rescue_backup": gone.get("rescue_backup"), "rescued": sorted(gone.get("rescued") or []),
        "kept_terminating": sorted(gone.get("kept_terminating") or []),
        "tenants_source": tenants.get("source"), "tenants_created": tenants.get("created") or [],
        "known_from": plan.get("known_from"),
        "verify": {k: verify.get(k) for k in ("known", "present", "adopted", "missing", "not_adopted",
                                               "content_missing", "webhook_differences", "capsule_replicas",
                                               "capsule_replicas_expected", "dangling", "deleted_after_recovery",
                                               "protected_lost")} if verify else None,
    }


def _render_recovery(rec: dict[str, Any]) -> list[str]:
    out = ["## Recovery", ""]
    if rec.get("backup"):
        out.append(f"- Backup used: {_code(rec['backup'])}.")
    else:
        out.append(f"- **No backup used**: {_cell(rec.get('no_backup_reason') or 'none usable')}.")
    for b in rec.get("rejected_backups") or []:
        out.append(f"- Backup {_code(b.get('name'))} refused: {_cell(b.get('reason'))}.")
    if rec.get("rescue_backup"):
        out.append(f"- Rescue backup {_code(rec['rescue_backup'])}: {len(rec.get('rescued') or [])} lost namespaces "
                   "the breaker had frozen while Terminating (content intact), backed up during the incident and "
                   "restored from it.")
    if str(rec.get("known_from") or "").startswith("nothing"):
        out.append(f"- **What existed before the incident is unknown**: {_cell(rec['known_from'])}; nothing could "
                   "be restored.")
    elif rec.get("known_from"):
        out.append(f"- What existed before the incident: from the {_cell(rec['known_from'])}.")
    out.append(f"- Tenants recreated from the {rec.get('tenants_source') or '?'}: {len(rec.get('tenants_created') or [])}.")
    out.append(f"- Namespaces lost in the incident: {len(rec['lost'])}; restored by Velero: {len(rec['restored'])}.")
    if rec["not_restored"]:
        out.append(f"- **Could not be restored ({len(rec['not_restored'])})**: "
                   + ", ".join(_code(n) for n in rec["not_restored"][:50])
                   + (" ..." if len(rec["not_restored"]) > 50 else "") + ". Their content is lost"
                   + (f", except in the {len(rec['kept_terminating'])} still Terminating with their content "
                      "(not finalized; no backup held them): copy it out before Capsule's webhooks let their "
                      "deletion finish" if rec.get("kept_terminating") else "") + ".")
    restore = rec.get("restore") or {}
    if restore.get("restore"):
        out.append(f"- Velero Restore {_code(restore['restore'])}: {restore.get('phase')}, "
                   f"{restore.get('items_restored')}/{restore.get('total_items')} items"
                   + (f", failure: {_cell(restore['failure_reason'])}" if restore.get("failure_reason") else "") + ".")
    for kind in ("restore_errors", "restore_warnings"):
        lines = rec.get(kind) or []
        if lines:
            out += ["", f"{'Errors' if kind == 'restore_errors' else 'Warnings'} reported by Velero ({len(lines)}):", ""]
            out += [f"- {_cell(line)}" for line in lines[:30]]
            if len(lines) > 30:
                out.append(f"- ... {len(lines) - 30} more")
    verify = rec.get("verify")
    if verify:
        out += ["", f"Verification: {verify.get('present')}/{verify.get('known')} namespaces present, "
                    f"{verify.get('adopted')} owned by their recreated Tenants; Capsule at "
                    f"{verify.get('capsule_replicas')} replicas (before: {verify.get('capsule_replicas_expected')}); "
                    f"webhook configurations {'equal the originals' if not verify.get('webhook_differences') else 'DIFFER: ' + '; '.join(verify['webhook_differences'])}."]
        if verify.get("content_missing"):
            out.append(f"Objects missing against the backup: {_cell(verify['content_missing'])}")
        if verify.get("dangling"):
            out.append(f"**Tenant references no live Tenant matches ({len(verify['dangling'])})**, the garbage "
                       f"collector deletes these namespaces: {', '.join(_code(n) for n in list(verify['dangling'])[:50])}")
        if verify.get("protected_lost"):
            out.append(f"**Protected namespaces lost after recovery ({len(verify['protected_lost'])})**: "
                       f"{', '.join(_code(n) for n in verify['protected_lost'])} (a Tenant ownerReference left on a "
                       "namespace responder may not write: protected from responder, not from the garbage collector)")
        elif verify.get("deleted_after_recovery"):
            out.append(f"**Deleted after recovery ({len(verify['deleted_after_recovery'])})**: "
                       + ", ".join(_code(n) for n in verify["deleted_after_recovery"][:50]))
    out.append("")
    return out


# ---- Markdown ---------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = _text(value) if value not in (None, "") else "-"
    return text.replace("|", "\\|")


def _code(value: Any) -> str:
    text = str(value if value not in (None, "") else "?").replace("`", "'")
    return f"`{text}`"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _secs(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"+{value:.3f}" if value >= 0 else f"{value:.3f}"


def _name_list(names: list[str]) -> list[str]:
    shown = names[:COLLAPSE_AFTER]
    lines = [", ".join(_code(n) for n in shown)]
    if len(names) > COLLAPSE_AFTER:
        lines.append(f"… and {len(names) - COLLAPSE_AFTER} more (`responder report -o json` lists them all).")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    r = report
    dry = r.get("dry_run")
    out: list[str] = [f"> **{r['capsule_down']}**", ""] if r.get("capsule_down") else []
    out += [f"# Incident {r.get('incident') or '(unknown id)'}: postmortem", ""]
    if dry:
        out += ["> **DRY RUN**: every write was sent with dryRun=All; nothing in the cluster changed.", ""]
    trig = r.get("trigger") or {}
    cluster = r.get("cluster") or {}
    out += ["| | |", "|---|---|",
            f"| Incident | {_code(r.get('incident'))} |",
            f"| Cluster | context {_code(cluster.get('context'))}, server {_code(cluster.get('server'))} |",
            f"| Responder identity | {_code(r.get('identity'))} |",
            f"| Mode | {'DRY RUN (nothing persisted)' if dry else 'live'} |",
            f"| Trigger | {_cell(trig.get('kind'))}: {_cell(trig.get('reason'))} |" if trig.get("kind") or
            trig.get("reason") else "| Trigger | not recorded in this journal |",
            f"| Detected at | {_cell(trig.get('detected_at') or 'not recorded')} |",
            f"| Runbook | {_code(r.get('runbook'))} |",
            f"| Journal | {_code(r.get('journal'))} |",
            ""]

    fw = r.get("first_write")
    writes = r.get("writes") or {}
    out += ["## Summary", ""]
    if fw:
        latency = f"{fw['latency_ms']} ms after detection" if fw.get("latency_ms") is not None else "latency unknown"
        out.append(f"- First write: {_code(fw.get('action'))} on {_code(fw.get('target'))}, {latency}.")
    else:
        out.append("- No write was made.")
    if trig.get("journaled_after_s") is not None:
        out.append(f"- Incident journaled {trig['journaled_after_s']} s after the triggering event arrived.")
    out.append(f"- Writes: {writes.get('total', 0)} ({writes.get('ok', 0)} ok, {writes.get('failed', 0)} failed, "
               f"{writes.get('skipped', 0)} skipped, {writes.get('pending', 0)} pending)"
               + (f", {writes.get('dry_run')} of them dry runs" if writes.get("dry_run") else "") + ".")
    ns = r.get("namespaces")
    if ns:
        out.append(f"- Namespaces saved: {ns.get('saved') if ns.get('saved') is not None else 'not recorded'}; "
                   f"lost: {ns.get('lost') if ns.get('lost') is not None else 'not recorded'} (from {ns.get('source')}).")
    else:
        out.append("- Namespaces saved / lost: not recorded in this journal.")
    if r.get("orphaned_content"):
        out.append(f"- **ORPHANED CONTENT** in {_plural(len(r['orphaned_content']), 'namespace')} (see below).")
    if r.get("failures"):
        out.append(f"- **{_plural(len(r['failures']), 'write')} failed** (see Failures).")
    if r.get("unsettled"):
        out.append(f"- **{_plural(len(r['unsettled']), 'write')} still pending**: unknown whether the cluster "
                   "applied them.")
    out.append("")

    if r.get("recovery"):
        out += _render_recovery(r["recovery"])

    if r.get("warnings"):
        out += ["## Warnings", ""]
        for w in r["warnings"]:
            out.append(f"> **{str(w.get('level')).upper()}** [{w.get('step') or '-'} {_secs(w.get('elapsed_s'))} s] "
                       f"{_text(w.get('message'), 500)}")
            out.append(">")
        out[-1] = ""

    out += ["## Timeline", ""]
    origin = r.get("timeline_origin")
    if origin and origin != "detection":
        out += [f"Detection time is not in this journal: seconds are counted from the {origin}.", ""]
    out += ["| Time (UTC) | Seconds | Event | Step | Detail |", "|---|---:|---|---|---|"]
    for t in r.get("timeline") or []:
        event = f"**{t['event']}**" if t.get("warning") else t["event"]
        out.append(f"| {_cell(t.get('ts'))} | {_secs(t.get('elapsed_s'))} | {event} | {_cell(t.get('step'))} | "
                   f"{_cell(t.get('detail'))} |")
    out.append("")

    acts = r.get("actions") or {}
    out += ["## What was done" if not dry else "## What would have been done (dry run)", ""]
    cs = acts.get("capsule_scaled")
    if cs:
        state = {"ok": "", "failed": " **(FAILED)**", "pending": " **(pending: unknown)**"}.get(cs["status"], f" ({cs['status']})")
        out.append(f"- Capsule controller {_code(cs.get('deployment'))} scaled from "
                   f"{cs.get('from') if cs.get('from') is not None else '?'} to 0{state}"
                   + (" (undone since)" if cs.get("undone") else "") + ".")
    else:
        out.append("- Capsule was not scaled.")
    hooks = acts.get("webhooks_exempted") or []
    if hooks:
        out.append(f"- Webhook configurations exempting responder ({len(hooks)}): "
                   + ", ".join(f"{_code(h.get('name'))} ({h.get('kind') or '?'}, {h['status']}"
                               + (", undone" if h.get("undone") else "") + ")" for h in hooks) + ".")
    hold = acts.get("namespace_hold") or []
    if hold:
        in_place = [h for h in hold if h["status"] == "ok" and not h.get("removed")]
        armed = acts.get("namespace_hold_armed")
        out.append("- Namespace hold (no tenant namespace DELETE but responder's"
                   + ("; armed ahead by `responder protect`, so it held within milliseconds" if armed else
                      f"; not armed ahead: {acts.get('namespace_hold_not_armed')}" if armed is False else "")
                   + "): "
                   + ", ".join(f"{_code(h['target'])} ({h['status']}" + (", lifted" if h.get("removed") else "") + ")"
                               for h in hold) + "."
                   + (" **Still in place**: tenant namespaces cannot be deleted until `responder undo` removes it."
                      if in_place and not dry else ""))
    sh = acts.get("self_arming_hold")
    if sh and sh.get("in_force"):
        out.append(f"- Self-arming hold (`responder protect`) in force when the run began: {sh.get('why')}; the API "
                   "server had been refusing tenant namespace DELETEs by itself"
                   + ("; lifted by recovery once every namespace was re-adopted." if sh.get("lifted") else
                      "; **still in force** until recovery re-adopts the namespaces (`responder run`)."))
    for v in acts.get("breaker_verified") or []:
        out.append(f"- Breaker verified at {v.get('ts')}: a dry-run DELETE of namespace {_code(v.get('probe'))} "
                   f"was refused by {v.get('by') or CAPSULE_WEBHOOK}.")
    for key, title, missing in (("namespaces_detached", "Namespaces detached", "not_detached"),
                                ("tenants_released", "Tenants released (finalizer removed)", "not_released"),
                                ("namespaces_finalized", "Terminating namespaces finalized", "not_finalized")):
        block = acts.get(key) or {}
        out += ["", f"### {title}: {block.get('count', 0)}"]
        if block.get("names"):
            out += [""] + _name_list(block["names"])
        left = block.get(missing) or []
        if left:
            by_status: dict[str, list[str]] = {}
            for e in left:
                by_status.setdefault(str(e["status"]), []).append(str(e["target"]))
            out += ["", f"Not done ({len(left)}):", ""]
            for st, targets in by_status.items():
                lines = _name_list(targets)
                out.append(f"- {st} ({len(targets)}): {lines[0]}")
                out.extend("  " + line for line in lines[1:])
    if acts.get("other_writes"):
        out += ["", "### Other writes", ""]
        for e in acts["other_writes"][:COLLAPSE_AFTER]:
            out.append(f"- {_code(e['action'])} {_code(e['target'])}: {e['status']}")
    out.append("")

    out += ["## Orphaned content", ""]
    if r.get("orphaned_content"):
        out.append("> **ORPHANED CONTENT**: these namespaces were finalized while objects were still in them. "
                   "Those objects stay in etcd, invisible, until a namespace of the same name is created again.")
        out.append("")
        for o in r["orphaned_content"]:
            out.append(f"- {_code(o.get('namespace'))} (step {o.get('step') or '-'}, {o.get('ts')})")
    else:
        out.append("None: no namespace was finalized with content left.")
    if r.get("terminating_with_content"):
        out += ["", "Terminating namespaces reported with content left:", ""]
        for c in r["terminating_with_content"][:COLLAPSE_AFTER]:
            out.append(f"- {_code(c['namespace'])}: {_text(c['content'], 200)}")
    out.append("")

    out += ["## Failures", ""]
    if r.get("failures"):
        out += ["| Intent | Step | Action | Target | Detail |", "|---:|---|---|---|---|"]
        for f in r["failures"]:
            out.append(f"| {f['intent']} | {_cell(f.get('step'))} | {_cell(f.get('action'))} | {_cell(f.get('target'))} "
                       f"| {_cell(f.get('detail'))} |")
    else:
        out.append("None.")
    if r.get("recovered"):
        out += ["", f"{len(r['recovered'])} writes failed first and succeeded when retried or resumed."]
    out.append("")

    if r.get("resumes") or r.get("pending"):
        out += ["## Crash and resume", ""]
        for res in r.get("resumes") or []:
            settled = ", ".join(f"{n} {s}" for s, n in sorted((res.get("settled") or {}).items())) or "none"
            out.append(f"- Resumed at {res.get('ts')} ({_secs(res.get('elapsed_s'))} s): "
                       f"{_plural(res.get('pending_at_resume', 0), 'write')} left pending by the crash; settled: {settled}"
                       + (f"; {res['not_settled']} not settled by the resumed run" if res.get("not_settled") else "")
                       + ".")
            for detail, n in (res.get("settled_details") or {}).items():
                out.append(f"  - {n} × {detail}")
        if r.get("unsettled"):
            out.append(f"- **Still pending ({len(r['unsettled'])})**: sent or not, nobody knows. Check them in the "
                       f"cluster, or resume: `responder run --resume {r.get('journal') or '<journal.jsonl>'}`.")
            for p in r["unsettled"][:COLLAPSE_AFTER]:
                out.append(f"  - intent {p['intent']}: {_code(p.get('action'))} {_code(p.get('target'))}")
        superseded = len(r.get("pending") or []) - len(r.get("unsettled") or [])
        if superseded > 0:
            out.append(f"- {superseded} pending writes were superseded by a later successful write of the same target.")
        out.append("")

    undo = r.get("undo") or {}
    out += ["## How to undo", ""]
    out += ["```", undo.get("command", "responder undo <journal.jsonl>"), "```", ""]
    if undo.get("context"):
        out += [f"Run it against the incident's cluster (kube context {_code(undo['context'])}; add "
                f"`--context {undo['context']}` if that is not your current context).", ""]
    rev = undo.get("reversible") or []
    if rev:
        out.append(f"Reversible writes not undone yet ({len(rev)}; undo applies them newest first):")
        out.append("")
        groups: dict[str, list[dict]] = {}
        for e in rev:
            groups.setdefault(str(e.get("action")), []).append(e)
        for action, entries in groups.items():
            ops = sorted({str(e.get("op") or "?") for e in entries})
            lines = _name_list([str(e.get("target")) for e in entries])
            out.append(f"- {_code(action)} ({len(entries)}, undo op {', '.join(ops)}): {lines[0]}")
            out.extend("  " + line for line in lines[1:])
        if any(e.get("op") == "reattach" for e in rev):
            out += ["", "Undoing a detach re-attaches the namespace only if its Tenant is alive with the same UID; "
                        "otherwise undo skips it (a reference to a gone Tenant would get the namespace deleted)."]
    elif dry:
        out.append("Nothing to undo: this was a dry run.")
    else:
        out.append("Nothing left to undo.")
    if undo.get("undone"):
        out += ["", f"Already undone: {_plural(undo['undone'], 'write')}."]
    if undo.get("undo_failures"):
        out += ["", f"**Undo writes that failed ({len(undo['undo_failures'])})**:"]
        for f in undo["undo_failures"][:COLLAPSE_AFTER]:
            out.append(f"- {_code(f.get('action'))} {_code(f.get('target'))}: {_text(f.get('detail'), 200)}")
    irr = undo.get("irreversible") or []
    if irr:
        out += ["", f"Irreversible ({len(irr)}): `responder undo` cannot revert these.", ""]
        reasons: dict[tuple[str, str], list[dict]] = {}
        for e in irr:
            reasons.setdefault((str(e.get("action")), str(e["why"])), []).append(e)
        for (action, why), entries in reasons.items():
            out.append(f"- {_code(action)} ({len(entries)}): {why}")
            out.extend("  " + line for line in _name_list([str(e.get("target")) for e in entries]))
    out.append("")
    return "\n".join(out)


# ---- command line -----------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write a postmortem (Markdown or JSON) from an incident journal")
    report.add_argument("journal_file", type=Path, metavar="JOURNAL", help="the incident's .jsonl journal")
    report.add_argument("-o", "--output", choices=["md", "json"], default="md")
    report.add_argument("--output-file", type=Path, default=None, metavar="FILE",
                        help="write the report here instead of stdout")
    report.set_defaults(handler=cmd_report)


def load_records(path: Path) -> list[dict]:
    from responder.incident.journal import open_incident_journal

    journal = open_incident_journal(path, readonly=True)
    try:
        return journal.records()
    finally:
        journal.close()


def cmd_report(args: argparse.Namespace) -> int:
    path: Path = args.journal_file
    report = build_report(load_records(path), journal_path=str(path))
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n" if args.output == "json" else render_markdown(report)
    if args.output_file is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ResponderError(f"cannot write {args.output_file}: {exc.strerror}",
                             fix="choose a writable --output-file") from exc
    print(f"report written to {args.output_file}", file=sys.stderr)
    return 0


__all__ = ["build_report", "render_markdown", "add_parser", "cmd_report", "load_records"]
