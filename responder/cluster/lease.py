"""One writer per cluster: a `coordination.k8s.io/v1` Lease, with client-go's leader-election protocol.

Every responder process that writes (a guard replica, the TUI, a headless `watch`/`run`) holds the Lease
before its first write. The protocol is client-go's (`tools/leaderelection`):

- a holder renews the Lease every RETRY_PERIOD; it stops leading when no renewal succeeded for
  RENEW_DEADLINE, or when it reads another holder's name in the Lease;
- another process takes the Lease over only once the record has stayed unchanged (same resourceVersion)
  for its leaseDurationSeconds, timed on its own clock: no comparison between machines' clocks;
- every write is an update conditioned on the resourceVersion read (optimistic concurrency): of two
  processes racing for the Lease, one gets a 409 and reads the winner;
- leaseTransitions counts the changes of holder; a holder releasing the Lease (graceful stop) empties
  holderIdentity, so the next process takes it at once.

The decisions are pure functions (`holder_live`, `decide`, `next_record`), tested without a cluster; the
`LeaseElector` applies them to the API server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from responder.cluster.client import KubeClient
from responder.errors import EXIT_LEASE_HELD, ApiError, ClusterUnreachable, ConfigError, Conflict, ResponderError

log = logging.getLogger(__name__)

# client-go's conventional timings (kube-controller-manager, kube-scheduler, most operators).
LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0
LEASE_API = "/apis/coordination.k8s.io/v1"


class LeaseHeld(ResponderError):
    """Another live responder holds the cluster's Lease: this process must not write. `holder`: its identity."""

    exit_code = EXIT_LEASE_HELD
    holder = ""


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (its spec) and the version it was read at."""

    holder: str = ""  # "": free (never taken, or released)
    duration: float = LEASE_DURATION
    acquired_at: float | None = None  # epoch seconds, the holder's clock
    renewed_at: float | None = None
    transitions: int = 0
    resource_version: str = ""


@dataclass(frozen=True)
class Observation:
    """A record as this process saw it, and since when (its monotonic clock) it has seen that version."""

    record: LeaseRecord
    since: float


def micro_time(epoch: float) -> str:
    """Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def lease_path(namespace: str, name: str) -> str:
    return f"{LEASE_API}/namespaces/{namespace}/leases/{name}"


def record_from(obj: dict[str, Any]) -> LeaseRecord:
    spec = obj.get("spec") or {}
    return LeaseRecord(holder=str(spec.get("holderIdentity") or ""),
                       duration=float(spec.get("leaseDurationSeconds") or LEASE_DURATION),
                       acquired_at=parse_time(spec.get("acquireTime")), renewed_at=parse_time(spec.get("renewTime")),
                       transitions=int(spec.get("leaseTransitions") or 0),
                       resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""))


def lease_object(namespace: str, name: str, record: LeaseRecord) -> dict[str, Any]:
    spec: dict[str, Any] = {"holderIdentity": record.holder, "leaseDurationSeconds": max(1, round(record.duration)),
                            "leaseTransitions": record.transitions}
    if record.acquired_at is not None:
        spec["acquireTime"] = micro_time(record.acquired_at)
    if record.renewed_at is not None:
        spec["renewTime"] = micro_time(record.renewed_at)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": {"app.kubernetes.io/name": "responder"}}
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The new observation: its clock restarts whenever the record changed (a renewal, a new holder)."""
    if previous is not None and previous.record.resource_version == record.resource_version and record.resource_version:
        return Observation(record, previous.since)
    return Observation(record, now)


def holder_live(observation: Observation, now: float) -> bool:
    """Whether the holder must be presumed alive: it has a holder and the record changed within its
    duration, timed by this process's clock (client-go: observedTime + leaseDuration > now)."""
    return bool(observation.record.holder) and now < observation.since + observation.record.duration


def decide(observation: Observation | None, me: str, now: float) -> str:
    """What to do with the Lease now: "create" (none exists), "renew" (ours), "acquire" (free or its
    holder's record has expired: take it over), or "wait" (another live holder)."""
    if observation is None:
        return "create"
    if observation.record.holder == me:
        return "renew"
    if not holder_live(observation, now):
        return "acquire"
    return "wait"


def next_record(current: LeaseRecord | None, me: str, wall_now: float, duration: float = LEASE_DURATION) -> LeaseRecord:
    """The record to write to hold the Lease: a renewal keeps acquireTime and transitions; a change of
    holder (a released Lease's empty one included, as client-go counts) sets acquireTime and counts a
    transition; a new Lease starts at 0."""
    if current is None:
        return LeaseRecord(me, duration, wall_now, wall_now, 0, "")
    if current.holder == me:
        return replace(current, duration=duration, renewed_at=wall_now)
    return replace(current, holder=me, duration=duration, acquired_at=wall_now, renewed_at=wall_now,
                   transitions=current.transitions + 1)


def takeover_refusal(current: LeaseRecord | None, expected: str, me: str) -> str | None:
    """Why a deliberate takeover of the Lease from `expected` (the holder the operator confirmed taking it
    from) must not be written now, or None. It overwrites only that holder: a Lease gone, released, already
    ours, or naming anyone else since (a failover, another TUI) is not what was confirmed."""
    if current is None:
        return "there is no writer Lease to take over"
    if current.holder == me:
        return "this responder holds the Lease already"
    if not current.holder:
        return "the Lease was released (nobody holds it)"
    if current.holder != expected:
        return f"the Lease changed hands since the takeover was confirmed: it names {current.holder} now"
    return None


def released_record(current: LeaseRecord, wall_now: float) -> LeaseRecord:
    """client-go's release on a graceful stop: no holder, a 1 s duration, so the next process takes it at once."""
    return replace(current, holder="", duration=1.0, renewed_at=wall_now, acquired_at=wall_now)


def boot_id() -> str:
    """This machine's boot (Linux: a random id per boot); "" where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip().replace("-", "")[:12]
    except OSError:
        return ""


def process_place() -> str:
    """Where this process runs: the pod's name (POD_NAME, set by the Downward API) or the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def holder_identity(role: str) -> str:
    """Unique per process: `ROLE/PLACE/BOOT.PID.RANDOM`. The place, boot and pid let a one-shot writer on the
    same machine see that a crashed holder is dead (`dead_here`); the random part keeps a restarted process
    from renewing its predecessor's record."""
    return f"{role}/{process_place()}/{boot_id() or 'unknown'}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def holder_role(holder: str) -> tuple[str, str]:
    """(role, place) of a holder identity `ROLE/PLACE/BOOT.PID.RANDOM` (`holder_identity`): ("guard", the pod's
    name) for a guard replica; ("", "") for an identity not written that way (another tool's, or none)."""
    role, _, rest = holder.partition("/")
    place, _, process = rest.rpartition("/")
    if not role or not place or not process:
        return "", ""
    return role, place


def dead_here(holder: str, *, place: str, boot: str, alive: Callable[[int], bool]) -> bool:
    """True only when the holder is a one-shot responder ("responder/...") that ran in this same place and
    boot and whose process is gone: its Lease can be taken at once instead of after its duration. Anything
    else (a guard, another machine or pod, an unknown boot, a pid still in use) is not known dead."""
    role, _, rest = holder.partition("/")
    holder_place, _, process = rest.rpartition("/")
    holder_boot, _, tail = process.partition(".")
    pid_text, _, _ = tail.partition(".")
    if role != "responder" or holder_place != place or not boot or holder_boot != boot or not pid_text.isdigit():
        return False
    return not alive(int(pid_text))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def lease_client(client_or_access) -> KubeClient:
    """A small client of its own for the Lease: never dry-run, and renewals that do not queue behind
    containment's bulk writes. Throttled (429) or unavailable answers are retried for up to the renew
    deadline, as the preflight's own requests are: an API server under load must not keep responder from
    starting. While leading, a round never outlasts the renew deadline anyway (`LeaseElector.round`)."""
    access = client_or_access.access if isinstance(client_or_access, KubeClient) else client_or_access
    return KubeClient(access, http2=False, max_connections=2, bulk_connections=0, timeout=5.0,
                      retry_deadline=RENEW_DEADLINE)


@dataclass(frozen=True)
class LeadershipChange:
    """`acquired`, `taken-over` (deliberately, from a live holder: `previous_holder`), `lost` (stopped leading
    without releasing) or `released`."""

    event: str
    holder: str
    transitions: int
    previous_holder: str = ""


class LeaseElector:
    """Holds, renews and releases the Lease for one process (`me`), over its own KubeClient."""

    def __init__(self, client: KubeClient, *, namespace: str, name: str, me: str,
                 duration: float = LEASE_DURATION, renew_deadline: float = RENEW_DEADLINE,
                 retry_period: float = RETRY_PERIOD) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.me = me
        self.duration = duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.observation: Observation | None = None
        self.leading = False
        self.state_known = False  # the Lease has been read (or created) at least once
        self.last_renewed: float | None = None  # monotonic time of our last successful write
        self.listeners: list[Callable[[LeadershipChange], None]] = []
        self._stopped = asyncio.Event()

    @property
    def path(self) -> str:
        return lease_path(self.namespace, self.name)

    @property
    def leader(self) -> str:
        """The holder as last seen ("" when free or unknown)."""
        return self.observation.record.holder if self.observation else ""

    @property
    def transitions(self) -> int:
        return self.observation.record.transitions if self.observation else 0

    def _emit(self, change: LeadershipChange) -> None:
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:  # a listener must not break the election
                log.exception("leadership listener failed")

    async def _read(self) -> LeaseRecord | None:
        obj = await self.client.get_or_none(self.path)
        return None if obj is None else record_from(obj)

    async def try_acquire_or_renew(self, *, dead_holder: str = "") -> bool:
        """One round of client-go's tryAcquireOrRenew: True when this process holds the Lease afterwards.
        `dead_holder`: a holder known dead (`dead_here`), whose Lease is taken without waiting for it to expire."""
        now = time.monotonic()
        current = await self._read()
        if current is not None:
            self.observation = observe(self.observation, current, now)
        self.state_known = True
        action = decide(self.observation if current is not None else None, self.me, now)
        if action == "wait" and dead_holder and current is not None and current.holder == dead_holder:
            action = "acquire"
        if action == "wait":
            return False
        wanted = next_record(current, self.me, time.time(), self.duration)
        try:
            if action == "create":
                written = await self.client.create(f"{LEASE_API}/namespaces/{self.namespace}/leases",
                                                   lease_object(self.namespace, self.name, wanted), dry_run=False)
            else:
                written = await self.client.replace(self.path, lease_object(self.namespace, self.name, wanted),
                                                    dry_run=False)
        except Conflict:
            return False  # another process wrote first (409 on create or on the resourceVersion): read it next round
        except ApiError as exc:
            if exc.status == 404 and action == "create":
                raise self._namespace_missing() from None
            raise
        self.observation = observe(self.observation, record_from(written), time.monotonic())
        self.last_renewed = time.monotonic()
        return True

    async def take_over(self, expected: str, *, attempts: int = 5) -> LeadershipChange:
        """Overwrite the Lease's holder `expected` (a live guard) with this process, deliberately, without
        waiting for it to expire: the operator confirmed it. The holder notices at its next round (the record
        names someone else: it stops leading and never writes the Lease back) and stops writing. Written as
        an update on the resourceVersion read; a renewal by the holder in between is read again (a few
        times). LeaseHeld (naming the holder) when `takeover_refusal` says no."""
        for attempt in range(attempts):
            current = await self._read()
            refusal = takeover_refusal(current, expected, self.me)
            if refusal is not None:
                error = LeaseHeld(f"the Lease {self.namespace}/{self.name} was not taken over: {refusal}",
                                  fix="look again (the attached TUI's header names the holder) and take over "
                                      "from the holder named there, or let it lead")
                error.holder = current.holder if current is not None else ""
                raise error
            assert current is not None
            wanted = next_record(current, self.me, time.time(), self.duration)
            try:
                written = await self.client.replace(self.path, lease_object(self.namespace, self.name, wanted),
                                                    dry_run=False)
            except Conflict:
                if attempt + 1 == attempts:
                    raise
                continue  # the holder renewed between our read and our write: read it again
            self.observation = observe(self.observation, record_from(written), time.monotonic())
            self.state_known = True
            self.last_renewed = time.monotonic()
            self.leading = True
            change = LeadershipChange("taken-over", self.me, self.transitions, expected)
            log.warning("Lease %s/%s: taken over from %s (%d transitions)", self.namespace, self.name, expected,
                        self.transitions)
            self._emit(change)
            return change
        raise AssertionError("unreachable")

    def _namespace_missing(self) -> ConfigError:
        return ConfigError(f"the namespace {self.namespace} holding responder's Lease ({self.name}) does not exist",
                           fix=f"kubectl create namespace {self.namespace} (the guard's chart and `responder "
                               "manifests rbac`'s ServiceAccount live there too)")

    def _set_leading(self, leading: bool, event: str, previous: str = "") -> None:
        if leading == self.leading and event != "released":
            return
        self.leading = leading
        holder = self.me if leading else self.leader
        log.warning("Lease %s/%s: %s (holder %s, %d transitions)", self.namespace, self.name, event,
                    holder or "none", self.transitions)
        self._emit(LeadershipChange(event, holder, self.transitions, previous))

    async def round(self, *, raise_errors: bool = False) -> None:
        """One election round; updates `leading` and tells the listeners of a change. API errors are
        logged and count as a failed round, unless `raise_errors` (a replica's first round)."""
        previous = self.leader
        # While leading, a round never outlasts the renew deadline (client-go bounds it the same way): a hung
        # request must not keep this process leading after a standby may have taken over.
        limit = None
        if self.leading and self.last_renewed is not None:
            limit = max(0.1, self.renew_deadline - (time.monotonic() - self.last_renewed))
        try:
            ok = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=limit)
        except asyncio.TimeoutError:
            log.warning("Lease %s/%s: not renewed within %.0fs", self.namespace, self.name, self.renew_deadline)
            ok = False
        except (ApiError, ClusterUnreachable) as exc:
            if raise_errors:
                raise
            log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            ok = False
        if ok:
            self._set_leading(True, "acquired", previous if previous != self.me else "")
            return
        if not self.leading:
            return
        # We led: someone else's name in the Lease ends it at once; failed renewals after RENEW_DEADLINE.
        taken = bool(self.leader) and self.leader != self.me
        if taken or self.last_renewed is None or time.monotonic() - self.last_renewed > self.renew_deadline:
            self._set_leading(False, "lost")

    async def run(self) -> None:
        """Until `stop()`: lead when possible, renew while leading. Returns when leadership is lost
        (client-go's convention: a process that lost it restarts as a standby) or when stopped."""
        while not self._stopped.is_set():
            was_leading = self.leading
            await self.round()
            if was_leading and not self.leading:
                return
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=self.retry_period)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def acquire_or_refuse(self, *, poll: float = 0.5) -> None:
        """For a one-shot writer (`run`, `watch`, the TUI): hold the Lease now, or raise LeaseHeld naming the
        holder. A holder seen renewing (the record changes while we look) is live: refused within one of
        its renewals. A record that stays unchanged is taken over once its duration has passed on our clock
        (`holder_live`): a crashed responder's Lease delays the next one by at most that long, and not at all
        when that responder ran on this machine and its process is gone (`dead_here`: `run --resume` after a
        crash)."""
        seen_version: str | None = None
        announced = False
        while True:
            previous = self.leader
            if await self.try_acquire_or_renew():
                self._set_leading(True, "acquired", previous if previous != self.me else "")
                return
            record = self.observation.record if self.observation else LeaseRecord()
            if dead_here(record.holder, place=process_place(), boot=boot_id(), alive=pid_alive):
                # A responder that crashed on this machine (a `run --resume` after it): no need to wait.
                log.warning("the Lease %s/%s names %s, a responder process on this machine that is gone: taking "
                            "it over", self.namespace, self.name, record.holder)
                if await self.try_acquire_or_renew(dead_holder=record.holder):
                    self._set_leading(True, "acquired", record.holder)
                    return
                await asyncio.sleep(poll)  # another process wrote first: read who holds it now
                continue
            if seen_version is None:
                seen_version = record.resource_version
            elif record.resource_version != seen_version:
                raise self.held_error(record)  # renewed (or taken) while we waited: a live holder
            if not announced:
                log.warning("the Lease %s/%s names %s (renewed %s): taking it over if it is not renewed within "
                            "%.0fs", self.namespace, self.name, record.holder, _ago(record.renewed_at),
                            record.duration)
                announced = True
            await asyncio.sleep(poll)

    def held_error(self, record: LeaseRecord) -> LeaseHeld:
        error = LeaseHeld(f"another responder holds this cluster's Lease {self.namespace}/{self.name}: "
                           f"{record.holder} (renewed {_ago(record.renewed_at)}); one writer per cluster, so this one "
                           "writes nothing",
                           fix="let the holder handle the incident (a guard contains on its own), or stop it first; "
                               f"`kubectl get lease -n {self.namespace} {self.name} -o yaml` shows it")
        error.holder = record.holder
        return error

    async def release(self) -> None:
        """Give the Lease up now if we hold it (graceful stop): the standby need not wait for it to expire."""
        self.stop()
        if not self.leading or self.observation is None:
            return
        record = self.observation.record
        try:
            for attempt in range(2):
                try:
                    written = await self.client.replace(self.path, lease_object(self.namespace, self.name,
                                                                                released_record(record, time.time())),
                                                        dry_run=False)
                    break
                except Conflict:
                    # A renewal in flight when stop() came wrote it first: release what it wrote, if still ours.
                    current = record_from(await self.client.get(self.path))
                    if attempt or current.holder != self.me:
                        raise
                    record = current
            self.observation = observe(self.observation, record_from(written), time.monotonic())
        except (ApiError, ClusterUnreachable) as exc:
            log.warning("releasing the Lease %s/%s failed (it expires in %.0fs): %s", self.namespace, self.name,
                        self.duration, exc)
        self._set_leading(False, "released")


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return f"{max(0.0, time.time() - epoch):.1f}s ago"
