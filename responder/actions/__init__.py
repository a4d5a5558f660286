"""The actions runbook steps can name. Registered here, declaratively, by their spec name."""

from __future__ import annotations

from collections.abc import Mapping

from responder.actions.breaker import TripBreaker, VerifyBreaker
from responder.actions.detach import DetachNamespaces
from responder.actions.recover import (ChooseBackup, ReadoptNamespaces, RecreateTenants, RestoreCapsule,
                                       RestoreNamespaces, VerifyRecovery, WaitLostGone)
from responder.actions.tenants import ReleaseTenantFinalizers
from responder.actions.terminating import HandleTerminating
from responder.runbook.schema import ActionSpec

ACTIONS = {action.spec.name: action for action in (
    # contain
    TripBreaker(), DetachNamespaces(), VerifyBreaker(), ReleaseTenantFinalizers(), HandleTerminating(),
    # recover
    ChooseBackup(), WaitLostGone(), RecreateTenants(), RestoreNamespaces(), ReadoptNamespaces(), RestoreCapsule(),
    VerifyRecovery())}


def action_specs() -> Mapping[str, ActionSpec]:
    return {name: action.spec for name, action in ACTIONS.items()}
