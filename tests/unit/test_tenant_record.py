"""The guard's in-cluster tenant record: what it holds, that it is stable (written only when changed), that it
fits in ConfigMaps at 10,000 namespaces, and when the cluster must not be recorded. Pure parts only; the lab
test (tests/lab/test_aftermath.py) writes it through a guard and recovers from it."""

from __future__ import annotations

import gzip
import json
import random

from responder.incident import triage
from responder.incident.record import (CHUNK_BYTES, record_document, record_from_cluster, split_chunks,
                                       unhealthy_reason)
from responder.names import TENANT_RECORD_CHUNKS, TENANT_RECORD_OBJECTS


def _tenant(name: str, **meta) -> dict:
    return {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "7", **meta},
            "spec": {"owners": [{"kind": "User", "name": f"{name}-owner"}],
                     "namespaceOptions": {"quota": 10}, "resourceQuotas": {"scope": "Tenant"}},
            "status": {"namespaces": ["x"]}}


def _namespace(name: str, tenant: str, **meta) -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": {triage.TENANT_LABEL: tenant},
                         "ownerReferences": [{"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
                                              "name": tenant, "uid": f"uid-{tenant}", "controller": True,
                                              "blockOwnerDeletion": True}], **meta}}


def _record(tenants: int, per_tenant: int):
    names = [f"tenant-{i:04d}" for i in range(tenants)]
    return record_from_cluster(
        tenants=[_tenant(t) for t in names],
        namespaces=[_namespace(f"{t}-ns-{j:02d}", t) for t in names for j in range(per_tenant)],
        webhooks=[("ValidatingWebhookConfiguration", {"metadata": {"name": "capsule"}, "webhooks": [{"name": "ns"}]})],
        capsule_replicas=2, tenant_crd={"metadata": {"name": "tenants.capsule.clastix.io"}, "spec": {"group": "g"}})


def test_the_record_holds_what_recovery_needs_and_leaves_terminating_namespaces_out():
    record = record_from_cluster(tenants=[_tenant("a")],
                                 namespaces=[_namespace("a-1", "a"),
                                             _namespace("a-2", "a", deletionTimestamp="2026-01-01T00:00:00Z"),
                                             {"metadata": {"name": "plain", "uid": "u"}}],
                                 webhooks=[], capsule_replicas=3, tenant_crd=None)
    assert record.namespace_tenants() == {"a-1": "a"}
    assert record.namespaces["a-1"]["owner"]["name"] == "a" and "uid" not in record.namespaces["a-1"]["owner"]
    assert record.tenants["a"]["spec"]["owners"][0]["name"] == "a-owner" and "status" not in record.tenants["a"]
    assert record.tenants["a"]["metadata"]["uid"] == "uid-a"
    assert record.capsule_replicas == 3


def test_an_unchanged_cluster_gives_the_same_bytes_a_change_does_not():
    first, again = record_document(_record(3, 2)), record_document(_record(3, 2))
    assert first == again  # no timestamp inside: the digest only moves when the cluster does
    changed = _record(3, 2)
    changed.namespaces.pop("tenant-0000-ns-00")
    assert record_document(changed) != first


def test_ten_thousand_namespaces_fit_in_the_record_objects_with_room_to_spare():
    random.seed(1)
    record = _record(1000, 10)
    document = record_document(record)
    payload = gzip.compress(document, mtime=0)
    chunks = split_chunks(payload)
    # etcd refuses objects above 1.5 MiB; each chunk holds at most CHUNK_BYTES raw (base64 on the wire).
    assert CHUNK_BYTES * 4 // 3 < 1024 * 1024
    assert len(chunks) <= TENANT_RECORD_CHUNKS // 4, (len(document), len(payload), len(chunks))
    assert b"".join(chunks) == payload and json.loads(gzip.decompress(payload))["format"] == 1
    assert len(TENANT_RECORD_OBJECTS) == 1 + 2 * TENANT_RECORD_CHUNKS


def _view(**kw) -> triage.ClusterView:
    base = dict(crd_present=True, crd_deleting=False, tenants={"a": _tenant("a")},
                namespaces={"a-1": _namespace("a-1", "a")}, protected=frozenset())
    return triage.ClusterView(**(base | kw))


def test_the_cluster_is_recorded_only_while_healthy():
    assert unhealthy_reason(_view()) is None
    assert "CRD" in unhealthy_reason(_view(crd_deleting=True))
    assert "CRD" in unhealthy_reason(_view(crd_present=False))
    assert "Tenant is being deleted" in unhealthy_reason(
        _view(tenants={"a": _tenant("a", deletionTimestamp="2026-01-01T00:00:00Z")}))
    assert "at risk" in unhealthy_reason(_view(tenants={}))  # a dangling reference
