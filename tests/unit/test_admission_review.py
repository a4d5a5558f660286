"""The delete gate's AdmissionReview v1 handling: the API server's request in, its expected response out."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from responder.guard.admission import ReviewError, answer_review, parse_review, review_response
from responder.incident import delete_gate as gate
from responder.incident.delete_gate import GARBAGE_COLLECTOR, GatePicture, GateRequest, GateSettings, decide

T0 = 1_000_000.0

# What kube-apiserver POSTs for the garbage collector's DELETE of a tenant namespace (Capsule 0.12 shape:
# the namespace carries Capsule's label and a controller ownerReference to its Tenant; the collector deletes
# in the background with a UID precondition). `object` is null on a DELETE; `oldObject` is the namespace.
GC_DELETE = json.loads("""
{
  "kind": "AdmissionReview",
  "apiVersion": "admission.k8s.io/v1",
  "request": {
    "uid": "6f4c3e1a-2b1d-4c55-9a0e-0d8f2b7c1e42",
    "kind": {"group": "", "version": "v1", "kind": "Namespace"},
    "resource": {"group": "", "version": "v1", "resource": "namespaces"},
    "requestKind": {"group": "", "version": "v1", "kind": "Namespace"},
    "requestResource": {"group": "", "version": "v1", "resource": "namespaces"},
    "name": "tenant-001-ns-01",
    "operation": "DELETE",
    "userInfo": {
      "username": "system:serviceaccount:kube-system:generic-garbage-collector",
      "uid": "0b8e8f5e-54c4-4b0e-a7a8-6d0d3c6f6c11",
      "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
    },
    "object": null,
    "oldObject": {
      "apiVersion": "v1",
      "kind": "Namespace",
      "metadata": {
        "name": "tenant-001-ns-01",
        "uid": "3d7c1a52-9e55-4c8e-8b53-2a3f1b0d9e10",
        "resourceVersion": "4711",
        "creationTimestamp": "2026-12-03T09:00:00Z",
        "labels": {"capsule.clastix.io/tenant": "tenant-001", "kubernetes.io/metadata.name": "tenant-001-ns-01"},
        "ownerReferences": [{
          "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": "tenant-001",
          "uid": "a1b2c3d4-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true
        }]
      },
      "spec": {"finalizers": ["kubernetes"]},
      "status": {"phase": "Active"}
    },
    "dryRun": false,
    "options": {
      "kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", "propagationPolicy": "Background",
      "preconditions": {"uid": "3d7c1a52-9e55-4c8e-8b53-2a3f1b0d9e10"}
    }
  }
}
""")
TENANT_UID = "a1b2c3d4-0000-4000-8000-000000000001"


def review(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(GC_DELETE)
    body["request"].update(changes)
    return body


def bound(picture: GatePicture, now: float,
          settings: GateSettings = GateSettings()) -> Callable[[GateRequest], gate.GateDecision]:
    return lambda request: decide(request, picture, settings, now)


def test_parse_a_garbage_collector_delete() -> None:
    uid, request = parse_review(GC_DELETE)
    assert uid == "6f4c3e1a-2b1d-4c55-9a0e-0d8f2b7c1e42"
    assert request == GateRequest(GARBAGE_COLLECTOR, "DELETE", "namespaces", "tenant-001-ns-01",
                                  GC_DELETE["request"]["oldObject"])


def test_a_deny_echoes_the_uid_with_a_403_and_the_why() -> None:
    picture = GatePicture(T0, {}, {TENANT_UID: T0 + 1})
    code, body = answer_review(GC_DELETE, bound(picture, T0 + 1.01))
    assert code == 200
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert response["uid"] == GC_DELETE["request"]["uid"] and response["allowed"] is False
    assert response["status"]["code"] == 403 and response["status"]["reason"] == "Forbidden"
    message = response["status"]["message"]
    assert "responder" in message and "tenant-001" in message and "tenant-001-ns-01" in message and "s more" in message
    assert response["auditAnnotations"] == {"decision": gate.DENY_RECENT}
    json.dumps(body)  # what the server writes back


def test_an_allow_carries_no_status() -> None:
    picture = GatePicture(T0, {}, {TENANT_UID: T0 + 1})
    code, body = answer_review(GC_DELETE, bound(picture, T0 + 30))
    assert code == 200
    assert body["response"] == {"uid": GC_DELETE["request"]["uid"], "allowed": True,
                                "auditAnnotations": {"decision": gate.ALLOW_OFFBOARDED}}


def test_capsule_014_delete_by_its_service_account() -> None:
    body = review(userInfo={"username": gate.CAPSULE_USER, "groups": ["system:serviceaccounts"]})
    body["request"]["oldObject"]["metadata"]["ownerReferences"][0]["apiVersion"] = "capsule.clastix.io/v1beta2"
    picture = GatePicture(T0, {"tenant-001": gate.TenantSeen(TENANT_UID, deleting=True)}, {TENANT_UID: T0})
    _, held = answer_review(body, bound(picture, T0 + 0.021))
    assert held["response"]["allowed"] is False
    _, allowed = answer_review(body, bound(picture, T0 + 10.5))
    assert allowed["response"]["allowed"] is True


def test_a_user_the_gate_does_not_select_is_allowed() -> None:
    # matchConditions keep these away from the gate; should one arrive all the same, it passes.
    body = review(userInfo={"username": "owner-tenant-001", "groups": ["capsule.clastix.io"]})
    _, answer = answer_review(body, bound(GatePicture(T0, {}, {}, incident="inc"), T0))
    assert answer["response"]["allowed"] is True
    assert answer["response"]["auditAnnotations"] == {"decision": gate.ALLOW_NOT_GATED}


def test_an_open_incident_denies() -> None:
    _, answer = answer_review(GC_DELETE, bound(GatePicture(T0, {}, {TENANT_UID: T0 - 3600}, incident="inc-1"), T0))
    assert answer["response"]["allowed"] is False and "inc-1" in answer["response"]["status"]["message"]


def test_a_delete_without_old_object_reads_as_not_a_tenant_namespace() -> None:
    _, answer = answer_review(review(oldObject=None), bound(GatePicture(T0, {}, {}, incident="inc"), T0))
    assert answer["response"]["allowed"] is True
    assert answer["response"]["auditAnnotations"] == {"decision": gate.ALLOW_NOT_TENANT}


@pytest.mark.parametrize("body, fragment", [
    ([], "not a JSON object"),
    ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}},
     "admissionReviewVersions"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "without its uid"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"operation": "DELETE"}},
     "without its uid"),
])
def test_malformed_reviews_get_400(body: Any, fragment: str) -> None:
    with pytest.raises(ReviewError, match=fragment):
        parse_review(body)
    code, answer = answer_review(body, bound(GatePicture(T0), T0))
    assert code == 400 and answer["kind"] == "Status" and answer["code"] == 400 and fragment in answer["message"]


def test_group_resources_are_named_with_their_group() -> None:
    body = review(resource={"group": "capsule.clastix.io", "version": "v1beta2", "resource": "tenants"})
    _, request = parse_review(body)
    assert request.resource == "capsule.clastix.io/tenants"
    assert review_response("u", decide(request, GatePicture(T0), GateSettings(), T0))["response"]["allowed"] is True
