"""The lab's kubelet for the guard's pods (responder/lab/pods.py): a pod's container as a local process - its env
from the Downward API, its paths and port mapped to the lab's - decided from the pod alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from responder.lab.pods import SOURCE_ROOT, container_argv, container_env, field_value, key_refs

POD = {
    "metadata": {"name": "responder-guard-7d9f-abcde", "namespace": "responder-system", "uid": "u-1",
                 "labels": {"app.kubernetes.io/component": "guard"}},
    "spec": {"serviceAccountName": "responder",
             "containers": [{
                 "name": "guard", "image": "ghcr.io/example/responder:0.1.0",
                 "args": ["guard", "--port=8080", "--journal=/var/lib/responder",
                          "--runbook=/opt/responder/runbooks/capsule-tenant-crd-deletion.yaml"],
                 "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                         {"name": "LOG_LEVEL", "value": "info"},
                         {"name": "RESPONDER_WEBHOOK_URL",
                          "valueFrom": {"secretKeyRef": {"name": "hooks", "key": "url"}}}],
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
}


def test_env_is_the_pods_not_the_hosts(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/home/someone/.kube/config")
    container = POD["spec"]["containers"][0]
    assert key_refs(container) == [("secrets", "hooks", "url")]
    assert "RESPONDER_WEBHOOK_URL" not in container_env(POD, container, api_port=6443)  # the Secret not found
    env = container_env(POD, container, api_port=6443, values={("secrets", "hooks", "url"): "https://hooks/x"})
    assert env["RESPONDER_WEBHOOK_URL"] == "https://hooks/x"
    assert env["POD_NAME"] == "responder-guard-7d9f-abcde" and env["POD_NAMESPACE"] == "responder-system"
    assert env["LOG_LEVEL"] == "info"
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("127.0.0.1", "6443")
    assert "KUBECONFIG" not in env  # the in-cluster loader is the one that runs


def test_args_map_volumes_the_image_and_the_port(tmp_path):
    journal = tmp_path / "journal"
    args = container_argv(POD["spec"]["containers"][0], mounts={"/var/lib/responder": journal}, ports={8080: 40123})
    assert args == ["guard", "--port=40123", f"--journal={journal}",
                    f"--runbook={SOURCE_ROOT}/runbooks/capsule-tenant-crd-deletion.yaml", "--bind=127.0.0.1"]
    assert Path(args[3].split("=", 1)[1]).is_file()  # the runbook the image would hold


def test_field_refs_and_an_unsupported_one():
    assert field_value(POD, "metadata.labels['app.kubernetes.io/component']") == "guard"
    assert field_value(POD, "spec.serviceAccountName") == "responder"
    with pytest.raises(ValueError, match="status.phase"):
        field_value(POD, "status.phase")


def test_only_responders_image_runs():
    with pytest.raises(ValueError, match="sh"):
        container_argv({"command": ["sh", "-c", "x"]}, mounts={}, ports={})
