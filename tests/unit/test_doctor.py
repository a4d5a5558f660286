"""`responder doctor` and `responder protect`: the pure decisions (no cluster)."""

from __future__ import annotations

import yaml

from responder.ops.doctor import (EXIT_CANNOT_CHECK, FINDING, INFO, OK, CheckResult, backup_covers, breaker_result,
                              capsule_version, crd_keep_result, exit_code, newest_backup_ages, permissions_result,
                              prevent_deletion_result, protection_result, render_table, tenant_namespaces,
                              velero_results)
from responder.ops.manifests import PERMISSIONS, access_checks, allows, rbac_rules
from responder.ops.protect import (ALLOW_DELETE_ANNOTATION, ProtectionStatus, policy_objects, protected_crds,
                               protection_from)

TENANT_CRD = "tenants.capsule.clastix.io"
NOW = 1_800_000_000.0


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- permissions: one table for the role and the checks -----------------------------------------------------


def test_every_rule_of_the_role_is_checked_and_every_check_is_allowed_by_the_role():
    checks = access_checks()
    rules = rbac_rules()
    for check in checks:
        resource = f"{check.resource}/{check.subresource}" if check.subresource else check.resource
        assert allows(rules, check.group, resource, check.verb, check.name or None), check.label
    # Every (group, resource, verb) of every rule has a check.
    checked = {(c.group, f"{c.resource}/{c.subresource}" if c.subresource else c.resource, c.verb) for c in checks}
    for p in PERMISSIONS:
        for res in p.resources:
            for verb in p.verbs:
                assert (p.group, res, verb) in checked


def test_checks_use_names_and_namespaces_from_the_options():
    checks = access_checks(capsule_namespace="capsule", capsule_deployment="ctl", velero_namespace="backup")
    scale = next(c for c in checks if c.subresource == "scale")
    assert scale.resource_attributes() == {"verb": "patch", "group": "apps", "resource": "deployments",
                                           "subresource": "scale", "name": "ctl", "namespace": "capsule"}
    assert {c.namespace for c in checks if c.group == "velero.io"} == {"backup"}
    namespaces = next(c for c in checks if c.resource == "namespaces" and c.verb == "patch")
    assert namespaces.resource_attributes() == {"verb": "patch", "group": "", "resource": "namespaces"}
    wildcard = next(c for c in checks if c.group == "*")
    assert (wildcard.resource, wildcard.verb) == ("*", "list")


def test_all_allowed_is_ok_with_no_fragment():
    checks = access_checks()
    result, fragment = permissions_result(checks, [True] * len(checks), capsule_deployment="capsule-controller-manager")
    assert result.status == OK and fragment is None


def test_denied_checks_become_exactly_the_missing_rules():
    checks = access_checks()
    denied_labels = {"patch", "update"}
    allowed = [not (c.resource == "namespaces" and not c.subresource and c.verb in denied_labels)
               and not (c.subresource == "scale") for c in checks]
    result, fragment = permissions_result(checks, allowed, capsule_deployment="capsule-controller-manager")
    assert result.status == FINDING and "3 of" in result.summary
    assert fragment["kind"] == "ClusterRole" and fragment["metadata"]["name"] == "responder"
    rules = fragment["rules"]
    # Table order (reads, then writes); the scale rule keeps its resourceNames.
    assert rules == [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"],
         "resourceNames": ["capsule-controller-manager"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"]},
    ]
    # Granting the fragment on top of what was allowed makes every check pass.
    for check in checks:
        resource = f"{check.resource}/{check.subresource}" if check.subresource else check.resource
        ok = allowed[checks.index(check)] or allows(rules, check.group, resource, check.verb, check.name or None)
        assert ok, check.label
    assert "detach-namespaces" in result.summary and "patch namespaces" in result.details


def test_missing_rules_group_resources_with_the_same_verbs():
    checks = access_checks()
    allowed = [c.group != "velero.io" for c in checks]
    _, fragment = permissions_result(checks, allowed, capsule_deployment="x")
    velero = [r for r in fragment["rules"] if r["apiGroups"] == ["velero.io"]]
    assert velero == [{"apiGroups": ["velero.io"], "resources": ["backups", "restores", "backupstoragelocations",
                                                                  "downloadrequests", "schedules"],
                       "verbs": ["get", "list", "watch"]},
                      {"apiGroups": ["velero.io"], "resources": ["backups", "restores", "backupstoragelocations",
                                                                  "downloadrequests", "schedules"],
                       "verbs": ["create"]}]


# ---- exit codes -------------------------------------------------------------------------------------------


def test_exit_code_findings_and_info():
    assert exit_code([CheckResult("a", OK, ""), CheckResult("b", INFO, "")]) == 0
    assert exit_code([CheckResult("a", OK, ""), CheckResult("b", FINDING, "")]) == 1
    assert EXIT_CANNOT_CHECK == 2


# ---- Capsule and the breaker ----------------------------------------------------------------------------------


def test_capsule_version_from_the_manager_image():
    dep = {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "busybox:1.36"},
        {"name": "manager", "image": "ghcr.io/projectcapsule/capsule:v0.14.0"}]}}}}
    assert capsule_version(dep) == "v0.14.0"
    assert capsule_version({"spec": {"template": {"spec": {"containers": [
        {"name": "manager", "image": "registry:5000/capsule:v0.12.4@sha256:abc"}]}}}}) == "v0.12.4"
    assert capsule_version({"spec": {"template": {"spec": {"containers": [
        {"name": "manager", "image": "registry:5000/capsule"}]}}}}) is None
    assert capsule_version(None) is None


def _hooks(policy: str, operations=("CREATE", "DELETE")) -> list[tuple[str, dict]]:
    return [("ValidatingWebhookConfiguration", {"metadata": {"name": "capsule-dynamic-webhook"}, "webhooks": [
        {"name": "namespaces.validating.projectcapsule.dev", "failurePolicy": policy,
         "rules": [{"apiGroups": [""], "resources": ["namespaces"], "operations": list(operations)}]}]})]


def test_breaker_effective_only_with_a_fail_closed_namespace_delete_webhook():
    assert breaker_result(_hooks("Fail")).status == OK
    assert breaker_result(_hooks("Ignore")).status == FINDING
    assert breaker_result(_hooks("Fail", operations=("CREATE",))).status == FINDING
    assert breaker_result([]).status == FINDING


# ---- Velero -------------------------------------------------------------------------------------------------


def _backup(name, phase, done, included=None, excluded=None):
    return {"metadata": {"name": name}, "spec": {"includedNamespaces": included, "excludedNamespaces": excluded},
            "status": {"phase": phase, "completionTimestamp": _iso(done)}}


def test_backup_covers_included_excluded_and_globs():
    assert backup_covers(_backup("b", "Completed", NOW), "a")  # empty = every namespace
    assert backup_covers(_backup("b", "Completed", NOW, ["*"]), "a")
    assert backup_covers(_backup("b", "Completed", NOW, ["tenant-*"]), "tenant-1-ns-0")
    assert not backup_covers(_backup("b", "Completed", NOW, ["other"]), "a")
    assert not backup_covers(_backup("b", "Completed", NOW, ["*"], ["a"]), "a")


def test_newest_completed_backup_per_namespace():
    backups = [_backup("old", "Completed", NOW - 7200, ["a", "b"]),
               _backup("new-failed", "Failed", NOW - 60, ["a"]),
               _backup("new", "Completed", NOW - 600, ["a"])]
    ages = newest_backup_ages(backups, ["a", "b", "c"], NOW)
    assert ages == {"a": 600.0, "b": 7200.0, "c": None}


def test_a_backup_taken_before_a_namespace_existed_does_not_cover_it():
    backups = [_backup("all", "Completed", NOW - 600, ["*"])]
    created = {"before": NOW - 3600, "after": NOW - 60}
    ages = newest_backup_ages(backups, ["before", "after", "unknown"], NOW, created)
    assert ages == {"before": 600.0, "after": None, "unknown": 600.0}
    bsls = [{"metadata": {"name": "default"}, "status": {"phase": "Available"}}]
    result = velero_results(bsls, backups, ["before", "after"], namespace="velero", now=NOW, max_age_hours=24,
                            created=created)[1]
    assert result.status == FINDING and result.details == ["no Completed backup: after"]


def test_velero_results_location_and_coverage():
    bsls = [{"metadata": {"name": "default"}, "status": {"phase": "Available"}}]
    backups = [_backup("daily", "Completed", NOW - 3600, ["t-*"])]
    results = velero_results(bsls, backups, ["t-1", "t-2"], namespace="velero", now=NOW, max_age_hours=24)
    assert [r.status for r in results] == [OK, OK]
    stale = velero_results(bsls, backups, ["t-1", "x"], namespace="velero", now=NOW + 2 * 86400, max_age_hours=24)
    assert stale[1].status == FINDING and "2 of 2" in stale[1].summary
    assert any("no Completed backup: x" == d for d in stale[1].details)
    unavailable = velero_results([{"metadata": {"name": "default"}, "status": {"phase": "Unavailable"}}], [], [],
                                 namespace="velero", now=NOW, max_age_hours=24)
    assert unavailable[0].status == FINDING and unavailable[1].status == INFO


def test_tenant_namespaces_by_reference_or_label():
    ref = {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": "t", "uid": "u"}
    namespaces = [{"metadata": {"name": "owned", "ownerReferences": [ref]}},
                  {"metadata": {"name": "labelled", "labels": {"capsule.clastix.io/tenant": "t"}}},
                  {"metadata": {"name": "kube-system"}}]
    assert tenant_namespaces(namespaces) == ["labelled", "owned"]


# ---- CRD protection, keep, preventDeletion ----------------------------------------------------------------------


def test_protection_read_back_from_the_objects_protect_writes():
    policy, binding = policy_objects([TENANT_CRD, "backups.velero.io"])
    status = protection_from(policy, binding)
    assert status.protects(TENANT_CRD) and status.protects("backups.velero.io")
    assert protection_result(status, [TENANT_CRD]).status == OK
    assert not protection_from(policy, None).protects(TENANT_CRD)  # a policy without binding refuses nothing
    audit_only = dict(binding, spec={"policyName": binding["spec"]["policyName"], "validationActions": ["Audit"]})
    assert not protection_from(policy, audit_only).protects(TENANT_CRD)


def test_unprotected_tenant_crd_is_the_named_finding():
    result = protection_result(ProtectionStatus(), [TENANT_CRD])
    assert result.status == FINDING and result.summary.startswith("Tenant CRD not protected")
    assert "responder protect" in result.fix
    old = protection_result(ProtectionStatus(served=False), [TENANT_CRD])
    assert old.status == FINDING and "1.30" in old.summary


def test_policy_denies_delete_of_the_named_crds_unless_annotated():
    policy, binding = policy_objects([TENANT_CRD])
    rule = policy["spec"]["matchConstraints"]["resourceRules"][0]
    assert rule["operations"] == ["DELETE"] and rule["resourceNames"] == [TENANT_CRD]
    assert policy["spec"]["failurePolicy"] == "Fail" and binding["spec"]["validationActions"] == ["Deny"]
    validation = policy["spec"]["validations"][0]
    assert ALLOW_DELETE_ANNOTATION in validation["expression"] and "oldObject" in validation["expression"]
    assert ALLOW_DELETE_ANNOTATION in validation["message"]
    assert validation["messageExpression"].count("oldObject.metadata.name") == 2


def test_protected_crds_from_flags_and_env():
    assert protected_crds([], env="") == [TENANT_CRD]
    assert protected_crds(["backups.velero.io", TENANT_CRD], env="restores.velero.io, backups.velero.io") == [
        TENANT_CRD, "backups.velero.io", "restores.velero.io"]
    import pytest

    from responder.errors import ConfigError
    with pytest.raises(ConfigError):
        protected_crds(["tenants"], env="")


def test_crd_keep_and_prevent_deletion():
    crds = [{"metadata": {"name": TENANT_CRD, "annotations": {"helm.sh/resource-policy": "keep"}},
             "spec": {"group": "capsule.clastix.io"}},
            {"metadata": {"name": "tenantowners.capsule.clastix.io"}, "spec": {"group": "capsule.clastix.io"}},
            {"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com"}}]
    keep = crd_keep_result(crds)
    assert keep.status == FINDING and keep.details == ["tenantowners.capsule.clastix.io"]
    assert crd_keep_result(crds[:1]).status == OK
    note = prevent_deletion_result([{"metadata": {"name": "a"}, "spec": {"preventDeletion": True}},
                                    {"metadata": {"name": "b"}, "spec": {}}])
    assert note.status == INFO and "1 of 2" in note.summary and "bypassing admission" in note.details[0]


def test_table_shows_findings_fixes_and_the_missing_fragment():
    checks = access_checks()
    perms, fragment = permissions_result(checks, [c.group != "velero.io" for c in checks], capsule_deployment="x")
    from dataclasses import asdict

    report = {"context": "c", "identity": "me", "server": "s", "ready": False, "missing_permissions": fragment,
              "checks": [asdict(perms), asdict(protection_result(ProtectionStatus(), [TENANT_CRD]))]}
    text = render_table(report)
    assert "FINDING  tenant-crd-protection  Tenant CRD not protected" in text and "fix: run `responder protect`" in text
    tail = text.split("merge into responder's role:\n", 1)[1]
    assert yaml.safe_load(tail) == fragment


def test_writer_lease_namespace_missing_is_a_finding_and_its_holder_is_information():
    from responder.cluster.lease import LeaseRecord, lease_object
    from responder.ops.doctor import writer_lease_result

    missing = writer_lease_result(None, None, now=1000.0)
    assert missing.status == FINDING and "kubectl create namespace responder-system" in missing.fix
    namespace = {"metadata": {"name": "responder-system"}}
    assert writer_lease_result(namespace, None, now=1000.0).status == OK
    released = lease_object("responder-system", "responder", LeaseRecord("", 1.0, 900.0, 900.0, 3, "7"))
    assert writer_lease_result(namespace, released, now=1000.0).status == OK
    held = lease_object("responder-system", "responder", LeaseRecord("guard/pod-a/1-abc", 15.0, 900.0, 990.0, 3, "8"))
    result = writer_lease_result(namespace, held, now=1000.0)
    assert result.status == INFO and "guard/pod-a/1-abc" in result.summary and "10s ago" in result.summary
    assert result.data == {"holder": "guard/pod-a/1-abc", "transitions": 3}
