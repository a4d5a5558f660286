"""The guard leader's Incident (responder.response.incident_object): kept current from the engine's events,
off the hot path, and the approvals recovery steps wait on.

Nothing here writes before the breaker's first write: the Incident and its snapshot are created once that
write's request is on its way, on a small client of their own (the snapshot encoded in a thread, so the
loop keeps serving containment), and status changes are flushed at most once a second. Recovery steps that need a confirmation wait until the
Incident's spec.approvals names them (`responder approve`), unless the guard runs with `--recovery auto`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from responder.actions import ACTIONS
from responder.errors import ResponderError
from responder.incident import triage
from responder.incident.engine import RESUMED_DONE, ConfirmationRequest, EngineEvent
from responder.response.incident_object import (CONTAINED, CONTAINING, DETECTED, FAILED, RECOVERED, RECOVERING,
                                                WAITING, IncidentStore, approvals_of, new_incident,
                                                now_rfc3339)
from responder.response.session import Session

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds between status writes, at most


class IncidentKeeper:
    """One guard leader's Incident for the session's incident."""

    def __init__(self, session: Session, store: IncidentStore, *, leader: str, recovery: str,
                 flush_every: float = FLUSH_EVERY) -> None:
        self.session = session
        self.store = store
        self.leader = leader
        self.recovery = recovery
        self.flush_every = flush_every
        self.incident: dict[str, Any] | None = None  # the object as created or adopted
        self.snapshot_written = False
        self.phase = DETECTED
        self.reason = ""
        self.takeovers = 0
        self.waiting_for: str | None = None
        self.approved: list[dict[str, Any]] = []  # approvals acted on, in order (status.approvals)
        self.steps: dict[str, dict[str, Any]] = {}
        self._phase_of = {step.id: step.phase for step in session.runbook.steps}
        self.approval_steps = [s.id for s in session.runbook.steps if s.phase == "recover"
                               and (s.confirm or getattr(ACTIONS[s.action].spec, "destructive", False))]
        self._last_contain = next((s.id for s in reversed(session.runbook.steps) if s.phase == "contain"), None)
        # (phase, the step waiting for approval) on each change: the guard's notifications follow them.
        self.phase_listeners: list[Callable[[str, str | None], None]] = []
        self._dirty = asyncio.Event()
        self._creating = asyncio.Lock()
        self._records_written: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    def _set_phase(self, phase: str, waiting_for: str | None = None) -> None:
        changed = (phase, waiting_for) != (self.phase, self.waiting_for)
        self.phase, self.waiting_for = phase, waiting_for
        if not changed:
            return
        for listener in self.phase_listeners:
            try:
                listener(phase, waiting_for)
            except Exception:  # a broken listener must not stop the incident
                log.exception("phase listener failed")

    @property
    def name(self) -> str | None:
        return self.incident["metadata"]["name"] if self.incident else None

    def attach(self) -> None:
        """Before the session makes its engine: follow its steps, answer its confirmations."""
        self.session.engine_listeners.append(self.on_engine_event)
        self.session.confirmer = self.confirm

    # -- following the engine ------------------------------------------------------------------------

    def on_engine_event(self, event: EngineEvent) -> None:
        if event.kind == "write" and self._opening is None:
            # Emitted once the breaker's first intent is journaled, just before its request leaves: the
            # Incident follows, never ahead of it.
            self._opening = asyncio.get_running_loop().create_task(self._open_after_first_write())
        elif event.kind == "step-started":
            phase = self._phase_of.get(event.step, "")
            self.steps[event.step] = {"id": event.step, "phase": phase, "status": "running",
                                      "startedAt": now_rfc3339(event.at), "leader": self.leader}
            if phase == "contain" and self.phase == DETECTED:
                self._set_phase(CONTAINING)
            elif phase == "recover" and (self.recovery == "auto" or self.approved) and self.phase != FAILED:
                self._set_phase(RECOVERING)
        elif event.kind == "step-finished":
            entry = self.steps.setdefault(event.step, {"id": event.step, "phase": self._phase_of.get(event.step, ""),
                                                       "leader": self.leader})
            status = str(event.data.get("status", ""))
            if status == "skipped" and (entry.get("status") == "finished" or (
                    entry.get("status") == "skipped" and event.data.get("summary") == RESUMED_DONE)):
                return  # ended by a leader before this one: the engine skips it, the record stays
            entry.update(status=status, summary=str(event.data.get("summary", ""))[:500],
                         finishedAt=now_rfc3339(event.at))
            if event.step == self._last_contain and self.phase in (DETECTED, CONTAINING):
                self._set_phase(CONTAINED)
            if entry.get("phase") == "recover" and status != "skipped":
                # Written before the finished step is: a successor that skips it has what it journaled.
                self._records_written = asyncio.get_running_loop().create_task(self._write_recovery_records())
        else:
            return
        self._dirty.set()

    async def _open_after_first_write(self) -> None:
        # One turn of the loop: the breaker's first request is on its way before this one is made. As soon
        # as that, so a leader killed mid-containment leaves its successor the Incident and the snapshot.
        await asyncio.sleep(0)
        await self.ensure_created()

    async def ensure_created(self) -> None:
        """Create the Incident and its snapshot (once); a failure is logged and tried again at the next flush."""
        async with self._creating:
            await self._create()

    async def _create(self) -> None:
        if self.incident is not None or self.session.journal is None or self.session.trigger is None:
            return
        journal = self.session.journal
        try:
            self.incident = await self.store.create(new_incident(journal.incident_id, self.session.trigger.to_json(),
                                                                 recovery=self.recovery))
            snapshot = self.session.pending_snapshot() or _journaled_snapshot(journal.records())
            if snapshot is not None and self.name is not None:
                try:
                    await self.store.write_packed(self.name, "snapshot", snapshot)
                    self.snapshot_written = True
                except ValueError as exc:  # too large for the object: a new leader uses its own shadow copy
                    log.warning("the Incident %s holds no snapshot: %s", self.name, exc)
            print(f"guard {self.leader}: Incident {self.name} in the cluster "
                  f"(kubectl get incident -n {self.incident['metadata']['namespace']} {self.name})",
                  flush=True, file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - the record must never stop containment
            self.incident = None
            log.warning("the Incident could not be written (tried again in %.0fs): %s", self.flush_every, exc)
            self._dirty.set()
            return
        await self.flush()  # its status at once: a successor may need it any moment now

    async def _write_recovery_records(self) -> None:
        journal = self.session.journal
        if journal is None or self.name is None:
            return
        records = [r for r in journal.records() if str(r.get("kind", "")).startswith("recovery-")]
        try:
            await self.store.write_packed(self.name, "recoveryRecords", records)
        except Exception as exc:  # noqa: BLE001 - a successor would run the step again: logged, not fatal
            log.warning("the Incident %s's recovery records could not be written: %s", self.name, exc)

    def adopt(self, incident: dict[str, Any]) -> None:
        """A new leader resumes an incident another leader opened: its Incident, steps and approvals."""
        self.incident = incident
        status = incident.get("status") or {}
        self.snapshot_written = bool(status.get("snapshot"))
        self.phase = status.get("phase") or DETECTED
        self.takeovers = int(status.get("takeovers") or 0) + 1
        self.approved = list(status.get("approvals") or [])
        self.steps = {s["id"]: dict(s) for s in status.get("steps") or [] if s.get("id")}
        self.recovery = (incident.get("spec") or {}).get("recovery") or self.recovery
        self._opening = asyncio.get_running_loop().create_future()  # created already: no second one
        self._opening.set_result(None)
        self._dirty.set()

    # -- writing the status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        session = self.session
        counts: dict[str, int] = {}
        if session.journal is not None:
            counts = triage.count_by_state(triage.triage(session.view()))
        order = {step.id: i for i, step in enumerate(session.runbook.steps)}
        return {"phase": self.phase, "reason": self.reason, "leader": self.leader, "takeovers": self.takeovers,
                "trigger": session.trigger.to_json() if session.trigger else None,
                "namespaces": counts,
                "steps": sorted(self.steps.values(), key=lambda s: order.get(s["id"], len(order))),
                "waitingFor": self.waiting_for, "approvals": self.approved,
                "approvalSteps": self.approval_steps if self.recovery == "approval" else [],
                "updatedAt": now_rfc3339()}

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="incident-status")

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await self.flush()
            await asyncio.sleep(self.flush_every)

    async def flush(self) -> bool:
        self._dirty.clear()
        if self.incident is None:
            if self._opening is not None and self._opening.done():
                await self.ensure_created()
            if self.incident is None:
                return False
        assert self.name is not None
        if self._records_written is not None:  # the records before the step that journaled them shows finished
            await asyncio.gather(self._records_written, return_exceptions=True)
        try:
            await self.store.patch_status(self.name, self.status())
            return True
        except Exception as exc:  # noqa: BLE001 - a lost status write is retried, never fatal
            log.warning("the Incident %s's status could not be written (tried again in %.0fs): %s", self.name,
                        self.flush_every, exc)
            self._dirty.set()
            return False

    async def finish(self, code: int) -> None:
        """The session ended with exit `code`: the final phase, written now."""
        if self.session.journal is None:
            return
        recovered = any(s.get("phase") == "recover" and s.get("status") == "finished" for s in self.steps.values())
        if code != 0:
            self.reason = f"the guard's session ended with exit {code}"
            self._set_phase(FAILED)
        elif recovered:
            self._set_phase(RECOVERED)
        elif self.phase in (DETECTED, CONTAINING):
            self._set_phase(CONTAINED)
        else:
            self._set_phase(self.phase)
        if self._opening is None:  # nothing was written: the Incident is still worth having
            self._opening = asyncio.get_running_loop().create_future()
            self._opening.set_result(None)
        await self.ensure_created()
        await self.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._opening is not None and not self._opening.done():
            await asyncio.gather(self._opening, return_exceptions=True)

    # -- approvals -------------------------------------------------------------------------------------

    async def confirm(self, request: ConfirmationRequest, *, every: float = 1.0) -> bool:
        """The engine's confirmer: a contain step runs (the guard contains on its own); a recovery step runs
        once the Incident's spec.approvals names it (or at once with `--recovery auto`)."""
        if self._phase_of.get(request.step) != "recover" or self.recovery == "auto":
            return True
        announced = False
        while True:
            await self.ensure_created()
            approval = None
            if self.name is not None:
                try:
                    current = await self.store.get(self.name)
                    approval = approvals_of(current or {}).get(request.step)
                except ResponderError as exc:
                    log.warning("reading the Incident %s for approvals: %s", self.name, exc)
            if approval is not None:
                self._approved(request.step, approval)
                return True
            if not announced:
                announced = True
                self._set_phase(WAITING, request.step)
                self._dirty.set()
                print(f"guard {self.leader}: recovery step {request.step!r} waits for approval: responder approve "
                      f"{self.name or '(the incident)'} {request.step}", file=sys.stderr, flush=True)
            await asyncio.sleep(every)

    def waiting_here(self, step: str) -> None:
        """A leader that asks its operator itself (the TUI that took over): the Incident says the step waits."""
        self._set_phase(WAITING, step)
        self._dirty.set()

    def confirmed_here(self, step: str, approver: str) -> None:
        """That operator confirmed the step: recorded as its approval, as acted on (status.approvals)."""
        self._approved(step, {"approver": approver, "approvedAt": now_rfc3339()})

    def _approved(self, step: str, approval: dict[str, Any]) -> None:
        if not any(a.get("step") == step for a in self.approved):
            self.approved.append({"step": step, "approver": approval.get("approver", ""),
                                  "approvedAt": approval.get("approvedAt", "")})
        if self.session.journal is not None:
            self.session.journal.record("approval", step=step, approver=approval.get("approver", ""),
                                        approved_at=approval.get("approvedAt", ""), incident_object=self.name)
        self._set_phase(RECOVERING)
        self._dirty.set()


def _journaled_snapshot(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    snapshot = next((r for r in records if r.get("kind") == "snapshot"), None)
    if snapshot is None:
        return None
    return {k: v for k, v in snapshot.items() if k not in ("seq", "ts", "incident", "kind")}

