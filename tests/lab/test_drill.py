"""The README's main command, end to end: `responder drill` on its own lab, scorecard and report."""

from __future__ import annotations

import json

import pytest

from .incident_helpers import run_responder

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


def test_drill_passes_and_writes_its_report(lab_manager, tmp_path):
    lab_manager.release()
    proc = run_responder("drill", "--tenants", "2", "--namespaces-per-tenant", "3", "--observe", "5",
                         "--state-dir", str(tmp_path / "lab"), "-o", "json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(proc.stdout)
    assert card["passed"] is True
    assert card["namespaces_seeded"] == 6 and card["saved"] == 6 and card["lost"] == 0
    assert card["first_write_after_detection_ms"] is not None and card["first_write_after_detection_ms"] < 1000
    assert set(card["steps"]) >= {"breaker", "detach", "verify-breaker", "terminating", "choose-backup",
                                  "recreate-tenants", "readopt", "restore-capsule", "verify"}
    # Recovered: a backup was taken first, every namespace is re-adopted by its recreated Tenant,
    # and the recovery verified Capsule's webhooks and replicas against the originals.
    assert card["backup"] and card["re_adopted"] == 6 and card["present_at_end"] == 6
    assert card["recovery_verified"] is True, card["recovery"]
    assert card["time_to_recover_s"] is not None
    report = open(card["report"]).read()
    assert "postmortem" in report and "responder undo" in report and "scale-capsule" in report
    # The drill stopped its lab (no --keep): its processes are gone.
    status = json.loads(run_responder("lab", "--state-dir", str(tmp_path / "lab"), "status").stdout)
    assert status["running"] and not any(status["running"].values())
