"""A session's hold on the cluster's writer Lease (responder.cluster.lease): taken at preflight, before the
first write and off the detection hot path, renewed in the background, released when the session closes.

A guard replica brings its own elector (it leads or stands by, and manages it); a headless `run`/`watch`
or the TUI takes the Lease once, or refuses with LeaseHeld (exit 6) naming the live holder, before any
write; where that holder is a guard, the TUI attaches to its incident instead (responder.response.attach).
A dry run writes nothing, so it takes no Lease. Leadership changes are journaled while the session has an
incident journal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.lease import LeadershipChange, LeaseElector, holder_identity, lease_client
from responder.names import RESPONDER_NAMESPACE, WRITER_LEASE

log = logging.getLogger(__name__)


class WriterLease:
    """The elector a session writes under, and whether the session owns it (takes, renews, releases it)."""

    def __init__(self, elector: LeaseElector, *, owned: bool) -> None:
        self.elector = elector
        self.owned = owned
        self._renewing: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self.elector.leading

    async def take(self) -> None:
        """Hold the Lease now or raise LeaseHeld; then keep it renewed until close()."""
        try:
            await self.elector.acquire_or_refuse()
        except BaseException:
            await self.elector.client.aclose()
            raise
        self._renewing = asyncio.create_task(self.elector.run(), name="writer-lease")

    def may_write(self) -> bool:
        """Whether the session may still write under this Lease. Not once the Lease names another holder
        (taken over, or a standby's view): that one writes now, so this one stops at once. Renewals that merely
        fail leave a one-shot writer writing mid-incident (a guard exits when its Lease is lost)."""
        elector = self.elector
        return elector.leading or not (elector.leader and elector.leader != elector.me)

    async def take_over(self, expected: str) -> None:
        """Take the Lease over from `expected` (a live guard, confirmed by the operator), then keep it renewed
        until close(); LeaseHeld when it names someone else now."""
        try:
            await self.elector.take_over(expected)
        except BaseException:
            await self.elector.client.aclose()
            raise
        self._renewing = asyncio.create_task(self.elector.run(), name="writer-lease")

    async def close(self) -> None:
        if not self.owned:
            return
        try:
            await self.elector.release()
            if self._renewing is not None:
                await asyncio.gather(self._renewing, return_exceptions=True)
        finally:
            await self.elector.client.aclose()


def journal_leadership(session: Any) -> Callable[[LeadershipChange], None]:
    def on_change(change: LeadershipChange) -> None:
        if change.event == "lost":
            log.error("this responder no longer holds the cluster's Lease (now %s): another responder may write",
                      change.holder or "nobody")
        # The Lease is released after the session's journal is closed (the command is ending): nothing to add.
        if session.journal is not None and session.journal.writable:
            session.journal.record("leadership", event=change.event, holder=change.holder,
                                   previous_holder=change.previous_holder, transitions=change.transitions)
    return on_change


async def hold_writer_lease(session: Any) -> WriterLease | None:
    """The session's Lease before its first write: the one it was given (a guard's elector), a new one
    taken now, or None for a dry run."""
    if session.leadership is not None:
        session.leadership.elector.listeners.append(journal_leadership(session))
        return session.leadership
    if session.options.dry_run:
        return None
    return await take_writer_lease(session.client, listener=journal_leadership(session))


async def take_over_writer_lease(client: KubeClient, expected: str, *,
                                 listener: Callable[[LeadershipChange], None] | None = None) -> WriterLease:
    """The attached TUI's takeover: the Lease overwritten from the live guard `expected`, held when this
    returns (LeaseHeld otherwise), renewed until its close()."""
    elector = LeaseElector(lease_client(client), namespace=RESPONDER_NAMESPACE, name=WRITER_LEASE,
                           me=holder_identity("responder"))
    if listener is not None:
        elector.listeners.append(listener)
    lease = WriterLease(elector, owned=True)
    await lease.take_over(expected)
    return lease


async def take_writer_lease(client: KubeClient, *,
                            listener: Callable[[LeadershipChange], None] | None = None) -> WriterLease:
    """A one-shot writer's Lease (a session, `undo`): held when this returns (LeaseHeld otherwise), renewed
    until its close()."""
    elector = LeaseElector(lease_client(client), namespace=RESPONDER_NAMESPACE, name=WRITER_LEASE,
                           me=holder_identity("responder"))
    if listener is not None:
        elector.listeners.append(listener)
    lease = WriterLease(elector, owned=True)
    await lease.take()
    return lease
