"""Pure logic of the breaker's webhook patch (no cluster); detection is tests/unit/test_detect.py."""

from __future__ import annotations

import pytest

from responder.actions.breaker import (EXEMPTION_NAME, HOLD_IDENTITY_ANNOTATION, HOLD_INCIDENT_ANNOTATION,
                                       HOLD_OBJECT_PATHS, armed_hold_in_place, armed_hold_objects, exemption_condition,
                                       exemption_patch, fails_closed, guards_namespace_delete, hold_param_crd, holds_of,
                                       namespace_hold_objects, release_request)
from responder.actions.tenants import CAPSULE_TENANT_FINALIZER, release_patch

from .test_triage import PatchTestFailed, apply_patch

NS_HOOK = {"name": "namespaces.validating.projectcapsule.dev", "failurePolicy": "Fail",
           "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE", "DELETE"],
                      "resources": ["namespaces", "namespaces/status", "namespaces/finalize"], "scope": "*"}]}
IGNORE_HOOK = {"name": "config.projectcapsule.dev", "failurePolicy": "Ignore",
               "rules": [{"apiGroups": ["*"], "operations": ["*"], "resources": ["*"]}]}
POD_HOOK = {"name": "pods.projectcapsule.dev", "failurePolicy": "Fail",
            "matchConditions": [{"name": "keep", "expression": "true"}],
            "rules": [{"apiGroups": [""], "operations": ["CREATE"], "resources": ["pods"]}]}


def test_which_webhooks_make_the_breaker():
    assert guards_namespace_delete(NS_HOOK) and fails_closed(NS_HOOK)
    assert not fails_closed(IGNORE_HOOK)
    assert not guards_namespace_delete(POD_HOOK)
    assert fails_closed({"name": "x"})  # admissionregistration/v1 defaults to Fail


def test_exemption_patch_adds_only_to_fail_closed_hooks_and_keeps_existing_conditions():
    cfg = {"webhooks": [NS_HOOK, IGNORE_HOOK, POD_HOOK]}
    ops, originals = exemption_patch(cfg, "responder")
    patched = apply_patch(cfg, ops)
    assert patched["webhooks"][0]["matchConditions"] == [exemption_condition("responder")]
    assert "matchConditions" not in patched["webhooks"][1]
    assert patched["webhooks"][2]["matchConditions"] == [{"name": "keep", "expression": "true"},
                                                         exemption_condition("responder")]
    assert originals == {NS_HOOK["name"]: None, POD_HOOK["name"]: POD_HOOK["matchConditions"]}
    # Replaying is harmless: nothing left to add.
    assert exemption_patch(patched, "responder") == ([], {})


def test_exemption_names_exactly_one_identity_and_spares_dry_runs():
    cond = exemption_condition('sys"tem')
    assert cond["name"] == EXEMPTION_NAME
    assert cond["expression"].count("request.userInfo.username") == 1
    assert '"sys\\"tem"' in cond["expression"]  # quoted, so a name cannot inject CEL
    assert "request.dryRun" in cond["expression"]


def test_release_patch_removes_only_capsules_finalizer():
    tenant = {"metadata": {"name": "t", "uid": "u", "finalizers": ["other/keep", CAPSULE_TENANT_FINALIZER]}}
    patched = apply_patch(tenant, release_patch(tenant))
    assert patched["metadata"]["finalizers"] == ["other/keep"]
    assert release_patch(patched) == []


def test_namespace_hold_refuses_tenant_namespace_deletes_by_all_but_responder():
    policy, binding = namespace_hold_objects("system:serviceaccount:ops:responder", "inc-1")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["*"], "operations": ["DELETE"], "resources": ["namespaces"]}]
    # Exactly one identity is let through, dry runs included (the breaker probe is a dry run by responder).
    assert [c["expression"] for c in spec["matchConditions"]] == [
        'request.userInfo.username != "system:serviceaccount:ops:responder"']
    (rule,) = spec["validations"]
    assert rule["expression"].startswith("!(") and '"capsule.clastix.io/tenant" in oldObject.metadata.labels' in \
        rule["expression"] and 'r.apiVersion.startsWith("capsule.clastix.io/")' in rule["expression"]
    assert "inc-1" in rule["message"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}


def test_the_armed_hold_is_dormant_until_its_parameter_is_marked_and_then_lets_only_the_marked_identity_through():
    policy, binding, param = armed_hold_objects()
    spec = policy["spec"]
    # Its own parameter kind (an informer over every ConfigMap in each API server would be the price of a
    # ConfigMap); Ignore, so a parameter kind gone between incidents cannot refuse every namespace DELETE.
    assert spec["failurePolicy"] == "Ignore"
    assert spec["paramKind"] == {"apiVersion": "responder.dev/v1alpha1", "kind": "NamespaceHold"}
    crd = hold_param_crd()
    assert crd["spec"]["scope"] == "Cluster" and crd["spec"]["names"]["kind"] == "NamespaceHold"
    assert crd["metadata"]["name"] == "namespaceholds.responder.dev"
    assert param["apiVersion"] == f'{crd["spec"]["group"]}/{crd["spec"]["versions"][0]["name"]}'
    assert "matchConditions" not in spec  # they cannot read parameters: the identity is checked in the validation
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert f'"{HOLD_INCIDENT_ANNOTATION}" in params.metadata.annotations' in variables["held"]
    assert (f'request.userInfo.username == params.metadata.annotations["{HOLD_IDENTITY_ANNOTATION}"]'
            in variables["responder"])
    (rule,) = spec["validations"]
    assert rule["expression"].startswith("!variables.held || variables.responder || !(")
    assert '"capsule.clastix.io/tenant" in oldObject.metadata.labels' in rule["expression"]
    # Without the parameter the binding allows (dormant); the parameter it names is the one protect applies.
    ref = binding["spec"]["paramRef"]
    assert ref == {"name": param["metadata"]["name"], "parameterNotFoundAction": "Allow"}
    assert "annotations" not in param["metadata"]  # installed unmarked
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] and binding["spec"]["validationActions"] == [
        "Deny"]


def test_armed_hold_in_place_names_what_is_missing_or_different():
    policy, binding, param = armed_hold_objects()
    objects = {"ValidatingAdmissionPolicy": policy, "ValidatingAdmissionPolicyBinding": binding, "NamespaceHold": param}
    assert armed_hold_in_place(objects) is None
    assert "parameter NamespaceHold missing" in armed_hold_in_place({**objects, "NamespaceHold": None})
    assert "binding missing" in armed_hold_in_place({**objects, "ValidatingAdmissionPolicyBinding": None})
    audit_only = {**binding, "spec": {**binding["spec"], "validationActions": ["Audit"]}}
    assert "binding differs" in armed_hold_in_place({**objects, "ValidatingAdmissionPolicyBinding": audit_only})
    older = {**policy, "spec": {**policy["spec"], "validations": [{"expression": "true"}]}}
    assert "policy differs" in armed_hold_in_place({**objects, "ValidatingAdmissionPolicy": older})
    # The previous version's policy (a ConfigMap parameter, failing closed) is reported for reinstalling.
    configmap_param = {**policy, "spec": {**policy["spec"], "failurePolicy": "Fail",
                                          "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"}}}
    assert "policy differs" in armed_hold_in_place({**objects, "ValidatingAdmissionPolicy": configmap_param})


def test_lifting_the_hold_deletes_the_incidents_policy_but_only_unmarks_the_armed_parameter():
    policy, _ = namespace_hold_objects("responder", "inc-1")
    policy["metadata"].update(uid="u-1", resourceVersion="7")
    method, path, body, _ = release_request("ValidatingAdmissionPolicy", policy)
    assert method == "DELETE" and path.endswith("/validatingadmissionpolicies/responder-namespace-hold")
    assert body["preconditions"] == {"uid": "u-1"}
    param = armed_hold_objects()[2]
    param["metadata"].update(uid="u-2", resourceVersion="9",
                             annotations={HOLD_INCIDENT_ANNOTATION: "inc-1", HOLD_IDENTITY_ANNOTATION: "responder"})
    method, path, body, content_type = release_request("NamespaceHold", param)
    assert (method, content_type) == ("PATCH", "application/json-patch+json")
    assert path == "/apis/responder.dev/v1alpha1/namespaceholds/responder-namespace-hold"
    # Only while the mark is still this incident's; the parameter itself stays (armed).
    assert body == [{"op": "test", "path": "/metadata/annotations/responder.dev~1incident", "value": "inc-1"},
                    {"op": "remove", "path": "/metadata/annotations/responder.dev~1incident"},
                    {"op": "remove", "path": "/metadata/annotations/responder.dev~1identity"}]
    unmarked = apply_patch(param, body)
    assert unmarked["metadata"]["annotations"] == {} and unmarked["spec"] == param["spec"]
    marked_again = {**param, "metadata": {**param["metadata"], "annotations": {HOLD_INCIDENT_ANNOTATION: "inc-2"}}}
    with pytest.raises(PatchTestFailed):  # another incident's mark now: the test op refuses
        apply_patch(marked_again, body)


class _HoldsClient:
    """Answers GETs of the hold objects' paths from a dict (None: not found)."""

    def __init__(self, objects: dict[str, dict | None]):
        self.objects = objects

    async def get_or_none(self, path: str) -> dict | None:
        return self.objects.get(path)


async def test_holds_of_an_incident_are_only_that_incidents_hold_objects():
    policy, binding = namespace_hold_objects("responder", "inc-1")
    param = armed_hold_objects()[2]
    param["metadata"]["annotations"] = {HOLD_INCIDENT_ANNOTATION: "inc-2"}
    client = _HoldsClient({HOLD_OBJECT_PATHS["ValidatingAdmissionPolicy"]: policy,
                           HOLD_OBJECT_PATHS["ValidatingAdmissionPolicyBinding"]: binding,
                           HOLD_OBJECT_PATHS["NamespaceHold"]: param})
    assert await holds_of(client, "inc-1") == {"ValidatingAdmissionPolicy": policy,
                                               "ValidatingAdmissionPolicyBinding": binding}
    assert await holds_of(client, "inc-2") == {"NamespaceHold": param}
    assert await holds_of(client, "inc-3") == {}
    param["metadata"]["annotations"] = {}  # the armed parameter unmarked is no hold of anyone's
    assert await holds_of(client, "inc-2") == {}
