"""What the guard tells and when: an incident's phases, and posture problems (raised, then cleared).

The decisions are pure functions (cron_max_gap, stale_backups, blind_streams); GuardAlerts hooks them to a
guard's session and hands notices to the Notifier (responder.guard.notify), which sends them off the hot
path. Incident notices wait for the gate: the first step the engine finishes (the runbook's first contain
step is the breaker), or the incident's end, whichever comes first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from responder.actions.breaker import read_armed_hold
from responder.errors import EXIT_OK, ApiError, JournalError
from responder.guard.notify import REFRESH, Notice, Notifier, Sink
from responder.incident import triage
from responder.incident.engine import EngineEvent
from responder.incident.journal import Journal
from responder.recovery.decisions import candidate_backups, parse_time

if TYPE_CHECKING:
    from prometheus_client import Counter as MetricCounter

    from responder.guard.health import GuardStatus
    from responder.response.session import Session

log = logging.getLogger(__name__)

BLIND_AFTER = 60.0  # seconds a watch stream may be down before it is a posture problem
POSTURE_EVERY = 10.0
VELERO_EVERY = 300.0

# -- Velero: the newest backup older than its schedule allows --------------------------------------

_DESCRIPTORS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
                "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_NAMES = {**{d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
          **{m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                             "nov", "dec"))}}


def _duration(text: str) -> float:
    """A Go duration (`@every 1h30m`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, number, i = 0.0, "", 0
    while i < len(text):
        if text[i].isdigit() or text[i] == ".":
            number += text[i]
            i += 1
            continue
        unit = "ms" if text[i:i + 2] == "ms" else text[i]
        if unit not in units or not number:
            raise ValueError(f"not a duration: {text!r}")
        total, number, i = total + float(number) * units[unit], "", i + len(unit)
    if number or total <= 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body in ("*", "?"):
            start, end = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = int(_NAMES.get(a, a)), int(_NAMES.get(b, b))
        else:
            start = int(_NAMES.get(body, body))
            end = high if step_text else start
        if step < 1 or not low <= start <= end <= high:
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@functools.lru_cache(maxsize=64)
def cron_max_gap(expression: str) -> float:
    """The longest time in seconds between two runs of a Velero Schedule's cron expression (5 fields, or
    @every/@daily/...), found by walking 35 days minute by minute from a fixed start. ValueError if invalid."""
    text = expression.strip()
    if text.startswith("@every "):
        return _duration(text.split(None, 1)[1].strip())
    text = _DESCRIPTORS.get(text, text)
    parts = text.split()
    if len(parts) == 6:  # robfig/cron's optional seconds field
        parts = parts[1:]
    if len(parts) != 5:
        raise ValueError(f"not a cron expression: {expression!r}")
    minute, hour, dom, month, dow = (_field(p, lo, hi) for p, (lo, hi) in
                                     zip(parts, ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))))
    dow = frozenset(d % 7 for d in dow)
    dom_any, dow_any = parts[2] in ("*", "?"), parts[4] in ("*", "?")
    at = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    runs: list[dt.datetime] = []
    for _ in range(35 * 24 * 60):
        if at.minute in minute and at.hour in hour and at.month in month:
            day_dom, day_dow = at.day in dom, (at.weekday() + 1) % 7 in dow
            # cron's rule: with both day fields restricted, either matches
            if (day_dom and day_dow) if (dom_any or dow_any) else (day_dom or day_dow):
                runs.append(at)
        at += dt.timedelta(minutes=1)
    if len(runs) < 2:
        return 366 * 86400.0  # yearly or rarer
    return max((b - a).total_seconds() for a, b in zip(runs, runs[1:]))


def backup_allowance(gap: float) -> float:
    """How old the newest backup may be: one interval, plus time for the run to finish (a quarter of the
    interval, at least 10 minutes)."""
    return gap + max(600.0, gap / 4)


def stale_backups(schedules: Iterable[Mapping[str, Any]], backups: Iterable[Mapping[str, Any]], *,
                  now: dt.datetime) -> dict[str, str]:
    """Schedule name -> why its newest Completed backup is older than the schedule allows (unpaused
    schedules only; a schedule with no backup yet counts from its creation)."""
    backups = list(backups)
    stale: dict[str, str] = {}
    for schedule in schedules:
        meta, spec = schedule.get("metadata") or {}, schedule.get("spec") or {}
        name = meta.get("name") or "?"
        if spec.get("paused"):
            continue
        try:
            allowed = backup_allowance(cron_max_gap(str(spec.get("schedule") or "")))
        except ValueError as exc:
            stale[name] = f"its schedule {spec.get('schedule')!r} cannot be read ({exc})"
            continue
        done = [b for b in candidate_backups(backups, schedule=name)
                if (b.get("status") or {}).get("phase") == "Completed"]
        newest = parse_time((done[0].get("status") or {}).get("startTimestamp")) if done else None
        since = newest or parse_time(meta.get("creationTimestamp"))
        if since is None or (now - since).total_seconds() <= allowed:
            continue
        age = _age((now - since).total_seconds())
        stale[name] = (f"newest Completed backup {done[0]['metadata'].get('name')} is {age} old" if newest else
                       f"no Completed backup in {age} since it was created") + \
            f"; its schedule {spec.get('schedule')!r} allows {_age(allowed)}"
    return stale


def _age(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def blind_streams(watches: Mapping[str, tuple[bool, float | None]], down_since: dict[str, float], *, now: float,
                  after: float = BLIND_AFTER) -> dict[str, float]:
    """Streams down for more than `after` seconds -> how long. `down_since` (stream -> monotonic time it
    was first seen down) is kept up to date here."""
    for name, (up, _age_s) in watches.items():
        if up:
            down_since.pop(name, None)
        else:
            down_since.setdefault(name, now)
    return {name: now - since for name, since in down_since.items() if name in watches and now - since > after}


# -- the guard's alerts ------------------------------------------------------------------------------

class GuardAlerts:
    """Turns what a guard sees into notices. With no sinks it does nothing (and starts no task)."""

    def __init__(self, notifier: Notifier | None, *, cluster: str, counter: MetricCounter | None = None,
                 posture_every: float = POSTURE_EVERY, velero_every: float = VELERO_EVERY,
                 blind_after: float = BLIND_AFTER) -> None:
        self.notifier = notifier
        self.cluster = cluster
        self.counter = counter
        self.posture_every = posture_every
        self.velero_every = velero_every
        self.blind_after = blind_after
        self.session: Session | None = None
        self.gate_open = asyncio.Event()  # the breaker's first step done, or the incident ended
        self.problems: dict[str, Notice] = {}  # raised posture problems, by key
        self.down_since: dict[str, float] = {}
        self.stale: dict[str, str] = {}
        self._velero_read_at = float("-inf")
        self._posture: asyncio.Task[None] | None = None
        self._opened_at: dt.datetime | None = None
        # The incident's journal, for notification outcomes: the session's while it runs, then reopened for
        # appends (the session closes it when its run ends, and notices are still on their way).
        self.journal: Journal | None = None
        self._unjournaled: list[dict[str, Any]] = []
        self.ended_run = False  # the guard's headless run returned (ended()) or broke off
        self._told_contained = False
        if notifier is not None:
            notifier.gate = self._gate
            notifier.on_outcome = self._outcome

    @property
    def enabled(self) -> bool:
        return self.notifier is not None and bool(self.notifier.sinks)

    def attach(self, session: Session, status: Callable[[], GuardStatus], leading: Callable[[], bool]) -> None:
        """Before the session's preflight: hook its engine and start the notifier and the posture checks."""
        if self.notifier is None:
            return
        self.session = session
        self.notifier.leading = leading
        session.engine_listeners.append(self._on_engine_event)
        if self.enabled:
            self.notifier.start()
            self._posture = asyncio.create_task(self._posture_loop(status, leading), name="guard-posture")

    async def close(self, error: BaseException | None = None) -> None:
        """Stop; what is queued gets a few seconds. `error`: what ended the guard's run, if anything."""
        self._broke_off(error)
        self._stop_posture()
        if self.notifier is not None:
            self.gate_open.set()
            await self.notifier.close()
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _stop_posture(self) -> None:
        if self._posture is not None:
            self._posture.cancel()  # it only awaits reads: nothing is cut in half
            self._posture = None

    # -- the incident ------------------------------------------------------------------------------

    def _incident(self, event: str, summary: str, description: str, *, resolved: bool = False,
                  **fields: Any) -> None:
        # One alert per incident, its labels fixed (severity included): each phase updates its annotations.
        session = self.session
        if self.notifier is None or session is None or session.journal is None:
            return
        self._opened_at = self._opened_at or dt.datetime.fromtimestamp(
            session.trigger.event_received if session.trigger else time.time(), dt.timezone.utc)
        incident = session.journal.incident_id
        self.notifier.notify(Notice(
            key=f"incident/{incident}", event=event, alertname="ResponderIncident", severity="critical",
            cluster=self.cluster, incident=incident, summary=summary, description=description, resolved=resolved,
            starts_at=self._opened_at, fields={"event": event, "journal": session.journal.path.name, **fields}))

    def opened(self, session: Session) -> None:
        trigger = session.trigger
        self._incident("opened", f"incident {session.journal.incident_id if session.journal else '?'} opened: "
                       f"{trigger.reason if trigger else 'detected'}",
                       f"responder's guard ({session.identity}) is containing it on its own.",
                       trigger=trigger.kind if trigger else None)

    def ended(self, session: Session, code: int) -> None:
        """The guard's headless run returned `code`: contained (then recovery waits for approval) or failed.
        Its watches and client are closed now: posture checks end with them."""
        self._end(session)
        incident = session.journal.incident_id if session.journal else "?"
        states = Counter(row.state.value for row in triage.triage(session.view())) if session.journal else {}
        if code != EXIT_OK:
            self._incident("failed", f"incident {incident}: containment failed (exit {code})",
                           "the guard could not contain it; the on-call must act (see the journal).",
                           exit_code=code, namespaces=dict(states))
            return
        self.contained(session)
        pending = [step.id for step in session.runbook.steps if step.phase == "recover"]
        if pending and session.options.contain_only:
            self.waiting(session, pending)

    def contained(self, session: Session) -> None:
        """Contained (once): the guard's Incident says so as its last contain step ends."""
        if self._told_contained:
            return
        self._told_contained = True
        incident = session.journal.incident_id if session.journal else "?"
        states = Counter(row.state.value for row in triage.triage(session.view())) if session.journal else {}
        self._incident("contained", f"incident {incident} contained",
                       f"namespaces: {', '.join(f'{n} {s}' for s, n in sorted(states.items()))}.",
                       namespaces=dict(states))

    def waiting(self, session: Session, steps: list[str]) -> None:
        incident = session.journal.incident_id if session.journal else "?"
        self._incident("waiting-approval", f"incident {incident}: recovery waits for approval",
                       f"recovery steps waiting: {', '.join(steps)}.", steps=steps)

    def _end(self, session: Session) -> None:
        self.ended_run = True
        self.gate_open.set()
        self._stop_posture()
        if self.enabled and session.journal is not None and self.journal is None:
            try:
                self.journal = Journal.open(session.journal.path)
            except JournalError as exc:
                log.warning("notification outcomes will not be journaled: %s", exc)
            else:
                for record in self._unjournaled:
                    self.journal.record("notification", **record)
            self._unjournaled.clear()

    def _broke_off(self, error: BaseException | None) -> None:
        """The guard's run ended in an exception with the incident open: failed, unless the replica was
        stopped (SIGTERM) or lost the Lease, where the next leader takes the incident over."""
        session = self.session
        if (error is None or isinstance(error, KeyboardInterrupt | asyncio.CancelledError) or self.ended_run
                or session is None or not session.incident_opened.is_set()):
            return
        self._end(session)
        incident = session.journal.incident_id if session.journal else "?"
        reason = (str(error).splitlines() or [""])[0][:300]
        self._incident("failed", f"incident {incident}: the guard stopped on an error ({type(error).__name__})",
                       f"{reason}; the on-call must act (see the journal).", error=type(error).__name__)

    def recovered(self, session: Session) -> None:
        """The incident is over: its alert resolved."""
        incident = session.journal.incident_id if session.journal else "?"
        self._incident("recovered", f"incident {incident} recovered", "recovery verified.", resolved=True)

    def _on_engine_event(self, event: EngineEvent) -> None:
        if event.kind == "step-finished":
            self.gate_open.set()

    async def _gate(self) -> None:
        session = self.session
        if session is not None and session.incident_opened.is_set():
            await self.gate_open.wait()

    def _outcome(self, sink: Sink, notice: Notice, result: str, attempts: int, started: float | None) -> None:
        if self.counter is not None:
            self.counter.labels(sink.kind, result).inc()
        session = self.session
        journal = self.journal or (session.journal if session is not None else None)
        if notice.event == REFRESH or not notice.incident or journal is None or journal.incident_id != notice.incident:
            return  # the incident's own notices only, not each minute's re-send
        record = {"event": notice.event, "sink": sink.kind, "result": result, "attempts": attempts,
                  "started_at": started}
        try:
            journal.record("notification", **record)
        except JournalError:  # the session closed it; ended() reopens it and writes this
            self._unjournaled.append(record)

    # -- posture -----------------------------------------------------------------------------------

    def _posture_notice(self, key: str, alertname: str, summary: str, description: str,
                        labels: Mapping[str, str]) -> Notice:
        first = self.problems.get(key)
        return Notice(key=f"posture/{key}", event="posture", alertname=alertname, severity="warning",
                      cluster=self.cluster, summary=summary, description=description,
                      starts_at=first.starts_at if first else dt.datetime.now(dt.timezone.utc),
                      extra_labels=dict(labels), fields={"problem": key})

    def set_problems(self, current: Mapping[str, Notice]) -> None:
        """Raise what is new, clear what is gone."""
        assert self.notifier is not None
        for key, notice in current.items():
            if key not in self.problems:
                self.problems[key] = notice
                self.notifier.notify(notice)
        for key in [k for k in self.problems if k not in current]:
            raised = self.problems.pop(key)
            self.notifier.notify(Notice(
                key=raised.key, event="posture-cleared", alertname=raised.alertname, severity=raised.severity,
                cluster=self.cluster, summary=f"cleared: {raised.summary}", description=raised.description,
                resolved=True, starts_at=raised.starts_at, extra_labels=raised.extra_labels, fields=raised.fields))

    async def check_posture(self, status: GuardStatus) -> dict[str, Notice]:
        session = self.session
        assert session is not None
        current: dict[str, Notice] = {}
        hold = await read_armed_hold(session.client)
        if hold is not None:
            current["hold-not-armed"] = self._posture_notice(
                "hold-not-armed", "ResponderHoldNotArmed", "the armed namespace hold is not in place",
                f"{hold}; `responder protect` arms it.", {})
        for stream, down in sorted(blind_streams(status.watches, self.down_since, now=time.monotonic(),
                                                 after=self.blind_after).items()):
            current[f"watch-blind/{stream}"] = self._posture_notice(
                f"watch-blind/{stream}", "ResponderWatchBlind", f"the guard's watch of {stream} is blind",
                f"down for {down:.0f} s: an incident there would not be seen.", {"stream": stream})
        if time.monotonic() - self._velero_read_at >= self.velero_every:
            self._velero_read_at = time.monotonic()
            self.stale = await self._read_stale_backups(session)
        for schedule, why in sorted(self.stale.items()):
            current[f"backup-stale/{schedule}"] = self._posture_notice(
                f"backup-stale/{schedule}", "ResponderBackupStale", f"Velero schedule {schedule}: backup too old",
                f"{why}: recovery would restore old state.", {"schedule": schedule})
        return current

    async def _read_stale_backups(self, session: Session) -> dict[str, str]:
        namespace = session.options.velero_namespace
        try:
            schedules = await session.client.list_all(f"/apis/velero.io/v1/namespaces/{namespace}/schedules")
            if not schedules.get("items"):
                return {}
            backups = await session.client.list_all(f"/apis/velero.io/v1/namespaces/{namespace}/backups")
        except ApiError as exc:
            if exc.status != 404:  # no Velero: nothing to tell
                log.warning("posture: cannot read Velero's schedules and backups (%s %s)", exc.status, exc.reason)
            return {}
        return stale_backups(schedules.get("items") or [], backups.get("items") or [],
                             now=dt.datetime.now(dt.timezone.utc))

    async def _posture_loop(self, status: Callable[[], GuardStatus], leading: Callable[[], bool]) -> None:
        while True:
            await asyncio.sleep(self.posture_every)
            try:
                current = await self.check_posture(status())
                if leading():  # a standby keeps track (it leads with the same view) but tells nothing
                    self.set_problems(current)
                else:
                    self.problems.clear()
            except asyncio.CancelledError:
                raise
            except Exception:  # posture checks must never take the guard down
                log.exception("posture check failed")
