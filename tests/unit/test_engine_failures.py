"""How the engine reports and stops what goes wrong inside a step: an error that is not the API
server's answer, a wait inside an action that gives up, a batch whose transport fails, a declined
confirmation on resume. No cluster: the client below stands for the transport only, to show what the
engine does with each kind of answer."""

from __future__ import annotations

import asyncio

from responder.incident.engine import Engine, EngineOptions, StepOutcome, WriteRequest
from responder.errors import ClusterUnreachable
from responder.incident.journal import Journal
from responder.runbook import ActionSpec, parse_runbook

RUNBOOK = """
apiVersion: responder.dev/v1
kind: Runbook
metadata: {name: failures}
spec:
  triggers: [manual]
  steps:
    - {id: first, action: %(first)s, phase: contain, description: first, continueOnError: true, timeout: 30s}
    - {id: second, action: ok, phase: contain, description: second}
"""


class Ok:
    spec = ActionSpec("ok", {})

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx) -> StepOutcome:
        self.runs += 1
        return StepOutcome("finished", "done")


class Unreachable(Ok):
    spec = ActionSpec("unreachable", {})

    async def run(self, ctx) -> StepOutcome:
        raise ClusterUnreachable("cannot reach the API server at https://127.0.0.1:1", fix="check the cluster")


class WaitGivesUp(Ok):
    spec = ActionSpec("wait-gives-up", {})

    async def run(self, ctx) -> StepOutcome:
        raise TimeoutError("Restore r-1 did not finish within 900s (Velero runs one restore at a time)")


class Batch(Ok):
    """Ten PATCHes, one of which meets a transport that stays down."""
    spec = ActionSpec("batch", {})

    async def run(self, ctx) -> StepOutcome:
        requests = [WriteRequest("detach", f"ns-{i}", "PATCH", f"/api/v1/namespaces/ns-{i}", body=[])
                    for i in range(10)]
        await ctx.write_many(requests, in_flight=10)
        return StepOutcome("finished", "all written")


class Transport:
    def __init__(self) -> None:
        self.answered: list[str] = []
        self.cancelled: list[str] = []

    async def request(self, method, path, **kwargs):
        if path.endswith("ns-3"):
            await asyncio.sleep(0.01)
            raise ClusterUnreachable("cannot reach the API server", fix="check the cluster")
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            self.cancelled.append(path)
            raise
        self.answered.append(path)
        return {}


def _engine(journal, first: str, actions: dict, client=None, yes: bool = True, confirmer=None):
    runbook = parse_runbook(RUNBOOK % {"first": first}, {name: a.spec for name, a in actions.items()})
    return Engine(runbook, actions, client=client, observer=None, journal=journal,  # type: ignore[arg-type]
                  options=EngineOptions(auto=True, yes=yes), confirmer=confirmer)


async def test_an_error_that_is_not_an_api_answer_fails_the_step_in_the_journal_and_the_runbook_goes_on(tmp_path):
    actions = {"unreachable": Unreachable(), "ok": Ok()}
    with Journal.create(tmp_path) as journal:
        results = await _engine(journal, "unreachable", actions).run()
        states = journal.step_state()
    assert results["first"].status == "failed" and "ClusterUnreachable: cannot reach" in results["first"].summary
    assert states == {"first": "failed", "second": "finished"}  # continueOnError: the next step ran
    assert actions["ok"].runs == 1


async def test_a_wait_inside_the_action_that_gives_up_is_reported_in_its_own_words(tmp_path):
    actions = {"wait-gives-up": WaitGivesUp(), "ok": Ok()}
    with Journal.create(tmp_path) as journal:
        results = await _engine(journal, "wait-gives-up", actions).run()
    assert results["first"].summary.startswith("Restore r-1 did not finish within 900s")
    assert "timed out after 30s" not in results["first"].summary


async def test_a_batch_whose_transport_fails_stops_the_rest_and_leaves_their_intents_pending(tmp_path):
    transport = Transport()
    actions = {"batch": Batch(), "ok": Ok()}
    with Journal.create(tmp_path) as journal:
        results = await _engine(journal, "batch", actions, client=transport).run()
        await asyncio.sleep(0.3)  # had the other sends gone on, they would have answered by now
        pending = {r["target"] for r in journal.pending()}
    assert results["first"].status == "failed" and "ClusterUnreachable" in results["first"].summary
    assert transport.answered == []
    assert len(transport.cancelled) == 9
    assert pending == {f"ns-{i}" for i in range(10)}  # unknown fate: a resumed run settles them


async def test_a_declined_step_is_asked_again_on_resume_and_runs_when_confirmed(tmp_path):
    actions = {"ok": Ok(), "unreachable": Unreachable()}
    runbook = """
apiVersion: responder.dev/v1
kind: Runbook
metadata: {name: declined}
spec:
  triggers: [manual]
  steps:
    - {id: recreate, action: ok, phase: recover, description: recreate, confirm: true}
"""

    async def no(request) -> bool:
        return False

    parsed = parse_runbook(runbook, {name: a.spec for name, a in actions.items()})
    with Journal.create(tmp_path) as journal:
        engine = Engine(parsed, actions, client=None, observer=None, journal=journal,  # type: ignore[arg-type]
                        options=EngineOptions(auto=True), confirmer=no)
        first = await engine.run(("recover",))
        path = journal.path
    assert first["recreate"].status == "skipped" and actions["ok"].runs == 0
    with Journal.open(path) as journal:
        engine = Engine(parsed, actions, client=None, observer=None, journal=journal,  # type: ignore[arg-type]
                        options=EngineOptions(auto=True, yes=True))
        again = await engine.run(("recover",))
    assert again["recreate"].status == "finished" and actions["ok"].runs == 1

