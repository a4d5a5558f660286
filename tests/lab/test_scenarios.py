"""`responder drill --scenario ...` on the lab (4 tenants x 3 namespaces, --headless -o json): the
scorecard must say what the cluster shows. No timings are asserted.

- tenant-mass-deletion: every Tenant deleted at once (the CRD stays). Capsule 0.14's Tenant finalizer
  makes Capsule the deleter, which the breaker stops: no namespace is deleted after Capsule has stopped
  (the first Tenants' namespaces race the breaker, see the test). On 0.12 the Tenants vanish at
  once and the garbage collector deletes their namespaces within tens of milliseconds, before any
  write by responder can land (measured: 6 of 12 gone 40 ms after the DELETEs), so some may be lost;
  the test asserts the accounting, not the luck.
- breaker-unavailable: Capsule's namespace webhooks fail open; responder must say so, still get its own writes
  past the webhooks that fail closed (detach, finalizer releases), and the drill may only pass if the cluster
  shows every namespace alive and re-adopted.

The drill runs on the lab as an existing cluster (--kubeconfig/--target: the lab has no Velero, so
nothing can be restored and every namespace alive at the end was saved by containment), and once on
its own embedded lab with `--capsule 0.12 --no-backup`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from responder.actions.breaker import fails_closed, guards_namespace_delete
from responder.lab.control_plane import LAB_CONTEXT, Lab
from responder.drill.scenarios import _capsule_webhook_configurations

from .incident_helpers import (breaker_held, deleted_names, losses_unexplained, namespace_states, read_journal,
                               run_responder)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

SMALL = ("--tenants", "4", "--namespaces-per-tenant", "3", "--observe", "10", "--headless")
SEEDED = 12


async def _states(lab: Lab, selector: str) -> dict[str, str]:
    async with lab.admin_client() as admin:
        listing = await admin.list_all("/api/v1/namespaces", labelSelector=selector)
        return await namespace_states(admin, {n["metadata"]["name"] for n in listing["items"]})


def _run_on_existing(lab: Lab, tmp_path, scenario: str) -> tuple[dict, dict[str, str], str]:
    """The drill on the running lab as an existing cluster; --keep so the test sees what it left."""
    proc = run_responder("drill", "--kubeconfig", str(lab.kubeconfig), "--target", LAB_CONTEXT, *SMALL,
                         "--scenario", scenario, "--no-backup", "--keep", "--journal", str(tmp_path / "journal"),
                         "-o", "json", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    card = json.loads(proc.stdout)
    assert proc.returncode == (0 if card["passed"] else 1)
    assert card["scenario"] == scenario and card["options"]["no_backup"] is True and card["backup"] is None
    states = asyncio.run(_states(lab, f"responder.dev/drill={card['options']['drill_id']}"))
    assert len(states) <= SEEDED
    return card, states, proc.stderr


def _trigger(card: dict) -> dict:
    return next(r for r in read_journal(Path(card["journal"])) if r.get("kind") == "trigger")["trigger"]


def _assert_scored_as_the_cluster_shows(card: dict, states: dict[str, str]) -> list[str]:
    """Without Velero nothing is restored: alive at the end == saved by containment."""
    alive = sorted(n for n, s in states.items() if s == "alive")
    assert card["namespaces_seeded"] == SEEDED
    assert card["restored"] == 0
    assert card["saved"] == card["present_at_end"] == len(alive), (card, states)
    assert card["lost"] == SEEDED - len(alive), (card, states)
    assert card["passed"] == (len(alive) == SEEDED and card["re_adopted"] == SEEDED and card["still_at_risk"] == 0)
    if card["lost"]:
        assert not card["passed"]
    return alive


@pytest.mark.parametrize("line", ["0.14", "0.12"])
def test_tenant_mass_deletion(lab_manager, tmp_path, line):
    lab = lab_manager.get_sync(line, fresh=True)
    card, states, stderr = _run_on_existing(lab, tmp_path, "tenant-mass-deletion")
    trigger = _trigger(card)
    assert trigger["kind"] == "tenants-vanished" and "Tenants deleted within" in trigger["reason"], trigger
    alive = _assert_scored_as_the_cluster_shows(card, states)
    assert card["breaker"] == "tripped" and card["breaker_verified"] == "verified", card
    if line == "0.14":
        # The deleter is Capsule itself (its Tenant finalizer), and the breaker stops it. responder trips on
        # the third Tenant deleted (one is a tenant's offboarding, not an incident) and Capsule runs until
        # its process stops, so the first Tenants' namespaces race the breaker: usually nothing is lost
        # (the run in the README), once in CI one namespace was. What must hold: no namespace DELETE
        # accepted after Capsule stopped, and every loss is one of the DELETEs accepted before.
        held = breaker_held(read_journal(Path(card["journal"])))
        assert held is not None, card
        prefix = f"drill-{card['options']['drill_id'].rsplit('-', 1)[-1]}-"
        since = _trigger(card)["event_received"] - 60
        # The lost: Terminating, or gone (named only by their DELETE); every one of them named.
        lost = {n for n, s in states.items() if s != "alive"} | (deleted_names(lab.audit_log, since=since, prefix=prefix)
                                                                 - set(states))
        assert len(lost) == SEEDED - len(alive), (sorted(lost), states)
        assert losses_unexplained(lab.audit_log, since=since, held=held, prefix=prefix, lost=lost) is None
        if len(alive) == SEEDED:
            assert card["passed"], stderr[-3000:]
    # Every namespace responder saved was re-adopted by its recreated Tenant.
    assert card["re_adopted"] == len(alive) and card["still_at_risk"] == 0, card


def test_breaker_unavailable_is_said_plainly_and_scored_honestly(lab_manager, tmp_path):
    lab = lab_manager.get_sync("0.14", fresh=True)
    card, states, stderr = _run_on_existing(lab, tmp_path, "breaker-unavailable")
    assert card["breaker"] == "unavailable", card
    assert "BREAKER UNAVAILABLE" in stderr
    assert card["fault_injection"]["configuration"], "0.14: the CapsuleConfiguration was changed"
    # Capsule's webhooks that still fail closed (0.14's namespace mutating webhook) must not refuse responder's
    # own detach patches once Capsule is down: without the exemption every detach failed, the Tenants were never
    # released, and Capsule deleted their namespaces as soon as recovery lifted the hold.
    assert card["steps"]["detach"] == "finished" and card["steps"]["tenant-finalizers"] == "finished", card
    alive = sorted(n for n, s in states.items() if s == "alive")
    assert card["namespaces_seeded"] == SEEDED and card["restored"] == 0
    assert card["saved"] == card["present_at_end"] == len(alive), (card, states)
    # Never PASSED with a namespace lost.
    assert card["passed"] == (len(alive) == SEEDED and card["re_adopted"] == SEEDED and card["still_at_risk"] == 0)
    # Put back afterwards: every Capsule namespace webhook fails closed again.
    assert card["cleanup"]["fault_injection_restored"]

    async def failing_open() -> list[str]:
        async with lab.admin_client() as admin:
            configs = await _capsule_webhook_configurations(admin)
        return [h["name"] for _, o in configs for h in o.get("webhooks") or []
                if guards_namespace_delete(h) and not fails_closed(h)]

    assert asyncio.run(failing_open()) == []
    # Every namespace that went is counted as lost (not only those recovery's plan listed).
    assert card["lost"] == SEEDED - len(alive), (card, states)


def test_embedded_drill_on_capsule_012_without_a_backup(lab_manager, tmp_path):
    """`responder drill --capsule 0.12 --no-backup --scenario tenant-mass-deletion --headless -o json`."""
    lab_manager.release()
    state_dir = tmp_path / "lab"
    proc = run_responder("drill", "--capsule", "0.12", "--scenario", "tenant-mass-deletion", "--no-backup", *SMALL,
                         "--state-dir", str(state_dir), "--keep", "-o", "json", timeout=800)
    lab = Lab(state_dir)
    try:
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        card = json.loads(proc.stdout)
        assert card["capsule"] == "v0.12.4" and card["options"]["capsule"] == "0.12"
        assert card["options"]["no_backup"] is True and card["backup"] is None
        assert _trigger(card)["kind"] == "tenants-vanished"
        states = asyncio.run(_states(lab, "capsule.clastix.io/tenant"))
        alive = sorted(n for n, s in states.items() if s == "alive")
        assert card["namespaces_seeded"] == SEEDED and card["present_at_end"] == len(alive), (card, states)
        assert card["passed"] == (len(alive) == SEEDED and card["re_adopted"] == SEEDED), card
        assert proc.returncode == (0 if card["passed"] else 1)
    finally:
        lab.down(wipe=True)
