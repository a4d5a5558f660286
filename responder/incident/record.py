"""The tenant record: what existed, kept in the cluster itself between incidents.

The always-on guard's leader writes it while the cluster is healthy: every Tenant (spec, UID, metadata),
each tenant namespace and its Tenant (with the ownerReference as Capsule wrote it), Capsule's webhook
configurations and replicas, and the Tenant CRD. A responder started after the fact, with no journal and
no shadow copy of its own (a new laptop, a restarted pod), reads it before any Velero backup.

Storage: ConfigMaps in responder's namespace, which survive the cascade (it deletes tenant namespaces
only). The record is gzipped JSON split into chunks of at most CHUNK_BYTES (etcd refuses objects above
1.5 MiB); two banks of chunk slots, and an index ConfigMap naming the bank in use, its chunk count and the
SHA-256 of the whole: a writer fills the other bank, then switches the index in one write, so a reader
sees the old record or the new one, never half of each. At 10,000 namespaces and 1,000 Tenants the
record is about 4 MB of JSON and fits in one or two chunks.

Not an incident write: no journal, no undo. These are responder's own objects, created empty with its RBAC
(`responder manifests rbac`, the chart), so responder only patches them. The guard never writes while an
incident is open or the cluster looks unhealthy: the record must hold the state before.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from responder.cluster.client import KubeClient
from responder.errors import ApiError, ResponderError
from responder.incident import triage
from responder.incident.shadow import Shadow
from responder.names import (RESPONDER_NAMESPACE, TENANT_RECORD, TENANT_RECORD_BANKS, TENANT_RECORD_CHUNKS,
                             tenant_record_chunk as chunk_name)

FORMAT = 1
CHUNK_BYTES = 700 * 1024  # raw bytes per chunk; base64 in the request stays under the API server's limits
CONFIGMAPS = f"/api/v1/namespaces/{RESPONDER_NAMESPACE}/configmaps"
INDEX_KEY = "index.json"
CHUNK_KEY = "record.json.gz.part"


@dataclass(frozen=True)
class TenantRecord:
    shadow: Shadow  # the record's content, in the shadow copy's form (what recovery reads)
    written: str  # RFC 3339, when the guard wrote it
    writer: str  # who wrote it (the guard replica's identity)
    digest: str

    @property
    def source(self) -> str:
        """How plan, the journal and the report name this evidence."""
        return f"guard record {RESPONDER_NAMESPACE}/{TENANT_RECORD} (written {self.written})"

    def counts(self) -> dict[str, int]:
        return {"tenants": len(self.shadow.tenants), "namespaces": len(self.shadow.namespaces)}


def record_from_cluster(*, tenants: list[dict[str, Any]], namespaces: list[dict[str, Any]],
                        webhooks: list[tuple[str, dict[str, Any]]], capsule_replicas: int | None,
                        tenant_crd: dict[str, Any] | None) -> Shadow:
    """The record of the cluster as it is now, from live objects (not the shadow copy, which keeps what
    was deleted for a while). Terminating namespaces are left out: they are on their way out."""
    record = Shadow()
    for tenant in tenants:
        record.observe_tenant(tenant)
    for ns in namespaces:
        if not (ns.get("metadata") or {}).get("deletionTimestamp"):
            record.observe_namespace(ns)
    for kind, obj in webhooks:
        record.observe_webhook(kind, obj)
    if capsule_replicas:
        record.observe_capsule_replicas(capsule_replicas)
    if tenant_crd is not None:
        record.observe_crd(tenant_crd)
    record.dirty = False
    return record


def record_document(record: Shadow) -> bytes:
    """The record as stored: canonical JSON (sorted keys, so an unchanged cluster gives the same bytes),
    without the shadow's own timestamp."""
    data = record.to_json()
    data.pop("updated", None)
    return json.dumps({"format": FORMAT, **data}, sort_keys=True, separators=(",", ":")).encode()


def document_digest(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


def split_chunks(payload: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    return [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]


def unhealthy_reason(view: triage.ClusterView) -> str | None:
    """Why the cluster must not be recorded now (the record would hold damage), or None."""
    if not view.crd_present or view.crd_deleting:
        return "the Tenant CRD is absent or being deleted"
    if any(t["metadata"].get("deletionTimestamp") for t in view.tenants.values()):
        return "a Tenant is being deleted"
    dangling = [r.name for r in triage.triage(view) if r.state in (triage.NsState.AT_RISK, triage.NsState.TERMINATING)
                and r.tenant]
    if dangling:
        return f"{len(dangling)} tenant namespaces are at risk or Terminating (e.g. {dangling[0]})"
    return None


class RecordNotInstalled(ResponderError):
    pass


async def _patch(client: KubeClient, name: str, body: dict[str, Any]) -> None:
    """Merge-patch one of the record's ConfigMaps (they come with responder's RBAC manifests and its chart:
    responder may patch them, not create ConfigMaps)."""
    try:
        await client.patch(f"{CONFIGMAPS}/{name}", body)
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise RecordNotInstalled(f"ConfigMap {RESPONDER_NAMESPACE}/{name} of the tenant record is missing",
                                 fix="apply `responder manifests rbac` (or install the chart) again: it creates them"
                                 ) from None


async def read_index(client: KubeClient) -> dict[str, Any] | None:
    obj = await client.get_or_none(f"{CONFIGMAPS}/{TENANT_RECORD}")
    if obj is None:
        return None
    try:
        return json.loads((obj.get("data") or {}).get(INDEX_KEY) or "null")
    except ValueError:
        return None


async def write_tenant_record(client: KubeClient, record: Shadow, *, writer: str,
                              previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Write the record unless the stored one is the same (by digest). Returns the new index, or None
    when nothing was written. `previous`: the index as last read or written (read from the cluster if
    not given)."""
    document = record_document(record)
    digest = document_digest(document)
    if previous is None:
        previous = await read_index(client)
    if previous and previous.get("sha256") == digest:
        return None
    payload = gzip.compress(document, mtime=0)
    chunks = split_chunks(payload)
    if len(chunks) > TENANT_RECORD_CHUNKS:
        raise ValueError(f"the tenant record is {len(payload)} bytes compressed: more than {TENANT_RECORD_CHUNKS} "
                         f"chunks of {CHUNK_BYTES}")
    in_use = (previous or {}).get("bank")
    bank = next(b for b in TENANT_RECORD_BANKS if b != in_use)
    for i, chunk in enumerate(chunks):
        await _patch(client, chunk_name(bank, i), {"binaryData": {CHUNK_KEY: base64.b64encode(chunk).decode()}})
    held = dict((previous or {}).get("held") or {})  # bank -> chunks it holds
    # Slots of this bank beyond what it holds now (an older, longer record's tail) are emptied.
    for i in range(len(chunks), int(held.get(bank) or 0)):
        await _patch(client, chunk_name(bank, i), {"binaryData": None})
    held[bank] = len(chunks)
    index = {"format": FORMAT, "bank": bank, "chunks": len(chunks), "sha256": digest, "bytes": len(document),
             "compressed": len(payload), "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "writer": writer, "tenants": len(record.tenants), "namespaces": len(record.namespaces), "held": held}
    await _patch(client, TENANT_RECORD, {"data": {INDEX_KEY: json.dumps(index, sort_keys=True)}})
    return index


async def read_tenant_record(client: KubeClient) -> TenantRecord | None:
    """The record as the guard last wrote it, or None: none written, or not readable whole (a chunk
    missing, or not matching the index's digest), which is never taken for evidence."""
    try:
        index = await read_index(client)
    except ApiError as exc:
        if exc.status in (403, 404):
            return None  # not allowed to read it (an older role) or no responder namespace: no record
        raise
    if not index or index.get("format") != FORMAT:
        return None
    payload = b""
    for i in range(int(index.get("chunks") or 0)):
        obj = await client.get_or_none(f"{CONFIGMAPS}/{chunk_name(str(index.get('bank')), i)}")
        if obj is None:
            return None
        payload += base64.b64decode((obj.get("binaryData") or {}).get(CHUNK_KEY) or "")
    try:
        document = gzip.decompress(payload)
    except (OSError, EOFError):
        return None
    if document_digest(document) != index.get("sha256"):
        return None
    data = json.loads(document)
    shadow = Shadow(tenants=data.get("tenants") or {}, namespaces=data.get("namespaces") or {},
                    webhooks=data.get("webhooks") or {}, capsule_replicas=data.get("capsule_replicas"),
                    tenant_crd=data.get("tenant_crd"))
    return TenantRecord(shadow=shadow, written=str(index.get("written") or "?"), writer=str(index.get("writer") or "?"),
                        digest=str(index["sha256"]))
