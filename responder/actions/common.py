"""Helpers shared by actions."""

from __future__ import annotations

from responder.incident.engine import StepContext
from responder.incident.observe import CapsuleTarget


def capsule_target(ctx: StepContext) -> CapsuleTarget:
    return CapsuleTarget(namespace=str(ctx.params.get("capsuleNamespace", "capsule-system")),
                         deployment=str(ctx.params.get("capsuleDeployment", "capsule-controller-manager")))
