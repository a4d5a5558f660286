"""Journal redaction: credentials are redacted by what they are (a Secret's data, a credential field),
never because a key that is really DATA (a namespace, Tenant or annotation name) looks like one.
Recovery reads several journal records back as truth, so these values must survive a write + reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from responder.incident.journal import REDACTED, Journal, redact

SECRET_NAMED = ["app-secret", "ci-token", "db-password", "secret", "token", "password"]


def reopened(path: Path, kind: str) -> dict:
    """The last `kind` record as a resumed run reads it (readonly and for writing, both from disk)."""
    ro = next(r for r in reversed(Journal.open(path, readonly=True).records()) if r["kind"] == kind)
    with Journal.open(path) as rw:
        assert next(r for r in reversed(rw.records()) if r["kind"] == kind) == ro
    return ro


def test_snapshot_keeps_namespaces_named_like_secrets(tmp_path: Path) -> None:
    names = {ns: f"tenant-{i}" for i, ns in enumerate(SECRET_NAMED)} | {"web": "team-a"}
    owners = {ns: {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": t, "uid": f"u-{t}",
                   "controller": True, "blockOwnerDeletion": True} for ns, t in names.items()}
    webhooks = {"ValidatingWebhookConfiguration/token": {"metadata": {"name": "token"}, "webhooks": [
        {"name": "ns.capsule.clastix.io", "clientConfig": {"caBundle": "LS0tQ0E=", "service": {"name": "x"}}}]}}
    with Journal.create(tmp_path, incident_id="inc-snap") as j:
        j.record("snapshot", namespaces=names, owners=owners, webhooks=webhooks, capsule_replicas=2,
                 tenants=sorted(set(names.values())))
    snap = reopened(j.path, "snapshot")
    assert snap["namespaces"] == names
    assert snap["namespaces"]["app-secret"] == "tenant-0" and snap["namespaces"]["token"] == "tenant-4"
    assert snap["owners"] == owners
    assert snap["webhooks"] == webhooks  # caBundle is a CA certificate, not a credential
    assert REDACTED.encode() not in j.path.read_bytes()


def test_data_keyed_map_is_not_mistaken_for_a_secret(tmp_path: Path) -> None:
    # Namespaces called "kind" and "data": the snapshot map is not a Secret object.
    names = {"kind": "Secret", "data": "team-a", "stringData": "team-b"}
    with Journal.create(tmp_path, incident_id="inc-kind") as j:
        j.record("snapshot", namespaces=names, owners={}, webhooks={}, capsule_replicas=1, tenants=[])
    assert reopened(j.path, "snapshot")["namespaces"] == names


TENANT = {
    "apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
    "metadata": {"name": "team-a",
                 "annotations": {"example.com/oncall-token": "x", "token": "t-1"},
                 "labels": {"secret": "yes", "example.com/api-password": "none"}},
    "spec": {"owners": [{"kind": "User", "name": "alice"}],
             "nodeSelector": {"pool": "general", "example.com/token": "gpu"},
             "namespaceOptions": {"additionalMetadata": {
                 "annotations": {"nginx.ingress.kubernetes.io/auth-secret": "basic-auth",
                                 "team.example.com/cost-center": "42"},
                 "labels": {"vault.example.com/secret": "db"}}},
             "serviceOptions": {"additionalMetadata": {"labels": {"password": "policy-a"}}},
             "networkPolicies": {"items": [{"podSelector": {"matchLabels": {"token": "issuer"}}}]}},
}


def test_recovery_plan_keeps_tenant_bodies_and_namespace_maps(tmp_path: Path) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "tenants.capsule.clastix.io"},
           "spec": {"versions": [{"name": "v1beta2", "schema": {"openAPIV3Schema": {"type": "object", "properties": {
               "spec": {"type": "object", "properties": {"token": {"type": "string"},
                                                         "secret": {"type": "object"}}}}}}}]}}
    plan = {"known": 3, "lost": {"app-secret": "team-a", "ci-token": "team-a"}, "backup": "daily",
            "rejected": [], "counts": {"app-secret": {"configmaps": 3, "secret": 1}, "token": {"token": 2}},
            "tenants_from": "backup", "tenants": {"team-a": TENANT, "secret": TENANT}, "tenant_crd": crd}
    with Journal.create(tmp_path, incident_id="inc-plan") as j:
        j.record("recovery-plan", step="choose-backup", **plan)
        j.record("recovery-gone", step="wait-lost-gone", gone=[], stuck=[], frozen=["app-secret"],
                 rescue_backup="rescue", rescued=["app-secret"], rescue_counts={"app-secret": {"secret": 1}})
        j.record("recovery-tenants", step="recreate-tenants", source="backup",
                 uids={"token": "uid-1", "team-secret": "uid-2"}, created=["token"])
        j.record("recovery-verify", step="verify", content_missing={"ci-token": ["secrets: 0 of 1"]})
        # The POST body of a recreated Tenant is journaled in its intent too.
        j.intent("recreate-tenants", "create-tenant", "team-a", request={"method": "POST", "body": TENANT})
    got = reopened(j.path, "recovery-plan")
    assert {k: got[k] for k in plan} == plan
    body = got["tenants"]["team-a"]
    assert body["metadata"]["annotations"] == {"example.com/oncall-token": "x", "token": "t-1"}
    assert body["spec"]["namespaceOptions"]["additionalMetadata"]["annotations"][
        "nginx.ingress.kubernetes.io/auth-secret"] == "basic-auth"
    assert reopened(j.path, "recovery-gone")["rescue_counts"] == {"app-secret": {"secret": 1}}
    assert reopened(j.path, "recovery-tenants")["uids"] == {"token": "uid-1", "team-secret": "uid-2"}
    assert reopened(j.path, "recovery-verify")["content_missing"] == {"ci-token": ["secrets: 0 of 1"]}
    assert reopened(j.path, "intent")["request"]["body"] == TENANT
    assert REDACTED.encode() not in j.path.read_bytes()


def test_secret_objects_keep_key_names_only(tmp_path: Path) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "basic-auth", "labels": {"app": "web"},
                           "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                           '{"data":{"auth":"YWRtaW46SFVOVEVSMg=="}}',
                                           "example.com/owner": "team-a"}},
              "type": "Opaque", "data": {"auth": "YWRtaW46SFVOVEVSMg=="}, "stringData": {"user": "hunter2"}}
    secret_list = {"apiVersion": "v1", "kind": "SecretList", "items": [
        {"metadata": {"name": "a"}, "data": {"ca.crt": "Q0FEQVRB", "token": "VE9LRU4="}},
        {"metadata": {"name": "b"}, "stringData": {"pw": "plain-pw"}}]}
    with Journal.create(tmp_path, incident_id="inc-secret") as j:
        # A Secret is redacted by its kind wherever it is, also inside a map keyed by data.
        j.record("recovery-plan", step="s", lost={}, counts={}, tenants={"odd": secret})
        j.record("note", body=secret, listing=secret_list, mixed={"kind": "List", "items": [secret]})
    raw = j.path.read_bytes()
    for needle in (b"YWRtaW46SFVOVEVSMg==", b"hunter2", b"Q0FEQVRB", b"VE9LRU4=", b"plain-pw"):
        assert needle not in raw, needle
    note = reopened(j.path, "note")
    body = note["body"]
    assert body["data"] == {"auth": REDACTED} and body["stringData"] == {"user": REDACTED}
    assert body["metadata"]["annotations"] == {"kubectl.kubernetes.io/last-applied-configuration": REDACTED,
                                               "example.com/owner": "team-a"}
    assert body["metadata"]["name"] == "basic-auth" and body["type"] == "Opaque"
    assert note["listing"]["items"] == [
        {"metadata": {"name": "a"}, "data": {"ca.crt": REDACTED, "token": REDACTED}},
        {"metadata": {"name": "b"}, "stringData": {"pw": REDACTED}}]
    assert note["mixed"]["items"][0]["data"] == {"auth": REDACTED}
    assert reopened(j.path, "recovery-plan")["tenants"]["odd"]["data"] == {"auth": REDACTED}
    assert secret["data"]["auth"] == "YWRtaW46SFVOVEVSMg=="  # the caller's object is untouched


@pytest.mark.parametrize("field", [
    "Authorization", "authorization", "Proxy-Authorization", "token", "Token", "password", "client-key-data",
    "clientKeyData", "client_key", "bearerToken", "id-token", "idToken", "refresh-token", "access-token",
    "client-secret", "secret", "apiKey", "Cookie", "X-Auth-Token",
])
def test_credential_fields_are_redacted(tmp_path: Path, field: str) -> None:
    value = f"CRED-{field}-VALUE"
    kubeconfig_like = {"users": [{"name": "admin", "user": {field: value, "username": "admin"}}]}
    with Journal.create(tmp_path, incident_id="inc-cred") as j:
        j.record("note", request={"headers": {field: value}}, config=kubeconfig_like, **{"my" + field: "kept"})
        j.record("note", **{field: value})  # a top-level field
    assert value.encode() not in j.path.read_bytes()
    recs = Journal.open(j.path, readonly=True).records()
    assert recs[1]["request"]["headers"] == {field: REDACTED}
    assert recs[1]["config"]["users"][0]["user"] == {field: REDACTED, "username": "admin"}
    assert recs[1]["my" + field] == "kept"  # an exact name, not a suffix
    assert recs[2][field] == REDACTED


def test_ordinary_fields_that_merely_mention_tokens_are_kept() -> None:
    obj = {"kind": "Pod", "spec": {"automountServiceAccountToken": False, "serviceAccountName": "default",
                                   "volumes": [{"projected": {"sources": [{"serviceAccountToken": {
                                       "audience": "vault", "path": "token"}}]}}]},
           "clientConfig": {"caBundle": "LS0tQ0E="}, "tokenFile": "/var/run/token", "tokens": 3}
    assert redact(obj) == obj
