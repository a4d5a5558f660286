"""`responder manifests rbac`: least privilege, derived from what the actions really send (no cluster)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from responder.cli import main
from responder.names import TENANT_RECORD_OBJECTS
from responder.ops.manifests import CONTENT_COUNTING, PERMISSIONS, rbac_manifests, rbac_rules

REPO = Path(__file__).resolve().parents[2]
CAPSULE = "capsule-controller-manager"
READ_VERBS = {"get", "list", "watch"}
SELF_REVIEWS = {("authentication.k8s.io", "selfsubjectreviews"), ("authorization.k8s.io", "selfsubjectaccessreviews")}

# Lifting the namespace hold (recovery and undo): found in the cluster, deleted or unmarked.
HOLD_RELEASE_NEEDS = [("admissionregistration.k8s.io", res, verb, "responder-namespace-hold")
                      for res in ("validatingadmissionpolicies", "validatingadmissionpolicybindings")
                      for verb in ("get", "delete")] + [("responder.dev", "namespaceholds", verb, "responder-namespace-hold")
                                                        for verb in ("get", "patch")] + [
    # The self-arming hold: its policy re-keyed to the Tenant CRD present once recovery is done.
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", verb, "responder-namespace-hold-self")
    for verb in ("get", "patch")]
# What each journaled write needs: (apiGroup, resource[/subresource], verb, object name or None for any).
# A new journal action name in responder/actions/*.py fails test_every_journal_action_is_in_the_table
# until it is added here, and then test_rules_cover_every_action checks the ClusterRole allows it.
ACTION_NEEDS: dict[str, list[tuple[str, str, str, str | None]]] = {
    "scale-capsule": [("apps", "deployments/scale", "patch", CAPSULE), ("apps", "deployments", "get", CAPSULE)],
    "exempt-responder": [("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", "any-name"),
                         ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "any-name")],
    "exempt-responder-retry": [("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get", "any-name"),
                               ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", "any-name"),
                               ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", "any-name"),
                               ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "any-name")],
    "detach": [("", "namespaces", "patch", "tenant-a-ns-1"), ("", "namespaces", "get", "tenant-a-ns-1")],
    "release-finalizer": [("capsule.clastix.io", "tenants", "patch", "tenant-a")],
    "finalize": [("", "namespaces/finalize", "update", "tenant-a-ns-2"), ("", "namespaces", "get", "tenant-a-ns-2")],
    # Recovery (responder/actions/recover.py).
    "download-request": [("velero.io", "downloadrequests", "create", None), ("velero.io", "downloadrequests", "get", "d"),
                         ("velero.io", "backups", "list", None), ("velero.io", "backupstoragelocations", "get", "default")],
    "create-crd": [("apiextensions.k8s.io", "customresourcedefinitions", "create", None),
                   ("apiextensions.k8s.io", "customresourcedefinitions", "get", "tenants.capsule.clastix.io")],
    "create-tenant": [("capsule.clastix.io", "tenants", "create", None), ("capsule.clastix.io", "tenants", "get", "t")],
    "widen-exemption": [("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", "any-name"),
                        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "any-name")],
    "create-backup": [("velero.io", "backups", "create", None), ("velero.io", "backups", "get", "b")],
    "nudge-namespace": [("", "namespaces", "patch", "tenant-a-ns-1")],
    "create-restore": [("velero.io", "restores", "create", None), ("velero.io", "restores", "get", "r")],
    "readopt": [("", "namespaces", "patch", "tenant-a-ns-1"), ("", "namespaces", "get", "tenant-a-ns-1"),
                ("capsule.clastix.io", "tenants", "get", "tenant-a")],
    "restore-webhooks": [("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", "any-name"),
                         ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "any-name")],
    "restore-replicas": [("apps", "deployments/scale", "patch", CAPSULE)],
    # The breaker's namespace hold: created at the breaker, deleted when Capsule is back.
    # A hold already there (409) is read and replaced (PUT); release and verify read what is in the cluster.
    # The armed hold's parameter is marked (patch); the incident's own policy and binding are created.
    "hold-namespaces": [("admissionregistration.k8s.io", res, verb, name)
                        for res in ("validatingadmissionpolicies", "validatingadmissionpolicybindings")
                        for verb, name in (("create", None), ("get", "responder-namespace-hold"),
                                           ("update", "responder-namespace-hold"))]
                       + [("responder.dev", "namespaceholds", "patch", "responder-namespace-hold")],
    "release-hold": HOLD_RELEASE_NEEDS,
}
# `responder undo`, per undo op (responder/response/undo.py::undo_journal).
UNDO_NEEDS: dict[str, list[tuple[str, str, str, str | None]]] = {
    "scale": [("apps", "deployments/scale", "patch", CAPSULE)],
    "webhook-match-conditions": [("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get", "x"),
                                 ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", "x"),
                                 ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get", "x"),
                                 ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", "x")],
    "reattach": [("", "namespaces", "get", "ns"), ("", "namespaces", "patch", "ns"),
                 ("capsule.clastix.io", "tenants", "get", "tenant-a")],
    "release-hold": HOLD_RELEASE_NEEDS,
}
# Not journaled: the watches (responder/incident/observe.py), the preflight, doctor, the breaker probe, content counting.
WATCH_NEEDS = [
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", "tenants.capsule.clastix.io"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "tenants.capsule.clastix.io"),
    ("capsule.clastix.io", "tenants", "list", None), ("capsule.clastix.io", "tenants", "watch", None),
    ("", "namespaces", "list", None), ("", "namespaces", "watch", None),
    ("apps", "deployments", "list", CAPSULE), ("apps", "deployments", "watch", CAPSULE),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "list", None),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "watch", None),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "list", None),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "watch", None),
    ("authentication.k8s.io", "selfsubjectreviews", "create", None),
    ("authorization.k8s.io", "selfsubjectaccessreviews", "create", None),
    # The preflight and doctor: is the namespace hold armed (read-only identities too)?
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "get", "responder-namespace-hold-armed"),
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "get", "responder-namespace-hold-armed"),
    ("responder.dev", "namespaceholds", "get", "responder-namespace-hold"),
]
PROBE_NEEDS = [("", "namespaces", "delete", "tenant-a-ns-1")]  # verify-breaker, only ever with dryRun=All
# Recovery (being written: Velero restore, Tenant/CRD recreation, re-adoption) and `responder protect`.
RECOVERY_NEEDS = [("velero.io", res, verb, None) for res in ("backups", "restores", "backupstoragelocations",
                                                             "downloadrequests", "schedules")
                  for verb in ("get", "list", "watch", "create")] + [
    ("capsule.clastix.io", "tenants", "create", None), ("capsule.clastix.io", "tenants", "update", "tenant-a"),
    ("", "namespaces", "update", "tenant-a-ns-1"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "create", None),
    ("apiextensions.k8s.io", "customresourcedefinitions", "get", "capsuleconfigurations.capsule.clastix.io"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "update", "x")]
PROTECT_NEEDS = [("admissionregistration.k8s.io", res, verb, "responder-protect-crds")
                 for res in ("validatingadmissionpolicies", "validatingadmissionpolicybindings")
                 for verb in ("get", "list", "create", "patch", "delete")]
# One writer per cluster (responder/cluster/lease.py): read, create, renew and release the writer Lease.
LEASE_NEEDS = [("coordination.k8s.io", "leases", verb, name) for verb, name in (("get", "responder"), ("create", None),
                                                                              ("update", "responder"))]
CONTENT_NEEDS = [("", "configmaps", "list", None), ("", "secrets", "list", None), ("apps", "deployments", "list", None),
                 ("example.com", "widgets", "list", None)]


def covers(rules: list[dict], group: str, resource: str, verb: str, name: str | None) -> bool:
    """RBAC matching, written independently of responder.ops.manifests.allows."""
    for rule in rules:
        if group not in rule["apiGroups"] and "*" not in rule["apiGroups"]:
            continue
        if verb not in rule["verbs"] and "*" not in rule["verbs"]:
            continue
        if resource not in rule["resources"] and "*" not in rule["resources"]:
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False


def _actions_source() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "responder" / "actions").glob("*.py")))


def test_every_journal_action_is_in_the_table():
    source = _actions_source()
    used = set(re.findall(r'(?:ctx\.write|WriteRequest)\(\s*"([a-z][a-z0-9-]*)"', source))
    assert {"scale-capsule", "exempt-responder", "detach", "release-finalizer", "finalize"} <= used
    assert used == set(ACTION_NEEDS), "a journal action was added or removed: update ACTION_NEEDS"


def test_every_undo_op_is_in_the_table():
    ops = set(re.findall(r'undo=\{"op":\s*"([a-z][a-z0-9-]*)"', _actions_source()))
    handled = set(re.findall(r'op == "([a-z][a-z0-9-]*)"', (REPO / "responder" / "response" / "undo.py").read_text()))
    assert ops == set(UNDO_NEEDS) and handled == set(UNDO_NEEDS)


@pytest.mark.parametrize("action", sorted(ACTION_NEEDS))
def test_rules_cover_every_action(action):
    rules = rbac_rules(False)
    for need in ACTION_NEEDS[action]:
        assert covers(rules, *need), f"{action} needs {need}"


@pytest.mark.parametrize("op", sorted(UNDO_NEEDS))
def test_rules_cover_every_undo_op(op):
    rules = rbac_rules(False)
    for need in UNDO_NEEDS[op]:
        assert covers(rules, *need), f"undo {op} needs {need}"


def test_rules_cover_watches_probe_and_content_counting():
    rules = rbac_rules(False)
    for need in WATCH_NEEDS + PROBE_NEEDS + CONTENT_NEEDS + RECOVERY_NEEDS + PROTECT_NEEDS + LEASE_NEEDS:
        assert covers(rules, *need), need


def test_scale_is_limited_to_the_capsule_deployment():
    rules = rbac_rules(False)
    assert not covers(rules, "apps", "deployments/scale", "patch", "some-other-app")
    assert not covers(rules, "apps", "deployments", "patch", CAPSULE)
    custom = rbac_rules(False, capsule_deployment="capsule")
    assert covers(custom, "apps", "deployments/scale", "patch", "capsule")
    assert not covers(custom, "apps", "deployments/scale", "patch", CAPSULE)


def test_nothing_beyond_what_is_needed():
    rules = rbac_rules(False)
    for need in [("", "namespaces", "create", None), ("", "secrets", "get", "s"),
                 ("", "secrets", "watch", None), ("capsule.clastix.io", "tenants", "delete", "t"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "patch", "tenants.capsule.clastix.io"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "delete", "tenants.capsule.clastix.io"),
                 ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "delete", "x"),
                 ("admissionregistration.k8s.io", "validatingadmissionpolicies", "delete", "someone-elses-policy"),
                 ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "patch", "someone-elses"),
                 ("admissionregistration.k8s.io", "validatingadmissionpolicies", "update", "someone-elses-policy"),
                 ("admissionregistration.k8s.io", "validatingadmissionpolicies", "delete",
                  "responder-namespace-hold-self"),
                 ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "patch",
                  "responder-namespace-hold-self-owned"),
                 ("", "configmaps", "patch", "responder-namespace-hold"), ("", "configmaps", "create", None),
                 ("", "configmaps", "get", "responder-namespace-hold"),
                 ("responder.dev", "namespaceholds", "patch", "someone-elses"),
                 ("responder.dev", "namespaceholds", "create", None),
                 ("responder.dev", "namespaceholds", "delete", "responder-namespace-hold"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "patch", "namespaceholds.responder.dev"),
                 ("velero.io", "backups", "delete", "b"), ("velero.io", "restores", "patch", "r"),
                 ("rbac.authorization.k8s.io", "clusterrolebindings", "create", None),
                 ("", "pods", "delete", "p"), ("", "namespaces", "deletecollection", None),
                 ("coordination.k8s.io", "leases", "update", "kube-controller-manager"),
                 ("coordination.k8s.io", "leases", "delete", "responder"),
                 ("coordination.k8s.io", "leases", "patch", "responder")]:
        assert not covers(rules, *need), need


def test_no_wildcards_except_the_content_counting_rule():
    rules = rbac_rules(False)
    wild = [r for r in rules if "*" in r["apiGroups"] or "*" in r["resources"] or "*" in r["verbs"]
            or any("*" in res for res in r["resources"])]
    assert wild == [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["list"]}]
    assert not any("*" in r["verbs"] for r in rules)
    # It is documented in the table, and only used by handle-terminating.
    assert CONTENT_COUNTING.used_by == ("handle-terminating",) and "CONTENT COUNTING" in CONTENT_COUNTING.why
    assert sum(p.wildcard for p in PERMISSIONS) == 1


def test_read_only_has_no_write_verbs():
    ro = rbac_rules(True)
    assert ro and all("*" not in r["apiGroups"] + r["resources"] + r["verbs"] for r in ro)
    for rule in ro:
        pairs = {(g, res) for g in rule["apiGroups"] for res in rule["resources"]}
        if pairs <= SELF_REVIEWS:
            assert rule["verbs"] == ["create"]  # a review creates nothing
        else:
            assert set(rule["verbs"]) <= READ_VERBS, rule
    for need in WATCH_NEEDS:
        assert covers(ro, *need), need
    for needs in [*ACTION_NEEDS.values(), *UNDO_NEEDS.values(), PROBE_NEEDS]:
        for need in needs:
            if need[2] not in READ_VERBS:
                assert not covers(ro, *need), need
    assert not covers(ro, "", "secrets", "list", None)  # no content counting in the read-only role


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["manifests", "rbac", *argv])
    return code, capsys.readouterr().out


def test_yaml_service_account(capsys):
    code, out = _run(capsys)
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] + ["ConfigMap"] * len(TENANT_RECORD_OBJECTS)
    sa, role, binding = docs[:3]
    # The tenant record's ConfigMaps, empty, in responder's namespace: the role patches them, never creates.
    assert [(d["metadata"]["name"], d["metadata"]["namespace"], d.get("data")) for d in docs[3:]] == \
        [(name, "responder-system", None) for name in TENANT_RECORD_OBJECTS]
    assert sa["metadata"] == {"name": "responder", "namespace": "responder-system",
                              "labels": sa["metadata"]["labels"]}
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1" and role["rules"] == rbac_rules(False)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "responder", "namespace": "responder-system"}]
    # The rules are commented for the operator who reads before applying.
    assert "dryRun=All" in out and "CONTENT COUNTING" in out and out.count("\n# [") == len(role["rules"])


def test_yaml_user(capsys):
    code, out = _run(capsys, "--identity-kind", "User", "--name", "oncall-responder")
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["ClusterRole", "ClusterRoleBinding"] + ["ConfigMap"] * len(TENANT_RECORD_OBJECTS)
    assert docs[1]["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "oncall-responder"}]
    assert docs[1]["roleRef"]["name"] == docs[0]["metadata"]["name"]


def test_read_only_and_custom_names(capsys):
    code, out = _run(capsys, "--read-only", "--name", "resp", "--namespace", "ops")
    assert code == 0
    sa, role, binding = [d for d in yaml.safe_load_all(out) if d]
    assert role["rules"] == rbac_rules(True)
    assert role["metadata"]["name"] != "responder"  # the read-only role never shadows the full one
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == ("resp", "ops")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "resp", "namespace": "ops"}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_json_output_is_a_list(capsys):
    code, out = _run(capsys, "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert data["kind"] == "List" and [i["kind"] for i in data["items"]] == ["ServiceAccount", "ClusterRole",
                                                                          "ClusterRoleBinding"] + ["ConfigMap"] * len(TENANT_RECORD_OBJECTS)
    assert data["items"] == rbac_manifests()


def test_bad_names_are_bad_input(capsys):
    assert main(["manifests", "rbac", "--name", "Not_Valid"]) == 2
    assert "not a valid ServiceAccount name" in capsys.readouterr().err
    assert main(["manifests", "rbac", "--namespace", "UPPER"]) == 2


def test_lease_writes_are_in_the_table():
    """The Lease protocol's requests (responder/cluster/lease.py) are the LEASE_NEEDS verbs, nothing else."""
    source = (REPO / "responder" / "cluster" / "lease.py").read_text()
    sent = set(re.findall(r"self\.client\.(get_or_none|get|create|replace|patch|delete)\(", source))
    verbs = {"get_or_none": "get", "get": "get", "create": "create", "replace": "update", "patch": "patch",
             "delete": "delete"}
    assert {verbs[m] for m in sent} == {verb for _, _, verb, _ in LEASE_NEEDS}
