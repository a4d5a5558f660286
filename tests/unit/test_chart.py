"""The Helm chart (charts/responder): its RBAC is `responder manifests rbac`'s table, and it renders and lints
with the lab's helm (when built: ~/.cache/responder/bin/helm-*/helm)."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from responder.ops.manifests import chart_rules_yaml, rbac_rules

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "responder"
HELM = sorted(glob.glob(os.path.expanduser("~/.cache/responder/bin/helm-*/helm")))
needs_helm = pytest.mark.skipif(not HELM, reason="the lab's helm is not built (responder lab build)")


def test_chart_rules_are_the_rbac_table():
    assert (CHART / "files" / "rules.yaml").read_text() == chart_rules_yaml(), (
        "regenerate charts/responder/files/rules.yaml with responder.ops.manifests.chart_rules_yaml()")


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM[-1], *args], capture_output=True, text=True, timeout=60)


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
    docs = {d["kind"]: d for d in render("capsule.deployment=capsule", "replicas=3", "protectedNamespaces={ops}")}
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
                         "PodDisruptionBudget"}
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
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["runbook.yaml"].strip() == "apiVersion: responder.dev/v1"
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--runbook=/etc/responder/runbook.yaml" in container["args"]


@needs_helm
def test_another_namespace_is_refused():
    proc = helm("template", "r", str(CHART), "--namespace", "default")
    assert proc.returncode != 0 and "responder-system" in proc.stderr
