"""The runbook engine: runs a runbook's steps with their actions, journaling every write.

The engine never imports the TUI; front ends (headless printer, Textual app) subscribe to its
events and answer its confirmation requests. One way to write: `StepContext.write`, which journals
an intent, sends the request (dry-run honoured by the client), and journals the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from responder.cluster.client import KubeClient
from responder.errors import ApiError, JournalError, NotLeading, ResponderError
from responder.incident.journal import Journal
from responder.incident.observe import ClusterObserver
from responder.runbook.schema import ActionSpec, Runbook, Step

log = logging.getLogger(__name__)


RESUMED_DONE = "resumed: done"  # the summary of a step skipped because the journal shows it finished
DECLINED = "not confirmed"  # the summary of a step whose confirmation was declined: asked again on resume


@dataclass(frozen=True)
class EngineEvent:
    kind: str  # step-started | step-progress | step-finished | log | write | confirm
    step: str
    data: Mapping[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class WriteRequest:
    action: str
    target: str
    method: str
    path: str
    body: Any = None
    content_type: str = "application/json"
    undo: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConfirmationRequest:
    step: str
    action: str
    summary: str
    writes: tuple[str, ...]
    answer: str  # what the operator must type (an object count or the CRD name)


Confirmer = Callable[[ConfirmationRequest], Awaitable[bool]]


@dataclass
class EngineOptions:
    dry_run: bool = False
    auto: bool = True  # containment steps run without asking
    yes: bool = False  # destructive steps pre-confirmed
    protected: frozenset[str] = frozenset()
    identity: str = ""  # the username the API server sees for responder
    hold_armed: bool = False  # `responder protect` armed the namespace hold (read at the preflight)


@dataclass
class StepOutcome:
    status: str  # finished | failed | skipped
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Action(Protocol):
    """A registered runbook action. One that asks for confirmation may also define
    `async def preview(self, ctx) -> list[str]`: the writes it would make now, one line each, computed
    by the same planning code `run` uses and without writing; the confirmation shows them."""

    spec: ActionSpec

    async def run(self, ctx: "StepContext") -> StepOutcome: ...


class StepContext:
    def __init__(self, engine: "Engine", step: Step) -> None:
        self.engine = engine
        self.step = step
        self.params: dict[str, Any] = {**engine.runbook.params, **dict(step.params)}
        self.client = engine.client
        self.journal = engine.journal
        self.observer = engine.observer
        self.options = engine.options

    @property
    def dry_run(self) -> bool:
        return self.options.dry_run

    def emit(self, kind: str, **data: Any) -> None:
        self.engine.emit(EngineEvent(kind, self.step.id, data))

    def log(self, message: str, *, level: str = "info") -> None:
        getattr(log, "warning" if level == "warning" else "info")("%s: %s", self.step.id, message)
        self.journal.record("log", step=self.step.id, level=level, message=message)
        self.emit("log", message=message, level=level)

    def progress(self, done: int, total: int, note: str = "") -> None:
        self.emit("step-progress", done=done, total=total, note=note)

    def done_before(self, action: str, target: str) -> bool:
        """Resume support: this write already completed in this incident's journal."""
        return self.journal.done(self.step.id, action, target)

    async def settle_pending(self, action: str, applied: Callable[[dict[str, Any]], Awaitable[bool | None]]) -> int:
        """After a crash: this step's `action` intents with no outcome may or may not have reached the API
        server. `applied(intent)` looks at the cluster: True (applied), False (not), None (the target is
        gone). Journal what really happened, so nothing is done twice and nothing stays pending."""
        settled = 0
        for intent in self.journal.pending():
            if intent.get("step") != self.step.id or intent.get("action") != action or intent.get("dry_run"):
                continue
            verdict = await applied(intent)
            if verdict is None:
                self.journal.outcome(intent["seq"], "skipped", detail="target gone; found on resume")
            elif verdict:
                self.journal.outcome(intent["seq"], "ok", detail="applied before the crash; confirmed on resume")
            else:
                self.journal.outcome(intent["seq"], "failed", detail="not applied before the crash; redone on resume")
            settled += 1
        return settled

    def earlier_intent(self, action: str, target: str) -> dict[str, Any] | None:
        """The first intent recorded for this write (completed or not): its undo payload holds the
        state from before the incident, which a resumed run must not overwrite."""
        return self.journal.first_intent(self.step.id, action, target)

    def check_leading(self) -> None:
        """Every write goes out only while this process may write under the cluster's writer Lease (the
        session's gate): once another holder's name is in it, NotLeading, and nothing more is sent."""
        if not self.engine.may_write():
            raise NotLeading("this responder no longer holds the cluster's writer Lease (another holder's name is "
                             "in it): it sends no more writes",
                             fix="the holder carries the incident on; `kubectl get lease -n responder-system "
                                 "responder` names it")

    async def write(self, action: str, target: str, method: str, path: str, *, body: Any = None,
                    content_type: str = "application/json", params: dict[str, Any] | None = None,
                    undo: dict[str, Any] | None = None) -> dict[str, Any]:
        """Journal, send, journal. Raises the ApiError after journaling it as failed; NotLeading, with nothing
        journaled or sent, once the Lease names another holder."""
        self.check_leading()
        seq = self.journal.intent(self.step.id, action, target,
                                  request={"method": method, "path": path, "body": body},
                                  undo=undo, dry_run=self.dry_run)
        self.emit("write", action=action, target=target, method=method, dry_run=self.dry_run)
        try:
            response = await self.client.request(method, path, params=params, body=body, content_type=content_type)
        except ApiError as exc:
            if not _maybe_applied(exc):
                self.journal.outcome(seq, "failed", detail=f"{exc.status} {exc.reason}: {exc.api_message}"[:500])
            raise
        except BaseException as exc:
            # Unknown whether the server applied it: leave the intent pending for resume to re-check.
            log.warning("write %s %s interrupted: %s", method, path, type(exc).__name__)
            raise
        self.journal.outcome(seq, "ok", detail="dry-run" if self.dry_run else "")
        return response

    async def write_many(self, requests: list[WriteRequest], *, in_flight: int,
                         bulk: bool = True) -> list[dict[str, Any] | ApiError]:
        """The same contract as `write` for a batch, with group commit: every intent is durable (one
        fsync) before the first request leaves; outcomes are synced once at the end (an outcome lost
        in a crash leaves its intent pending, and a resumed run re-checks it against the cluster).
        `bulk=False` sends them over the watches' connection rather than the bulk pool, which opens its
        connections on first use: for a few writes that must leave at once."""
        self.check_leading()
        seqs = [self.journal.intent(self.step.id, r.action, r.target,
                                    request={"method": r.method, "path": r.path, "body": r.body},
                                    undo=r.undo, dry_run=self.dry_run, sync=False) for r in requests]
        self.journal.sync()
        limit = asyncio.Semaphore(max(1, in_flight))

        async def send(seq: int, r: WriteRequest) -> dict[str, Any] | ApiError:
            async with limit:
                if not self.engine.may_write():  # the Lease was taken while this batch went out
                    self.journal.outcome(seq, "failed", detail="not sent: the writer Lease names another holder",
                                         sync=False)
                    self.check_leading()
                try:
                    response = await self.client.request(r.method, r.path, body=r.body, content_type=r.content_type,
                                                         bulk=bulk)
                except ApiError as exc:
                    if not _maybe_applied(exc):
                        self.journal.outcome(seq, "failed", detail=f"{exc.status} {exc.reason}: {exc.api_message}"[:500],
                                             sync=False)
                    return exc
            self.journal.outcome(seq, "ok", detail="dry-run" if self.dry_run else "", sync=False)
            self.emit("write", action=r.action, target=r.target, method=r.method, dry_run=self.dry_run)
            return response

        tasks = [asyncio.ensure_future(send(seq, r)) for seq, r in zip(seqs, requests)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # Anything but an ApiError (the cluster unreachable past the retry deadline, credentials
            # that cannot be reloaded, a full disk) holds for every request: stop the rest of the batch
            # rather than let it write on after the step has given up. Their intents stay pending,
            # for the step (or a resumed run) to settle against the cluster, as after a crash.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            self.journal.sync()

    async def confirm(self, summary: str, writes: list[str], answer: str) -> bool:
        if self.options.yes:
            self.journal.record("confirmation", step=self.step.id, answer="--yes", summary=summary)
            return True
        request = ConfirmationRequest(self.step.id, self.step.action, summary, tuple(writes), answer)
        self.emit("confirm", summary=summary, answer=answer, writes=len(writes))
        ok = await self.engine.confirmer(request) if self.engine.confirmer else False
        self.journal.record("confirmation", step=self.step.id, answer="yes" if ok else "no", summary=summary)
        return ok


async def _preview(action: Action, ctx: StepContext) -> list[str]:
    preview = getattr(action, "preview", None)
    if preview is None:
        return []
    try:
        return list(await preview(ctx))
    except ApiError as exc:  # the step itself will meet (and report) the same error
        return [f"(the writes could not be listed: {exc.status} {exc.reason}: {exc.api_message[:160]})"]


def _maybe_applied(exc: ApiError) -> bool:
    """A conflict answering a write the client had to resend: the first attempt may have been applied
    (its response was lost). Its intent is left pending, like after a crash, for the step (or a
    resumed run) to settle by looking at the object."""
    if exc.resent and exc.status in (409, 422):
        log.warning("%s %s: %s after a resend; its first attempt may have been applied", exc.method, exc.path,
                    exc.status)
        return True
    return False


async def _refuse(_: ConfirmationRequest) -> bool:
    return False


class Engine:
    def __init__(self, runbook: Runbook, actions: Mapping[str, Action], *, client: KubeClient,
                 observer: ClusterObserver, journal: Journal, options: EngineOptions,
                 confirmer: Confirmer | None = None, may_write: Callable[[], bool] | None = None) -> None:
        self.runbook = runbook
        self.actions = actions
        self.client = client
        self.observer = observer
        self.journal = journal
        self.options = options
        self.confirmer = confirmer or _refuse
        # Whether writes may go out now (the session's writer Lease: not once another holder's name is in it).
        self.may_write = may_write or (lambda: True)
        self.listeners: list[Callable[[EngineEvent], None]] = []
        self.results: dict[str, StepOutcome] = {}

    def emit(self, event: EngineEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("engine listener failed")

    async def run(self, phases: tuple[str, ...] = ("contain",)) -> dict[str, StepOutcome]:
        finished = self.journal.step_state()
        for step in self.runbook.steps:
            if step.phase not in phases:
                continue
            # Only a finished step is done: "skipped" is a declined confirmation, asked again on resume.
            if finished.get(step.id) == "finished":
                self.results[step.id] = StepOutcome("skipped", "already finished in this incident's journal")
                self.emit(EngineEvent("step-finished", step.id, {"status": "skipped", "summary": RESUMED_DONE}))
                continue
            outcome = await self.run_step(step)
            self.results[step.id] = outcome
            if outcome.status == "failed" and not step.continue_on_error:
                break
        return self.results

    async def run_step(self, step: Step) -> StepOutcome:
        action = self.actions[step.action]
        ctx = StepContext(self, step)
        needs_confirmation = step.confirm or getattr(action.spec, "destructive", False) or not self.options.auto
        started = time.monotonic()
        self.journal.step(step.id, "started", sync=False)  # durable with the step's first write
        self.emit(EngineEvent("step-started", step.id, {"action": step.action, "description": step.description}))
        if needs_confirmation and not self.options.yes and not getattr(action, "confirms_itself", False):
            ok = await ctx.confirm(f"run step {step.id} ({step.action}): {step.description}",
                                   await _preview(action, ctx), step.id)
            if not ok:
                outcome = StepOutcome("skipped", DECLINED)
                self.journal.step(step.id, "skipped", detail=outcome.summary)
                self.emit(EngineEvent("step-finished", step.id, {"status": "skipped", "summary": outcome.summary}))
                return outcome
        deadline = asyncio.timeout(step.timeout)
        try:
            async with deadline:
                outcome = await action.run(ctx)
        except TimeoutError as exc:
            # The step's own deadline, or a wait inside the action that says what it waited for.
            outcome = StepOutcome("failed", f"timed out after {step.timeout:.0f}s" if deadline.expired()
                                  else str(exc) or f"{type(exc).__name__} in {step.action}")
        except ApiError as exc:
            outcome = StepOutcome("failed", f"{exc.status} {exc.reason}: {exc.api_message}")
        except JournalError:
            raise  # nothing can be journaled: the caller reports it
        except ResponderError as exc:
            outcome = StepOutcome("failed", f"{type(exc).__name__}: {exc}")
        outcome.data.setdefault("seconds", round(time.monotonic() - started, 3))
        self.journal.step(step.id, "finished" if outcome.status != "failed" else "failed", detail=outcome.summary)
        self.emit(EngineEvent("step-finished", step.id, {"status": outcome.status, "summary": outcome.summary,
                                                         **outcome.data}))
        return outcome
