"""The engine asks before a step that needs confirmation, with the writes the step previews.

No cluster: the actions here neither read nor write one; what is checked is what the operator is
shown, what is journaled, and that a refused step does not run.
"""

from __future__ import annotations

from responder.incident.engine import ConfirmationRequest, Engine, EngineOptions, StepOutcome
from responder.errors import ApiError
from responder.incident.journal import Journal
from responder.runbook import ActionSpec, parse_runbook

RUNBOOK = """
apiVersion: responder.dev/v1
kind: Runbook
metadata: {name: confirm-test}
spec:
  triggers: [manual]
  steps:
    - {id: recreate, action: previewed, phase: recover, description: recreate things, confirm: true}
    - {id: plain, action: unpreviewed, phase: recover, description: no preview, confirm: true}
    - {id: broken, action: failing-preview, phase: recover, description: preview fails, confirm: true}
"""


class Previewed:
    spec = ActionSpec("previewed", {})

    def __init__(self) -> None:
        self.ran = False

    async def preview(self, ctx) -> list[str]:
        return ["create Tenant tenant-001", "create Tenant tenant-002"]

    async def run(self, ctx) -> StepOutcome:
        self.ran = True
        return StepOutcome("finished", "done")


class Unpreviewed(Previewed):
    spec = ActionSpec("unpreviewed", {})
    preview = None  # type: ignore[assignment]


class FailingPreview(Previewed):
    spec = ActionSpec("failing-preview", {})

    async def preview(self, ctx) -> list[str]:
        raise ApiError(404, "NotFound", 'the server could not find the requested resource')


async def test_the_confirmation_lists_the_previewed_writes_and_a_refusal_skips_the_step(tmp_path):
    actions = {"previewed": Previewed(), "unpreviewed": Unpreviewed(), "failing-preview": FailingPreview()}
    runbook = parse_runbook(RUNBOOK, {name: a.spec for name, a in actions.items()})
    asked: list[ConfirmationRequest] = []

    async def confirmer(request: ConfirmationRequest) -> bool:
        asked.append(request)
        return request.step != "plain"  # refuse one

    with Journal.create(tmp_path) as journal:
        engine = Engine(runbook, actions, client=None, observer=None, journal=journal,  # type: ignore[arg-type]
                        options=EngineOptions(auto=True), confirmer=confirmer)
        results = await engine.run(("recover",))
        records = journal.records()
    assert [r.step for r in asked] == ["recreate", "plain", "broken"]
    assert asked[0].writes == ("create Tenant tenant-001", "create Tenant tenant-002")
    assert asked[1].writes == ()
    assert len(asked[2].writes) == 1 and "could not be listed: 404" in asked[2].writes[0]
    assert actions["previewed"].ran and not actions["unpreviewed"].ran and actions["failing-preview"].ran
    assert results["plain"].status == "skipped" and results["recreate"].status == "finished"
    answers = [(r["step"], r["answer"]) for r in records if r["kind"] == "confirmation"]
    assert answers == [("recreate", "yes"), ("plain", "no"), ("broken", "yes")]
