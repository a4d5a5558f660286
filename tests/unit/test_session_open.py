"""An incident detected where its journal cannot be written is not silently dropped: the preflight
refuses such a journal directory up front, and if writing fails at detection time anyway (a disk
that filled since), whoever waits for the incident gets the error. No cluster: nothing here connects."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from responder.cluster.kubeconfig import load_cluster_access
from responder.incident.detect import Trigger
from responder.errors import ConfigError, ResponderError
from responder.response.session import Session, SessionOptions, check_journal_dir, resolve_runbook

from .kubeconfigs import unreachable_kubeconfig


def test_the_preflight_refuses_a_journal_directory_it_cannot_write(tmp_path: Path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigError) as err:
        check_journal_dir(blocked / "incidents")
    assert "incident journals cannot be written in" in str(err.value) and "--journal DIR" in str(err.value)
    check_journal_dir(tmp_path / "incidents")  # a writable one passes and leaves nothing behind
    assert list((tmp_path / "incidents").iterdir()) == []


async def test_an_incident_whose_journal_cannot_be_created_is_raised_to_the_waiter(tmp_path: Path):
    config = unreachable_kubeconfig(tmp_path)
    session = Session(load_cluster_access(str(config)),
                      SessionOptions(runbook=resolve_runbook(None), journal_dir=tmp_path / "incidents"))
    try:
        blocked = tmp_path / "file"
        blocked.write_text("")
        session.options.journal_dir = blocked / "incidents"  # the disk "filled" after the preflight
        session._open_or_fail(Trigger("crd-deleting", "the Tenant CRD is being deleted", time.time()))
        with pytest.raises(ResponderError) as err:
            await session.wait_for_incident(5)
        assert str(blocked) in str(err.value)  # names where it could not write
        assert session.trigger is None and session.journal is None  # not half-open: a later trigger may open it
    finally:
        await session.close()


def _namespace(name: str, tenant: str) -> dict:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "labels": {"capsule.clastix.io/tenant": tenant},
                         "ownerReferences": [{"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant",
                                              "name": tenant, "uid": f"uid-{tenant}"}]}}


async def test_the_snapshot_is_taken_at_opening_and_journaled_once_the_first_write_is_on_its_way(tmp_path: Path):
    from responder.incident.engine import EngineEvent
    from responder.incident.journal import Journal

    session = Session(load_cluster_access(str(unreachable_kubeconfig(tmp_path))),
                      SessionOptions(runbook=resolve_runbook(None), journal_dir=tmp_path / "incidents"))
    try:
        session.observer.shadow.observe_namespace(_namespace("team-a-web", "team-a"))
        assert session.observer.forget_deleted  # routine deletions leave the shadow copy after a while
        session.open_incident(Trigger("crd-deleting", "the Tenant CRD is being deleted", time.time()))
        assert not session.observer.forget_deleted  # but nothing while the incident is open: recovery reads it
        session.observer.shadow.observe_namespace(_namespace("team-a-late", "team-a"))  # after opening: not in it
        assert not [r for r in session.journal.records() if r["kind"] == "snapshot"]  # the breaker goes first
        session._journal_snapshot_after_first_write(EngineEvent("write", "breaker", {}))
        assert not [r for r in session.journal.records() if r["kind"] == "snapshot"]  # still sending
        await asyncio.sleep(0)
        (snapshot,) = [r for r in session.journal.records() if r["kind"] == "snapshot"]
        assert snapshot["namespaces"] == {"team-a-web": "team-a"}
        assert snapshot["owners"]["team-a-web"]["name"] == "team-a"  # the reference template (UIDs change)
        session._journal_snapshot_after_first_write(EngineEvent("write", "detach", {}))
        await asyncio.sleep(0)
        assert len([r for r in session.journal.records() if r["kind"] == "snapshot"]) == 1
        path = session.journal.path
    finally:
        await session.close()
    # A resumed incident whose crash came before the snapshot was journaled gets one from the shadow.
    with Journal.open(path) as journal:
        records = [r for r in journal.records() if r["kind"] != "snapshot"]
    bare = tmp_path / "resume" / path.name
    bare.parent.mkdir()
    bare.write_text("".join(json.dumps(r) + "\n" for r in records))
    resumed = Session(load_cluster_access(str(unreachable_kubeconfig(tmp_path))),
                      SessionOptions(runbook=resolve_runbook(None), journal_dir=bare.parent))
    try:
        resumed.observer.shadow.observe_namespace(_namespace("team-a-web", "team-a"))
        with Journal.open(bare) as journal:
            resumed.open_incident(Trigger("crd-deleting", "resumed", time.time()), journal)
            assert [r["namespaces"] for r in journal.records() if r["kind"] == "snapshot"] == [{"team-a-web": "team-a"}]
            resumed.journal = None
    finally:
        await resumed.close()


async def test_plan_sessions_leave_nothing_on_disk(tmp_path: Path, monkeypatch):
    """`responder plan` reads a shadow copy if there is one, but writes none, and no journal directory."""
    from responder.response import session as session_module

    async def nobody_holds_the_lease(session):
        return None

    async def no_hold(client):
        return "not installed"

    async def identity(client):
        return "plan-user"

    async def no_record(self):
        return None

    monkeypatch.setattr(session_module, "whoami", identity)
    monkeypatch.setattr(session_module, "read_armed_hold", no_hold)
    monkeypatch.setattr(session_module, "read_self_hold", lambda client: no_hold(client))
    monkeypatch.setattr(session_module, "hold_writer_lease", nobody_holds_the_lease)
    monkeypatch.setattr(Session, "load_tenant_record", no_record)
    journal = tmp_path / "incidents"
    session = Session(load_cluster_access(str(unreachable_kubeconfig(tmp_path))),
                      SessionOptions(runbook=resolve_runbook(None), journal_dir=journal, dry_run=True, read_only=True))
    try:
        await session.preflight()
        session.observer.shadow.observe_namespace(_namespace("a-1", "a"))
        session.observer.save_shadow()
    finally:
        await session.close()
    assert not journal.exists()
