"""The delete gate's ValidatingWebhookConfiguration: only the garbage collector's and Capsule's namespace DELETEs
reach the guard, and a guard that is down changes nothing."""

from __future__ import annotations

import yaml

import pytest

from responder.incident.delete_gate import CAPSULE_USER, GARBAGE_COLLECTOR, GateSettings
from responder.ops.delete_gate_webhook import (CONFIGURATION_NAME, GATE_PATH, GATE_PORT, WEBHOOK_NAME,
                                               delete_gate_webhook, match_conditions)


def test_service_mode_defaults() -> None:
    doc = delete_gate_webhook(ca_bundle="Q0E=")
    assert doc["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert doc["kind"] == "ValidatingWebhookConfiguration" and doc["metadata"]["name"] == CONFIGURATION_NAME
    [hook] = doc["webhooks"]
    assert hook["name"] == WEBHOOK_NAME and hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"] == {"service": {"namespace": "responder-system", "name": "responder-guard",
                                                "path": GATE_PATH, "port": GATE_PORT}, "caBundle": "Q0E="}
    assert hook["rules"] == [{"operations": ["DELETE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["namespaces"], "scope": "Cluster"}]
    # Fail open, fast, no side effects: the gate may only ever delay a DELETE.
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 1 and hook["sideEffects"] == "None"


def test_url_mode_for_the_lab() -> None:
    doc = delete_gate_webhook(url="https://127.0.0.1:18443/", ca_bundle="Q0E=")
    assert doc["webhooks"][0]["clientConfig"] == {"url": f"https://127.0.0.1:18443{GATE_PATH}", "caBundle": "Q0E="}


def test_match_conditions_select_the_gate_users_and_tenant_namespaces() -> None:
    conditions = delete_gate_webhook()["webhooks"][0]["matchConditions"]
    by_name = {c["name"]: c["expression"] for c in conditions}
    assert by_name["garbage-collector-or-capsule"] == (
        f'request.userInfo.username in ["{CAPSULE_USER}", "{GARBAGE_COLLECTOR}"]')
    tenant = by_name["tenant-namespace"]
    assert '"capsule.clastix.io/tenant" in oldObject.metadata.labels' in tenant
    assert 'r.kind == "Tenant" && r.apiVersion.startsWith("capsule.clastix.io/")' in tenant
    assert tenant.count("(") == tenant.count(")")
    # The runbook's defaults and the configuration's select the same users.
    assert set(GateSettings().users) == {CAPSULE_USER, GARBAGE_COLLECTOR}


def test_capsule_service_account_is_configurable_and_quoted() -> None:
    other = 'system:serviceaccount:capsule:capsule-"x"'
    [users, _] = match_conditions([GARBAGE_COLLECTOR, other, GARBAGE_COLLECTOR])
    # Sorted and once each, so the rendered object does not change with the order users are listed in.
    assert users["expression"] == ('request.userInfo.username in ["system:serviceaccount:capsule:capsule-\\"x\\"", '
                                   f'"{GARBAGE_COLLECTOR}"]')


def test_no_user_is_refused() -> None:
    with pytest.raises(ValueError):
        delete_gate_webhook(users=())


def test_renders_as_yaml() -> None:
    doc = delete_gate_webhook(labels={"app.kubernetes.io/name": "responder"})
    assert yaml.safe_load(yaml.safe_dump(doc, sort_keys=False)) == doc
    assert doc["metadata"]["labels"] == {"app.kubernetes.io/name": "responder"}
