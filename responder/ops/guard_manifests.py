"""`responder manifests guard`: the guard's objects for `kubectl apply -f -`, the same as the chart
(charts/responder) renders with its default values for the release `responder`, plus the Namespace (which
`helm install --create-namespace` makes). tests/unit/test_chart.py compares the two, so they cannot drift.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

from dataclasses import dataclass

import yaml

from responder.errors import ConfigError
from responder.names import (DEFAULT_CAPSULE_DEPLOYMENT, DEFAULT_CAPSULE_NAMESPACE, RESPONDER_NAMESPACE,
                             TENANT_RECORD_OBJECTS)
from responder.ops.manifests import rbac_rules

# The chart's version and its default values (charts/responder/Chart.yaml, values.yaml).
CHART_VERSION = "0.1.0"
RELEASE = "responder"
IMAGE = "ghcr.io/example/responder:0.1.0"
PORT = 8080
SERVICE_ACCOUNT = "responder"
DEFAULT_RUNBOOK = "/opt/responder/runbooks/capsule-tenant-crd-deletion.yaml"
JOURNAL_DIR = "/var/lib/responder"
WEBHOOK_ENV = "RESPONDER_WEBHOOK_URL"  # `responder guard --webhook-env`'s default


def _labels(component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "responder", "app.kubernetes.io/instance": RELEASE,
              "app.kubernetes.io/version": CHART_VERSION, "app.kubernetes.io/managed-by": "kubectl",
              "helm.sh/chart": f"responder-{CHART_VERSION}"}
    return {**labels, "app.kubernetes.io/component": component} if component else labels


def _selector() -> dict[str, str]:
    return {"app.kubernetes.io/name": "responder", "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "guard"}


def _meta(name: str, component: str | None = None, *, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(component)}
    if namespaced:
        meta = {"name": name, "namespace": RESPONDER_NAMESPACE, "labels": _labels(component)}
    return meta


@dataclass(frozen=True)
class Sinks:
    """The chart's `notifications` values: Alertmanager URLs, the Secret (and key) holding the webhook's URL,
    the alerts' cluster label."""

    alertmanager: tuple[str, ...] = ()
    webhook_secret: str = ""
    webhook_key: str = "url"
    cluster_name: str = ""

    def args(self) -> list[str]:
        return [f"--alertmanager={url}" for url in self.alertmanager] + (
            [f"--cluster-name={self.cluster_name}"] if self.cluster_name else [])

    def env(self) -> list[dict[str, Any]]:
        if not self.webhook_secret:
            return []
        return [{"name": WEBHOOK_ENV, "valueFrom": {"secretKeyRef": {"name": self.webhook_secret,
                                                                     "key": self.webhook_key}}}]


def _deployment(sinks: Sinks) -> dict[str, Any]:
    container = {
        "name": "guard", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
        "args": ["guard", f"--port={PORT}", f"--journal={JOURNAL_DIR}", f"--capsule-namespace={DEFAULT_CAPSULE_NAMESPACE}",
                 f"--capsule-deployment={DEFAULT_CAPSULE_DEPLOYMENT}", "--velero-namespace=velero",
                 "--recovery=approval", f"--runbook={DEFAULT_RUNBOOK}", *sinks.args()],
        # The Lease's holder identity names the pod.
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, *sinks.env()],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "50m", "memory": "128Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "journal", "mountPath": JOURNAL_DIR}]}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("responder-guard", "guard"),
        "spec": {
            "replicas": 2,  # one leads through the Lease, the other stands by
            "selector": {"matchLabels": _selector()},
            "template": {
                "metadata": {"labels": _labels("guard"),
                             "annotations": {"checksum/runbook": hashlib.sha256(b"").hexdigest()}},
                "spec": {
                    # No kubeconfig in the image: the guard uses this ServiceAccount's token, CA and namespace.
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "journal", "emptyDir": {"sizeLimit": "1Gi"}}],
                    # The replicas on different nodes: losing one node must not take both.
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                            "labelSelector": {"matchLabels": _selector()}}}]}}}}}}


def guard_manifests(sinks: Sinks = Sinks()) -> list[dict[str, Any]]:
    """Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, Service, Deployment, PodDisruptionBudget, and the
    tenant record's ConfigMaps."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RESPONDER_NAMESPACE, "labels": _labels()}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(SERVICE_ACCOUNT, "rbac")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("responder", "rbac", namespaced=False), "rules": rbac_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("responder", "rbac", namespaced=False),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "responder"},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": RESPONDER_NAMESPACE}]},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {**_meta("responder-guard", "guard"),
                      "annotations": {"prometheus.io/path": "/metrics", "prometheus.io/port": str(PORT),
                                      "prometheus.io/scrape": "true"}},
         "spec": {"selector": _selector(), "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}},
        _deployment(sinks),
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta("responder-guard"),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector()}}},
    ] + [  # the tenant record's ConfigMaps, empty: the leader fills them (its role patches them, never creates)
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {**_meta(name, "tenant-record"), "annotations": {"helm.sh/resource-policy": "keep"}}}
        for name in TENANT_RECORD_OBJECTS]


def render(docs: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2) + "\n"
    header = ("# responder's guard, generated by `responder manifests guard`: the objects charts/responder renders with\n"
              "# its default values (release `responder`), plus the Namespace. Apply: kubectl apply -f -\n"
              "# A runbook of one's own and other values: edit these, or install the chart.\n")
    return header + "".join("---\n" + yaml.safe_dump(doc, sort_keys=False, width=120) for doc in docs)


def add_parser(kinds: argparse._SubParsersAction) -> None:
    """`manifests guard`, beside `manifests rbac`."""
    guard = kinds.add_parser("guard", help="the guard's objects for kubectl (what the chart renders with its "
                                           "defaults, plus the Namespace)")
    guard.add_argument("--alertmanager", action="append", default=[], metavar="URL",
                       help="the chart's notifications.alertmanager: an Alertmanager's base URL (repeatable)")
    guard.add_argument("--webhook-secret", default="", metavar="NAME[:KEY]",
                       help="the chart's notifications.webhook.secretName (and secretKey, default url): the Secret "
                            f"in {RESPONDER_NAMESPACE} holding the JSON webhook's URL")
    guard.add_argument("--cluster-name", default="", help="the chart's notifications.clusterName")
    guard.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    guard.set_defaults(handler=cmd_guard)


def sinks_from_args(alertmanager: list[str], webhook_secret: str, cluster_name: str) -> Sinks:
    for url in alertmanager:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--alertmanager {url!r} is not an http(s) URL",
                              fix="pass an Alertmanager's base URL, e.g. http://alertmanager.monitoring:9093")
    name, _, key = webhook_secret.partition(":")
    if webhook_secret and not name:
        raise ConfigError(f"--webhook-secret {webhook_secret!r} names no Secret", fix="pass NAME or NAME:KEY")
    return Sinks(tuple(alertmanager), name, key or "url", cluster_name)


def cmd_guard(args: argparse.Namespace) -> int:
    sinks = sinks_from_args(args.alertmanager, args.webhook_secret, args.cluster_name)
    sys.stdout.write(render(guard_manifests(sinks), args.output))
    return 0
