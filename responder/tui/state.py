"""The TUI's model: everything the screen shows, built only from the events a session emits.

Pure Python (no Textual) so it can be unit tested and benchmarked. It decides nothing about the
incident: namespace verdicts come from `responder.incident.triage` (the one place that classifies), the
breaker state is read off the breaker step's own events and the Capsule Deployment's replicas,
step states off the engine's step events.

What it adds is bookkeeping for a smooth screen: it keeps the objects the watch streams deliver,
re-triages only the namespaces an event can affect, and hands the table the rows that changed since
it last looked, coalesced (a row changed ten times between two frames is handed over once).

Which namespaces responder detached (triage needs it, as `Session.view()` reads it from the journal)
comes from the incident journal's `detach` intents (batched writes emit no engine `write` event) and
from `write` events when there are some. (Until the journal is read, a namespace whose Tenant
reference was just removed shows what triage says without that record: safe, "tenant label without
ownerReference"; the app reads the journal's new lines before each frame that has rows to re-triage.)

Recovery, from engine events (`EngineEvent(kind, step, data)`, as `StepContext.emit(kind, **data)` sends
them; one event per namespace, like `write`; `dry_run: true` events change nothing, like dry-run writes):
- `restore`  data `{"target": NS, "status": "restoring" | "restored" | "failed", "dry_run": bool}`:
  a Velero restore into NS started / finished / failed (failed: NS is no longer restoring);
- `readopt`  data `{"target": NS, "tenant": TENANT, "dry_run": bool}`: NS was re-adopted into TENANT
  (a new Tenant ownerReference was written).
They feed `triage.ClusterView.restoring / restored / readopted`; triage gives the verdict (restoring,
restored, re-adopted, or at-risk if the namespace still carries a dying Tenant reference). A restore's
progress is the step's own `step-progress` (`done` = Velero's itemsRestored, `total` = totalItems),
shown like detach's.

Velero's backup storage location comes from a watch stream named `backupstoragelocations` (Velero
`BackupStorageLocation` objects): the header shows the `status.phase` of the default location (else of
the first by name), "none" once the stream listed no location (or Velero's CRD is absent), "?" while
there is no such stream.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from responder.incident import triage
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, TYPE_GONE, WatchEvent
from responder.incident.engine import EngineEvent
from responder.incident.observe import VELERO_STREAM
from responder.cluster.lease import holder_role, parse_time
from responder.response.attach import awaiting_approval

NO_TENANT = ""
# The streams whose initial lists must be in before a verdict means anything: a namespace listed
# before its Tenant would look orphaned (owner "not found") and show as at-risk for a frame.
TRIAGE_STREAMS = frozenset({"crd", "tenants", "namespaces"})
# Most urgent first: counts and tenant rows lead with what needs attention.
URGENCY = ("at-risk", "terminating", "gone", "restoring", "detached", "re-adopted", "restored", "safe", "protected")
DETACH_ACTION = "detach"
RESTORE_EVENT, READOPT_EVENT = "restore", "readopt"
# NsState members to their values without the Enum's per-access property (10,000s per burst).
_STATE_VALUE = {state: state.value for state in triage.NsState}


def utc_clock(at: float, *, millis: bool = True) -> str:
    """HH:MM:SS(.mmm) in UTC, the journal's time zone, so feed and journal lines line up."""
    stamp = _dt.datetime.fromtimestamp(at, _dt.timezone.utc)
    return stamp.strftime("%H:%M:%S") + (f".{stamp.microsecond // 1000:03d}" if millis else "")


@dataclass(frozen=True, slots=True)
class Row:
    """One namespace as the table shows it."""

    name: str
    tenant: str  # NO_TENANT when it belongs to none
    state: str  # a triage.NsState value
    reason: str


@dataclass
class TableChanges:
    """What changed since the table last looked."""

    added: list[Row] = field(default_factory=list)
    updated: list[tuple[Row, Row]] = field(default_factory=list)  # (before, after)
    removed: list[Row] = field(default_factory=list)
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)  # tenants whose counts changed
    arrivals: list[float] = field(default_factory=list)  # perf_counter() of the events folded in
    complete: bool = True  # False: more rows are waiting (a large re-triage is spread over frames)

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.tenants)


@dataclass(frozen=True, slots=True)
class FeedLine:
    at: float
    resource: str
    type: str
    name: str
    detail: str
    alert: bool = False

    @property
    def text(self) -> str:
        name = f" {self.name}" if self.name else ""
        detail = f"  {self.detail}" if self.detail else ""
        return f"{utc_clock(self.at)} {self.type:<8} {self.resource}{name}{detail}"


@dataclass
class StepView:
    id: str
    action: str = ""
    description: str = ""
    status: str = "pending"  # pending | running | waiting | finished | failed | skipped
    summary: str = ""
    done: int | None = None
    total: int | None = None
    note: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    writes: int = 0

    def elapsed(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (self.finished_at if self.finished_at is not None else now) - self.started_at)


@dataclass(frozen=True)
class Incident:
    id: str
    kind: str
    reason: str
    at: float


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _tenant_ref_names(ns: Mapping[str, Any]) -> set[str]:
    return {r.get("name") or "" for r in triage.tenant_refs(ns)}


def capsule_version(deployment: Mapping[str, Any] | None) -> str:
    """The Capsule version from its Deployment: the controller image's tag, else the version label."""
    if not deployment:
        return "?"
    containers = ((((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
    images = [c.get("image") or "" for c in containers]
    for image in sorted(images, key=lambda i: "capsule" not in i):
        ref = image.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        if ":" in last:
            return last.rsplit(":", 1)[1]
    labels = _meta(deployment).get("labels") or {}
    for key in ("app.kubernetes.io/version", "version"):
        if labels.get(key):
            return str(labels[key])
    return "?"


def describe_watch(event: WatchEvent) -> tuple[str, bool]:
    """A short detail for the feed and whether the line is an alert."""
    obj = event.object
    meta = _meta(obj)
    deleting = bool(meta.get("deletionTimestamp"))
    if event.type == TYPE_GONE:
        return "resource type gone (its CRD was deleted)", True
    if event.resource == "crd":
        if event.type == DELETED:
            return "Tenant CRD deleted", True
        return ("DELETING (deletionTimestamp set)", True) if deleting else ("present", False)
    if event.resource == "tenants":
        if event.type == DELETED:
            return "deleted", True
        fins = len(meta.get("finalizers") or [])
        return (f"terminating ({fins} finalizers)", True) if deleting else ("", False)
    if event.resource == "namespaces":
        if event.type == DELETED:
            return "deleted", True
        refs = triage.tenant_refs(obj)
        owner = f"Tenant {refs[0].get('name')}" if refs else "no Tenant owner"
        return (f"Terminating; {owner}", True) if deleting else (owner, False)
    if event.resource == "deployment":
        spec = (obj.get("spec") or {}).get("replicas")
        ready = (obj.get("status") or {}).get("readyReplicas") or 0
        if event.type == DELETED:
            return "Capsule Deployment deleted", True
        return f"replicas {spec}, ready {ready}", spec == 0
    if event.resource in ("validatingwebhooks", "mutatingwebhooks"):
        hooks = obj.get("webhooks") or []
        conditions = sum(len(h.get("matchConditions") or []) for h in hooks)
        return f"{len(hooks)} webhooks, {conditions} matchConditions", event.type == DELETED
    return "", False


def format_journal(rec: Mapping[str, Any]) -> str:
    """One journal record as one short line."""
    ts = str(rec.get("ts") or "")
    ts = ts[11:19] if len(ts) >= 19 else ts
    kind = rec.get("kind")
    step = rec.get("step") or ""
    if kind == "intent":
        dry = " (dry-run)" if rec.get("dry_run") else ""
        return f"{ts} #{rec.get('seq')} {step} {rec.get('action')} {rec.get('target')}{dry}"
    if kind == "outcome":
        detail = f" {rec.get('detail')}" if rec.get("detail") else ""
        return f"{ts} #{rec.get('seq')} -> #{rec.get('intent')} {rec.get('status')}{detail}"
    if kind == "step":
        detail = f": {rec.get('detail')}" if rec.get("detail") else ""
        return f"{ts} step {step} {rec.get('status')}{detail}"
    if kind == "log":
        return f"{ts} {step}: {rec.get('message')}"
    if kind == "confirmation":
        return f"{ts} {step} confirmation: {rec.get('answer')}"
    if kind == "trigger":
        trig = rec.get("trigger") or {}
        return f"{ts} trigger {trig.get('kind')}: {trig.get('reason')}"
    if kind == "undone":
        return f"{ts} #{rec.get('seq')} undone #{rec.get('intent')}"
    return f"{ts} {kind}"


class TuiState:
    """The model behind the screen. Feed it events; read rows, counts, steps, header fields."""

    def __init__(self, *, protected: Iterable[str] = (), steps: Iterable[tuple[str, str, str]] = (),
                 context: str = "", server: str = "", identity: str = "", dry_run: bool = False,
                 auto: bool = True, yes: bool = False, feed_limit: int = 500, journal_limit: int = 200,
                 track_latency: bool = False) -> None:
        self.context, self.server, self.identity = context, server, identity
        self.dry_run, self.auto, self.yes = dry_run, auto, yes
        self.protected = frozenset(protected)
        # The cluster picture, kept from watch events (plus one seed from the session's own view).
        self.crd: dict[str, Any] | None = None
        self.crd_synced = False
        self.tenants: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.deployment: dict[str, Any] | None = None
        self.known: dict[str, str] = {}  # tenant namespaces ever seen (and the shadow's): ns -> tenant
        self.detached: dict[str, str] = {}  # persisted detach writes seen: ns -> tenant
        # Recovery (engine `restore` / `readopt` events); mutated in place: the view holds them.
        self.readopted: dict[str, str] = {}  # ns -> the Tenant it was re-adopted into
        self.restoring: set[str] = set()
        self.restored: set[str] = set()
        self.backup_locations: dict[str, dict[str, Any]] = {}  # Velero BackupStorageLocations by name
        self._by_tenant_ref: dict[str, set[str]] = {}  # tenant name -> namespaces referencing it
        self.synced: set[str] = set()
        self._listed: Counter[str] = Counter()  # ADDED before a stream's SYNCED (not fed line by line)
        self.seeded = False
        self._view = self._make_view()
        # Rows and what the table has not seen yet.
        self.rows: dict[str, Row] = {}
        self.counts: Counter[str] = Counter()  # kept incrementally, per row change (never recounted)
        self.tenant_counts: dict[str, Counter[str]] = {}
        self._pending: dict[str, None] = {}  # names to re-triage, insertion-ordered, coalesced
        self._arrivals: list[float] = []  # events shown by the next frame, whatever it holds
        self._row_arrivals: dict[str, list[float]] = {}  # namespace events: shown with their row
        self.track_latency = track_latency
        # Feed, steps, journal, header.
        self.feed: deque[FeedLine] = deque(maxlen=feed_limit)
        self.feed_total = 0  # lines ever appended (widgets take the ones they have not shown)
        self.steps: dict[str, StepView] = {}
        for sid, action, description in steps:
            self.steps[sid] = StepView(sid, action, description)
        self.journal_tail: deque[str] = deque(maxlen=journal_limit)
        self.journal_total = 0
        self.breaker_result: str | None = None  # the breaker step's own verdict (data["breaker"])
        # Is the namespace hold armed ahead of the incident (the session's preflight read)? None: not known.
        self.hold_armed: bool | None = None
        self.hold_not_armed = ""  # why not, when it is not
        self.self_hold = ""  # the self-arming hold: in force | dormant | "" (not installed)
        # Watch streams that stopped after their first list and are being restarted: name -> why. While any
        # is, detection or triage may not see what happens to that resource.
        self.blind: dict[str, str] = {}
        self.incident: Incident | None = None
        self.phase = "starting"  # starting | watching | containing | contained | not-contained | error
        self.phase_detail = ""
        self.waiting_confirmation: str | None = None
        self.header_version = 0
        self.steps_version = 0
        # Attached to a guard (responder.response.attach): the Lease's holder, the Incident object followed,
        # its phase, counts and approvals as the guard writes them.
        self.attached = ""
        self.guard_incident = ""
        self.guard_phase = ""
        self.guard_counts: dict[str, int] = {}
        self.approvals: dict[str, str] = {}  # step -> approver
        # Once this TUI took the Lease over from the guard it followed: that guard's pod (it leads now).
        self.took_over_from = ""

    # ---------------------------------------------------------------------------------- inputs

    def seed(self, view: triage.ClusterView) -> None:
        """Take the session's own consistent picture (after its watches synced): it adds what events
        cannot carry (the shadow's known namespaces, the journal's detached ones)."""
        self.protected = frozenset(view.protected) or self.protected
        if view.crd_present and self.crd is None:
            self.crd = {"metadata": {"name": "tenants.capsule.clastix.io"}}
        if not view.crd_present:
            self.crd = None
        elif view.crd_deleting and not _meta(self.crd or {}).get("deletionTimestamp"):
            self.crd = {**(self.crd or {}), "metadata": {**_meta(self.crd or {}), "deletionTimestamp": "seen"}}
        self.crd_synced = True
        was_ready, flags = self.ready, (self._view.crd_present, self._view.crd_deleting)
        old_tenants, old_namespaces = self.tenants, self.namespaces
        self.tenants = dict(view.tenants)
        self.namespaces = dict(view.namespaces)
        new_known = {n for n, t in view.known_namespaces.items() if self.known.get(n) != t}
        new_detached = {n for n, t in view.detached.items() if self.detached.get(n) != t}
        new_recovery = ({n for n, t in view.readopted.items() if self.readopted.get(n) != t}
                        | (set(view.restoring) ^ self.restoring) | (set(view.restored) - self.restored))
        self.known.update(view.known_namespaces)
        self.detached.update(view.detached)
        self.readopted.update(view.readopted)
        self.restored.update(view.restored)
        self.restoring.clear()
        self.restoring.update(set(view.restoring) - self.restored)
        self._by_tenant_ref = {}
        for name, ns in self.namespaces.items():
            for t in _tenant_ref_names(ns):
                self._by_tenant_ref.setdefault(t, set()).add(name)
        self.seeded = True
        self._view = self._make_view()
        same_tenants = old_tenants.keys() == self.tenants.keys() and all(
            old_tenants[k] is v for k, v in self.tenants.items())
        if not was_ready or flags != (self._view.crd_present, self._view.crd_deleting) or not same_tenants:
            self._mark(set(self.namespaces) | set(self.known) | set(self.detached) | set(self.rows)
                       | new_recovery)
        else:  # the events already gave the same objects: re-triage only what the view adds or changes
            self._mark({n for n, ns in self.namespaces.items() if old_namespaces.get(n) is not ns}
                       | (set(old_namespaces) - set(self.namespaces)) | new_known | new_detached | new_recovery)
        self.header_version += 1

    @property
    def ready(self) -> bool:
        """Verdicts are shown once the session's picture is seeded or all triage streams listed."""
        return self.seeded or TRIAGE_STREAMS <= self.synced

    def apply_watch(self, event: WatchEvent, arrived: float | None = None) -> None:
        res, kind, obj = event.resource, event.type, event.object
        name = _meta(obj).get("name") or ""
        if self.track_latency:
            at = arrived if arrived is not None else time.perf_counter()
            if res == "namespaces" and kind in (ADDED, MODIFIED, DELETED):
                self._row_arrivals.setdefault(name, []).append(at)
            else:
                self._arrivals.append(at)
        self._feed_watch(event)
        if kind == SYNCED or kind == TYPE_GONE:
            was_ready = self.ready
            self.synced.add(res)
            if res == "crd":
                self.crd_synced = True
                self._crd_changed()
            if not was_ready and self.ready:
                self._mark(set(self.namespaces) | set(self.known))
            if kind == TYPE_GONE and res == "tenants":
                self._drop_all_tenants()
            if res == VELERO_STREAM:
                if kind == TYPE_GONE:
                    self.backup_locations.clear()
                self.header_version += 1
            return
        if res == "crd":
            self.crd = None if kind == DELETED else obj
            self._crd_changed()
        elif res == "tenants":
            if kind == DELETED:
                self.tenants.pop(name, None)
            else:
                self.tenants[name] = obj
            self._mark(self._by_tenant_ref.get(name, ()))
        elif res == "namespaces":
            old = self.namespaces.get(name)
            for t in _tenant_ref_names(old) if old else ():
                refs = self._by_tenant_ref.get(t)
                if refs:
                    refs.discard(name)
            if kind == DELETED:
                self.namespaces.pop(name, None)
            else:
                self.namespaces[name] = obj
                for t in _tenant_ref_names(obj):
                    self._by_tenant_ref.setdefault(t, set()).add(name)
            self._mark((name,))
        elif res == "deployment":
            self.deployment = None if kind == DELETED else obj
            self.header_version += 1
        elif res == VELERO_STREAM:
            if kind == DELETED:
                self.backup_locations.pop(name, None)
            else:
                self.backup_locations[name] = obj
            self.header_version += 1

    def apply_engine(self, event: EngineEvent, arrived: float | None = None) -> None:
        if self.track_latency:
            self._arrivals.append(arrived if arrived is not None else time.perf_counter())
        data = dict(event.data)
        step = self.steps.get(event.step)
        if step is None:
            step = self.steps[event.step] = StepView(event.step)
        if event.kind != "confirm" and self.waiting_confirmation == event.step:
            # Any later event of that step means the operator answered.
            self.waiting_confirmation = None
            if step.status == "waiting":
                step.status, step.note = "running", ""
            self.header_version += 1
        if event.kind == "step-started":
            step.action = data.get("action") or step.action
            step.description = data.get("description") or step.description
            step.status, step.started_at, step.finished_at = "running", event.at, None
            step.done = step.total = None
            step.summary = step.note = ""
        elif event.kind == "step-progress":
            step.done, step.total = data.get("done"), data.get("total")
            step.note = data.get("note") or step.note
        elif event.kind == "step-finished":
            step.status = data.get("status") or "finished"
            step.summary = data.get("summary") or ""
            step.finished_at = event.at
            if step.started_at is None:
                step.started_at = event.at
            if "breaker" in data:  # trip-breaker: tripped/unavailable/dry-run; verify-breaker: verified/...
                self.breaker_result = str(data["breaker"])
                self.header_version += 1
        elif event.kind == "confirm":
            step.status = "waiting"
            step.note = f"waiting for confirmation: {data.get('summary', '')}"
            self.waiting_confirmation = event.step
        elif event.kind == "write":
            step.writes += 1
            if data.get("action") == DETACH_ACTION and not data.get("dry_run"):
                self._detached(str(data.get("target") or ""), None)
        elif event.kind == RESTORE_EVENT and not data.get("dry_run"):
            self._restore(str(data.get("target") or ""), str(data.get("status") or ""))
        elif event.kind == READOPT_EVENT and not data.get("dry_run"):
            name = str(data.get("target") or "")
            if name:
                self.readopted[name] = str(data.get("tenant") or "")
                self._mark((name,))
        elif event.kind == "log":
            self._add_feed(FeedLine(event.at, "engine", str(data.get("level", "info")).upper(), event.step,
                                    str(data.get("message", "")), data.get("level") == "warning"))
        if event.kind == "confirm":
            self.header_version += 1
        self.steps_version += 1

    def set_attached(self, holder: str, *, at: float | None = None) -> None:
        """The guard replica holding the writer Lease, which this TUI follows (a new one after a failover)."""
        if holder == self.attached:
            return
        if self.attached and at is not None:
            self.add_note(f"the Lease now names {holder or 'nobody'} (was {self.attached})", at=at, alert=True)
        self.attached = holder
        self.header_version += 1

    def set_took_over(self, previous: str, *, at: float) -> None:
        """This TUI took the writer Lease over from the guard `previous`: it is no longer attached, it leads."""
        self.took_over_from = holder_role(previous)[1] or previous
        self.attached = ""
        self.waiting_confirmation = None
        self.add_note(f"took the writer Lease over from the guard {self.took_over_from}: this TUI leads the cluster "
                      "now (the guard replicas stand by); its confirmations run the steps here; quitting releases the "
                      "Lease", at=at, alert=True)
        self.header_version += 1

    @property
    def attached_place(self) -> str:
        """The leading guard's pod (from its holder identity), or the identity itself when it has no place."""
        return holder_role(self.attached)[1] or self.attached

    def apply_guard_incident(self, incident: Mapping[str, Any], *, at: float) -> None:
        """The guard's Incident object as last read: the incident, its phase, steps, counts and approvals."""
        meta, spec, status = incident.get("metadata") or {}, incident.get("spec") or {}, incident.get("status") or {}
        name = str(meta.get("name") or "")
        trigger = status.get("trigger") or spec.get("trigger") or {}
        if name != self.guard_incident:
            self.guard_incident = name
            self.approvals = {}
            opened = trigger.get("event_received") or parse_time(meta.get("creationTimestamp")) or at
            self.incident = Incident(str(spec.get("incidentId") or name), str(trigger.get("kind") or "?"),
                                     str(trigger.get("reason") or ""), float(opened))
            self.add_note(f"the guard's incident: Incident {name} ({trigger.get('reason') or '?'})", at=at, alert=True)
        phase = str(status.get("phase") or "Detected")
        if phase != self.guard_phase:
            self.guard_phase = phase
            self.add_note(f"Incident {name}: {phase}" + (f" ({status['waitingFor']})" if status.get("waitingFor")
                                                         and phase == "WaitingForApproval" else ""),
                          at=at, alert=phase in ("Failed", "WaitingForApproval"))
        for approval in spec.get("approvals") or []:
            step, who = str(approval.get("step") or ""), str(approval.get("approver") or "")
            if step and step not in self.approvals:
                self.approvals[step] = who
                self.add_note(f"step {step} approved by {who} at {approval.get('approvedAt', '?')}", at=at)
        self.guard_counts = {k: int(v) for k, v in (status.get("namespaces") or {}).items()}
        # Steps: the ones waiting for approval listed ahead of time, then what the guard ran.
        for sid in status.get("approvalSteps") or []:
            if sid not in self.steps:
                self.steps[sid] = StepView(sid, note="waits for approval")
        for sid, step in self.steps.items():  # shown waiting at the last look: approved since, or no longer asked
            if step.status == "waiting":
                step.status, step.note = "pending", "approved" if sid in self.approvals else ""
        for entry in status.get("steps") or []:
            sid = str(entry.get("id") or "")
            if not sid:
                continue
            step = self.steps.get(sid)
            if step is None:
                step = self.steps[sid] = StepView(sid)
            step.status = str(entry.get("status") or step.status)
            step.summary = str(entry.get("summary") or "")
            step.started_at = parse_time(entry.get("startedAt")) or step.started_at
            step.finished_at = parse_time(entry.get("finishedAt")) if step.status != "running" else None
            step.note = ""
        waiting = awaiting_approval(incident)
        if waiting is not None:
            step = self.steps.setdefault(waiting, StepView(waiting))
            step.status, step.note = "waiting", "waiting for approval (the guard runs it once approved)"
        self.waiting_confirmation = waiting
        self.phase, self.phase_detail = guard_phase(incident)
        self.header_version += 1
        self.steps_version += 1

    def mark_guard_detached(self, owners: Mapping[str, str]) -> None:
        """Namespaces the guard's snapshot lists with a Tenant owner that carry no Tenant reference now: the
        guard detached them (its journal, which would say so, is on its own disk)."""
        for name, tenant in owners.items():
            obj = self.namespaces.get(name)
            if obj is not None and name not in self.detached and not triage.tenant_refs(obj):
                self._detached(name, tenant)

    def open_incident(self, incident_id: str, kind: str, reason: str, at: float) -> None:
        self.incident = Incident(incident_id, kind, reason, at)
        self.phase = "containing"
        self.header_version += 1

    def set_phase(self, phase: str, detail: str = "") -> None:
        self.phase, self.phase_detail = phase, detail
        self.header_version += 1

    def set_dry_run(self, value: bool) -> None:
        self.dry_run = value
        self.header_version += 1

    def set_hold(self, not_armed: str | None) -> None:
        """The session's `hold_not_armed`: None if the namespace hold is armed, else why it is not."""
        armed, why = not_armed is None, "" if not_armed is None else str(not_armed)
        if (armed, why) != (self.hold_armed, self.hold_not_armed):
            self.hold_armed, self.hold_not_armed = armed, why
            self.header_version += 1

    def set_self_hold(self, state: str) -> None:
        """The self-arming hold: "in force", "dormant" or "" (not installed: not shown; doctor says so)."""
        if state != self.self_hold:
            self.self_hold = state
            self.header_version += 1

    def set_blind(self, stream_errors: Mapping[str, str]) -> None:
        """The observer's `stream_errors`: the streams not watched right now, and why."""
        if dict(stream_errors) != self.blind:
            self.blind = dict(stream_errors)
            self.header_version += 1

    def add_note(self, text: str, *, at: float, alert: bool = False, source: str = "responder") -> None:
        """A line from responder itself (a log record, an undo result) into the feed."""
        self._add_feed(FeedLine(at, source, "NOTE", "", text, alert))

    def add_journal_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """The journal's latest records (for the lines under the runbook)."""
        for rec in records:
            self.journal_tail.append(format_journal(rec))
            self.journal_total += 1
        self.steps_version += 1

    def add_journal_intents(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Every `intent` record of the journal: persisted `detach` intents mark their namespace as
        detached by responder. (The intent, not its outcome: the namespace's MODIFIED event may come
        first. A detach that failed leaves the Tenant reference, and triage still says at-risk.)"""
        for rec in records:
            if rec.get("kind") == "intent" and rec.get("action") == DETACH_ACTION and not rec.get("dry_run"):
                refs = (rec.get("undo") or {}).get("ownerReferences") or []
                self._detached(str(rec.get("target") or ""), (refs[0].get("name") if refs else None))

    # --------------------------------------------------------------------------------- outputs

    def flush(self, limit: int | None = None) -> TableChanges:
        """Re-triage what events touched (at most `limit` namespaces) and return the differences."""
        changes = TableChanges()
        changes.arrivals, self._arrivals = self._arrivals, []
        if not self.ready or not self._pending:
            return changes
        if limit is None or limit >= len(self._pending):
            names, self._pending = list(self._pending), {}
        else:
            names = []
            for name in self._pending:
                names.append(name)
                if len(names) >= limit:
                    break
            for name in names:
                del self._pending[name]
        touched: set[str] = set()
        if self._row_arrivals:
            for name in names:
                changes.arrivals.extend(self._row_arrivals.pop(name, ()))
        for name in names:
            before = self.rows.get(name)
            after = self._triage(name)
            if after == before:
                continue
            if before is not None:
                self._count(before, -1)
                touched.add(before.tenant)
            if after is None:
                del self.rows[name]
                assert before is not None
                changes.removed.append(before)
                continue
            self.rows[name] = after
            self._count(after, +1)
            touched.add(after.tenant)
            if after.tenant and after.state != triage.NsState.GONE.value:
                self.known[name] = after.tenant
            if before is None:
                changes.added.append(after)
            else:
                changes.updated.append((before, after))
        changes.tenants = {t: dict(self.tenant_counts.get(t) or {}) for t in touched}
        changes.complete = not self._pending
        return changes

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def has_arrivals(self) -> bool:
        return bool(self._arrivals)  # (row arrivals come with pending rows)

    def take_feed(self, shown_total: int) -> list[FeedLine]:
        """Feed lines appended after the first `shown_total` (at most what the feed still holds)."""
        new = self.feed_total - shown_total
        if new <= 0:
            return []
        lines = list(self.feed)
        return lines[-new:] if new < len(lines) else lines

    def capsule_replicas(self) -> int | None:
        if self.deployment is None:
            return None
        replicas = (self.deployment.get("spec") or {}).get("replicas")
        return int(replicas) if replicas is not None else 1

    def capsule_version(self) -> str:
        return capsule_version(self.deployment)

    def mode(self) -> str:
        if self.attached:
            return "attached, dry-run" if self.dry_run else "attached"
        if self.dry_run:
            return "dry-run"
        if not self.auto:
            return "confirm"
        return "auto --yes" if self.yes else "auto"

    def breaker(self) -> tuple[str, str]:
        """(armed | tripped | verified | unavailable | unknown, a short explanation)."""
        replicas = self.capsule_replicas()
        result = self.breaker_result
        if result == "unavailable":
            return "unavailable", "no fail-closed Capsule webhook guards namespace deletes"
        if result == "capsule-uninstalled":
            return "unavailable", "Capsule uninstalled: nothing to scale; the namespace hold is what holds"
        if replicas == 0:
            if result == "verified":
                return "verified", "Capsule at 0; namespace deletes refused for all but responder"
            if result in (None, "tripped", "dry-run"):
                return "tripped", "Capsule at 0 replicas" + ("; not verified yet" if result == "tripped" else "")
            return "tripped", f"Capsule at 0; NOT verified ({result})"
        if replicas is None:
            return "unknown", "no Capsule Deployment seen"
        if result == "dry-run":
            return "armed", "dry run: nothing was tripped"
        if result == "verified":
            return "armed", f"Capsule back at {replicas} replicas: breaker no longer holds"
        return "armed", f"Capsule at {replicas} replicas"

    def hold(self) -> tuple[str, str]:
        """(armed | not armed | unknown, why not). Not armed: the breaker creates the namespace hold during the
        incident, which the API server enforces only at its next policy refresh (~1 s, not milliseconds)."""
        if self.hold_armed is None:
            return "unknown", "not read"
        return ("armed", "") if self.hold_armed else ("not armed", self.hold_not_armed)

    def velero(self) -> str:
        """The Velero backup storage location's phase (Available, Unavailable, ...), "none", or "?"."""
        if not self.backup_locations:
            return "none" if VELERO_STREAM in self.synced else "?"
        default = [o for o in self.backup_locations.values() if (o.get("spec") or {}).get("default")]
        chosen = default[0] if default else self.backup_locations[min(self.backup_locations)]
        return str((chosen.get("status") or {}).get("phase") or "Unknown")

    def tenant_summary(self, tenant: str) -> str:
        counts = self.tenant_counts.get(tenant) or {}
        return " ".join(f"{s} {counts[s]}" for s in URGENCY if counts.get(s))

    # -------------------------------------------------------------------------------- internals

    def _restore(self, name: str, status: str) -> None:
        if not name:
            return
        if status == "restoring":
            self.restoring.add(name)
            self.restored.discard(name)
        elif status == "restored":
            self.restoring.discard(name)
            self.restored.add(name)
        elif status == "failed":
            self.restoring.discard(name)
        else:
            return
        self._mark((name,))

    def _detached(self, name: str, tenant: str | None) -> None:
        if not name or name in self.detached:
            return
        row = self.rows.get(name)
        self.detached[name] = tenant or (row.tenant if row else "") or self.known.get(name, "")
        self._mark((name,))

    def _make_view(self) -> triage.ClusterView:
        crd = self.crd
        # Until the CRD stream has listed, assume the CRD is there: "absent" would flag every tenant
        # namespace at-risk for a frame.
        present = crd is not None or not self.crd_synced
        return triage.ClusterView(
            crd_present=present, crd_deleting=bool(crd and _meta(crd).get("deletionTimestamp")),
            tenants=self.tenants, namespaces=self.namespaces, protected=self.protected,
            known_namespaces=self.known, detached=self.detached, readopted=self.readopted,
            restoring=self.restoring, restored=self.restored)  # type: ignore[arg-type]  # live sets, see __init__

    def _crd_changed(self) -> None:
        old = (self._view.crd_present, self._view.crd_deleting)
        self._view = self._make_view()
        if (self._view.crd_present, self._view.crd_deleting) != old:
            affected: set[str] = set()
            for names in self._by_tenant_ref.values():
                affected |= names
            self._mark(affected)
        self.header_version += 1

    def _drop_all_tenants(self) -> None:
        names = list(self.tenants)
        self.tenants.clear()
        for name in names:
            self._mark(self._by_tenant_ref.get(name, ()))

    def _mark(self, names: Iterable[str]) -> None:
        pending = self._pending
        for name in names:
            pending[name] = None

    def _triage(self, name: str) -> Row | None:
        ns = self.namespaces.get(name)
        if ns is not None:
            verdict = triage.triage_namespace(ns, self._view)
        elif (name in self.known or name in self.detached or name in self.readopted or name in self.restoring
              or name in self.restored):
            # Gone: let triage word it, from a view holding only what responder knew of it.
            view = triage.ClusterView(
                crd_present=self._view.crd_present, crd_deleting=self._view.crd_deleting, tenants={},
                namespaces={}, protected=self.protected,
                known_namespaces={name: self.known[name]} if name in self.known else {},
                detached={name: self.detached[name]} if name in self.detached else {},
                readopted={name: self.readopted[name]} if name in self.readopted else {},
                restoring=frozenset({name} & self.restoring), restored=frozenset({name} & self.restored))
            verdicts = triage.triage(view)
            if not verdicts:
                return None
            verdict = verdicts[0]
        else:
            return None
        return Row(verdict.name, verdict.tenant or NO_TENANT, _STATE_VALUE.get(verdict.state) or str(verdict.state), verdict.reason)

    def _count(self, row: Row, delta: int) -> None:
        # Plain dict operations: Counter's own are several times slower, and this runs per row change.
        state, counts = row.state, self.counts
        per = self.tenant_counts.get(row.tenant)
        if per is None:
            per = self.tenant_counts[row.tenant] = Counter()
        n = per.get(state, 0) + delta
        if n > 0:
            per[state] = n
        else:
            per.pop(state, None)
        n = counts.get(state, 0) + delta
        if n > 0:
            counts[state] = n
        else:
            counts.pop(state, None)

    def _feed_watch(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            listed = self._listed.pop(event.resource, 0)
            self._add_feed(FeedLine(event.received, event.resource, "SYNCED", "", f"listed {listed}"))
            return
        if event.type == ADDED and event.resource not in self.synced:
            self._listed[event.resource] += 1  # the initial list: one summary line at SYNCED
            return
        detail, alert = describe_watch(event)
        self._add_feed(FeedLine(event.received, event.resource, event.type,
                                _meta(event.object).get("name") or "", detail, alert))

    def _add_feed(self, line: FeedLine) -> None:
        self.feed.append(line)
        self.feed_total += 1


# The guard's Incident phase -> the TUI's phase (header banner).
GUARD_PHASES = {"Detected": "containing", "Containing": "containing", "Contained": "contained",
                "WaitingForApproval": "recovering", "Recovering": "recovering", "Recovered": "recovered"}


def guard_phase(incident: Mapping[str, Any]) -> tuple[str, str]:
    """(the TUI's phase, the banner's detail) for the guard's Incident: whose it is, its phase, its counts."""
    status = incident.get("status") or {}
    phase = str(status.get("phase") or "Detected")
    ran_recovery = any(s.get("phase") == "recover" for s in status.get("steps") or [])
    tui_phase = GUARD_PHASES.get(phase, "not-recovered" if ran_recovery else "not-contained")
    counts = status.get("namespaces") or {}
    guard = holder_role(str(status.get("leader") or ""))[1] or status.get("leader") or "?"
    if phase == "WaitingForApproval" and status.get("waitingFor"):  # first: what the on-call is asked
        parts = [f"waiting for approval of {status['waitingFor']} (guard {guard})"]
    else:
        parts = [f"{phase} (guard {guard})"]
    if status.get("reason"):
        parts.append(str(status["reason"]))
    listed = [f"{s} {counts[s]}" for s in ("detached", "at-risk", "terminating", "gone") if counts.get(s)]
    if listed:
        parts.append(", ".join(listed))
    return tui_phase, "; ".join(parts)


__all__ = ["TuiState", "Row", "TableChanges", "FeedLine", "StepView", "Incident", "capsule_version",
           "format_journal", "describe_watch", "utc_clock"]
