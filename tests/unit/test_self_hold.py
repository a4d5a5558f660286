"""The self-arming hold's objects and the state read from them (pure; the lab shows the API server enforcing it:
tests/lab/test_self_arming_hold.py)."""

from __future__ import annotations

import copy

import pytest

from responder.actions.self_hold import (ADOPTED_CRD_ANNOTATION, GUARD_IDENTITY, SELF_HOLD_PATHS, rekey_request,
                                         self_hold_objects, self_hold_state)
from responder.errors import ConfigError
from responder.names import SELF_HOLD_BINDING, SELF_HOLD_OWNED_BINDING, SELF_HOLD_POLICY, TENANT_CRD
from responder.ops.protect import self_hold_exemptions


def installed(uid: str = "uid-1") -> dict[str, dict]:
    policy, labelled, owned = self_hold_objects(uid, [GUARD_IDENTITY])
    return dict(zip(SELF_HOLD_PATHS, (policy, labelled, owned)))


def crd(uid: str, deleting: bool = False) -> dict:
    meta = {"name": TENANT_CRD, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T10:00:00Z"
    return {"metadata": meta}


def test_the_bindings_refuse_labelled_namespaces_also_when_the_crd_is_absent():
    policy, labelled, owned = self_hold_objects("uid-1", [GUARD_IDENTITY, "responder"])
    assert policy["spec"]["failurePolicy"] == "Fail"  # Ignore would admit a missing parameter
    assert policy["spec"]["paramKind"] == {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}
    assert policy["metadata"]["annotations"][ADOPTED_CRD_ANNOTATION] == "uid-1"
    exempt = next(c for c in policy["spec"]["matchConditions"] if c["name"] == "not-responder")["expression"]
    assert f'"{GUARD_IDENTITY}"' in exempt and '"responder"' in exempt
    assert labelled["metadata"]["name"] == SELF_HOLD_BINDING and owned["metadata"]["name"] == SELF_HOLD_OWNED_BINDING
    assert labelled["spec"]["paramRef"] == {"name": TENANT_CRD, "parameterNotFoundAction": "Deny"}
    assert owned["spec"]["paramRef"] == {"name": TENANT_CRD, "parameterNotFoundAction": "Allow"}
    ops = {b["metadata"]["name"]: b["spec"]["matchResources"]["objectSelector"]["matchExpressions"][0]["operator"]
           for b in (labelled, owned)}
    assert ops == {SELF_HOLD_BINDING: "Exists", SELF_HOLD_OWNED_BINDING: "DoesNotExist"}
    # The absent case's refusal is the API server's fixed text with the binding's name: it says the way out.
    assert "responder-protect-remove" in SELF_HOLD_BINDING and len(SELF_HOLD_BINDING) <= 253
    assert all(len(part) <= 63 for part in SELF_HOLD_BINDING.split("."))


@pytest.mark.parametrize("tenant_crd, in_force, why", [
    (crd("uid-1"), False, ""),
    (crd("uid-1", deleting=True), True, "being deleted"),
    (None, True, "absent"),
    (crd("uid-2"), True, "recreated"),
])
def test_state_follows_the_tenant_crd(tenant_crd, in_force, why):
    state = self_hold_state(installed("uid-1"), tenant_crd)
    assert state.installed and state.in_force == in_force and why in state.why
    assert state.summary().startswith("IN FORCE" if in_force else "dormant")


def test_missing_or_changed_objects_are_not_installed():
    objects = installed()
    objects["ValidatingAdmissionPolicyBinding/owned"] = None
    state = self_hold_state(objects, crd("uid-1"))
    assert not state.installed and "ValidatingAdmissionPolicyBinding owned missing" in state.why
    changed = installed()
    changed["ValidatingAdmissionPolicy"]["spec"]["failurePolicy"] = "Ignore"
    assert "differs" in self_hold_state(changed, crd("uid-1")).why
    audit = installed()
    audit["ValidatingAdmissionPolicyBinding"]["spec"]["validationActions"] = ["Audit"]
    assert not self_hold_state(audit, crd("uid-1")).installed


def apply_json_patch(obj: dict, ops: list[dict]) -> dict:
    """The few JSON-patch operations rekey_request sends (test, replace), applied like the API server does."""
    out = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], op
        else:
            node[key] = op["value"]
    return out


def test_rekey_records_the_new_crd_and_makes_the_hold_dormant():
    objects = installed("uid-1")
    objects["ValidatingAdmissionPolicy"]["metadata"]["resourceVersion"] = "42"
    assert self_hold_state(objects, crd("uid-2")).in_force
    ops = rekey_request(objects["ValidatingAdmissionPolicy"], "uid-2")
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    objects["ValidatingAdmissionPolicy"] = apply_json_patch(objects["ValidatingAdmissionPolicy"], ops)
    state = self_hold_state(objects, crd("uid-2"))
    assert state.installed and not state.in_force and state.adopted_uid == "uid-2"
    assert objects["ValidatingAdmissionPolicy"]["spec"] == self_hold_objects("uid-2", [GUARD_IDENTITY])[0]["spec"]
    assert objects["ValidatingAdmissionPolicy"]["metadata"]["name"] == SELF_HOLD_POLICY


def test_exemptions_always_name_the_guard_and_refuse_an_empty_user():
    assert self_hold_exemptions(["responder", "responder", GUARD_IDENTITY]) == [GUARD_IDENTITY, "responder"]
    with pytest.raises(ConfigError, match="--responder-user is empty"):
        self_hold_exemptions([" "])
