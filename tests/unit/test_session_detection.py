"""The session's side of detection: each watch event's decision is counted, logged with its reason and
summarized; only an incident opens a journal; the runbook's settings are the detector's; after containment,
the watch's view from before responder's own detach is not growth. No cluster: nothing here connects."""

from __future__ import annotations

import logging
from pathlib import Path

from responder.cluster.kubeconfig import load_cluster_access
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, WatchEvent
from responder.incident.detect import DETECTION_LOGGER
from responder.response.session import Session, SessionOptions, resolve_runbook

from .kubeconfigs import unreachable_kubeconfig
from .test_detect import crd, namespace, tenant


def session_for(tmp_path: Path, runbook: Path | None = None) -> Session:
    return Session(load_cluster_access(str(unreachable_kubeconfig(tmp_path))),
                   SessionOptions(runbook=runbook or resolve_runbook(None), journal_dir=tmp_path / "incidents"))


def listed(session: Session, tenants: int = 4) -> None:
    """The first lists, as the observer hands them over (stores first, then the subscribers)."""
    events = [WatchEvent(ADDED, "crd", crd())]
    for i in range(1, tenants + 1):
        events.append(WatchEvent(ADDED, "tenants", tenant(f"t{i}")))
        events += [WatchEvent(ADDED, "namespaces", namespace(f"t{i}-ns{j}", f"t{i}")) for j in (1, 2)]
    events += [WatchEvent(SYNCED, stream, {"metadata": {}}) for stream in ("crd", "tenants", "namespaces")]
    for event in events:
        deliver(session, event)


def deliver(session: Session, event: WatchEvent) -> None:
    if event.type != SYNCED:
        store = session.observer.watches[event.resource].store
        key = ("", event.name)
        if event.type == DELETED:
            store.pop(key, None)
        else:
            store[key] = event.object
    session._on_event(event)


async def test_routine_and_notices_are_reported_with_their_reason_and_open_nothing(tmp_path, caplog):
    session = session_for(tmp_path)
    try:
        listed(session)
        with caplog.at_level(logging.INFO, logger=DETECTION_LOGGER):
            deliver(session, WatchEvent(MODIFIED, "namespaces", namespace("t1-ns1", "t1", terminating=True)))
            deliver(session, WatchEvent(DELETED, "tenants", tenant("t2")))
        assert session.journal is None and not session.incident_opened.is_set()
        assert not (tmp_path / "incidents").exists() or not list((tmp_path / "incidents").glob("inc-*"))
        summary = session.detection_summary()
        assert summary["incident"] is None and summary["counts"]["incident"] == 0
        assert [d["kind"] for d in summary["routine"]] == ["owner-deleted-namespace"]
        assert [d["kind"] for d in summary["notices"]] == ["tenant-offboarded"]
        assert summary["settings"] == {"tenantBurst": 3, "window": "10s", "orphanedNamespaces": 3, "strict": False}
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == DETECTION_LOGGER]
        assert lines[0][0] == logging.INFO and "ROUTINE owner-deleted-namespace" in lines[0][1]
        assert lines[1][0] == logging.WARNING and "NOTICE tenant-offboarded" in lines[1][1]
        # The CRD's deletion opens the incident; the summary says which decision did.
        deliver(session, WatchEvent(MODIFIED, "crd", crd(deleting=True)))
        assert session.incident_opened.is_set() and session.trigger.kind == "crd-deleting"
        assert session.detection_summary()["incident"]["kind"] == "crd-deleting"
    finally:
        await session.close()


async def test_the_runbook_settings_are_the_detectors(tmp_path):
    runbook = tmp_path / "strict.yaml"
    runbook.write_text(resolve_runbook(None).read_text().replace("strict: false", "strict: true"))
    session = session_for(tmp_path, runbook)
    try:
        listed(session)
        deliver(session, WatchEvent(MODIFIED, "tenants", tenant("t3", deleting=True)))
        assert session.incident_opened.is_set() and "strict" in session.trigger.reason
    finally:
        await session.close()


async def test_after_containment_the_view_from_before_responders_detach_is_not_growth(tmp_path):
    session = session_for(tmp_path)
    try:
        listed(session, tenants=2)
        deliver(session, WatchEvent(DELETED, "crd", crd()))  # opens the incident
        for name in ("t1", "t2"):
            session.observer.watches["tenants"].store.pop(("", name))
        journal = session.journal
        seq = journal.intent("detach", "detach", "t1-ns1",
                             undo={"ownerReferences": [{"name": "t1", "uid": "uid-t1"}]})
        journal.outcome(seq, "ok")
        assert set(session.at_risk()) == {"t1-ns1", "t1-ns2", "t2-ns1", "t2-ns2"}
        # t1-ns1's detach persisted; the watch has not shown it yet: not at risk "again".
        assert set(session.at_risk_again()) == {"t1-ns2", "t2-ns1", "t2-ns2"}
    finally:
        await session.close()
