"""The Textual app of `responder watch`: it drives a session and shows it.

The app starts the session's watches, subscribes to its watch and engine events, waits for the
incident, runs containment, and answers the engine's confirmation requests with a modal. Everything
it shows comes from `TuiState`, fed by those events and applied to the widgets on a timer, so a
burst of thousands of events costs one screen update per frame, not one per event.

A "session" is anything with the attributes of `responder.response.session.Session` used below (see
`SessionLike`); the tests and the demo pass `responder.tui.replay.ReplaySession`.

Attached (the session's `attached_to`: a guard leads the cluster, responder.response.attach): the app runs no
step. It follows the guard's Lease and Incident object, shows them with the cluster its watches see, and asks
for each step the guard waits on in the same modal; a confirmed one is approved on the Incident
(`responder.response.approval.approve_step`, as `responder approve`), the only write it makes. `T` takes the
writer Lease over from that guard, once confirmed in the same modal (`responder.guard.takeover`): from then
the app leads the guard's incident as a new guard leader would, and its confirmations run the steps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer

from responder.cluster.watch import WatchEvent
from responder.incident.detect import DETECTION_LOGGER
from responder.incident.engine import ConfirmationRequest, EngineEvent
from responder.incident.observe import freeze_cluster_picture
from responder.cluster.lease import RETRY_PERIOD
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK, ResponderError
from responder.guard.takeover import take_over_from_guard, takeover_refusal
from responder.response.approval import approve_step
from responder.response.attach import GuardFollower, awaiting_approval
from responder.response.incident_object import is_open
from responder.response.session import recovery_summary
from responder.tui.screens.confirm import ConfirmScreen, QuitScreen
from responder.tui.screens.help import HelpScreen
from responder.tui.screens.plan import PlanScreen
from responder.tui.state import TuiState
from responder.tui.widgets.feed import EventFeed
from responder.tui.widgets.header import HeaderBar
from responder.tui.widgets.runbook_panel import RunbookPanel
from responder.tui.widgets.triage_table import TriagePanel, TriageTable

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1 / 30  # at most one screen update from the model per 33 ms (coalescing window)
PUMP_INTERVAL = 0.01  # how often the pump looks for changes: a lone event waits <= 10 ms, not 50
FLUSH_LIMIT = 2500  # namespaces re-triaged per frame at most (a 10k re-triage spreads over frames)
JOURNAL_POLL = 0.25  # while no incident is open
JOURNAL_POLL_INCIDENT = 0.1  # its latest lines; frames with rows to re-triage read it first anyway
JOURNAL_LINES = 200
ATTACH_POLL = 1.0  # attached: how often the guard's Lease and Incident are read (the guard writes it <= 1/s)


class SessionLike(Protocol):
    access: Any  # .context, .display_server
    options: Any  # .dry_run, .auto, .yes
    identity: str
    observer: Any  # .subscribe(callback)
    engine_listeners: list[Callable[[EngineEvent], None]]
    incident_opened: asyncio.Event
    trigger: Any
    journal: Any  # None, or .path / .incident_id / .undo_plan()

    async def start(self) -> None: ...
    async def wait_for_incident(self, timeout: float | None = None) -> None: ...
    async def contain(self) -> Any: ...
    async def recover(self) -> Any: ...
    def has_phase(self, phase: str) -> bool: ...
    def view(self) -> Any: ...
    def check_late_start(self) -> Any: ...
    def contained(self) -> bool: ...


class TuiConfirmer:
    """The session's Confirmer: shows the app's confirmation modal; refuses while no app runs."""

    def __init__(self) -> None:
        self.app: ResponderApp | None = None

    async def __call__(self, request: ConfirmationRequest) -> bool:
        app = self.app
        if app is None or not app.is_running:
            return False
        return await app.confirm(request)


# A detach intent as `Journal.record` writes it: compact JSON, `{"seq":N,"ts":..,"incident":..,"kind":
# "intent","step":..,"action":"detach","target":NS,"request":..,"undo":{..,"ownerReferences":[..]..},
# "dry_run":B}`. `scan_detach_intent` reads the fields TuiState uses with bytes.find: a full json.loads
# of the request and undo payloads costs several times more, and a burst journals 1,000 of them.
_TARGET = b'"action":"detach","target":"'
_UNDO_OWNER = b'"ownerReferences":[{'


def scan_detach_intent(line: bytes) -> dict[str, Any] | None:
    """The fields of a detach intent line that `TuiState.add_journal_intents` reads, or None when the
    line does not have the expected shape (the caller then decodes it in full)."""
    if not line.startswith(b'{"seq":') or b"\\" in line:  # escapes: leave them to json
        return None
    if line.endswith(b',"dry_run":false}'):
        dry_run = False
    elif line.endswith(b',"dry_run":true}'):
        dry_run = True
    else:
        return None
    comma, at = line.find(b","), line.find(_TARGET)
    if at < 0 or line.find(b'"kind":"intent","step":"', 0, at) < 0:
        return None
    at += len(_TARGET)
    close = line.find(b'"', at)
    try:
        seq = int(line[7:comma])
    except ValueError:
        return None
    refs = []
    undo = line.find(b'"undo":{', close)
    owners = line.find(_UNDO_OWNER, undo) if undo >= 0 else -1
    if owners >= 0:
        first_end = line.find(b"}", owners)
        name = line.find(b'"name":"', owners, first_end)
        if name >= 0:
            name += 8
            refs.append({"name": line[name:line.find(b'"', name)].decode()})
    return {"seq": seq, "kind": "intent", "action": "detach", "target": line[at:close].decode(),
            "dry_run": dry_run, "undo": {"ownerReferences": refs}}


def read_journal(path: Path, offset: int, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """What a journal file gained since `offset` (complete lines only): its last `limit` records, every
    `intent` record (detach intents with only the fields the model reads, see `scan_detach_intent`),
    and the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], [], offset
    lines = data[:end].split(b"\n")
    tail_from = max(0, len(lines) - limit)
    tail, intents = [], []
    for i, line in enumerate(lines):
        is_intent = b'"kind":"intent"' in line
        if i < tail_from:
            if not is_intent:
                continue
            scanned = scan_detach_intent(line) if b'"action":"detach"' in line else None
            if scanned is not None:
                intents.append(scanned)
                continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if i >= tail_from:
            tail.append(record)
        if is_intent:
            intents.append(record)
    return tail, intents, offset + end + 1


class ResponderApp(App[int]):
    TITLE = "responder"
    CSS = """
    Screen { layout: vertical; }
    #main { height: 2fr; min-height: 8; }
    #feed { height: 1fr; min-height: 5; }
    Screen.-wide RunbookPanel { width: 48; }
    Screen.-wide TriagePanel #row-detail { height: 3; }
    /* Short terminals (80x24): steps are compact (RunbookPanel.show); the journal gets the rest. */
    Screen.-short RunbookPanel #journal-title { margin-top: 0; }
    """
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("q", "request_quit", "Quit"),
        Binding("ctrl+q", "request_quit", "Quit", show=False, priority=True),
        Binding("d", "toggle_dry_run", "Dry-run"),
        Binding("p", "plan", "Plan"),
        Binding("u", "undo", "Undo"),
        Binding("a", "approve", "Approve", show=False),
        Binding("T", "take_over", "Take over"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(self, session: SessionLike, *, confirmer: TuiConfirmer | None = None,
                 clock: Callable[[], float] = time.time, flush_interval: float = FLUSH_INTERVAL,
                 flush_limit: int = FLUSH_LIMIT, track_latency: bool = False, cursor_blink: bool = True,
                 journal_poll: float = JOURNAL_POLL, follower: Any = None, approve: Any = approve_step,
                 attach_poll: float = ATTACH_POLL, take_over: Any = take_over_from_guard) -> None:
        super().__init__()
        self.session = session
        # Attached to the guard leading the cluster: `follower.look()` reads its Lease and Incident,
        # `approve(client, incident, step, dry_run=)` approves one of its steps (the tests pass fakes).
        self.attached_to = str(getattr(session, "attached_to", "") or "")
        self.follower = follower
        self.approve = approve
        self.attach_poll = attach_poll
        # `take_over(session, holder)` takes the Lease over from the guard and resumes its incident (the tests
        # pass a fake); what it returns (`TakenOver`) is kept, finished and closed by the app.
        self.take_over = take_over
        self.taking_over = ""  # "asking": its modal is shown; "taking": the Lease is changing hands
        self.taken_over: Any = None
        self.clock = clock
        self.flush_interval = flush_interval
        self.flush_limit = flush_limit
        self.journal_poll = journal_poll
        self.cursor_blink = cursor_blink
        if confirmer is not None:
            confirmer.app = self
        elif getattr(session, "confirmer", None) is None:
            session.confirmer = self.confirm  # type: ignore[attr-defined]
        options = session.options
        runbook = getattr(session, "runbook", None)
        steps = [(s.id, s.action, s.description) for s in getattr(runbook, "steps", ())
                 if getattr(s, "phase", "contain") == "contain"]
        self.model = TuiState(protected=getattr(session, "protected", ()), steps=steps,
                              context=session.access.context or "", server=session.access.display_server or "",
                              identity=session.identity, dry_run=bool(options.dry_run),
                              auto=bool(getattr(options, "auto", True)), yes=bool(getattr(options, "yes", False)),
                              journal_limit=JOURNAL_LINES, track_latency=track_latency)
        if self.attached_to:
            self.model.set_attached(self.attached_to)
        self._read_hold()
        self.latency_samples: list[float] | None = [] if track_latency else None
        self.flush_seconds: deque[float] = deque(maxlen=10_000)  # recent frame times (the benchmark reads them)
        self.log_records: deque[tuple[float, str, int]] = deque(maxlen=200)
        self.incident_open = False
        self.containing = False
        self.contain_done = False
        self.contained: bool | None = None
        self.recovered: bool | None = None  # None: recovery did not run (contain-only, dry run, replay)
        self.recovering = False
        self.failure: BaseException | None = None
        self._shown = {"header": -1, "steps": -1}
        self._journal_path: Path | None = None
        self._journal_offset = 0
        self._frozen = False
        self._last_flush = 0.0
        self._flushed_sig: tuple = ()

    # ------------------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="main"):
            yield TriagePanel(id="table-panel")
            yield RunbookPanel(id="runbook")
        yield EventFeed(id="feed")
        yield Footer()

    def on_mount(self) -> None:
        self.session.observer.subscribe(self._on_watch_event)
        self.session.engine_listeners.append(self._on_engine_event)
        self.set_interval(PUMP_INTERVAL, self._pump, name="pump")
        self.set_interval(1.0, self._tick, name="tick")
        self.header = self.query_one(HeaderBar)
        self.panel = self.query_one(TriagePanel)
        self.runbook = self.query_one(RunbookPanel)
        self.feed = self.query_one(EventFeed)
        self._flush_model()
        self.query_one(TriageTable).focus()
        self._drive()
        self._tail_journal()

    async def on_unmount(self) -> None:
        # Taken over: the Incident's keeper stops (the session's close releases the Lease afterwards).
        if self.taken_over is not None:
            await self.taken_over.close()

    # ------------------------------------------------------------------------ the session

    def _read_hold(self) -> None:
        """Whether the session's preflight found the namespace hold armed (`hold_not_armed`: None if it is,
        else why not); a session without the attribute leaves it unknown. Not armed is said once in the feed
        too: the header has no room for why, or for the fix."""
        if not hasattr(self.session, "hold_not_armed"):
            return
        before = self.model.hold()
        self.model.set_hold(self.session.hold_not_armed)
        self_hold = getattr(self.session, "self_hold", None)
        if self_hold is not None:
            self.model.set_self_hold("" if not self_hold.installed else ("in force" if self_hold.in_force else "dormant"))
        state, why = self.model.hold()
        if state == "not armed" and (state, why) != before:
            self.model.add_note(f"namespace hold NOT ARMED ({why}): in an incident the breaker's hold takes ~1 s "
                                "to enforce, not milliseconds; fix: `responder protect --only hold` as a cluster "
                                "admin", at=self.clock(), alert=True)

    def _on_watch_event(self, event: WatchEvent) -> None:
        self.model.apply_watch(event)

    def _on_engine_event(self, event: EngineEvent) -> None:
        self.model.apply_engine(event)

    @work(group="session", exclusive=True, name="session")
    async def _drive(self) -> None:
        if self.attached_to:
            await self._follow_guard()
            return
        await self._respond(start=True)

    async def _respond(self, *, start: bool) -> None:
        """Watch (`start`: the watches are started first), open or resume the incident, contain, recover."""
        session, model = self.session, self.model
        try:
            if start:
                await self._start_watching()
            session.check_late_start()
            await session.wait_for_incident()
            self.incident_open = True
            trigger = session.trigger
            journal = session.journal
            model.open_incident(getattr(journal, "incident_id", "incident"), getattr(trigger, "kind", "?"),
                                getattr(trigger, "reason", ""), getattr(trigger, "event_received", self.clock()))
            self.containing = True
            try:
                await session.contain()
            finally:
                self.containing = False
            self.contain_done = True
            self._read_hold()  # the incident read the self-arming hold again
            self.contained = bool(session.contained())
            if model.dry_run:
                model.set_phase("dry-run-done", "dry run finished: nothing was changed; quit and rerun live")
            elif not self.contained:
                model.set_phase("not-contained", self._outcome_line() + "; see the table for at-risk rows")
            elif session.has_phase("recover") and not session.options.contain_only:
                # The same engine and journal as headless: each recovery write is a confirmed step (modal).
                model.set_phase("recovering", self._outcome_line())
                self.recovering = True
                try:
                    await session.recover()
                finally:
                    self.recovering = False
                recovery = recovery_summary(session) or {}
                self.recovered = bool(recovery.get("verified"))
                line = (f"{recovery.get('present', 0)} of {recovery.get('known', 0)} namespaces present, "
                        f"{recovery.get('adopted', 0)} re-adopted, {recovery.get('restored', 0)} restored")
                model.set_phase("recovered" if self.recovered else "not-recovered", line)
            else:
                model.set_phase("contained", self._outcome_line())
            if self.taken_over is not None:  # the guard's Incident: its final phase, as a guard would write it
                await self.taken_over.finish(EXIT_OK if self.exit_code == EXIT_OK else EXIT_NOT_CONTAINED)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # shown, not swallowed: the operator must see why responder stopped
            self.failure = exc
            log.exception("the session failed")
            model.set_phase("error", f"{type(exc).__name__}: {exc}".splitlines()[0])

    async def _start_watching(self) -> None:
        """The watches started, the table seeded from them, the hold read."""
        self.model.set_phase("starting", "listing the cluster")
        await self.session.start()
        self._read_hold()
        self.model.seed(self.session.view())
        self.model.set_phase("watching")

    async def _follow_guard(self) -> None:
        """Attached: the cluster from the watches, the incident from the guard's Incident; no step runs here."""
        session, model = self.session, self.model
        try:
            await self._start_watching()
            model.add_note(f"attached to the guard {model.attached_place}: it leads this cluster (holds the "
                           "Lease); this TUI writes nothing but the approvals you confirm", at=self.clock(), alert=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            log.exception("the session failed")
            model.set_phase("error", f"{type(exc).__name__}: {exc}".splitlines()[0])
            return
        follower = self.follower or GuardFollower(session.client, self.attached_to)  # type: ignore[attr-defined]
        asked: set[tuple[str, str]] = set()
        failing = ""
        while True:
            try:
                seen = await follower.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next look may work: said once, not every second
                if str(exc) != failing:
                    failing = str(exc)
                    model.add_note(f"reading the guard's Incident failed: {type(exc).__name__}: {exc}",
                                   at=self.clock(), alert=True)
            else:
                failing = ""
                if self.taking_over == "taking":  # the Lease is changing hands to this TUI: nothing to show meanwhile
                    await asyncio.sleep(self.attach_poll)
                    continue
                model.set_attached(seen.holder, at=self.clock())
                if seen.incident is not None:
                    incident = seen.incident
                    self.incident_open = is_open(incident)
                    model.apply_guard_incident(incident, at=self.clock())
                    model.mark_guard_detached(seen.owners)
                    step = awaiting_approval(incident)
                    key = (incident["metadata"]["name"], step or "")
                    if step and key not in asked and not self.taking_over:
                        asked.add(key)  # asked once on its own; refused, `a` asks again
                        self._ask_approval(key[0], step)
            await asyncio.sleep(self.attach_poll)

    @work(group="approve", exclusive=True, name="approve")
    async def _ask_approval(self, name: str, step: str) -> None:
        """The confirmation modal for a step the guard waits on; confirmed, the approval is written."""
        model = self.model
        runbook_step = next((s for s in getattr(getattr(self.session, "runbook", None), "steps", ())
                             if s.id == step), None)
        identity = model.identity or "you"
        request = ConfirmationRequest(
            step, getattr(runbook_step, "action", "") or "approval",
            f"The guard {model.attached_place} waits for the approval of its recovery step {step!r} "
            f"({getattr(runbook_step, 'description', '') or 'see its runbook'}). Confirmed, the guard runs it. "
            f"This TUI writes only the approval, as {identity}.",
            (f"add {{step: {step}, approver: {identity}}} to spec.approvals of Incident {name}",), step)
        if not await self.confirm(request):
            model.add_note(f"approval of {step} refused: the guard keeps waiting (press a to approve it)",
                           at=self.clock(), alert=True)
            return
        try:
            result = await self.approve(self.session.client, name, step,  # type: ignore[attr-defined]
                                        dry_run=bool(self.session.options.dry_run))
        except Exception as exc:
            self.say_failed(exc, f"approval of {step} not written", f"approval of {step} failed")
            return
        what = "was already approved" if result.get("already") else (
            "approved (dry run: not persisted)" if result.get("dry_run") else "approved")
        model.add_note(f"step {step} {what} by {result.get('approver')} at {result.get('approvedAt')}",
                       at=self.clock())

    def action_approve(self) -> None:
        """Attached: ask again for the step the guard waits on (after a refusal)."""
        step, name = self.model.waiting_confirmation, self.model.guard_incident
        if not self.attached_to or not step or not name:
            self.notify("no step waits for approval", severity="warning")
            return
        if isinstance(self.screen, ConfirmScreen):
            return
        self._ask_approval(name, step)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # `T` only while attached (footer and key); the command palette still says why it cannot take over.
        if action == "take_over":
            return bool(self.attached_to)
        return True

    def action_take_over(self) -> None:
        """Attached: take the writer Lease over from the guard and lead its incident here (asks first)."""
        holder = self.model.attached or self.attached_to
        refusal = takeover_refusal(attached_to=self.attached_to, holder=holder,
                                   dry_run=bool(self.session.options.dry_run))
        if refusal is not None:
            self.notify(f"take over refused: {refusal}", severity="warning")
            self.model.add_note(f"take over refused: {refusal}", at=self.clock(), alert=True)
            return
        if self.taking_over or isinstance(self.screen, (ConfirmScreen, QuitScreen)):
            return
        self._take_over(holder)

    @work(group="takeover", exclusive=True, name="take-over")
    async def _take_over(self, holder: str) -> None:
        """The confirmation modal, then the takeover; the incident is then led here (`_lead`)."""
        model = self.model
        place = model.attached_place
        name = model.guard_incident
        incident = f"the incident {model.incident.id} (Incident {name})" if model.incident and name \
            else "no open incident yet (this TUI then detects and contains the next one itself)"
        request = ConfirmationRequest(
            "take-over", "the writer Lease",
            f"Take the cluster's writer Lease responder-system/responder over from the guard {place}, which leads "
            f"{incident}. The guard replicas then stop writing and stand by: the leader sees this TUI's name in the "
            f"Lease at its next renewal (within {RETRY_PERIOD:.0f} s), stops and restarts as a standby. This "
            "terminal becomes the one writer for the cluster: it resumes the incident from the Incident and the "
            "cluster, and runs each step you confirm here, until you quit it and it releases the Lease.",
            (f"update Lease responder-system/responder: holderIdentity {holder} -> this TUI (as "
             f"{model.identity or 'you'})",
             f"then, once the guard stopped: keep Incident {name or '(none)'} current and run the steps you confirm"),
            "take-over")
        self.taking_over = "asking"
        try:
            if not await self.confirm(request):
                model.add_note(f"take over refused: the guard {place} keeps leading", at=self.clock())
                return
            self.taking_over = "taking"
            model.add_note(f"taking the writer Lease over from the guard {place} ...", at=self.clock(), alert=True)
            try:
                taken = await self.take_over(self.session, holder)
            except Exception as exc:
                self.say_failed(exc, "take over failed", "take over failed")
                return
        finally:
            self.taking_over = ""
        self.taken_over = taken
        self.attached_to = ""
        self.refresh_bindings()
        model.set_took_over(getattr(taken, "previous", holder), at=self.clock())
        self._lead()

    @work(group="session", exclusive=True, name="session")
    async def _lead(self) -> None:
        """After the takeover (the follower's worker is cancelled): the guard's incident, resumed, led here."""
        await self._respond(start=False)

    def _outcome_line(self) -> str:
        counts = self.model.counts
        parts = [f"{s} {counts[s]}" for s in ("detached", "at-risk", "terminating", "gone") if counts.get(s)]
        return "; ".join(parts) or "no namespace was at risk"

    def say_failed(self, exc: Exception, refused: str, failed: str) -> None:
        """An on-call action that did not happen, in the feed and as a notification: a ResponderError (the
        cluster refused, with its reason) after `refused`, anything else (a bug, a lost connection) after `failed`."""
        if isinstance(exc, ResponderError):
            self.model.add_note(f"{refused}: {exc.message}", at=self.clock(), alert=True)
            self.notify(f"{refused}: {exc.message}", severity="error")
        else:
            self.model.add_note(f"{failed}: {type(exc).__name__}: {exc}", at=self.clock(), alert=True)
            self.notify(f"{failed}: {exc}", severity="error")

    async def confirm(self, request: ConfirmationRequest) -> bool:
        """The Confirmer: push the modal and wait for the operator's answer."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def answered(result: bool | None) -> None:
            if not future.done():
                future.set_result(bool(result))

        self.push_screen(ConfirmScreen(request, dry_run=self.model.dry_run, blink=self.cursor_blink),
                         callback=answered)
        return await future

    # ---------------------------------------------------------------------- screen updates

    def _pump(self) -> None:
        """Flush when the model changed, at most once per flush interval: a lone event shows within
        a pump tick, a stream of them is batched into one update per interval."""
        if not self.is_running:  # shutting down: the timers still tick while the widgets are removed
            return
        if time.perf_counter() - self._last_flush < self.flush_interval:
            return
        model = self.model
        model.set_blind(getattr(self.session.observer, "stream_errors", {}))  # a replayed session has none
        sig = (model.pending, model.feed_total, model.header_version, model.steps_version, model.ready,
               len(self.log_records), model.has_arrivals)
        if model.pending or sig != self._flushed_sig:
            self._flush_model()

    def _flush_model(self, limit: int | None = -1) -> None:
        started = self._last_flush = time.perf_counter()
        model = self.model
        while self.log_records:
            at, message, level = self.log_records.popleft()
            model.add_note(message, at=at, alert=level >= logging.WARNING, source="log")
        if model.pending and self.incident_open:
            # The engine journals a batch's intents before its requests leave, so the journal now holds
            # the detach records of the namespace changes about to be re-triaged: read it first, and
            # each row gets its final verdict in this frame instead of "safe" now and "detached" later.
            self.sync_journal()
        changes = model.flush(self.flush_limit if limit == -1 else limit)
        panel = self.panel
        if changes:
            panel.table.apply(changes, model)
            panel.show_detail()
        if changes or model.pending or not model.ready:
            panel.show_counts(model)
        feed = self.feed
        if model.feed_total != feed.shown:
            feed.add_lines(model.take_feed(feed.shown))
            feed.shown = model.feed_total
        if model.header_version != self._shown["header"]:
            self._shown["header"] = model.header_version
            self.header.show(model)
            panel.show_counts(model)
        if model.steps_version != self._shown["steps"]:
            self._shown["steps"] = model.steps_version
            self.runbook.show(model, self.clock())
        if changes.arrivals and self.latency_samples is not None:
            self.call_after_refresh(self._record_latency, changes.arrivals)
        if changes or changes.arrivals:
            self.flush_seconds.append(time.perf_counter() - started)
        if not self._frozen and model.ready and not model.pending and model.rows:
            # The cluster picture and the table's rows are now loaded and live for the whole session:
            # move them out of the garbage collector's reach, or every full collection walks them all
            # (measured: 100-300 ms pauses with 10,000 namespaces, in the middle of an incident).
            self._frozen = True
            freeze_cluster_picture()
        self._flushed_sig = (model.pending, model.feed_total, model.header_version, model.steps_version,
                             model.ready, len(self.log_records), model.has_arrivals)

    def _record_latency(self, arrivals: list[float]) -> None:
        now = time.perf_counter()
        assert self.latency_samples is not None
        self.latency_samples.extend(now - a for a in arrivals)

    def _tick(self) -> None:
        if self.is_running and any(s.status in ("running", "waiting") for s in self.model.steps.values()):
            self.runbook.show(self.model, self.clock())

    @work(group="journal", exclusive=True, name="journal-tail")
    async def _tail_journal(self) -> None:
        while True:
            await asyncio.sleep(min(self.journal_poll, JOURNAL_POLL_INCIDENT) if self.incident_open
                                else self.journal_poll)
            self.sync_journal()

    def sync_journal(self) -> None:
        """Read what the incident journal gained since the last look. On the event loop, not in a
        thread: it is a local file this process appends to (a few ms for 1,000 writes), and a reader
        thread competing for the GIL stretched the frames of a burst more than the read costs."""
        journal = getattr(self.session, "journal", None)
        path = getattr(journal, "path", None)
        if path is None:
            return
        if path != self._journal_path:
            self._journal_path, self._journal_offset = Path(path), 0
        tail, intents, self._journal_offset = read_journal(self._journal_path, self._journal_offset, JOURNAL_LINES)
        if intents:
            self.model.add_journal_intents(intents)
        if tail:
            self.model.add_journal_records(tail)

    async def settle(self) -> None:
        """Bring the screen fully up to date with the model now (tests, benchmark)."""
        self.sync_journal()
        self._flush_model(limit=None)
        self.runbook.show(self.model, self.clock())
        self.header.show(self.model)
        self.panel.show_counts(self.model)

    async def next_refresh(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_after_refresh(lambda: done.done() or done.set_result(None))
        await done

    # ----------------------------------------------------------------------------- actions

    def action_request_quit(self) -> None:
        # Nothing to interrupt: no incident, or attached (the guard handles it whether this TUI runs or not).
        if not self.incident_open or self.attached_to:
            self.exit(self.exit_code, return_code=self.exit_code)
            return
        journal = getattr(getattr(self.session, "journal", None), "path", None)
        if self.containing:
            detail = ("Containment is RUNNING: quitting interrupts it. Writes already sent are journaled; "
                      f"resume with `responder run --resume {journal}`.")
        elif self.recovering:
            detail = ("Recovery is RUNNING: quitting interrupts it (the cluster stays contained: Capsule at 0). "
                      f"Resume with `responder run --resume {journal}`.")
        elif self.contain_done:
            state = "contained" if self.contained else "NOT contained"
            if self.recovered is not None:
                state += ", recovered" if self.recovered else ", NOT fully recovered"
            detail = f"Containment finished ({state}). Journal: {journal}"
        else:
            detail = f"Journal: {journal}"
        if isinstance(self.screen, QuitScreen):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit(self.exit_code, return_code=self.exit_code)

        self.push_screen(QuitScreen(detail), callback=answered)

    @property
    def exit_code(self) -> int:
        if self.failure is not None:
            return int(getattr(self.failure, "exit_code", EXIT_NOT_CONTAINED))
        if not self.incident_open or self.attached_to:
            return EXIT_OK
        if self.contain_done and (self.contained or self.model.dry_run) and self.recovered is not False:
            return EXIT_OK
        return EXIT_NOT_CONTAINED

    def action_toggle_dry_run(self) -> None:
        if self.incident_open or self.session.incident_opened.is_set():
            self.notify("dry-run can only be changed before an incident opens", severity="warning")
            return
        value = not self.session.options.dry_run
        set_dry_run(self.session, value)
        self.model.set_dry_run(value)
        self.notify("dry-run ON: every write will be sent with dryRun=All" if value
                    else "dry-run OFF: containment will write to the cluster",
                    severity="warning" if not value else "information")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_plan(self) -> None:
        self._show_plan()

    @work(group="plan", exclusive=True)
    async def _show_plan(self) -> None:
        try:
            plan_fn = getattr(self.session, "plan", None)
            if plan_fn is None:
                from responder.response.plan import build_plan

                plan = build_plan(self.session)  # type: ignore[arg-type]
            else:
                plan = plan_fn()
        except Exception as exc:
            self.notify(f"no plan: {type(exc).__name__}: {exc}", severity="error")
            return
        await self.push_screen(PlanScreen(plan))

    def action_undo(self) -> None:
        if self.attached_to:
            self.notify("attached: the guard leads and writes; this TUI writes only approvals (undo: `responder "
                        "undo` on the guard's journal, once it no longer leads)", severity="warning")
            return
        if self.containing:
            self.notify("containment is running: undo after it finished", severity="warning")
            return
        if getattr(self.session, "journal", None) is None:
            self.notify("no incident journal yet: nothing to undo", severity="warning")
            return
        self._undo()

    @work(group="undo", exclusive=True)
    async def _undo(self) -> None:
        journal = self.session.journal
        plan = journal.undo_plan()
        if not plan:
            self.notify("nothing to undo: no reversible write succeeded in this incident")
            return
        name = Path(getattr(journal, "path", "journal")).name
        request = ConfirmationRequest(
            "undo", "undo", f"Revert, newest first, the {len(plan)} reversible writes recorded in {name}: "
                            "re-attach detached namespaces (only to live Tenants), restore Capsule's webhook "
                            "matchConditions, scale Capsule back.",
            tuple(f"{e.get('action')} {e.get('target')}" for e in plan), str(len(plan)))
        if not await self.confirm(request):
            self.model.add_note("undo refused", at=self.clock())
            return
        self.model.add_note(f"undo: reverting {len(plan)} writes", at=self.clock(), alert=True)
        try:
            undo = getattr(self.session, "undo", None)
            if undo is not None:
                result = await undo()
            else:
                from responder.response.undo import undo_journal

                result = await undo_journal(self.session.client, journal)  # type: ignore[attr-defined]
        except Exception as exc:
            self.model.add_note(f"undo failed: {type(exc).__name__}: {exc}", at=self.clock(), alert=True)
            self.notify(f"undo failed: {exc}", severity="error")
            return
        undone, skipped, failed = (len(result.get(k) or []) for k in ("undone", "skipped", "failed"))
        self.model.add_note(f"undo: {undone} undone, {skipped} skipped, {failed} failed", at=self.clock(),
                            alert=bool(failed))
        for entry in (result.get("skipped") or [])[:5]:
            self.model.add_note(f"undo skipped {entry.get('target')}: {entry.get('reason')}", at=self.clock())
        self.notify(f"undo: {undone} undone, {skipped} skipped, {failed} failed",
                    severity="error" if failed else "information")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command
        yield SystemCommand("Quit responder", "Quit (asks first while an incident is open)",
                            self.action_request_quit)
        yield SystemCommand("Toggle dry-run", "Send every write with dryRun=All (only before an incident)",
                            self.action_toggle_dry_run)
        yield SystemCommand("Show plan", "What responder sees now and what it would do", self.action_plan)
        yield SystemCommand("Undo incident writes", "Revert the reversible writes of this incident (asks first)",
                            self.action_undo)
        yield SystemCommand("Take over from the guard", "Attached: take the writer Lease over and lead the "
                            "guard's incident here (asks first)", self.action_take_over)
        yield SystemCommand("Help: keys", "Key bindings and what the states mean", self.action_help)


def set_dry_run(session: Any, value: bool) -> None:
    """Switch dry-run through the session: options and client together."""
    session.set_dry_run(value)


class _FeedLogHandler(logging.Handler):
    """Log records into the event feed while the TUI owns the terminal (stderr would tear it)."""

    def __init__(self, app: ResponderApp) -> None:
        super().__init__(logging.INFO)
        self.app = app
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # Warnings and up; below that only detection's decisions (routine work, said as such).
        if record.levelno < logging.WARNING and record.name != DETECTION_LOGGER:
            return
        try:
            self.app.log_records.append((record.created, self.format(record).splitlines()[0], record.levelno))
        except Exception:
            self.handleError(record)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    if type(handler) is not logging.StreamHandler:  # FileHandler & co. are StreamHandler subclasses
        return False
    stream = getattr(handler, "stream", None)
    if stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
        return True
    try:
        return stream.fileno() in (1, 2) or stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def logging_into(app: ResponderApp) -> Iterator[None]:
    """While the TUI owns the terminal, log records go to its feed instead of stderr."""
    root = logging.getLogger()
    moved = [h for h in root.handlers if _writes_to_terminal(h)]
    for handler in moved:
        root.removeHandler(handler)
    ours = _FeedLogHandler(app)
    root.addHandler(ours)
    try:
        yield
    finally:
        root.removeHandler(ours)
        for handler in moved:
            root.addHandler(handler)


async def run_tui_async(session: SessionLike, *, confirmer: TuiConfirmer | None = None, **options: Any) -> int:
    """Run the app in the running event loop (the session's, after its preflight); the exit code:
    0 no incident / contained / dry run, 1 not contained (or interrupted), else the failure's code."""
    app = ResponderApp(session, confirmer=confirmer, **options)
    with logging_into(app):
        result = await app.run_async()
    if result is None:
        return app.return_code if app.return_code else app.exit_code
    return int(result)


def run_tui(session: SessionLike, **options: Any) -> int:
    """Run the TUI on `session` (preflight already done) and return the exit code."""
    return asyncio.run(run_tui_async(session, **options))
