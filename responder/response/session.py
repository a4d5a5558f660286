"""An incident-response session against one cluster: preflight, observe, detect, open the incident,
run the runbook. Shared by the headless commands and the TUI (which only subscribes and confirms)."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.incident import triage
from responder.actions import ACTIONS, action_specs
from responder.actions.breaker import NOT_NEEDED, read_armed_hold
from responder.actions.self_hold import SelfHoldState, read_self_hold
from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import ClusterAccess
from responder.cluster.lease import LeaseHeld
from responder.incident.delete_gate import GARBAGE_COLLECTOR, GateDecision, GateRequest, GateSettings, decide, picture_from_facts
from responder.incident.detect import DETECTION_LOGGER, INCIDENT, NOTICE, ROUTINE, Decision, Detector, Trigger, late_start
from responder.incident.engine import Confirmer, Engine, EngineEvent, EngineOptions, StepOutcome
from responder.errors import EXIT_FORBIDDEN, ConfigError, Forbidden, ResponderError, Unauthorized
from responder.incident.journal import Journal
from responder.incident.record import TenantRecord, read_tenant_record
from responder.incident.observe import CapsuleTarget, ClusterObserver
from responder.runbook.schema import Runbook, load_runbook
from responder.incident.shadow import Shadow
from responder.report import capsule_down_warning, capsule_left_down
from responder.response.attach import attach_target
from responder.response.leadership import WriterLease, hold_writer_lease

log = logging.getLogger(__name__)
detection_log = logging.getLogger(DETECTION_LOGGER)
DECISIONS_KEPT = 200  # the latest notable decisions, for the summary (all are counted)

REPO_RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
DEFAULT_RUNBOOK = "capsule-tenant-crd-deletion.yaml"


def default_journal_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "responder" / "incidents"


def resolve_runbook(path: str | None) -> Path:
    if path:
        p = Path(path)
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise ConfigError(f"runbook {path!r} {what}", fix="name a runbook YAML file, e.g. "
                              "runbooks/capsule-tenant-crd-deletion.yaml")
        return p
    p = REPO_RUNBOOKS / DEFAULT_RUNBOOK
    if not p.is_file():
        raise ConfigError(f"the default runbook {p} is missing (responder is not installed from its repository "
                          "with ./dev)", fix="pass --runbook FILE (the repository's runbooks/ holds the shipped one)")
    return p


@dataclass
class SessionOptions:
    runbook: Path
    journal_dir: Path
    dry_run: bool = False
    auto: bool = True
    yes: bool = False
    capsule: CapsuleTarget = field(default_factory=CapsuleTarget)
    velero_namespace: str = "velero"
    extra_protected: tuple[str, ...] = ()
    concurrency: int = 8  # HTTP connections (HTTP/2 multiplexes the requests in flight over them)
    http2: bool = True
    bulk_connections: int = 16  # HTTP/1.1 connections for batched writes (0: send them through httpx)
    contain_only: bool = False  # stop after the contain phase (recover later with run --resume)
    # Recovery steps ask the confirmer even with `yes` (the guard: they wait for approvals on the Incident).
    confirm_recovery: bool = False
    read_only: bool = False  # `plan`: nothing written, on the cluster or on disk (no journal directory, no shadow file)


async def whoami(client: KubeClient) -> str:
    """The username the API server sees for us (SelfSubjectReview; creates nothing)."""
    review = await client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", dry_run=False,
                                  body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return ((review.get("status") or {}).get("userInfo") or {}).get("username", "")


# Namespaces a runbook may never point a write at, whatever the flags say.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "default"})


def check_runbook_targets(runbook: Runbook, options: SessionOptions) -> Runbook:
    """Runbook params that name where Capsule runs must name what this session watches as Capsule
    (--capsule-namespace/--capsule-deployment), and never a system namespace: a hostile or mistaken
    runbook must not scale kube-system/coredns to 0 as the 'breaker'."""
    from responder.errors import RunbookError

    # --capsule-namespace/--capsule-deployment, when given, override the runbook's spec.params
    # (a step's own params still win, and are checked below).
    overrides = {k: v for k, v, default in (("capsuleNamespace", options.capsule.namespace, "capsule-system"),
                                            ("capsuleDeployment", options.capsule.deployment,
                                             "capsule-controller-manager"))
                 if v != default and any(k in step.params for step in runbook.steps)}
    if overrides:
        runbook = runbook.with_params(overrides, action_specs())
    for index, step in enumerate(runbook.steps):
        for param, expected in (("capsuleNamespace", options.capsule.namespace),
                                ("capsuleDeployment", options.capsule.deployment)):
            if param not in step.params or step.params[param] == expected:
                continue
            value = step.params[param]
            field = f"spec.steps[{index}].params.{param}" if param in step.explicit_params else f"spec.params.{param}"
            where = f"{runbook.path}:{step.line}: {field}"
            if param == "capsuleNamespace" and value in SYSTEM_NAMESPACES:
                raise RunbookError(f"{where}: {value!r} is a protected system namespace; responder never writes there",
                                   fix=f"point {param} at Capsule's namespace ({expected})")
            raise RunbookError(f"{where}: {value!r} is not the Capsule responder watches ({expected!r})",
                               fix=f"set {param}: {expected} in the runbook, or pass --capsule-"
                                   f"{'namespace' if param == 'capsuleNamespace' else 'deployment'} {value}")
    return runbook


class Session:
    def __init__(self, access: ClusterAccess, options: SessionOptions, *, confirmer: Confirmer | None = None) -> None:
        self.access = access
        self.options = options
        self.runbook: Runbook = load_runbook(options.runbook, action_specs())
        self.runbook = check_runbook_targets(self.runbook, options)
        self.client = KubeClient(access, dry_run=options.dry_run, max_connections=options.concurrency,
                                 http2=options.http2, bulk_connections=options.bulk_connections)
        self.protected = triage.protected_namespaces(options.capsule.namespace, options.velero_namespace,
                                                     options.extra_protected)
        shadow_path = options.journal_dir / f"shadow-{_safe(access.context or 'in-cluster')}.json"
        self.observer = ClusterObserver(self.client, capsule=options.capsule, shadow=Shadow.load(shadow_path),
                                        shadow_path=None if options.read_only else shadow_path)
        # Where what existed comes from, before any backup: this shadow copy, else the guard's record (preflight).
        self.evidence_source = "shadow copy"
        self.tenant_record: TenantRecord | None = None
        self.known_before: dict[str, str] = {}
        self.detector = Detector(self.runbook.detection)
        self.listed_at: float | None = None  # when every first list was in (the watch events' clock)
        # The delete gate holds the garbage collector's and Capsule's namespace DELETEs for detection's window.
        self.gate_settings = GateSettings(
            window_seconds=self.runbook.detection.window_seconds,
            users=frozenset({GARBAGE_COLLECTOR, f"system:serviceaccount:{options.capsule.namespace}:capsule"}))
        # Every decision on what the watches show: the notable ones listed (log, feed, summary), all counted.
        self.decisions: deque[Decision] = deque(maxlen=DECISIONS_KEPT)
        self.decision_counts: Counter[str] = Counter()
        self.decision_listeners: list[Callable[[Decision], None]] = []
        self.confirmer = confirmer
        self.identity = ""
        self.hold_not_armed: str | None = "not read"  # why the armed namespace hold would not hold (None: armed)
        self.self_hold = SelfHoldState(False, why="not read")  # the self-arming hold, as last read
        self.journal: Journal | None = None
        self.trigger: Trigger | None = None
        self.engine: Engine | None = None
        self.engine_listeners: list[Callable[[EngineEvent], None]] = []
        self.incident_opened = asyncio.Event()
        # What kept a detected incident from opening (its journal could not be written): the waiter
        # raises it instead of watching on as if nothing had happened.
        self.open_error: ResponderError | None = None
        self._open_failed = asyncio.Event()
        self._waiters: list[asyncio.Future] = []  # wait_for_incident's, resolved when an incident opens or fails to
        self.results: dict[str, StepOutcome] = {}
        self.first_write_at: float | None = None
        self._snapshot: dict[str, Any] | None = None  # taken at the incident's opening, not yet journaled
        self.leadership: WriterLease | None = None  # the cluster's writer Lease (a guard sets its own before preflight)
        # Whether a detected incident opens here now (a standby guard replica: not until it leads).
        self.may_open: Callable[[], bool] | None = None
        # The guard replica leading the cluster that this session is attached to ("": none, it acts itself).
        self.attached_to = ""

    def set_dry_run(self, dry_run: bool) -> None:
        """Switch dry-run before an incident opens (the TUI's toggle): options and client together,
        so the engine and the wire never disagree."""
        if self.incident_opened.is_set():
            raise ResponderError("dry-run cannot change once an incident is open", fix="start a new session")
        self.options.dry_run = dry_run
        self.client.dry_run = dry_run

    async def preflight(self, *, attach: bool = False) -> None:
        """Reachability and identity, before anything else (and before any UI starts). `attach` (the TUI):
        where a live guard holds the writer Lease, attach to it (`attached_to`) instead of refusing."""
        # An unreachable cluster should fail the preflight fast, not after the write-retry deadline.
        deadline, self.client.retry_deadline = self.client.retry_deadline, 10.0
        try:
            self.identity = await whoami(self.client)
        except Forbidden as exc:
            error = ResponderError(f"the cluster refused responder's identity check: {exc.api_message}",
                                   fix="grant responder's identity create on selfsubjectreviews.authentication.k8s.io")
            error.exit_code = EXIT_FORBIDDEN
            raise error from None
        except Unauthorized as exc:
            error = ResponderError(f"the API server at {self.access.display_server} did not accept responder's credentials "
                                   f"(401 {exc.api_message or 'Unauthorized'}): expired, revoked or not issued "
                                   "for this cluster",
                                   fix="renew the client certificate or token of this kubeconfig user, or pick "
                                       "another --context")
            error.exit_code = EXIT_FORBIDDEN
            raise error from None
        finally:
            self.client.retry_deadline = deadline
        if not self.identity:
            raise ResponderError("the API server did not say who responder is", fix="check the credentials")
        # Read once, before any incident: the breaker marks the armed hold only where it is installed.
        self.hold_not_armed = await read_armed_hold(self.client)
        self.self_hold = await read_self_hold(self.client)
        if not self.options.read_only:
            check_journal_dir(self.options.journal_dir)
        await self.load_tenant_record()
        # What responder knew before it looked now (its shadow copy on disk, or the guard's record): the watches
        # add what is alive, which says nothing of what existed before an incident.
        self.known_before = dict(self.observer.shadow.namespace_tenants())
        # One writer per cluster: the Lease is held from here, before the first write (or LeaseHeld, exit 6).
        await self.hold_lease(attach=attach)

    async def hold_lease(self, *, attach: bool = False) -> None:
        """Hold the writer Lease (LeaseHeld when another live responder holds it); with `attach`, a guard
        holding it is followed instead (`attach_to`)."""
        try:
            self.leadership = await hold_writer_lease(self)
        except LeaseHeld as exc:
            if not attach or attach_target(exc.holder) is None:
                raise
            self.attach_to(exc.holder)

    def attach_to(self, holder: str) -> None:
        """A guard leads: this session opens no incident and runs no step (it writes nothing); the TUI shows
        the guard's incident and approves its steps (responder.response.attach)."""
        self.attached_to = holder
        self.may_open = lambda: False
        log.warning("a guard leads this cluster (%s): attached to its incident; this responder writes nothing "
                    "but the approvals given", holder)

    async def load_tenant_record(self) -> None:
        """With no shadow copy of its own (responder never ran here, or ran elsewhere), the guard's in-cluster
        record says what existed: it becomes the shadow copy the watches then keep current."""
        if self.observer.shadow.namespaces:
            return
        record = await read_tenant_record(self.client)
        if record is None or not record.shadow.namespaces:
            return
        self.tenant_record = record
        self.observer.shadow = record.shadow
        self.evidence_source = record.source
        log.info("no shadow copy of its own: what existed comes from the %s (%d Tenants, %d namespaces)",
                 record.source, len(record.shadow.tenants), len(record.shadow.namespaces))

    async def start(self) -> None:
        self.observer.subscribe(self._on_event)
        await self.observer.start()

    async def close(self) -> None:
        await self.observer.stop()
        await self.client.aclose()
        if self.leadership is not None:
            await self.leadership.close()
        if self.journal is not None:
            self.journal_snapshot()  # an incident opened and never contained still gets its snapshot
            self.journal.close()

    def _on_event(self, event) -> None:
        if self.trigger is not None:
            return
        decision = self.detector.decide(event)
        if self.listed_at is None and self.detector.facts.deciding:
            self.listed_at = event.received
        if decision.is_incident and (self.may_open is None or self.may_open()):
            self._open_or_fail(decision.trigger())  # first: the breaker must not wait for the log
        self._record_decision(decision)

    def gate_decision(self, request: GateRequest) -> GateDecision:
        """The delete gate's answer for one namespace DELETE, from the picture as it is now (no request)."""
        incident = self.journal.incident_id if self.trigger is not None and self.journal is not None else ""
        if self.trigger is not None and not incident:
            incident = self.trigger.reason
        picture = picture_from_facts(self.detector.facts, listed_at=self.listed_at, incident=incident)
        return decide(request, picture, self.gate_settings, time.time())

    def _record_decision(self, decision: Decision) -> None:
        """Count it; list, log and hand over the notable ones. Nothing here writes to the cluster."""
        self.decision_counts[decision.verdict] += 1
        if decision.quiet:
            return
        self.decisions.append(decision)
        detection_log.log(logging.INFO if decision.verdict == ROUTINE else logging.WARNING, "%s", decision.line())
        for listener in self.decision_listeners:
            try:
                listener(decision)
            except Exception:  # a broken listener must not stop detection
                log.exception("decision listener failed")

    def detection_summary(self) -> dict[str, Any]:
        """What detection decided and why: the incident's decision, the notices and notable routine."""
        incident = next((d for d in self.decisions if d.verdict == INCIDENT), None)
        return {"settings": self.runbook.detection.to_json(),
                "counts": {v: self.decision_counts.get(v, 0) for v in (INCIDENT, NOTICE, ROUTINE)},
                "incident": incident.to_json() if incident else None,
                "notices": [d.to_json() for d in self.decisions if d.verdict == NOTICE],
                "routine": [d.to_json() for d in self.decisions if d.verdict == ROUTINE]}

    def _open_or_fail(self, trigger: Trigger) -> None:
        try:
            self.open_incident(trigger)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the waiter must hear of it
            self.open_error = exc if isinstance(exc, ResponderError) else ResponderError(
                f"the incident ({trigger.reason}) could not be opened: {type(exc).__name__}: {exc}",
                fix="see the log above; then run `responder run` to contain by hand")
            log.error("INCIDENT DETECTED BUT NOT OPENED (%s): %s", trigger.reason, exc)
            self._open_failed.set()
            self._wake_waiters()

    async def wait_for_incident(self, timeout: float | None = None) -> None:
        """Until an incident is open. Raises what kept a detected one from opening, or TimeoutError."""
        if not (self.incident_opened.is_set() or self._open_failed.is_set()):
            # A bare future, resolved by the opening itself: the waiter (who contains next) runs at the
            # loop's next turn, not three turns later through Event.wait tasks and asyncio.wait.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                pass
            finally:
                self._waiters.remove(waiter)
        if self.incident_opened.is_set():
            return
        if self.open_error is not None:
            raise self.open_error
        raise TimeoutError(f"no incident within {timeout}s")

    def check_late_start(self) -> Trigger | None:
        """Once every stream has listed: what was already wrong before responder looked."""
        decision = late_start(self.view(), self.runbook.detection)
        if decision is None:
            return None
        if decision.is_incident and self.trigger is None and (self.may_open is None or self.may_open()):
            self._open_or_fail(decision.trigger())
        self._record_decision(decision)
        return decision.trigger() if decision.is_incident else None

    def view(self) -> triage.ClusterView:
        from responder.actions.detach import detached_from_journal

        records = self.journal.records() if self.journal else []
        view = self.observer.view(protected=self.protected, detached=detached_from_journal(records))
        if not any(str(r.get("kind", "")).startswith("recovery-") for r in records):
            return view
        # Recovery's outcome as triage words it: re-adopted (a persisted readopt write) and restored.
        ok = {r["intent"] for r in records if r.get("kind") == "outcome" and r.get("status") == "ok"}
        snapshot = next((r for r in records if r.get("kind") == "snapshot"), {}).get("namespaces") or {}
        readopted = {r["target"]: snapshot.get(r["target"], "") for r in records if r.get("kind") == "intent"
                     and r.get("action") == "readopt" and not r.get("dry_run") and r["seq"] in ok}
        restore = next((r for r in reversed(records) if r.get("kind") == "recovery-restore"), {})
        return dataclasses.replace(view, readopted=readopted, restored=frozenset(restore.get("restored") or ()))

    def open_incident(self, trigger: Trigger, journal: Journal | None = None) -> Journal:
        self.journal = journal or Journal.create(self.options.journal_dir, meta={
            "trigger": trigger.to_json(), "context": self.access.context, "server": self.access.display_server,
            "identity": self.identity, "dry_run": self.options.dry_run, "runbook": str(self.options.runbook),
            "hold_armed": self.hold_not_armed is None, "hold_not_armed": self.hold_not_armed}, sync=False)
        self.trigger = trigger  # only now: until the journal exists, the incident is not open
        # Not fsync'd here: the first write's intent is, with everything before it (each fsync on a busy
        # disk took 5-30 ms on the lab, and they came before the breaker's first write).
        self.journal.record("trigger", trigger=trigger.to_json(), journaled_after_s=round(time.time() - trigger.event_received, 4),
                            sync=False)
        if journal is None:
            # Taken now, before responder's first write; journaled once that write is on its way
            # (journal_snapshot): a record the size of the cluster must not delay the breaker.
            self._snapshot = self.capture_snapshot()
        elif not any(r.get("kind") == "snapshot" for r in journal.records()):
            # Resumed after a crash that came before it was journaled: the shadow copy is what is left.
            self._snapshot = self.capture_snapshot()
            self.journal_snapshot()
        self.observer.yield_each_event = True  # until containment starts (contain())
        self.observer.forget_deleted = False  # recovery reads what the incident deleted
        self.incident_opened.set()
        self._wake_waiters()
        return self.journal

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def capture_snapshot(self) -> dict[str, Any]:
        """What recovery must return to, as seen before responder's first write: namespace -> Tenant,
        the Tenant ownerReference each carried, Capsule's webhook configurations and replicas. (The
        shadow keeps following the cluster; this copy does not.)"""
        shadow = self.observer.shadow
        return {"namespaces": {ns: t for ns, t in shadow.namespace_tenants().items() if ns not in self.protected},
                "owners": {ns: dict(e["owner"]) for ns, e in shadow.namespaces.items() if e.get("owner")},
                "webhooks": dict(shadow.webhooks), "capsule_replicas": shadow.capsule_replicas,
                "tenants": sorted(shadow.tenants), "source": self.evidence_source}

    def pending_snapshot(self) -> dict[str, Any] | None:
        """The snapshot taken at the opening while it is not journaled yet (journal_snapshot)."""
        return self._snapshot

    def journal_snapshot(self) -> None:
        """Journal the snapshot taken when the incident opened, once."""
        if self._snapshot is not None and self.journal is not None:
            snapshot, self._snapshot = self._snapshot, None
            self.journal.record("snapshot", **snapshot)

    def _journal_snapshot_after_first_write(self, event: EngineEvent) -> None:
        # The engine emits "write" once the intent is journaled, before the request is sent: deferred to
        # the loop's next turn, the snapshot is journaled while that request is in flight.
        if event.kind == "write" and self._snapshot is not None:
            asyncio.get_running_loop().call_soon(self.journal_snapshot)

    def has_phase(self, phase: str) -> bool:
        return any(step.phase == phase for step in self.runbook.steps)

    async def recover(self) -> dict[str, StepOutcome]:
        """The runbook's recover phase, after containment, on the same engine and journal."""
        engine = self.engine or self.make_engine()
        if self.options.confirm_recovery:
            engine.options.yes = False
        await self.contain_escalation(engine)
        stop = asyncio.Event()
        guard = asyncio.create_task(self.guard_escalation(engine, stop))
        try:
            results = await engine.run(("recover",))
        finally:
            stop.set()  # a containment pass under way finishes first: no write is cut in half
            await guard
        self.results.update(results)
        await self.bring_capsule_back(engine)
        self.self_hold = await read_self_hold(self.client)  # lifted by restore-capsule, or still in force
        return self.results

    async def bring_capsule_back(self, engine: Engine) -> None:
        """Whatever recovery step failed, Capsule does not stay at 0: restore-capsule runs once more
        (webhooks and replicas as recorded; the hold stays unless every Tenant lists its namespaces)."""
        assert self.journal is not None
        if self.options.dry_run or capsule_left_down(self.journal.records()) is None:
            return
        step = next((s for s in self.runbook.steps if s.phase == "recover" and s.action == "restore-capsule"), None)
        if step is None:
            return
        log.warning("recovery stopped before Capsule was back: bringing Capsule back now")
        quick = dataclasses.replace(step, params={**step.params, "reconcileTimeout": 30,
                                                       "reconcileSecondsPerNamespace": 0})
        self.results[step.id] = await engine.run_step(quick)

    async def guard_escalation(self, engine: Engine, stop: asyncio.Event, *, every: float = 0.5) -> None:
        """While recovery runs, the incident can still grow (the Tenant CRD deleted while a Velero backup
        runs): contain again the moment namespaces are at risk, as before recovery."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.contain_escalation(engine, settle=0.0, passes=1)
            except Exception:  # the guard must not end recovery; the step that needs it will report
                log.exception("containing the grown incident failed")

    def at_risk(self) -> list[str]:
        return [r.name for r in triage.triage(self.view()) if r.state == triage.NsState.AT_RISK]

    def at_risk_again(self) -> list[str]:
        """At-risk namespaces after containment, less those the watch shows from before responder's own
        detach (right after containment, on Capsule 0.12 above all: a stale view, not growth)."""
        from responder.actions.detach import removed_refs_from_journal, still_shows_removed_refs

        removed = removed_refs_from_journal(self.journal.records() if self.journal else [])
        view = self.view()
        # A namespace restored or re-adopted since may carry those references for real (a restore brings
        # back what the backup holds): at risk, whatever the detach removed before.
        since = view.restored | view.restoring | set(view.readopted)
        return [row.name for row in triage.triage(view) if row.state == triage.NsState.AT_RISK
                and (row.name in since or row.name not in view.namespaces
                     or not still_shows_removed_refs(view.namespaces[row.name], removed))]

    async def contain_escalation(self, engine: Engine, *, settle: float = 1.0, passes: int = 3) -> None:
        """The incident can grow after containment ran (a tenant namespace deleted first, the Tenant CRD
        seconds later): while namespaces are at risk again, run the contain steps again (the breaker
        stays tripped, so not that one). Each pass is journaled."""
        for attempt in range(passes):
            await asyncio.sleep(settle)  # let the watches deliver what happened meanwhile
            at_risk = self.at_risk_again()
            if not at_risk or self.options.dry_run:
                return
            assert self.journal is not None
            self.journal.record("escalated", at_risk=len(at_risk), sample=at_risk[:10], attempt=attempt + 1)
            log.warning("the incident grew after containment: %d namespaces at risk again; containing again",
                        len(at_risk))
            for step in self.runbook.steps:
                # The breaker again only if it found nothing to save the first time.
                untripped = (self.results.get(step.id) or StepOutcome("")).data.get("breaker") == NOT_NEEDED
                if step.phase == "contain" and (step.action != "trip-breaker" or untripped):
                    self.results[step.id] = await engine.run_step(step)

    def may_write(self) -> bool:
        """The engine's gate: no write once the writer Lease names another holder (taken over); a dry run,
        which holds no Lease, writes nothing that persists anyway."""
        return self.leadership is None or self.leadership.may_write()

    def make_engine(self) -> Engine:
        if self.attached_to:  # the guard writes; an attached session runs no step
            raise ResponderError(f"attached to the guard {self.attached_to}: this responder runs no step",
                                 fix="approve the guard's steps, or take the Lease over first")
        assert self.journal is not None
        engine = Engine(self.runbook, ACTIONS, client=self.client, observer=self.observer, journal=self.journal,
                        options=EngineOptions(dry_run=self.options.dry_run, auto=self.options.auto,
                                              yes=self.options.yes, protected=self.protected,
                                              identity=self.identity, hold_armed=self.hold_not_armed is None),
                        confirmer=self.confirmer, may_write=self.may_write)
        engine.listeners.append(self._journal_snapshot_after_first_write)
        engine.listeners.extend(self.engine_listeners)
        self.engine = engine
        return engine

    async def contain(self) -> dict[str, StepOutcome]:
        self.observer.yield_each_event = False
        engine = self.make_engine()
        # Beside the breaker, not before it: what the self-arming hold was doing is part of the incident.
        self_hold = asyncio.create_task(self.journal_self_hold())
        try:
            self.results = await engine.run(("contain",))
        finally:
            self.journal_snapshot()  # if no write went out
            await asyncio.gather(self_hold, return_exceptions=True)
        await self.contain_escalation(engine, settle=0.0, passes=1)
        self.observer.save_shadow()
        return self.results

    async def journal_self_hold(self) -> None:
        """Read the self-arming hold (`responder protect`) and journal it: in force, it has been refusing tenant
        namespace deletes in the API server since the Tenant CRD's deletion, before any responder ran."""
        assert self.journal is not None
        self.self_hold = await read_self_hold(self.client)
        self.journal.record("self-hold", **self.self_hold.to_json())
        if self.self_hold.in_force:
            log.warning("self-arming hold in force: %s; recovery lifts it once the namespaces are re-adopted",
                        self.self_hold.why)

    def contained(self) -> bool:
        if not self.results or any(r.status == "failed" for sid, r in self.results.items()
                                   if sid in ("detach",)):
            return False
        return not self.at_risk_again()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def summarize(session: Session) -> dict[str, Any]:
    rows = triage.triage(session.view())
    down = capsule_left_down(session.journal.records()) if session.journal and not session.options.dry_run else None
    warning = {"warning": capsule_down_warning(down, str(session.journal.path) if session.journal else None)} \
        if down is not None else {}
    return {
        **warning,  # first: what an operator must read before anything else
        "incident": session.journal.incident_id if session.journal else None,
        "journal": str(session.journal.path) if session.journal else None,
        "trigger": session.trigger.to_json() if session.trigger else None,
        "dry_run": session.options.dry_run,
        "identity": session.identity,
        "hold_armed": session.hold_not_armed is None,
        "self_hold": session.self_hold.to_json(),
        "steps": {sid: {"status": r.status, "summary": r.summary, **{k: v for k, v in r.data.items()
                                                                       if k in ("seconds", "detached", "breaker",
                                                                                "released", "per_second")}}
                  for sid, r in session.results.items()},
        "namespaces": triage.count_by_state(rows),
        "contained": session.contained(),
        "detection": session.detection_summary(),
        "recovery": recovery_summary(session),
    }


def recovery_summary(session: Session) -> dict[str, Any] | None:
    """From the journal's recovery records; None when recovery did not run."""
    if session.journal is None:
        return None
    records = {r["kind"]: r for r in session.journal.records() if str(r.get("kind", "")).startswith("recovery-")}
    verify = records.get("recovery-verify")
    if not records:
        return None
    plan = records.get("recovery-plan") or {}
    restore = records.get("recovery-restore") or {}
    out: dict[str, Any] = {"backup": plan.get("backup"), "lost": len(plan.get("lost") or {}),
                           "restored": len(restore.get("restored") or []), "restore_phase": restore.get("phase"),
                           "verified": bool(verify) and session.results.get("verify", StepOutcome("")).status == "finished"}
    if verify:
        out.update({k: verify[k] for k in ("known", "present", "adopted", "missing", "not_adopted", "unrestorable",
                                           "content_missing", "webhook_differences")})
        out.update({k: verify.get(k) for k in ("known_from", "dangling", "deleted_after_recovery", "protected_lost")})
    return out


def check_journal_dir(path: Path) -> None:
    """Before watching: an incident's journal can be created, locked and synced here. Found out at
    detection time instead, it would leave an incident seen and not contained."""
    probe = path / f".responder-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"incident journals cannot be written in {path}: {exc.strerror or exc}",
                          fix="free space there, or pass --journal DIR on a writable local filesystem") from None
