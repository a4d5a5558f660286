"""An incident detected where its journal cannot be written is not silently dropped: the preflight
refuses such a journal directory up front, and if writing fails at detection time anyway (a disk
that filled since), whoever waits for the incident gets the error. No cluster: nothing here connects."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from responder.cluster.kubeconfig import load_cluster_access
from responder.detect import Trigger
from responder.errors import ConfigError, ResponderError
from responder.session import Session, SessionOptions, check_journal_dir, resolve_runbook

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
