"""`responder guard`: the always-on entry point, run as a cluster's Deployment (2 replicas).

Each replica watches, detects and keeps its shadow copy warm; the one holding the writer Lease leads and
contains on its own (as `watch --headless --auto --yes --contain-only`); the standby never writes and takes
over when the leader's Lease expires. In a pod it uses the ServiceAccount's credentials (token, CA and
namespace, through the `kubernetes` package's in-cluster loader); with --kubeconfig (or $KUBECONFIG) it runs
anywhere, as on the lab.

After an incident's containment the leader keeps the Lease, so no other responder acts on the cluster,
and keeps serving its endpoint until it is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from responder.cluster.kubeconfig import ClusterAccess
from responder.cluster.lease import LeadershipChange, LeaseElector, holder_identity, lease_client
from responder.errors import EXIT_LEASE_HELD, EXIT_OK, ApiError, ConfigError
from responder.guard.alerts import GuardAlerts
from responder.guard.health import GuardMetrics, GuardStatus, HealthServer
from responder.guard.incident_keeper import IncidentKeeper
from responder.guard.notify import Notifier
from responder.guard.takeover import resume_open_incident
from responder.guard.record_keeper import RecordKeeper
from responder.incident.observe import OPTIONAL_STREAMS, freeze_cluster_picture
from responder.names import RESPONDER_NAMESPACE, WRITER_LEASE
from responder.response.incident_object import CONTAINED, RECOVERED, WAITING, IncidentStore
from responder.response.leadership import WriterLease
from responder.response.session import Session, SessionOptions

log = logging.getLogger(__name__)

RunHeadless = Callable[..., Awaitable[int]]


class Guard:
    """One replica. `respond` is the headless lifecycle the guard runs its session through
    (responder.cli.respond.run_headless, given by the command line: the guard sits below it)."""

    def __init__(self, access: ClusterAccess, options: SessionOptions, *, respond: RunHeadless, bind: str, port: int,
                 output: str | None, notifier: Notifier | None = None, cluster_name: str = "",
                 recovery: str = "approval") -> None:
        self.respond = respond
        self.access = access
        self.options = options
        self.bind = bind
        self.port = port
        self.output = output
        self.elector = LeaseElector(lease_client(access), namespace=RESPONDER_NAMESPACE, name=WRITER_LEASE,
                                    me=holder_identity("guard"))
        self.elector.listeners.append(self._on_leadership)
        self.metrics = GuardMetrics()
        self.server = HealthServer(self.status, self.metrics)
        self.session: Session | None = None
        self.leading = asyncio.Event()
        self.last_event: dict[str, float] = {}  # stream -> monotonic time of its last event
        self.lost = False
        self.alerts = GuardAlerts(notifier, cluster=cluster_name or access.context or access.display_server,
                                  counter=self.metrics.notifications)
        self.recovery = recovery  # "approval": recovery steps wait for approvals on the Incident; "auto"
        self.incidents = IncidentStore(lease_client(access))  # a small client of its own, off the hot path
        self.keeper: IncidentKeeper | None = None
        self.resume_checked = False  # the cluster's open Incidents looked at since leading: may open one now

    # -- state -----------------------------------------------------------------------------------

    def status(self) -> GuardStatus:
        session, now = self.session, time.monotonic()
        watches: dict[str, tuple[bool, float | None]] = {}
        required: frozenset[str] = frozenset()
        breaker, hold_armed, incident_open = "ready", False, False
        if session is not None:
            observer = session.observer
            required = frozenset(n for n in observer.watches if n not in OPTIONAL_STREAMS)
            for name in observer.watches:
                up = observer.synced[name].is_set() and name not in observer.stream_errors
                seen = self.last_event.get(name)
                watches[name] = (up, None if seen is None else now - seen)
            hold_armed = session.hold_not_armed is None
            incident_open = session.incident_opened.is_set()
            steps = {step.id for step in session.runbook.steps if step.action == "trip-breaker"}
            for step_id in steps & set(session.results):
                breaker = "tripped" if session.results[step_id].status == "finished" else "failed"
        return GuardStatus(leader=self.elector.leading, lease_known=self.elector.state_known,
                           holder=self.elector.leader, identity=self.elector.me,
                           lease_transitions=self.elector.transitions, watches=watches, required_watches=required,
                           hold_armed=hold_armed, breaker=breaker, incident_open=incident_open)

    def _on_leadership(self, change: LeadershipChange) -> None:
        if change.event == "acquired":
            self.leading.set()
            print(f"guard {self.elector.me}: leading (Lease {RESPONDER_NAMESPACE}/{WRITER_LEASE}, "
                  f"{change.transitions} transitions{', from ' + change.previous_holder if change.previous_holder else ''})",
                  file=sys.stderr, flush=True)
        else:
            self.leading.clear()
            print(f"guard {self.elector.me}: {change.event} the Lease", file=sys.stderr, flush=True)

    def _on_phase(self, phase: str, waiting_for: str | None) -> None:
        """The Incident's phase changed: contained and waiting for approval are told as they happen."""
        if self.session is None:
            return
        if phase == CONTAINED:
            self.alerts.contained(self.session)
        elif phase == WAITING and waiting_for:
            self.alerts.waiting(self.session, [waiting_for])

    def _on_event(self, event) -> None:
        self.last_event[event.resource] = time.monotonic()

    def _attach(self, session: Session) -> None:
        """Before the session's preflight: it writes under this elector, which the guard manages."""
        self.session = session
        session.leadership = WriterLease(self.elector, owned=False)
        # A standby opens nothing: a new leader first resumes an incident open in the cluster.
        session.may_open = lambda: self.elector.leading and self.resume_checked
        if not session.has_phase("recover"):  # a runbook without recovery: the incident ends contained
            session.options.contain_only = True
        self.keeper = IncidentKeeper(session, self.incidents, leader=self.elector.me, recovery=self.recovery)
        self.keeper.phase_listeners.append(self._on_phase)
        self.keeper.attach()
        session.observer.subscribe(self._on_event)
        asyncio.get_running_loop().create_task(self._count_incident(session))
        self.alerts.attach(session, self.status, lambda: self.elector.leading)
        # Between incidents the leader keeps the in-cluster tenant record (what a later responder recovers from).
        self.record_keeper = asyncio.get_running_loop().create_task(
            RecordKeeper(session, leading=lambda: self.elector.leading, writer=self.elector.me).run())

    async def _count_incident(self, session: Session) -> None:
        await session.incident_opened.wait()
        self.metrics.incidents.inc()

    # -- lifecycle -------------------------------------------------------------------------------

    async def _open_when_leading(self, session: Session) -> None:
        freeze_cluster_picture()  # called once the session's first lists are in (respond's order)
        print(f"watching {self.access.display_server} as {session.identity} (guard {self.elector.me})",
              file=sys.stderr, flush=True)
        if not self.elector.leading:
            print(f"guard {self.elector.me}: standby (the leader is {self.elector.leader or 'unknown'}); "
                  "watches warm, no writes", file=sys.stderr, flush=True)
            await self.leading.wait()
        assert self.keeper is not None
        self.keeper.start()
        try:
            incident = await resume_open_incident(session, self.incidents, leader=self.elector.me)
        except ApiError as exc:  # no Incident to read (RBAC, the CRD): contain from what this replica sees
            log.error("the cluster's open Incidents could not be read (%s %s): an incident under way is detected "
                      "anew from this replica's own view", exc.status, exc.api_message)
            incident = None
        self.resume_checked = True
        if incident is not None:
            self.keeper.adopt(incident)
            assert session.journal is not None
            print(f"INCIDENT {session.journal.incident_id}: resumed from the cluster (Incident "
                  f"{incident['metadata']['name']}, {(incident.get('status') or {}).get('phase', 'Detected')})",
                  file=sys.stderr, flush=True)
            return
        session.check_late_start()
        if not session.incident_opened.is_set():
            await session.wait_for_incident(None)
        assert session.trigger is not None and session.journal is not None
        print(f"INCIDENT {session.journal.incident_id}: {session.trigger.reason}", file=sys.stderr, flush=True)
        self.alerts.opened(session)  # sent once the breaker's first step is done (the notifier's gate)

    async def run(self) -> int:
        main = asyncio.current_task()
        assert main is not None
        election: asyncio.Task[None] | None = None
        try:
            # The first round raises what a replica cannot run without (the namespace, the permission).
            await self.elector.round(raise_errors=True)
            try:
                port = await self.server.start(self.bind, self.port)
            except OSError as exc:
                raise ConfigError(f"the guard cannot serve health and metrics on {self.bind}:{self.port}: "
                                  f"{exc.strerror or exc}", fix="pick another --port (or --bind)") from None
            print(f"guard {self.elector.me}: health and metrics on http://{self.bind}:{port} "
                  "(/healthz /readyz /metrics)", file=sys.stderr, flush=True)
            election = asyncio.create_task(self.elector.run(), name="guard-election")
            election.add_done_callback(lambda task: self._election_ended(task, main))
            code = await self.respond(self.access, self.options, self._open_when_leading, self.output,
                                      on_session=self._attach)
            if self.keeper is not None:
                await self.keeper.finish(code)
            if self.session is not None and self.session.incident_opened.is_set():
                self.alerts.ended(self.session, code)
                if self.keeper is not None and self.keeper.phase == RECOVERED:
                    self.alerts.recovered(self.session)
            print(f"guard {self.elector.me}: incident handled (exit {code}); keeping the Lease so no other responder "
                  "acts on this cluster until the guard is stopped", file=sys.stderr, flush=True)
            await self._until_stopped()
            return code
        except KeyboardInterrupt:  # SIGTERM (the pod stopped), as run_headless reports it
            if self.session is not None and self.session.incident_opened.is_set():
                raise  # an incident open: "interrupted" (5), its journal to resume
            print(f"guard {self.elector.me}: stopped, no incident open", file=sys.stderr, flush=True)
            return EXIT_OK
        except asyncio.CancelledError:
            if not self.lost:
                raise
            main.uncancel()
            print(f"guard {self.elector.me}: lost the Lease to {self.elector.leader or 'nobody'}; exiting so the "
                  "replica restarts as a standby", file=sys.stderr, flush=True)
            return EXIT_LEASE_HELD
        finally:
            # What is queued goes out (a few seconds at most) while still leading; an error that ended the run
            # with the incident open is told as failed.
            await self.alerts.close(sys.exc_info()[1])
            await self.elector.release()
            if election is not None:
                await asyncio.gather(election, return_exceptions=True)
            await self.elector.client.aclose()
            if self.keeper is not None:
                await self.keeper.close()
            await self.incidents.client.aclose()
            await self.server.stop()

    def _election_ended(self, task: asyncio.Task[None], main: asyncio.Task) -> None:
        # The election returns on its own only when this replica stopped leading: it must stop writing now.
        if task.cancelled() or self.elector.stopped:
            return
        if task.exception() is not None:
            log.error("the guard's election failed: %s", task.exception())
        self.lost = True
        main.cancel()

    async def _until_stopped(self) -> None:
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

