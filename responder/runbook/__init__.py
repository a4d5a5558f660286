"""Runbooks: YAML files that list the steps of an incident response, validated before anything runs."""

from responder.runbook.schema import (
    KNOWN_TRIGGERS,
    ActionSpec,
    ParamSpec,
    Runbook,
    Step,
    load_runbook,
    parse_runbook,
)

__all__ = [
    "KNOWN_TRIGGERS",
    "ActionSpec",
    "ParamSpec",
    "Runbook",
    "Step",
    "load_runbook",
    "parse_runbook",
]
