"""The delete gate's ValidatingWebhookConfiguration (docs/delete-gate.md): namespace DELETEs by the garbage
collector and Capsule's ServiceAccount, and only those, sent to the guard.

Built here so that the chart, `responder manifests` and the lab can render the same object; not installed by
anything yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from responder.incident.delete_gate import CAPSULE_USER, GARBAGE_COLLECTOR
from responder.incident.triage import TENANT_GROUP, TENANT_KIND, TENANT_LABEL
from responder.names import RESPONDER_NAMESPACE

CONFIGURATION_NAME = "responder-delete-gate"
WEBHOOK_NAME = "delete-gate.responder.dev"
SERVICE = "responder-guard"
GATE_PORT = 8443
GATE_PATH = "/delete-gate"
TIMEOUT_S = 1  # the API server's minimum; the answer is in memory, a guard slower than this is as good as down
CA_BUNDLE_PLACEHOLDER = "<ca-bundle>"


def _cel_string(value: str) -> str:
    # A JSON string literal is a valid CEL string literal (same escapes for what names can hold).
    return json.dumps(value)


def match_conditions(users: Iterable[str]) -> list[dict[str, str]]:
    """The CEL conditions that keep every other request away from the gate (all must hold): the user, and a
    namespace that is a tenant's (Capsule's label or a Tenant ownerReference)."""
    names = ", ".join(_cel_string(u) for u in sorted(set(users)))
    label = _cel_string(TENANT_LABEL)
    return [
        {"name": "garbage-collector-or-capsule", "expression": f"request.userInfo.username in [{names}]"},
        {"name": "tenant-namespace",
         "expression": (f"(has(oldObject.metadata.labels) && {label} in oldObject.metadata.labels) || "
                        "(has(oldObject.metadata.ownerReferences) && oldObject.metadata.ownerReferences.exists(r, "
                        f"r.kind == {_cel_string(TENANT_KIND)} && r.apiVersion.startsWith({_cel_string(TENANT_GROUP + '/')})))")},
    ]


def delete_gate_webhook(*, users: Iterable[str] = (GARBAGE_COLLECTOR, CAPSULE_USER), ca_bundle: str = CA_BUNDLE_PLACEHOLDER,
                        url: str | None = None, namespace: str = RESPONDER_NAMESPACE, service: str = SERVICE,
                        port: int = GATE_PORT, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration. `url` (the lab, a guard outside the cluster) replaces the Service;
    `ca_bundle` is the base64 PEM of the CA that signed the guard's serving certificate."""
    users = tuple(users)
    if not users:
        raise ValueError("the delete gate needs at least one user to hold (the garbage collector, Capsule)")
    client: dict[str, Any] = ({"url": url.rstrip("/") + GATE_PATH} if url else
                              {"service": {"namespace": namespace, "name": service, "path": GATE_PATH, "port": port}})
    client["caBundle"] = ca_bundle
    meta: dict[str, Any] = {"name": CONFIGURATION_NAME}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": meta,
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "clientConfig": client,
            "rules": [{"operations": ["DELETE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["namespaces"], "scope": "Cluster"}],
            "matchPolicy": "Equivalent",
            "matchConditions": match_conditions(users),
            # A guard that is down, slow or still starting changes nothing: the DELETE goes on as without it.
            "failurePolicy": "Ignore",
            "timeoutSeconds": TIMEOUT_S,
            "sideEffects": "None",
        }],
    }
