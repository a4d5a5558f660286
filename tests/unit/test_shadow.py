"""The shadow copy on disk: saved atomically, whoever saves it and from which thread."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from responder.incident.shadow import Shadow, write_atomically


def _namespace(name: str, tenant: str) -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": {"capsule.clastix.io/tenant": tenant},
                         "ownerReferences": [{"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
                                              "name": tenant, "uid": f"uid-{tenant}"}]}}


def test_writes_from_several_threads_at_once_all_succeed_and_leave_a_whole_file(tmp_path: Path):
    # The periodic save writes from a worker thread while containment saves on the event loop; both used
    # to write the same temp file, and one rename then failed (CI). The copy is snapshotted on the loop
    # (the only thread that changes it); only the writing happens elsewhere.
    shadow = Shadow()
    path = tmp_path / "shadow.json"
    snapshots = []
    for i in range(6):
        shadow.observe_namespace(_namespace(f"ns-{i}", "tenant-a"))
        snapshots.append(shadow.snapshot())
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(60):
                write_atomically(path, text)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(text,)) for text in snapshots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in snapshots  # one whole snapshot, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shadow.json"]  # no temp file left


def test_save_clears_dirty_and_a_failed_save_leaves_it_dirty(tmp_path: Path):
    shadow = Shadow()
    shadow.observe_namespace(_namespace("ns-1", "tenant-a"))
    assert shadow.dirty
    shadow.save(tmp_path / "shadow.json")
    assert not shadow.dirty and "ns-1" in json.loads((tmp_path / "shadow.json").read_text())["namespaces"]
    assert Shadow.load(tmp_path / "shadow.json").namespace_tenants() == shadow.namespace_tenants()
    shadow.observe_namespace(_namespace("ns-2", "tenant-a"))
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError):
        shadow.save(blocked / "shadow.json")  # its directory cannot be made: a file is in the way
    assert shadow.dirty


def test_a_snapshot_written_from_a_worker_thread_that_fails_leaves_the_copy_dirty(tmp_path: Path):
    # The periodic saver: snapshot on the loop, write in a thread; a failed write must be tried again.
    shadow = Shadow()
    shadow.observe_namespace(_namespace("ns-1", "tenant-a"))
    text = shadow.snapshot()
    assert not shadow.dirty
    blocked = tmp_path / "file"
    blocked.write_text("")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            shadow.write_snapshot(blocked / "shadow.json", text)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert errors and shadow.dirty
    shadow.write_snapshot(tmp_path / "shadow.json", text)
    assert json.loads((tmp_path / "shadow.json").read_text())["namespaces"].keys() == {"ns-1"}


def _crd(group: str, deleting: bool = False) -> dict:
    meta = {"name": "tenants.capsule.clastix.io", "uid": f"uid-{group}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"group": group}, "status": {"storedVersions": ["v1beta2"]}}


def test_a_crd_being_deleted_is_kept_when_nothing_better_is_held_and_never_replaces_a_whole_one():
    # A responder started late sees the CRD only while it is being deleted: its spec is all that is left to
    # recreate it from (no backup holds it); one copied before the deletion stays the copy.
    late = Shadow()
    late.observe_crd(_crd("seen-deleting", deleting=True))
    assert late.tenant_crd["spec"] == {"group": "seen-deleting"} and "status" not in late.tenant_crd
    early = Shadow()
    early.observe_crd(_crd("before"))
    early.observe_crd(_crd("seen-deleting", deleting=True))
    assert early.tenant_crd["spec"] == {"group": "before"}
