"""Taking the writer Lease over from a live guard (the attached TUI's `T`): the pure decisions (from whom it may
be taken, when the TUI refuses), the elector's deliberate overwrite, the old leader stepping down without writing
the Lease back, the standby waiting while the new holder renews, and the engine's writes gated on the Lease. No
cluster: the Lease lives in a small in-memory API below."""

from __future__ import annotations

import asyncio
import copy

import pytest

from responder.cluster.lease import (LeaseElector, LeaseHeld, LeaseRecord, lease_object, record_from,
                                     takeover_refusal)
from responder.errors import Conflict, NotLeading
from responder.guard.takeover import takeover_refusal as tui_refusal
from responder.incident.engine import Engine, EngineOptions, StepOutcome, WriteRequest
from responder.incident.journal import Journal
from responder.response.leadership import WriterLease
from responder.runbook import ActionSpec, parse_runbook

GUARD = "guard/responder-guard-7c9d-x2/3f2a1b.1.ab12cd"
STANDBY = "guard/responder-guard-7c9d-q8/3f2a1b.1.ee34ff"
TUI = "responder/laptop/3f2a1b.4242.abcdef"


def test_a_takeover_overwrites_only_the_holder_that_was_confirmed():
    held = LeaseRecord(holder=GUARD, resource_version="7")
    assert takeover_refusal(held, GUARD, TUI) is None
    assert takeover_refusal(None, GUARD, TUI) == "there is no writer Lease to take over"
    assert takeover_refusal(LeaseRecord(holder=TUI), GUARD, TUI) == "this responder holds the Lease already"
    assert takeover_refusal(LeaseRecord(holder=""), GUARD, TUI) == "the Lease was released (nobody holds it)"
    # A failover since the operator confirmed (the standby leads now): not what was confirmed.
    assert takeover_refusal(LeaseRecord(holder=STANDBY), GUARD, TUI) == (
        f"the Lease changed hands since the takeover was confirmed: it names {STANDBY} now")


def test_the_tui_takes_over_only_when_attached_to_a_guard_and_live():
    assert tui_refusal(attached_to=GUARD, holder=GUARD, dry_run=False) is None
    assert tui_refusal(attached_to=GUARD, holder=STANDBY, dry_run=False) is None  # the guard that leads now
    assert tui_refusal(attached_to="", holder="", dry_run=False).startswith(
        "this responder is not attached to a guard")
    # Another TUI or a headless run holds it (it refused at start, exit 6): never taken from the TUI.
    assert tui_refusal(attached_to=GUARD, holder=TUI, dry_run=False).startswith(
        f"the Lease is held by {TUI}, not by a guard replica")
    assert tui_refusal(attached_to=GUARD, holder=GUARD, dry_run=True).startswith("a dry run takes no Lease")


class LeaseApi:
    """One Lease, with resourceVersions and 409s as the API server keeps them; counts the writes per writer."""

    def __init__(self, holder: str) -> None:
        self.obj = lease_object("responder-system", "responder", LeaseRecord(holder=holder, renewed_at=1000.0))
        self.obj["metadata"]["resourceVersion"] = "1"
        self.writes: list[str] = []
        self.renew_between: str | None = None  # a holder that renews between the next read and write

    def client(self, me: str) -> "LeaseClient":
        return LeaseClient(self, me)


class LeaseClient:
    def __init__(self, api: LeaseApi, me: str) -> None:
        self.api, self.me = api, me

    async def get_or_none(self, path: str):
        obj = copy.deepcopy(self.api.obj)
        if self.api.renew_between:  # the holder's renewal lands after this read
            holder, self.api.renew_between = self.api.renew_between, None
            self.api.obj["metadata"]["resourceVersion"] = str(int(self.api.obj["metadata"]["resourceVersion"]) + 1)
            self.api.writes.append(holder)
        return obj

    async def replace(self, path: str, obj, *, dry_run: bool = False):
        if obj["metadata"].get("resourceVersion") != self.api.obj["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(int(self.api.obj["metadata"]["resourceVersion"]) + 1)
        self.api.obj = obj
        self.api.writes.append(self.me)
        return copy.deepcopy(obj)

    async def create(self, path: str, obj, *, dry_run: bool = False):
        raise AssertionError("the Lease exists")

    async def aclose(self) -> None:
        pass


async def test_the_tui_takes_the_lease_the_guard_steps_down_and_the_standby_waits():
    api = LeaseApi(GUARD)
    leader = LeaseElector(api.client(GUARD), namespace="responder-system", name="responder", me=GUARD)
    standby = LeaseElector(api.client(STANDBY), namespace="responder-system", name="responder", me=STANDBY)
    await leader.round()
    assert leader.leading and api.writes == [GUARD]
    await standby.round()
    assert not standby.leading
    changes = []
    tui = LeaseElector(api.client(TUI), namespace="responder-system", name="responder", me=TUI)
    tui.listeners.append(changes.append)
    api.renew_between = GUARD  # the guard renews between the TUI's read and write: read again, not lost
    change = await tui.take_over(GUARD)
    assert (change.event, change.holder, change.previous_holder) == ("taken-over", TUI, GUARD) and changes == [change]
    assert tui.leading and record_from(api.obj).holder == TUI
    assert record_from(api.obj).transitions == 1  # a change of holder, as client-go counts it
    assert api.writes == [GUARD, GUARD, TUI]

    # The guard's next round reads the TUI's name: it stops leading and writes nothing (never fights back).
    lost = []
    leader.listeners.append(lost.append)
    lease = WriterLease(leader, owned=False)
    assert lease.may_write()
    await leader.round()
    assert not leader.leading and [c.event for c in lost] == ["lost"] and not lease.may_write()
    assert api.writes == [GUARD, GUARD, TUI]
    # The standby sees the record change (the TUI renews every retry period): a live holder, it waits.
    for _ in range(3):
        await tui.round()
        await standby.round()
    assert not standby.leading and record_from(api.obj).holder == TUI
    assert api.writes == [GUARD, GUARD, TUI, TUI, TUI, TUI]

    # Taking over again, or from a holder that is no longer there: refused, naming who holds it.
    with pytest.raises(LeaseHeld, match="this responder holds the Lease already"):
        await tui.take_over(GUARD)
    other = LeaseElector(api.client("responder/other/1.1.a"), namespace="responder-system", name="responder",
                         me="responder/other/1.1.a")
    with pytest.raises(LeaseHeld, match=f"changed hands since the takeover was confirmed: it names {TUI}"):
        await other.take_over(GUARD)


RUNBOOK = """
apiVersion: responder.dev/v1
kind: Runbook
metadata: {name: gate}
spec:
  triggers: [manual]
  steps:
    - {id: one, action: one-write, phase: contain, description: one write}
    - {id: batch, action: batch, phase: contain, description: a batch, continueOnError: true}
"""


class OneWrite:
    spec = ActionSpec("one-write", {})

    async def run(self, ctx) -> StepOutcome:
        await ctx.write("scale-capsule", "capsule", "PATCH", "/apis/apps/v1/x", body={})
        return StepOutcome("finished", "written")


class Batch:
    spec = ActionSpec("batch", {})

    async def run(self, ctx) -> StepOutcome:
        await ctx.write_many([WriteRequest("detach", f"ns-{i}", "PATCH", f"/api/v1/namespaces/ns-{i}", body=[])
                              for i in range(4)], in_flight=1)
        return StepOutcome("finished", "all written")


class Wire:
    def __init__(self, lose_after: int | None = None, leading: list | None = None) -> None:
        self.sent: list[str] = []
        self.lose_after, self.leading = lose_after, leading

    async def request(self, method, path, **kwargs):
        self.sent.append(path)
        await asyncio.sleep(0)
        if self.lose_after is not None and len(self.sent) >= self.lose_after:
            self.leading[0] = False  # the Lease was taken while the batch went out
        return {}


async def test_the_engine_sends_no_write_once_the_lease_names_another_holder(tmp_path):
    actions = {"one-write": OneWrite(), "batch": Batch()}
    runbook = parse_runbook(RUNBOOK, {name: a.spec for name, a in actions.items()})
    leading = [False]
    wire = Wire()
    with Journal.create(tmp_path / "a") as journal:
        engine = Engine(runbook, actions, client=wire, observer=None, journal=journal,  # type: ignore[arg-type]
                        options=EngineOptions(auto=True, yes=True), may_write=lambda: leading[0])
        results = await engine.run()
        intents = [r for r in journal.records() if r["kind"] == "intent"]
    assert wire.sent == [] and intents == []  # nothing journaled, nothing sent
    assert results["one"].status == "failed" and "NotLeading" in results["one"].summary
    assert "batch" not in results  # the failed step ends the runbook (no continueOnError): nothing else runs

    leading = [True]
    wire = Wire(lose_after=2, leading=leading)
    with Journal.create(tmp_path / "b") as journal:
        engine = Engine(runbook, actions, client=wire, observer=None, journal=journal,  # type: ignore[arg-type]
                        options=EngineOptions(auto=True, yes=True), may_write=lambda: leading[0])
        results = await engine.run()
        outcomes = {r["intent"]: r for r in journal.records() if r["kind"] == "outcome"}
    assert results["one"].status == "finished"
    # The batch's first request went out, then the Lease was lost: the rest were not sent.
    assert wire.sent == ["/apis/apps/v1/x", "/api/v1/namespaces/ns-0"]
    assert results["batch"].status == "failed" and "NotLeading" in results["batch"].summary
    assert any(o["status"] == "failed" and o["detail"] == "not sent: the writer Lease names another holder"
               for o in outcomes.values())
    assert issubclass(NotLeading, Exception)


async def test_a_session_not_attached_or_in_a_dry_run_takes_nothing_over():
    from types import SimpleNamespace

    from responder.errors import ResponderError
    from responder.guard.takeover import take_over_from_guard

    for attached, dry_run, message in (("", False, "not attached to a guard"), (GUARD, True, "a dry run takes no Lease")):
        session = SimpleNamespace(attached_to=attached, options=SimpleNamespace(dry_run=dry_run), client=None,
                                  leadership=None)
        with pytest.raises(ResponderError, match=message):
            await take_over_from_guard(session, GUARD)  # type: ignore[arg-type]
        assert session.leadership is None and session.attached_to == attached
