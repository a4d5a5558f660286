"""A new guard leader resumes an open incident from the cluster, not from the dead leader's disk.

What it reads: the Incident (id, trigger, steps with their results, approvals) and its snapshot (what
recovery returns to, taken before the first write), and the cluster as its watches show it now. From
them it writes a journal of its own for the same incident, in which the previous leader's writes the
cluster shows are recorded as done, with the undo payloads the snapshot gives:
- the breaker: Capsule at 0 replicas (the replicas to return to from the snapshot), responder's exemption
  in Capsule's webhook configurations (their matchConditions from before, from the snapshot);
- detach: each namespace the snapshot saw with a Tenant ownerReference that no longer carries one;
- re-adoption under way (approved, not finished): each known namespace that already carries the ownerReference
  and label of its Tenant recreated in this incident (the Tenant created at or after the trigger), so the
  resumed step does not write it again (its undo payload is the step's own: none, as for the leader's writes);
- every step the Incident lists as finished (or failed, or skipped: finished when its action had nothing to
  do, skipped when its confirmation was declined), and what the finished recovery steps journaled for the
  steps after them (status.recoveryRecords: the backup chosen, the Tenants recreated, ...).
The engine then runs what is left: a finished step is not run again, a step in progress is resumed (its
actions look at the cluster before writing), and an approved recovery step runs without a second approval.

The TUI attached to a guard takes over the same way (`take_over_from_guard`), on the operator's confirmed
action: it overwrites the Lease's holder (the guard notices at its next round, stops writing and exits, so its
pod restarts as a standby; the standby sees the Lease renewed and waits), waits out that round, resumes the
Incident as a new guard leader does, keeps it current, and from then runs the steps itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from responder.actions.breaker import EXEMPTION_NAME, exemption_patch, webhook_path
from responder.cluster.lease import RETRY_PERIOD, lease_client, parse_time
from responder.errors import ApiError, ResponderError
from responder.guard.incident_keeper import IncidentKeeper
from responder.incident import triage
from responder.incident.detect import Trigger
from responder.incident.engine import DECLINED
from responder.incident.journal import Journal
from responder.incident.engine import ConfirmationRequest
from responder.incident.observe import TENANTS_PATH, CapsuleTarget
from responder.recovery import decisions as recovery
from responder.response.attach import attach_target
from responder.response.incident_object import IncidentStore, approvals_of
from responder.response.leadership import journal_leadership, take_over_writer_lease
from responder.response.session import Session

log = logging.getLogger(__name__)

INHERITED = "done by the previous leader; found in the cluster at takeover"
STEP_ENDS = ("finished", "failed", "skipped")


def inherited_writes(snapshot: dict[str, Any], *, namespaces: dict[str, dict[str, Any]],
                     deployment: dict[str, Any] | None, webhooks: list[tuple[str, dict[str, Any]]],
                     capsule: CapsuleTarget, identity: str, breaker_step: str | None,
                     detach_step: str | None) -> list[dict[str, Any]]:
    """The previous leader's writes the cluster shows, as journal intents (step, action, target, undo)."""
    writes: list[dict[str, Any]] = []
    if breaker_step:
        replicas = ((deployment or {}).get("spec") or {}).get("replicas")
        if deployment is not None and replicas == 0 and snapshot.get("capsule_replicas"):
            path = f"{capsule.deployment_path}/scale"
            writes.append({"step": breaker_step, "action": "scale-capsule", "target": capsule.deployment,
                           "request": {"method": "PATCH", "path": path, "body": {"spec": {"replicas": 0}}},
                           "undo": {"op": "scale", "path": path, "replicas": snapshot["capsule_replicas"]}})
        before = snapshot.get("webhooks") or {}
        for kind, obj in webhooks:
            name = obj["metadata"]["name"]
            key = f"{kind}/{name}"
            exempted = any(c.get("name") == EXEMPTION_NAME for h in obj.get("webhooks") or []
                           for c in h.get("matchConditions") or [])
            if not exempted or key not in before:
                continue
            _, originals = exemption_patch(before[key], identity)
            writes.append({"step": breaker_step, "action": "exempt-responder", "target": key,
                           "request": {"method": "PATCH", "path": webhook_path(kind, name)},
                           "undo": {"op": "webhook-match-conditions", "kind": kind, "name": name,
                                    "path": webhook_path(kind, name), "webhooks": originals}})
    if detach_step:
        for name, owner in sorted((snapshot.get("owners") or {}).items()):
            ns = namespaces.get(name)
            if ns is None or (ns.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if any(r.get("name") == owner.get("name") for r in triage.tenant_refs(ns)):
                continue  # still attached: at risk, the resumed detach handles it
            writes.append({"step": detach_step, "action": "detach", "target": name,
                           "request": {"method": "PATCH", "path": f"/api/v1/namespaces/{name}"},
                           "undo": {"op": "reattach", "namespace": name, "uid": ns["metadata"].get("uid"),
                                    "ownerReferences": [owner], "finalizers": []}})
    return writes


def inherited_readopts(known: dict[str, str], *, templates: dict[str, dict[str, Any]],
                       namespaces: dict[str, dict[str, Any]], tenants: dict[str, dict[str, Any]],
                       since: float, step: str) -> list[dict[str, Any]]:
    """The previous leader's re-adoption writes the cluster shows, as journal intents: each known namespace
    (name -> Tenant) alive and already adopted by its Tenant as the step would adopt it (readopt_patch is
    empty: ownerReference to the live UID and the tenant label), where that Tenant was created at or after
    `since` (the incident's trigger, epoch seconds): a Tenant recreated in this incident. A namespace still
    owned by a Tenant that outlived the incident was never re-adopted and is not inherited."""
    floor = int(since)  # creationTimestamp has whole seconds
    writes: list[dict[str, Any]] = []
    for name, tenant_name in sorted(known.items()):
        ns, tenant = namespaces.get(name), tenants.get(tenant_name)
        if ns is None or tenant is None:
            continue
        if (ns.get("metadata") or {}).get("deletionTimestamp") or tenant["metadata"].get("deletionTimestamp"):
            continue
        created = parse_time(tenant["metadata"].get("creationTimestamp"))
        if created is None or created < floor:
            continue
        if recovery.readopt_patch(ns, tenant, templates.get(name)):
            continue  # not adopted yet (or only in part): the resumed step writes it
        writes.append({"step": step, "action": "readopt", "target": name,
                       "request": {"method": "PATCH", "path": f"/api/v1/namespaces/{name}"}, "undo": None})
    return writes


def readopt_under_way(incident: dict[str, Any], runbook_steps: list[Any]) -> str | None:
    """The re-adoption step a previous leader started and may have written in: the Incident lists it started,
    not ended, and approved (or the incident recovers without approvals)."""
    step = next((s for s in runbook_steps if s.action == "readopt-namespaces"), None)
    if step is None:
        return None
    entry = next((s for s in (incident.get("status") or {}).get("steps") or [] if s.get("id") == step.id), None)
    if entry is None or entry.get("status") in STEP_ENDS:
        return None
    auto = ((incident.get("spec") or {}).get("recovery") or "") == "auto"
    return step.id if auto or step.id in approvals_of(incident) else None


async def readopt_writes(session: Session, incident: dict[str, Any], snapshot: dict[str, Any],
                         records: list[dict[str, Any]], step: str) -> list[dict[str, Any]]:
    """inherited_readopts against the cluster as it is now (read, not from the watches: the Tenant CRD was
    recreated), with what the finished recovery steps recorded (`records`: the backup's known namespaces)."""
    plan = next((r for r in reversed(records) if r.get("kind") == "recovery-plan"), None) or {}
    witnessed = snapshot.get("namespaces") or session.observer.shadow.namespace_tenants()
    known, _ = recovery.merge_known(witnessed, plan.get("known_from_backup") or {}, session.protected)
    templates = (plan.get("owners_from_backup") or {}) | (snapshot.get("owners") or {})
    namespaces = {n["metadata"]["name"]: n
                  for n in (await session.client.get("/api/v1/namespaces")).get("items") or []}
    try:
        tenants = {t["metadata"]["name"]: t for t in (await session.client.get(TENANTS_PATH)).get("items") or []}
    except ApiError as exc:
        if exc.status != 404:
            raise
        tenants = {}
    since = float(((incident.get("spec") or {}).get("trigger") or {}).get("event_received") or 0)
    if not since:
        return []  # no time to tell a recreated Tenant from one that outlived the incident
    return inherited_readopts(known, templates=templates, namespaces=namespaces, tenants=tenants, since=since,
                              step=step)


def journaled_end(step: dict[str, Any]) -> str:
    """How the previous leader's engine journaled a step the Incident lists as ended. A step whose action had
    nothing to do shows skipped and was journaled finished (not run again); only a declined confirmation is
    journaled skipped (asked again)."""
    status = str(step.get("status") or "")
    if status == "skipped" and step.get("summary") != DECLINED:
        return "finished"
    return status


def takeover_journal(directory: Path, incident: dict[str, Any], *, meta: dict[str, Any]) -> Journal:
    """A journal of this replica's own for the incident (one left on this disk by an earlier run of this
    replica is set aside: the cluster is the record now)."""
    incident_id = incident["spec"]["incidentId"]
    path = directory / f"{incident_id}.jsonl"
    if path.exists():
        path.rename(path.with_name(f"{path.name}.before-takeover-{int(time.time())}"))
    return Journal.create(directory, incident_id=incident_id, meta=meta)


async def resume_open_incident(session: Session, store: IncidentStore, *, leader: str) -> dict[str, Any] | None:
    """Open the session's incident from the newest open Incident in the cluster, or return None (none open)."""
    incidents = await store.open_incidents()
    if not incidents:
        return None
    incident = incidents[-1]
    status = incident.get("status") or {}
    snapshot = store.read_packed(incident, "snapshot")
    spec_trigger = (incident.get("spec") or {}).get("trigger") or {}
    trigger = Trigger(str(spec_trigger.get("kind", "manual")), str(spec_trigger.get("reason", "")),
                      float(spec_trigger.get("event_received") or time.time()), tuple(spec_trigger.get("objects") or ()))
    journal = takeover_journal(session.options.journal_dir, incident, meta={
        "trigger": trigger.to_json(), "context": session.access.context, "server": session.access.display_server,
        "identity": session.identity, "dry_run": False, "runbook": str(session.options.runbook),
        "hold_armed": session.hold_not_armed is None, "hold_not_armed": session.hold_not_armed,
        "taken_over": incident["metadata"]["name"]})
    journal.record("takeover", incident_object=incident["metadata"]["name"], leader=leader,
                   previous_leader=status.get("leader"), phase=status.get("phase"),
                   snapshot="cluster" if snapshot is not None else "none (this replica's shadow copy instead)")
    writes: list[dict[str, Any]] = []
    if snapshot is not None:
        journal.record("snapshot", **snapshot)
        steps = {s.action: s.id for s in session.runbook.steps if s.phase == "contain"}
        observer = session.observer
        deployments = observer.objects("deployment")
        writes = inherited_writes(
            snapshot, namespaces={n["metadata"]["name"]: n for n in observer.objects("namespaces")},
            deployment=deployments[0] if deployments else None, webhooks=observer.capsule_webhooks(),
            capsule=session.options.capsule, identity=session.identity,
            breaker_step=steps.get("trip-breaker"), detach_step=steps.get("detach-namespaces"))
    else:
        log.warning("the Incident %s has no snapshot (its leader died before writing it): recovery returns to this "
                    "replica's shadow copy", incident["metadata"]["name"])
    records = store.read_packed(incident, "recoveryRecords") or []
    readopt = readopt_under_way(incident, session.runbook.steps)
    if readopt is not None:
        try:
            writes += await readopt_writes(session, incident, snapshot or {}, records, readopt)
        except ApiError as exc:  # the resumed step still re-checks the cluster: nothing is written twice
            log.warning("the previous leader's re-adoptions could not be read (%s %s): the resumed step finds them "
                        "adopted, but this journal does not hold them", exc.status, exc.api_message)
    for write in writes:
        seq = journal.intent(write["step"], write["action"], write["target"], request=write["request"],
                             undo=write["undo"], sync=False)
        journal.outcome(seq, "ok", detail=INHERITED, sync=False)
    journal.sync()
    for record in records:
        journal.record(record["kind"], **{k: v for k, v in record.items() if k not in ("seq", "ts", "incident", "kind")})
    for step in status.get("steps") or []:
        if step.get("status") in STEP_ENDS and step.get("id"):
            journal.step(step["id"], journaled_end(step), detail=f"{INHERITED}: {step.get('summary', '')}"[:500])
    session.open_incident(trigger, journal=journal)
    journal.record("resumed", pending=[], inherited_writes=len(writes))
    return incident


# After overwriting the Lease, how long the new holder waits before it reads the incident and writes: the old
# leader renews every RETRY_PERIOD, and its next round reads another holder's name, stops leading and cancels
# its run (a request already in flight then may still land). Its Lease reads failing instead, it would stop
# only once its renew deadline passed (lease.RENEW_DEADLINE after its last renewal).
HANDOVER_WAIT = RETRY_PERIOD + 1.0


def takeover_refusal(*, attached_to: str, holder: str, dry_run: bool) -> str | None:
    """Why the attached TUI must not take the Lease over now (one message), or None."""
    if not attached_to:
        return "this responder is not attached to a guard: it is the cluster's writer itself, or another one holds " \
               "the Lease (it refused at start); there is nothing to take over"
    if attach_target(holder) is None:
        return (f"the Lease is held by {holder or 'nobody'}, not by a guard replica: only a guard's Lease is taken "
                "over from the TUI (one writer per cluster; let that responder finish, or stop it)")
    if dry_run:
        return "a dry run takes no Lease and writes nothing: start `responder watch` without --dry-run to take over"
    return None


@dataclass
class TakenOver:
    """What the takeover leaves running: the Lease (the session's), the Incident resumed and kept current."""

    previous: str  # the guard replica's holder identity the Lease was taken from
    me: str
    incident: dict[str, Any] | None  # None: the guard had no open incident (this responder detects the next one)
    keeper: IncidentKeeper | None
    store: IncidentStore

    async def finish(self, code: int) -> None:
        if self.keeper is not None:
            await self.keeper.finish(code)

    async def close(self) -> None:
        if self.keeper is not None:
            await self.keeper.close()
        await self.store.client.aclose()


async def take_over_from_guard(session: Session, holder: str, *, handover_wait: float = HANDOVER_WAIT,
                               store: IncidentStore | None = None) -> TakenOver:
    """The attached session takes the writer Lease over from the guard `holder` and leads its incident: the
    Lease overwritten (LeaseHeld when it names anyone else now), journaled as a leadership change naming the
    guard, the open Incident resumed from the cluster (inherited writes, finished steps, approvals), its status
    kept by this process from then. The session's confirmations run steps from here on."""
    refusal = takeover_refusal(attached_to=session.attached_to, holder=holder, dry_run=session.options.dry_run)
    if refusal is not None:
        raise ResponderError(refusal, fix="`kubectl get lease -n responder-system responder` names the holder")
    lease = await take_over_writer_lease(session.client, holder, listener=journal_leadership(session))
    me = lease.elector.me
    session.leadership = lease
    session.attached_to = ""
    log.warning("took the writer Lease over from the guard %s: this responder is the cluster's writer now", holder)
    store = store or IncidentStore(lease_client(session.access))
    try:
        await asyncio.sleep(handover_wait)  # the old leader's next round: it reads our name and stops
        incident = await resume_open_incident(session, store, leader=me)
    except BaseException:
        # Not led here after all: the Lease is released at once, so a guard replica leads again and resumes the
        # Incident; this session follows it again (attached), as before.
        await store.client.aclose()
        session.leadership = None
        await lease.close()
        session.attached_to = holder
        raise
    if incident is None:
        session.may_open = None  # no incident open: this responder detects and opens the next one itself
        return TakenOver(holder, me, None, None, store)
    assert session.journal is not None
    session.journal.record("leadership", event="taken-over", holder=me, previous_holder=holder,
                           transitions=lease.elector.transitions, incident_object=incident["metadata"]["name"])
    keeper = IncidentKeeper(session, store, leader=me, recovery="approval")
    keeper.adopt(incident)
    session.engine_listeners.append(keeper.on_engine_event)
    recover_steps = {step.id for step in session.runbook.steps if step.phase == "recover"}
    ask = session.confirmer

    async def confirm(request: ConfirmationRequest) -> bool:
        # The Incident says what waits on this operator, and who confirmed it (as a guard's approvals do).
        if request.step in recover_steps:
            keeper.waiting_here(request.step)
        ok = bool(await ask(request)) if ask is not None else False
        if ok and request.step in recover_steps:
            keeper.confirmed_here(request.step, session.identity)
        return ok

    session.confirmer = confirm
    keeper.start()
    return TakenOver(holder, me, incident, keeper, store)
