"""A session-like object that replays a scripted incident, so the TUI can run without a cluster.

It drives the UI the way a real `Session` does (watch events to observer subscribers, engine events
to `engine_listeners`, `incident_opened`, a journal file, confirmation requests to the confirmer),
from a fixed script of real-shaped `WatchEvent`/`EngineEvent` objects. It is not a cluster mock and
holds no incident logic: nothing here decides anything, it only plays back what it was given.

Used by the demo (`python -m responder.tui.demo`), the benchmark and the TUI tests.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Union

from responder.incident import triage
from responder.actions import action_specs
from responder.actions.self_hold import SelfHoldState
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, WatchEvent
from responder.incident.detect import Trigger
from responder.incident.engine import ConfirmationRequest, EngineEvent
from responder.incident.observe import VELERO_STREAM, CapsuleTarget, capsule_webhooks_in
from responder.runbook.schema import Runbook, load_runbook
from responder.response.session import resolve_runbook

TENANT_API = "capsule.clastix.io/v1beta2"
TENANT_CRD = "tenants.capsule.clastix.io"
STREAMS = ("crd", "tenants", "namespaces", "deployment", "validatingwebhooks", "mutatingwebhooks", VELERO_STREAM)
FIXED_EPOCH = 1_790_000_000.0  # 2026-09-21T14:13:20Z: frozen time for tests
BATCHED_WRITES = frozenset({"detach", "release-finalizer"})  # written with StepContext.write_many


# ------------------------------------------------------------------------------ script items


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Hold:
    """Stop here until the test calls `session.release(name)` (tests use it to freeze mid-incident)."""

    name: str


@dataclass(frozen=True)
class Ask:
    """Ask the confirmer, then play `yes` or `no`."""

    request: ConfirmationRequest
    yes: tuple["Item", ...] = ()
    no: tuple["Item", ...] = ()


Item = Union[WatchEvent, EngineEvent, Pause, Hold, Ask]


@dataclass
class Scenario:
    initial: list[WatchEvent]  # listed by start(); SYNCED for every stream follows
    before_incident: list[Item] = field(default_factory=list)
    trigger: Trigger | None = None  # opens the incident once before_incident has played
    contain: list[Item] = field(default_factory=list)
    contained: bool = True
    undo: list[Item] = field(default_factory=list)
    undo_plan: list[dict[str, Any]] = field(default_factory=list)
    # Played instead of contain/undo when dry-run is on at the time the incident opens (the demo
    # lets the operator toggle dry-run before that).
    contain_dry_run: list[Item] | None = None
    undo_result: dict[str, Any] = field(default_factory=lambda: {"undone": [], "skipped": [], "failed": []})
    context: str = "lab-capsule-0.14"
    server: str = "https://127.0.0.1:6443"
    identity: str = "system:serviceaccount:responder:responder"
    dry_run: bool = False
    auto: bool = True
    protected: frozenset[str] = triage.protected_namespaces()
    known_namespaces: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------- real-shaped objects


def tenant_uid(name: str) -> str:
    return f"0f1e2d3c-{zlib.crc32(name.encode()):012d}"


def tenant_obj(name: str, *, rv: int = 1, deleting: str | None = None, finalizers: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": tenant_uid(name), "resourceVersion": str(rv),
                            "finalizers": ["capsule.clastix.io/tenant"] if finalizers else []}
    if deleting:
        meta["deletionTimestamp"] = deleting
    return {"apiVersion": TENANT_API, "kind": "Tenant", "metadata": meta,
            "spec": {"owners": [{"kind": "User", "name": f"{name}-owner"}]}}


def namespace_obj(name: str, tenant: str | None, *, rv: int = 1, owned: bool = True,
                  terminating: str | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/metadata.name": name}
    meta: dict[str, Any] = {"name": name, "uid": f"ns-{zlib.crc32(name.encode()):012d}",
                            "resourceVersion": str(rv), "labels": labels}
    if tenant:
        labels[triage.TENANT_LABEL] = tenant
        if owned:
            meta["ownerReferences"] = [{"apiVersion": TENANT_API, "kind": "Tenant", "name": tenant,
                                        "uid": tenant_uid(tenant), "controller": True, "blockOwnerDeletion": True}]
    if terminating:
        meta["deletionTimestamp"] = terminating
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Terminating" if terminating else "Active"}}


def crd_obj(*, deleting: str | None = None, rv: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": TENANT_CRD, "uid": "crd-0001", "resourceVersion": str(rv),
                            "finalizers": ["customresourcecleanup.apiextensions.k8s.io"]}
    if deleting:
        meta["deletionTimestamp"] = deleting
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": meta,
            "spec": {"group": "capsule.clastix.io", "names": {"kind": "Tenant", "plural": "tenants"}}}


def deployment_obj(replicas: int, *, version: str = "v0.14.0", rv: int = 1, ready: int | None = None,
                   target: CapsuleTarget = CapsuleTarget()) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": target.deployment, "namespace": target.namespace, "resourceVersion": str(rv),
                         "labels": {"app.kubernetes.io/name": "capsule",
                                    "app.kubernetes.io/version": version.lstrip("v")}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "manager", "image": f"ghcr.io/projectcapsule/capsule:{version}"}]}}},
            "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready}}


def backup_location_obj(phase: str = "Available") -> dict[str, Any]:
    return {"apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
            "metadata": {"name": "default", "namespace": "velero", "resourceVersion": "1"},
            "spec": {"default": True, "provider": "aws"}, "status": {"phase": phase}}


def webhook_obj(*, exempt: str | None = None, rv: int = 1) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": "namespaces.projectcapsule.dev", "failurePolicy": "Fail", "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE", "DELETE"],
                   "resources": ["namespaces"], "scope": "*"}],
        "clientConfig": {"service": {"name": "capsule-webhook-service", "namespace": "capsule-system",
                                     "path": "/namespaces"}}}
    if exempt:
        hook["matchConditions"] = [{"name": "responder-breaker-exemption",
                                    "expression": f"!(request.userInfo.username == {json.dumps(exempt)} && "
                                                  "!(has(request.dryRun) && request.dryRun))"}]
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "capsule-validating-webhook-configuration", "resourceVersion": str(rv),
                         "labels": {"app.kubernetes.io/name": "capsule"}},
            "webhooks": [hook]}


def watch(type_: str, resource: str, obj: dict[str, Any]) -> WatchEvent:
    return WatchEvent(type_, resource, obj, FIXED_EPOCH)


def engine(kind: str, step: str, **data: Any) -> EngineEvent:
    return EngineEvent(kind, step, data, FIXED_EPOCH)


# --------------------------------------------------------------------------------- the journal


def _meta_uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


class ReplayJournal:
    """Writes journal records in the real journal's line format (so the TUI tails a real file)."""

    def __init__(self, directory: Path, incident_id: str, clock: Callable[[], float],
                 undo_plan: list[dict[str, Any]]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{incident_id}.jsonl"
        self.incident_id = incident_id
        self._clock = clock
        self._plan = list(undo_plan)
        self._records: list[dict[str, Any]] = []
        self._fh = open(self.path, "a", encoding="utf-8")
        self.autoflush = True  # the benchmark writes a tick's records with one flush

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        at = _dt.datetime.fromtimestamp(self._clock(), _dt.timezone.utc)
        entry = {"seq": len(self._records) + 1,
                 "ts": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
                 "incident": self.incident_id, "kind": kind, **fields}
        self._records.append(entry)
        self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        if self.autoflush:
            self._fh.flush()
        return entry

    def flush(self) -> None:
        self._fh.flush()

    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]

    def undo_plan(self) -> list[dict[str, Any]]:
        return list(self._plan)

    def close(self) -> None:
        self._fh.close()


# -------------------------------------------------------------------------------- the session


class ReplayObserver:
    """The slice of `ClusterObserver` the TUI and `build_plan` read: subscribe, objects, webhooks."""

    def __init__(self) -> None:
        self.subscribers: list[Callable[[WatchEvent], None]] = []
        self.stores: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in STREAMS}

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> None:
        self.subscribers.append(callback)

    def deliver(self, event: WatchEvent) -> None:
        store = self.stores.setdefault(event.resource, {})
        name = (event.object.get("metadata") or {}).get("name", "")
        if event.type == DELETED:
            store.pop(name, None)
        elif event.type in (ADDED, MODIFIED):
            store[name] = event.object
        for callback in list(self.subscribers):
            callback(event)

    def objects(self, name: str) -> list[dict[str, Any]]:
        return list(self.stores.get(name, {}).values())

    def capsule_webhooks(self) -> list[tuple[str, dict[str, Any]]]:
        return capsule_webhooks_in(self.objects)


class ReplaySession:
    """Quacks like `responder.response.session.Session` for the TUI; plays a `Scenario`."""

    def __init__(self, scenario: Scenario, *, journal_dir: Path, clock: Callable[[], float] = time.time,
                 speed: float = 1.0, confirmer: Callable[[ConfirmationRequest], Any] | None = None) -> None:
        self.scenario = scenario
        self.clock = clock
        self.speed = speed  # multiplies every Pause; 0 plays the script as fast as possible
        self.confirmer = confirmer
        self.access = SimpleNamespace(context=scenario.context, server=scenario.server, display_server=scenario.server)
        self.options = SimpleNamespace(dry_run=scenario.dry_run, auto=scenario.auto, yes=False,
                                       capsule=CapsuleTarget(), journal_dir=journal_dir, contain_only=True)
        self.client = SimpleNamespace(dry_run=scenario.dry_run)
        self.identity = scenario.identity
        self.hold_not_armed: str | None = None  # the demo cluster is set up as doctor recommends
        self.self_hold = SelfHoldState(False, why="not installed on the demo cluster")
        self.protected = scenario.protected
        self.runbook: Runbook = load_runbook(resolve_runbook(None), action_specs())
        self.observer = ReplayObserver()
        self.engine_listeners: list[Callable[[EngineEvent], None]] = []
        self.incident_opened = asyncio.Event()
        self.trigger: Trigger | None = None
        self.journal: ReplayJournal | None = None
        self.results: dict[str, Any] = {}
        self.contain_finished = False
        self._holds: dict[str, asyncio.Event] = {}
        self._reached: dict[str, asyncio.Event] = {}
        self._background: asyncio.Task | None = None
        self.played = 0

    # -- what the TUI calls ---------------------------------------------------------------------

    def set_dry_run(self, dry_run: bool) -> None:
        """Same contract as Session.set_dry_run."""
        self.options.dry_run = dry_run
        self.client.dry_run = dry_run

    async def preflight(self) -> None:
        return None

    async def start(self) -> None:
        for event in self.scenario.initial:
            self.emit_watch(event)
        for stream in STREAMS:
            self.emit_watch(WatchEvent(SYNCED, stream, {"metadata": {"resourceVersion": "1"}}))
        self._background = asyncio.create_task(self._before_incident(), name="replay-before-incident")

    def has_phase(self, phase: str) -> bool:
        return phase == "contain"  # the scripts replay containment only

    async def recover(self) -> dict[str, Any]:
        raise NotImplementedError("replay scripts have no recover phase")

    async def contain(self) -> dict[str, Any]:
        dry = self.options.dry_run and self.scenario.contain_dry_run is not None
        await self._play(self.scenario.contain_dry_run if dry else self.scenario.contain)
        self.contain_finished = True
        return self.results

    def contained(self) -> bool:
        return self.scenario.contained

    async def wait_for_incident(self, timeout: float | None = None) -> None:
        """Same contract as Session.wait_for_incident (a replayed incident always opens)."""
        await asyncio.wait_for(self.incident_opened.wait(), timeout)

    def check_late_start(self) -> Trigger | None:
        return None

    def view(self) -> triage.ClusterView:
        crd = next(iter(self.observer.objects("crd")), None)
        return triage.ClusterView(
            crd_present=crd is not None, crd_deleting=bool(crd and crd["metadata"].get("deletionTimestamp")),
            tenants={t["metadata"]["name"]: t for t in self.observer.objects("tenants")},
            namespaces={n["metadata"]["name"]: n for n in self.observer.objects("namespaces")},
            protected=self.protected, known_namespaces=dict(self.scenario.known_namespaces))

    async def undo(self) -> dict[str, Any]:
        """The scripted result of `undo_journal` (same shape), after playing the scripted events."""
        await self._play(self.scenario.undo)
        result = {"journal": str(self.journal.path) if self.journal else None, **self.scenario.undo_result}
        if self.journal is not None:
            for entry in result["undone"]:
                self.journal.record("undone", intent=entry.get("intent"), detail="replay")
        return result

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
        if self.journal is not None:
            self.journal.close()

    # -- test hooks -------------------------------------------------------------------------------

    async def reached(self, name: str, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._reached.setdefault(name, asyncio.Event()).wait(), timeout)

    def release(self, name: str) -> None:
        self._holds.setdefault(name, asyncio.Event()).set()

    # -- playing ----------------------------------------------------------------------------------

    async def _before_incident(self) -> None:
        await self._play(self.scenario.before_incident)
        trigger = self.scenario.trigger
        if trigger is None:
            return
        self.trigger = replace(trigger, event_received=self.clock())
        incident_id = "inc-" + _dt.datetime.fromtimestamp(self.clock(), _dt.timezone.utc).strftime(
            "%Y%m%dT%H%M%SZ") + "-demo"
        plan = [] if self.options.dry_run else self.scenario.undo_plan
        self.journal = ReplayJournal(Path(self.options.journal_dir), incident_id, self.clock, plan)
        self.journal.record("incident-opened", meta={"trigger": self.trigger.to_json(),
                                                     "context": self.access.context, "dry_run": self.options.dry_run})
        self.journal.record("trigger", trigger=self.trigger.to_json())
        self.incident_opened.set()

    async def _play(self, items: Iterable[Item]) -> None:
        for item in items:
            self.played += 1
            if isinstance(item, WatchEvent):
                self.emit_watch(item)
            elif isinstance(item, EngineEvent):
                self.emit_engine(item)
            elif isinstance(item, Pause):
                await asyncio.sleep(item.seconds * self.speed)
            elif isinstance(item, Hold):
                self._reached.setdefault(item.name, asyncio.Event()).set()
                await self._holds.setdefault(item.name, asyncio.Event()).wait()
            elif isinstance(item, Ask):
                self.emit_engine(EngineEvent("confirm", item.request.step, {
                    "summary": item.request.summary, "answer": item.request.answer,
                    "writes": len(item.request.writes)}, self.clock()))
                ok = bool(await self.confirmer(item.request)) if self.confirmer else False
                if self.journal is not None:
                    self.journal.record("confirmation", step=item.request.step, answer="yes" if ok else "no",
                                        summary=item.request.summary)
                await self._play(item.yes if ok else item.no)
            else:
                raise TypeError(f"not a script item: {item!r}")
            if self.speed == 0 and self.played % 256 == 0:
                await asyncio.sleep(0)  # let the UI breathe between chunks of a fast replay

    def emit_watch(self, event: WatchEvent, *, restamp: bool = True) -> None:
        self.observer.deliver(replace(event, received=self.clock()) if restamp else event)

    def emit_engine(self, event: EngineEvent, *, restamp: bool = True) -> None:
        """Journal what the real engine journals for this event, then give it to the listeners, except
        `write` events of the batched actions: `StepContext.write_many` journals those without
        emitting an event."""
        if restamp:
            event = replace(event, at=self.clock())
        journal, data = self.journal, dict(event.data)
        if journal is not None:
            if event.kind in ("step-started", "step-finished"):
                status = "started" if event.kind == "step-started" else data.get("status", "finished")
                journal.record("step", step=event.step, status=status, detail=data.get("summary", ""))
            elif event.kind == "write":
                undo = request = None
                if data.get("action") == "detach":
                    # The record the real engine journals: the request with its patch, the undo payload.
                    ns = self.observer.stores["namespaces"].get(str(data.get("target"))) or {}
                    request = {"method": "PATCH", "path": f"/api/v1/namespaces/{data.get('target')}",
                               "body": triage.detach_patch(ns) if _meta_uid(ns) else []}
                    undo = {"op": "reattach", "namespace": data.get("target"),
                            "ownerReferences": triage.tenant_refs(ns)}
                seq = journal.record("intent", step=event.step, action=data.get("action"),
                                     target=data.get("target"), request=request, undo=undo,
                                     dry_run=bool(data.get("dry_run")))["seq"]
                journal.record("outcome", intent=seq, status="ok", detail="dry-run" if data.get("dry_run") else "")
            elif event.kind == "log":
                journal.record("log", step=event.step, level=data.get("level", "info"), message=data.get("message"))
        if event.kind == "write" and data.get("action") in BATCHED_WRITES:
            return
        if event.kind == "step-finished":
            self.results[event.step] = SimpleNamespace(status=data.get("status"), summary=data.get("summary", ""),
                                                       data=data)
        for listener in list(self.engine_listeners):
            listener(event)


# ------------------------------------------------------------------------------------ scenarios


def demo_scenario(*, tenants: int = 12, per_tenant: int = 8, terminating: int = 3, pace: float = 0.05,
                  confirm_steps: bool = False, dry_run: bool = False, hold_mid_detach: bool = False,
                  incident: bool = True, identity: str = "system:serviceaccount:responder:responder",
                  chunk: int = 16) -> Scenario:
    """A Tenant CRD deletion, contained: breaker, detach (with progress), Tenant finalizers,
    Terminating namespaces. Shapes and summaries follow what the real actions emit."""
    ts = "2026-09-21T14:13:20Z"
    tenant_names = [f"tenant-{chr(ord('a') + i % 26)}{'' if i < 26 else i // 26}" for i in range(tenants)]
    ns_names = [(t, f"{t}-ns-{j:02d}") for t in tenant_names for j in range(per_tenant)]
    doomed = {name for _, name in ns_names[:terminating]}  # already Terminating when responder reacts
    initial: list[WatchEvent] = [watch(ADDED, "crd", crd_obj())]
    initial += [watch(ADDED, "tenants", tenant_obj(t)) for t in tenant_names]
    initial += [watch(ADDED, "namespaces", namespace_obj(n, None)) for n in
                ("default", "kube-system", "kube-public", "kube-node-lease", "capsule-system", "velero")]
    initial += [watch(ADDED, "namespaces", namespace_obj(n, t)) for t, n in ns_names]
    initial += [watch(ADDED, "deployment", deployment_obj(2)),
                watch(ADDED, "validatingwebhooks", webhook_obj()),
                watch(ADDED, VELERO_STREAM, backup_location_obj())]

    before: list[Item] = [Pause(pace * 20)] if incident else []
    if incident:
        before.append(watch(MODIFIED, "crd", crd_obj(deleting=ts, rv=2)))
        before += [watch(MODIFIED, "namespaces", namespace_obj(n, t, rv=2, terminating=ts))
                   for t, n in ns_names if n in doomed]

    steps = [s for s in load_runbook(resolve_runbook(None), action_specs()).steps if s.phase == "contain"]
    live = [(t, n) for t, n in ns_names if n not in doomed]

    def step(s, body: list[Item], finished: dict[str, Any]) -> list[Item]:
        start = engine("step-started", s.id, action=s.action, description=s.description)
        end = engine("step-finished", s.id, **finished)
        if not confirm_steps:
            return [start, *body, end]
        request = ConfirmationRequest(s.id, s.action, f"run step {s.id} ({s.action}): {s.description}", (), s.id)
        refused = engine("step-finished", s.id, status="skipped", summary="not confirmed")
        return [start, Ask(request, yes=(*body, end), no=(refused,))]

    def trip_breaker(sid: str, dry_run: bool) -> tuple[list[Item], dict[str, Any]]:
        body: list[Item] = [engine("write", sid, action="scale-capsule", target="capsule-controller-manager",
                                   method="PATCH", dry_run=dry_run)]
        if not dry_run:
            body += [watch(MODIFIED, "deployment", deployment_obj(0, rv=2, ready=2)), Pause(pace)]
        body += [engine("write", sid, action="exempt-responder",
                        target="ValidatingWebhookConfiguration/capsule-validating-webhook-configuration",
                        method="PATCH", dry_run=dry_run)]
        if dry_run:
            return body, {"status": "finished", "breaker": "dry-run", "original_replicas": 2,
                          "summary": "dry run: breaker writes sent with dryRun=All; nothing changed"}
        body += [watch(MODIFIED, "validatingwebhooks", webhook_obj(exempt=identity, rv=2)), Pause(pace * 4),
                 watch(MODIFIED, "deployment", deployment_obj(0, rv=3, ready=0))]
        return body, {"status": "finished", "summary": "Capsule scaled to 0 (was 2); responder exempted",
                      "breaker": "tripped", "original_replicas": 2}

    def verify_breaker(sid: str, dry_run: bool) -> tuple[list[Item], dict[str, Any]]:
        if dry_run:
            return [], {"status": "finished", "summary": "dry run: the breaker was not tripped", "breaker": "dry-run"}
        return [Pause(pace * 2)], {"status": "finished", "breaker": "verified",
                                   "summary": f"namespace deletes refused for everyone but {identity}"}

    def detach(sid: str, dry_run: bool) -> tuple[list[Item], dict[str, Any]]:
        body: list[Item] = [engine("step-progress", sid, done=0, total=len(live), note=f"pass 1: {len(live)} at risk")]
        for i in range(0, len(live), chunk):
            batch = live[i:i + chunk]
            body += [engine("write", sid, action="detach", target=n, method="PATCH", dry_run=dry_run) for _, n in batch]
            if not dry_run:
                body += [watch(MODIFIED, "namespaces", namespace_obj(n, t, rv=3, owned=False)) for t, n in batch]
            body.append(engine("step-progress", sid, done=min(i + chunk, len(live)), total=len(live), note=""))
            if hold_mid_detach and i < len(live) // 2 <= i + chunk:
                body.append(Hold("mid-detach"))
            body.append(Pause(pace))
        if dry_run:
            return body, {"status": "finished", "summary": f"dry run: would detach {len(live)} namespaces",
                          "detached": len(live)}
        return body, {"status": "finished", "summary": f"detached {len(live)} namespaces in 0.84s",
                      "detached": len(live), "seconds": 0.84}

    def release(sid: str, dry_run: bool) -> tuple[list[Item], dict[str, Any]]:
        body: list[Item] = []
        for t in tenant_names:
            body.append(engine("write", sid, action="release-finalizer", target=t, method="PATCH", dry_run=dry_run))
            if not dry_run:
                body += [watch(MODIFIED, "tenants", tenant_obj(t, rv=3, deleting=ts, finalizers=False)),
                         watch(DELETED, "tenants", tenant_obj(t, rv=3, deleting=ts, finalizers=False))]
        body.append(Pause(pace))
        return body, {"status": "finished", "released": len(tenant_names),
                      "summary": f"released {len(tenant_names)} terminating Tenants (their namespaces are detached)"}

    def handle_terminating(sid: str, dry_run: bool) -> tuple[list[Item], dict[str, Any]]:
        body: list[Item] = []
        empty = sorted(doomed)[: max(0, len(doomed) - 1)]
        for n in sorted(doomed):
            if n in empty:
                body.append(engine("write", sid, action="finalize", target=n, method="PUT", dry_run=dry_run))
                if not dry_run:
                    body.append(watch(DELETED, "namespaces",
                                      namespace_obj(n, n.split("-ns-")[0], rv=4, terminating=ts)))
            else:
                body.append(engine("log", sid, level="info",
                                   message=f"{n} is Terminating with content left: configmaps=2, secrets=3"))
        return body, {"status": "finished", "summary": f"{len(doomed)} Terminating tenant namespaces: {len(empty)} "
                                                       f"finalized, {len(doomed) - len(empty)} still hold content"}

    by_action = {"trip-breaker": trip_breaker, "verify-breaker": verify_breaker, "detach-namespaces": detach,
                 "release-tenant-finalizers": release, "handle-terminating": handle_terminating}

    def contain(dry_run: bool) -> list[Item]:
        """The runbook's contain steps in their order (a step this demo does not know just finishes)."""
        items: list[Item] = []
        for s in steps:
            build = by_action.get(s.action)
            body, finished = build(s.id, dry_run) if build else ([], {"status": "finished", "summary": "replayed"})
            if items:
                items.append(Pause(pace * 4))
            items += step(s, body, finished)
        return items

    trigger = Trigger("crd-deleting", f"the Tenant CRD {TENANT_CRD} is being deleted (deletionTimestamp {ts})",
                      FIXED_EPOCH, (TENANT_CRD,)) if incident else None
    undo_plan = ([{"intent": 100 + i, "step": "detach", "action": "detach", "target": n,
                   "undo": {"op": "reattach", "namespace": n}} for i, (_, n) in enumerate(live)]
                 + [{"intent": 3, "step": "breaker", "action": "exempt-responder",
                     "target": "ValidatingWebhookConfiguration/capsule-validating-webhook-configuration",
                     "undo": {"op": "webhook-match-conditions"}},
                    {"intent": 2, "step": "breaker", "action": "scale-capsule", "target": "capsule-controller-manager",
                     "undo": {"op": "scale", "replicas": 2}}])
    undo: list[Item] = [watch(MODIFIED, "deployment", deployment_obj(2, rv=9, ready=0)),
                        watch(MODIFIED, "validatingwebhooks", webhook_obj(rv=9))]
    gone_tenant = "is gone or being deleted: re-attaching would get the namespace deleted"
    undo_result = {"undone": [{"op": e["undo"]["op"], "target": e["target"], "intent": e["intent"]}
                              for e in undo_plan if e["undo"]["op"] != "reattach"],
                   "skipped": [{"target": e["target"], "reason": f"Tenant {e['target'].split('-ns-')[0]} {gone_tenant}"}
                               for e in undo_plan if e["undo"]["op"] == "reattach"],
                   "failed": []}
    return Scenario(initial=initial, before_incident=before, trigger=trigger, contain=contain(False),
                    contain_dry_run=contain(True), contained=True, undo=undo, undo_plan=undo_plan,
                    undo_result=undo_result, dry_run=dry_run, auto=not confirm_steps, identity=identity)


def idle_scenario(**kw: Any) -> Scenario:
    """The demo cluster before anything happens."""
    return demo_scenario(incident=False, **kw)
