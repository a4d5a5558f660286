"""AdmissionReview (admission.k8s.io/v1) for the delete gate: the API server's request in, the response out.

Pure: a parsed JSON body in, a status code and a JSON body out; the server around it (TLS, HTTP) is elsewhere.
A DELETE's AdmissionReview carries the object being deleted as `request.oldObject` (`request.object` is null),
which is where the namespace's Tenant label and ownerReferences are read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from responder.incident.delete_gate import GateDecision, GateRequest

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
# Forbidden, not 429: client-go retries a 429 carrying Retry-After inside the call, which would hold one of the
# garbage collector's (or Capsule's) workers for the whole hold; a 403 returns at once and the caller's queue
# retries with its own back-off.
DENIED_CODE = 403
AUDIT_KEY = "decision"  # the API server prefixes it with the webhook's name in the audit log


class ReviewError(ValueError):
    """The body is not an AdmissionReview v1 request the gate can answer (HTTP 400)."""


def parse_review(body: Any) -> tuple[str, GateRequest]:
    """(request uid, the gate's view of the request). ReviewError when the body is not an AdmissionReview
    v1 with a request and its uid (the response must echo the uid, so there is nothing to answer without)."""
    if not isinstance(body, dict):
        raise ReviewError("the body is not a JSON object")
    if body.get("apiVersion") != API_VERSION or body.get("kind") != KIND:
        raise ReviewError(f"expected apiVersion {API_VERSION}, kind {KIND}; got {body.get('apiVersion')!r}, "
                          f"{body.get('kind')!r} (the webhook configuration must list admissionReviewVersions: [v1])")
    request = body.get("request")
    if not isinstance(request, dict) or not request.get("uid"):
        raise ReviewError("no request, or a request without its uid")
    resource = request.get("resource") or {}
    group, plural = resource.get("group") or "", resource.get("resource") or ""
    old = request.get("oldObject")
    user = request.get("userInfo") or {}
    return str(request["uid"]), GateRequest(
        username=str(user.get("username") or ""),
        operation=str(request.get("operation") or ""),
        resource=f"{group}/{plural}" if group else plural,
        name=str(request.get("name") or ""),
        namespace=old if isinstance(old, dict) else {},
    )


def review_response(uid: str, decision: GateDecision) -> dict[str, Any]:
    """The AdmissionReview the API server expects back: the request's uid, allowed, and for a deny the
    status the caller (the garbage collector, Capsule) gets as its error."""
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed,
                                "auditAnnotations": {AUDIT_KEY: decision.kind}}
    if not decision.allowed:
        status: dict[str, Any] = {"code": DENIED_CODE, "reason": "Forbidden", "message": decision.why}
        response["status"] = status
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def answer_review(body: Any, decide: Callable[[GateRequest], GateDecision]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one POSTed AdmissionReview; `decide` is the gate's decision bound to the
    guard's picture and clock. A malformed review gets 400 and a plain Status: the API server then applies the
    webhook's failurePolicy (Ignore), as for a guard that is down."""
    try:
        uid, request = parse_review(body)
    except ReviewError as exc:
        return 400, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400, "message": str(exc)}
    return 200, review_response(uid, decide(request))
