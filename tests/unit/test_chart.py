"""The Helm chart (charts/responder): its RBAC is `responder manifests rbac`'s table, and it renders and lints
with the lab's helm (the tests that run helm are marked lab: they run once the lab's binaries are built)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from responder.lab.build import ensure_built
from responder.names import TENANT_RECORD_OBJECTS
from responder.ops.manifests import chart_rules_yaml, rbac_rules

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "responder"
# helm is one of the lab's binaries: these tests run with the lab tests, after its build.
needs_helm = pytest.mark.lab


def test_chart_rules_are_the_rbac_table():
    assert (CHART / "files" / "rules.yaml").read_text() == chart_rules_yaml(), (
        "regenerate charts/responder/files/rules.yaml with responder.ops.manifests.chart_rules_yaml()")


def helm(*args: str) -> subprocess.CompletedProcess:
    binary = ensure_built(["helm"])["helm"]
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)


def render(*sets: str, namespace: str = "responder-system") -> list[dict]:
    proc = helm("template", "r", str(CHART), "--namespace", namespace, *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@needs_helm
def test_helm_lint_is_clean():
    proc = helm("lint", str(CHART), "--namespace", "responder-system", "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_helm
def test_rendered_chart_runs_the_guard_with_the_rbac_table():
    rendered = render("capsule.deployment=capsule", "replicas=3", "protectedNamespaces={ops}")
    docs = {d["kind"]: d for d in rendered if d["kind"] != "ConfigMap"}
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
                         "PodDisruptionBudget"}
    # The tenant record's ConfigMaps come with the chart (the role may patch them, not create ConfigMaps).
    assert [d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"] == list(TENANT_RECORD_OBJECTS)
    assert docs["ClusterRole"]["rules"] == rbac_rules(False, capsule_deployment="capsule")
    subject = docs["ClusterRoleBinding"]["subjects"][0]
    assert (subject["name"], subject["namespace"]) == (docs["ServiceAccount"]["metadata"]["name"], "responder-system")
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == "guard" and "--capsule-deployment=capsule" in container["args"]
    assert "--protect=ops" in container["args"] and "--recovery=approval" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


@needs_helm
def test_a_runbook_of_ones_own_is_mounted_from_a_config_map():
    docs = render("runbook.content=apiVersion: responder.dev/v1")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "responder-runbook")
    assert config["data"]["runbook.yaml"].strip() == "apiVersion: responder.dev/v1"
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--runbook=/etc/responder/runbook.yaml" in container["args"]


@needs_helm
def test_another_namespace_is_refused():
    proc = helm("template", "r", str(CHART), "--namespace", "default")
    assert proc.returncode != 0 and "responder-system" in proc.stderr


@needs_helm
@pytest.mark.parametrize("flags,sets", [
    ([], []),
    (["--alertmanager", "http://am-0:9093", "--alertmanager", "http://am-1:9093", "--webhook-secret", "slack:hook",
      "--cluster-name", "prod"],
     ["notifications.alertmanager={http://am-0:9093,http://am-1:9093}", "notifications.webhook.secretName=slack",
      "notifications.webhook.secretKey=hook", "notifications.clusterName=prod"])])
def test_manifests_guard_is_what_the_chart_renders(flags, sets):
    """`responder manifests guard` and `helm template` with the default values (and the same sinks): the same
    objects (the Namespace aside, which `helm install --create-namespace` makes; managed-by names the tool)."""
    proc = helm("template", "responder", str(CHART), "--namespace", "responder-system",
                *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
    printed = subprocess.run([sys.executable, "-m", "responder", "manifests", "guard", *flags, "-o", "json"],
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    ours = {(d["kind"], d["metadata"]["name"]): d for d in json.loads(printed.stdout)["items"]}
    assert ours.pop(("Namespace", "responder-system"))["metadata"]["name"] == "responder-system"

    def tool_neutral(value):
        if isinstance(value, dict):
            return {k: ("TOOL" if k == "app.kubernetes.io/managed-by" else tool_neutral(v)) for k, v in value.items()}
        return [tool_neutral(v) for v in value] if isinstance(value, list) else value

    assert sorted(ours) == sorted(rendered)
    for key, doc in ours.items():
        assert tool_neutral(doc) == tool_neutral(rendered[key]), key


@needs_helm
def test_notification_sinks_from_values():
    docs = render("notifications.alertmanager={http://am-0:9093,http://am-1:9093}", "notifications.clusterName=prod",
                  "notifications.webhook.secretName=slack")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith(("--alertmanager", "--cluster-name"))] == [
        "--alertmanager=http://am-0:9093", "--alertmanager=http://am-1:9093", "--cluster-name=prod"]
    webhook = [e for e in container["env"] if e["name"] == "RESPONDER_WEBHOOK_URL"]
    assert webhook == [{"name": "RESPONDER_WEBHOOK_URL",
                        "valueFrom": {"secretKeyRef": {"name": "slack", "key": "url"}}}]
    [default] = [d for d in render() if d["kind"] == "Deployment"]
    assert "RESPONDER_WEBHOOK_URL" not in str(default) and "--alertmanager" not in str(default)


def test_manifests_guard_yaml_and_json_are_the_same_objects():
    from responder.ops.guard_manifests import Sinks, guard_manifests, render

    docs = guard_manifests(Sinks(("http://am:9093",), "slack", "url", "prod"))
    assert [d for d in yaml.safe_load_all(render(docs, "yaml")) if d] == docs == json.loads(render(docs, "json"))["items"]
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
                                         "Deployment", "PodDisruptionBudget"] + ["ConfigMap"] * len(TENANT_RECORD_OBJECTS)
