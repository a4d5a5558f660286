"""`responder report`: the postmortem, from synthetic journals written with the real Journal (no cluster)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from responder.cli import main
from responder.incident.journal import Journal
from responder.report import COLLAPSE_AFTER, build_report, render_markdown

SECRET_VALUE = "s3cr3t-Pa55w0rd-SENTINEL"
# Not under a secret-looking key, so the journal's redaction keeps it: only the report can leave it out.
CONFIG_SENTINEL = "postgres://app:hunter2-CONFIG-SENTINEL@db.internal/app"
RAW_SENTINEL = "raw-unredacted-token-SENTINEL"
SCALE_PATH = "/apis/apps/v1/namespaces/capsule-system/deployments/capsule-controller-manager/scale"
VWC = "ValidatingWebhookConfiguration/capsule-validating-webhook-configuration"
MWC = "MutatingWebhookConfiguration/capsule-mutating-webhook-configuration"
DETACHED = [f"tenant-a-ns-{i:02d}" for i in range(60)]
DETECTED_AGO = 2.0


def _trigger(event_received: float) -> dict:
    return {"kind": "crd-deleting", "reason": "the Tenant CRD tenants.capsule.clastix.io is being deleted",
            "event_received": event_received, "objects": ["tenants.capsule.clastix.io"]}


def _detach(j: Journal, ns: str, *, dry_run: bool = False) -> int:
    return j.intent("detach", "detach", ns, request={"method": "PATCH", "path": f"/api/v1/namespaces/{ns}",
                                                      "body": [{"op": "test", "path": "/metadata/uid", "value": "u"}]},
                    undo={"op": "reattach", "namespace": ns, "uid": f"uid-{ns}",
                          "ownerReferences": [{"kind": "Tenant", "name": "tenant-a", "uid": "t-uid"}]},
                    dry_run=dry_run, sync=False)


def write_incident(directory: Path, *, counts: bool = True) -> tuple[Path, dict]:
    """A live incident: breaker, detach (one failure, one write left pending by a crash and settled on
    resume), a breaker warning, a released Tenant, a finalized namespace with orphaned content, one undo."""
    detected = time.time() - DETECTED_AGO
    j = Journal.create(directory, incident_id="inc-test", meta={
        "trigger": _trigger(detected), "context": "prod-eu-1", "server": "https://k8s.example:6443",
        "identity": "system:serviceaccount:responder-system:responder", "dry_run": False,
        "runbook": "runbooks/capsule-tenant-crd-deletion.yaml"})
    j.record("trigger", trigger=_trigger(detected), journaled_after_s=0.004)
    j.step("breaker", "started")
    scale = j.intent("breaker", "scale-capsule", "capsule-controller-manager",
                     request={"method": "PATCH", "path": SCALE_PATH, "body": {"spec": {"replicas": 0}}},
                     undo={"op": "scale", "path": SCALE_PATH, "replicas": 3})
    j.outcome(scale, "ok")
    seqs = {"scale": scale}
    for name, target in (("vwc", VWC), ("mwc", MWC)):
        seqs[name] = j.intent("breaker", "exempt-responder", target,
                              request={"method": "PATCH", "path": "/apis/admissionregistration.k8s.io/v1/x",
                                       "body": [{"op": "add", "path": "/webhooks/0/matchConditions", "value": []}]},
                              undo={"op": "webhook-match-conditions", "kind": target.split("/")[0],
                                    "name": target.split("/")[1], "path": "/x", "webhooks": {"h": None}})
        j.outcome(seqs[name], "ok")
    j.step("breaker", "finished", detail="Capsule scaled to 0 (was 3); responder exempted")
    j.step("detach", "started")
    for ns in DETACHED:
        j.outcome(_detach(j, ns), "ok", sync=False)
    seqs["bad"] = _detach(j, "tenant-a-ns-bad")
    j.outcome(seqs["bad"], "failed", detail="500 InternalError: etcdserver: request timed out")
    seqs["crash"] = _detach(j, "tenant-a-ns-crash")  # sent, then SIGKILL: no outcome
    j.sync()
    j.close()

    # The resumed run.
    j = Journal.open(j.path)
    j.record("trigger", trigger={"kind": "manual", "reason": "resumed from inc-test.jsonl",
                                 "event_received": time.time(), "objects": []}, journaled_after_s=0.0)
    j.record("resumed", pending=[p["seq"] for p in j.pending()])
    j.step("detach", "started")
    j.outcome(seqs["crash"], "ok", detail="applied before the crash; confirmed on resume")
    j.record("log", step="detach", level="info", message="resumed: settled 1 detach writes left pending by the crash")
    j.step("detach", "finished", detail="detached 61 namespaces in 0.50s")
    j.step("verify-breaker", "started")
    j.record("log", step="verify-breaker", level="warning",
             message="BREAKER NOT VERIFIED: not refused within 30s: admitted. Containment relies on speed.")
    j.step("verify-breaker", "finished", detail="breaker not verified")
    j.step("tenant-finalizers", "started")
    seqs["release"] = j.intent("tenant-finalizers", "release-finalizer", "tenant-a",
                               request={"method": "PATCH", "path": "/apis/capsule.clastix.io/v1beta2/tenants/tenant-a",
                                        "body": [{"op": "remove", "path": "/metadata/finalizers/0"}]})
    j.outcome(seqs["release"], "ok")
    j.step("tenant-finalizers", "finished", detail="released 1 terminating Tenants")
    j.step("terminating", "started")
    j.record("log", step="terminating", level="info",
             message="tenant-b-ns-01 is Terminating with content left: configmaps=2, secrets=3")
    seqs["finalize"] = j.intent("terminating", "finalize", "tenant-b-ns-01",
                                request={"method": "PUT", "path": "/api/v1/namespaces/tenant-b-ns-01/finalize",
                                         "body": {"kind": "Namespace", "spec": {"finalizers": []}}})
    j.outcome(seqs["finalize"], "ok")
    j.record("orphaned-content", step="terminating", namespace="tenant-b-ns-01")
    # Secret-shaped and config-shaped bodies: neither value may reach the report.
    seqs["secret"] = j.intent("terminating", "restore-secret", "tenant-b-ns-01/db-creds",
                              request={"method": "PUT", "path": "/api/v1/namespaces/tenant-b-ns-01/secrets/db-creds",
                                       "body": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-creds"},
                                                "data": {"password": SECRET_VALUE},
                                                "stringData": {"url": SECRET_VALUE}}})
    j.outcome(seqs["secret"], "ok", response={"kind": "Secret", "data": {"password": SECRET_VALUE}})
    seqs["config"] = j.intent("terminating", "restore-configmap", "tenant-b-ns-01/app",
                              request={"method": "PUT", "path": "/api/v1/namespaces/tenant-b-ns-01/configmaps/app",
                                       "body": {"kind": "ConfigMap", "data": {"database-url": CONFIG_SENTINEL}}})
    j.outcome(seqs["config"], "ok", response={"kind": "ConfigMap", "data": {"database-url": CONFIG_SENTINEL}})
    j.step("terminating", "finished", detail="1 Terminating tenant namespaces: 1 finalized, 0 still hold content")
    if counts:
        j.record("scorecard", namespaces={"saved": 61, "lost": 2})
    # A later `responder undo` that reverted only the mutating webhook exemption.
    undo = j.intent("undo", "undo-webhook-match-conditions", MWC, request={"undo_of": seqs["mwc"]})
    j.outcome(undo, "ok")
    j.mark_undone(seqs["mwc"])
    j.close()
    return j.path, seqs


@pytest.fixture
def incident(tmp_path: Path) -> tuple[Path, dict, dict]:
    path, seqs = write_incident(tmp_path / "journal")
    return path, seqs, build_report(Journal.open(path, readonly=True).records(), journal_path=str(path))


def test_header(incident):
    path, _, report = incident
    assert report["incident"] == "inc-test"
    assert report["cluster"] == {"context": "prod-eu-1", "server": "https://k8s.example:6443"}
    assert report["identity"] == "system:serviceaccount:responder-system:responder"
    assert report["dry_run"] is False
    assert report["runbook"] == "runbooks/capsule-tenant-crd-deletion.yaml"
    assert report["trigger"]["kind"] == "crd-deleting" and "being deleted" in report["trigger"]["reason"]
    assert report["trigger"]["detected_at"].endswith("Z")
    assert report["journal"] == str(path)


def test_timeline_is_relative_to_detection(incident):
    _, seqs, report = incident
    timeline = report["timeline"]
    assert timeline[0]["event"] == "detection" and timeline[0]["elapsed_s"] == 0.0
    started = [t for t in timeline if t["event"] == "step started"]
    finished = [t for t in timeline if t["event"] == "step finished"]
    assert [t["step"] for t in started] == ["breaker", "detach", "detach", "verify-breaker", "tenant-finalizers",
                                            "terminating"]
    assert len(finished) == 5
    for row in started + finished:
        assert DETECTED_AGO - 0.01 <= row["elapsed_s"] < DETECTED_AGO + 30
    elapsed = [t["elapsed_s"] for t in timeline]
    assert elapsed == sorted(elapsed)
    first = report["first_write"]
    assert first["intent"] == seqs["scale"] and first["action"] == "scale-capsule"
    assert DETECTED_AGO * 1000 - 10 <= first["latency_ms"] < (DETECTED_AGO + 30) * 1000
    assert [w["message"][:21] for w in report["warnings"]] == ["BREAKER NOT VERIFIED:"]
    assert any(t["event"] == "WARNING" and t["warning"] for t in timeline)
    assert any(t["event"] == "resumed" for t in timeline)
    assert any(t["event"] == "undo started" for t in timeline)


def test_what_was_done(incident):
    _, seqs, report = incident
    acts = report["actions"]
    assert acts["capsule_scaled"] == {"deployment": "capsule-system/capsule-controller-manager", "from": 3, "to": 0,
                                      "status": "ok", "dry_run": False, "undone": False}
    hooks = {h["name"]: h for h in acts["webhooks_exempted"]}
    assert set(hooks) == {"capsule-validating-webhook-configuration", "capsule-mutating-webhook-configuration"}
    assert hooks["capsule-mutating-webhook-configuration"]["undone"] is True
    detached = acts["namespaces_detached"]
    assert detached["count"] == 61 and set(detached["names"]) == set(DETACHED) | {"tenant-a-ns-crash"}
    assert [e["target"] for e in detached["not_detached"]] == ["tenant-a-ns-bad"]
    assert acts["tenants_released"]["names"] == ["tenant-a"]
    assert acts["namespaces_finalized"]["names"] == ["tenant-b-ns-01"]
    assert [o["namespace"] for o in report["orphaned_content"]] == ["tenant-b-ns-01"]
    assert report["terminating_with_content"][0]["content"] == "configmaps=2, secrets=3"
    assert [f["intent"] for f in report["failures"]] == [seqs["bad"]]
    assert "etcdserver: request timed out" in report["failures"][0]["detail"]
    assert report["namespaces"]["saved"] == 61 and report["namespaces"]["lost"] == 2


def test_crash_and_resume(incident):
    _, seqs, report = incident
    assert report["pending"] == [] and report["unsettled"] == []
    (resume,) = report["resumes"]
    assert resume["pending_at_resume"] == 1 and resume["settled"] == {"ok": 1} and resume["not_settled"] == 0
    assert resume["settled_details"] == {"applied before the crash; confirmed on resume": 1}
    assert resume["reason"] == "resumed from inc-test.jsonl"


def test_undo_follows_the_journal_rules(incident):
    path, seqs, report = incident
    undo = report["undo"]
    assert undo["command"] == f"responder undo {path}"
    plan = Journal.open(path, readonly=True).undo_plan()
    assert [e["intent"] for e in undo["reversible"]] == [e["intent"] for e in plan]  # same rules, same order
    reversible = {e["intent"] for e in undo["reversible"]}
    assert seqs["scale"] in reversible and seqs["vwc"] in reversible
    assert seqs["mwc"] not in reversible  # undone already
    assert seqs["bad"] not in reversible  # failed: nothing to undo
    assert undo["reversible_by_action"] == {"detach": 61, "exempt-responder": 1, "scale-capsule": 1}
    irreversible = {e["action"]: e for e in undo["irreversible"]}
    assert {"finalize", "release-finalizer"} <= set(irreversible)
    assert "cannot be brought back" in irreversible["finalize"]["why"]
    assert "Tenant was already being deleted" in irreversible["release-finalizer"]["why"]
    assert undo["undone"] == 1 and undo["undo_writes"] == {"ok": 1}


def test_markdown(incident):
    path, _, report = incident
    md = render_markdown(report)
    # The incident was contained and never recovered: Capsule is still at 0, and the first line says so.
    first, _, rest = md.partition("\n")
    assert first.startswith("> **CAPSULE IS AT 0 REPLICAS (it had 3)") and f"responder undo {path}" in first
    assert rest.lstrip("\n").startswith("# Incident inc-test: postmortem")
    assert "| Cluster | context `prod-eu-1`, server `https://k8s.example:6443` |" in md
    assert "| Mode | live |" in md
    assert "## Timeline" in md
    for step in ("breaker", "detach", "verify-breaker", "tenant-finalizers", "terminating"):
        assert f"| step started | {step} |" in md and f"| step finished | {step} |" in md
    assert "| **WARNING** | verify-breaker | BREAKER NOT VERIFIED" in md
    assert "> **WARNING** [verify-breaker" in md
    assert "ms after detection" in md
    assert "scaled from 3 to 0" in md
    assert "`capsule-validating-webhook-configuration`" in md
    assert "### Namespaces detached: 61" in md
    assert f"… and {61 - COLLAPSE_AFTER} more" in md
    assert "**ORPHANED CONTENT**" in md and "`tenant-b-ns-01`" in md
    assert "etcdserver: request timed out" in md
    assert "1 write left pending by the crash; settled: 1 ok" in md
    assert "Namespaces saved: 61; lost: 2" in md
    assert f"```\nresponder undo {path}\n```" in md
    assert "Reversible writes not undone yet (63" in md
    assert "- `scale-capsule` (1, undo op scale): `capsule-controller-manager`" in md
    assert "- `detach` (61, undo op reattach): " in md
    assert "Irreversible" in md and "`finalize`" in md and "`release-finalizer`" in md


def test_no_secret_or_body_reaches_the_report(incident, tmp_path):
    path, _, report = incident
    text = path.read_text()
    assert SECRET_VALUE not in text  # the journal redacted the Secret ...
    assert CONFIG_SENTINEL in text  # ... but not this: keeping bodies out is the report's own job
    # An older, unredacted journal line with a raw Secret body must not leak either.
    raw = {"seq": 10_000, "ts": "2026-11-26T15:15:59.000Z", "incident": "inc-test", "kind": "intent",
           "step": "terminating", "action": "restore-secret", "target": "tenant-b-ns-01/raw", "dry_run": False,
           "request": {"method": "PUT", "path": "/api/v1/namespaces/tenant-b-ns-01/secrets/raw",
                       "body": {"kind": "Secret", "data": {"token": RAW_SENTINEL}}},
           "undo": {"op": "restore", "object": {"kind": "Secret", "data": {"token": RAW_SENTINEL}}}}
    with path.open("a") as f:
        f.write(json.dumps(raw) + "\n")
    records = Journal.open(path, readonly=True).records()
    assert RAW_SENTINEL in json.dumps(records)
    report = build_report(records, journal_path=str(path))
    for rendered in (render_markdown(report), json.dumps(report)):
        for needle in (SECRET_VALUE, CONFIG_SENTINEL, RAW_SENTINEL, "matchConditions", "hunter2"):
            assert needle not in rendered, needle


def test_dry_run_journal(tmp_path: Path):
    j = Journal.create(tmp_path, incident_id="inc-dry", meta={"trigger": _trigger(time.time()), "context": "c",
                                                               "server": "s", "identity": "me", "dry_run": True})
    j.step("breaker", "started")
    seq = j.intent("breaker", "scale-capsule", "capsule-controller-manager",
                   request={"method": "PATCH", "path": SCALE_PATH, "body": {}},
                   undo={"op": "scale", "path": SCALE_PATH, "replicas": 2}, dry_run=True)
    j.outcome(seq, "ok", detail="dry-run")
    j.step("breaker", "finished")
    j.step("detach", "started")
    for ns in ("a", "b"):
        j.outcome(_detach(j, ns, dry_run=True), "ok", detail="dry-run")
    j.step("detach", "finished")
    report = build_report(j.records(), journal_path=str(j.path))
    assert report["dry_run"] is True and report["writes"]["dry_run"] == 3
    assert report["actions"]["capsule_scaled"]["dry_run"] is True
    assert report["undo"]["reversible"] == [] and report["undo"]["irreversible"] == []
    assert j.undo_plan() == []
    md = render_markdown(report)
    assert "**DRY RUN**" in md and "| Mode | DRY RUN (nothing persisted) |" in md
    assert "## What would have been done (dry run)" in md
    assert "Nothing to undo: this was a dry run." in md


def test_crash_never_resumed_and_older_journals(tmp_path: Path):
    # An older journal: no trigger record, no event_received, no meta, no counts.
    j = Journal.create(tmp_path, incident_id="inc-old")
    j.step("detach", "started")
    seq = _detach(j, "x")
    j.sync()
    report = build_report(j.records())
    assert report["timeline_origin"] == "first journal record"
    assert report["namespaces"] is None and report["trigger"]["detected_at"] is None
    assert report["first_write"]["latency_ms"] is None
    assert [p["intent"] for p in report["unsettled"]] == [seq]
    assert report["undo"]["command"] == "responder undo <journal.jsonl>"
    md = render_markdown(report)
    assert "not recorded in this journal" in md and "Still pending (1)" in md
    # Records with almost nothing in them must not break it either.
    assert build_report([{"seq": 1, "kind": "intent"}, {"seq": 2, "kind": "outcome", "intent": 1, "status": "ok"}])
    assert render_markdown(build_report([]))


def test_cli(incident, tmp_path, capsys):
    path, _, _ = incident
    assert main(["report", str(path)]) == 0
    assert "# Incident inc-test: postmortem" in capsys.readouterr().out
    assert main(["report", str(path), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["incident"] == "inc-test" and data["undo"]["command"] == f"responder undo {path}"
    out = tmp_path / "postmortem.md"
    assert main(["report", str(path), "--output-file", str(out)]) == 0
    assert out.read_text().startswith("> **CAPSULE IS AT 0 REPLICAS") and "# Incident inc-test" in out.read_text()


@pytest.mark.parametrize("make", ["missing", "directory", "empty", "corrupt"])
def test_cli_bad_journal_is_exit_2(tmp_path, capsys, make):
    target = tmp_path / "inc.jsonl"
    if make == "directory":
        target.mkdir()
    elif make == "empty":
        target.write_text("")
    elif make == "corrupt":
        target.write_text('{"seq": 1, "kind": "incident-opened"}\nnot json\n{"seq": 3, "kind": "x"}\n')
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fix:" in err


def test_the_namespace_hold_is_reported_and_said_to_be_in_place_until_removed(tmp_path):
    j = Journal.create(tmp_path, incident_id="inc-hold", meta={"trigger": _trigger(time.time()), "dry_run": False})
    j.record("trigger", trigger=_trigger(time.time()), journaled_after_s=0.001)
    seqs = []
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        seq = j.intent("breaker", "hold-namespaces", f"{kind}/responder-namespace-hold",
                       request={"method": "POST", "path": "/apis/admissionregistration.k8s.io/v1/x"},
                       undo={"op": "release-hold", "path": f"/apis/admissionregistration.k8s.io/v1/x/{kind}"})
        j.outcome(seq, "ok")
        seqs.append(seq)
    text = render_markdown(build_report(j.records()))
    assert "Namespace hold" in text and "Still in place" in text and "responder undo" in text
    # Recovery removed the policy; the binding stays: still in place.
    release = j.intent("restore-capsule", "release-hold", "ValidatingAdmissionPolicy/responder-namespace-hold",
                       request={"method": "DELETE", "path": "/x"})
    j.outcome(release, "ok")
    j.mark_undone(seqs[0])
    text = render_markdown(build_report(j.records()))
    assert "`ValidatingAdmissionPolicy/responder-namespace-hold` (ok, lifted)" in text and "Still in place" in text
    j.mark_undone(seqs[1])
    assert "Still in place" not in render_markdown(build_report(j.records()))
    assert "armed ahead" not in text and "not armed ahead" not in text  # a journal that does not say


@pytest.mark.parametrize("armed, said", [(True, "armed ahead by `responder protect`"),
                                         (False, "not armed ahead: not installed (policy missing)")])
def test_the_report_says_whether_the_namespace_hold_was_armed_ahead(tmp_path, armed, said):
    j = Journal.create(tmp_path, incident_id="inc-armed", meta={
        "trigger": _trigger(time.time()), "dry_run": False, "hold_armed": armed,
        "hold_not_armed": None if armed else "not installed (policy missing)"})
    seq = j.intent("breaker", "hold-namespaces", "NamespaceHold/responder-namespace-hold",
                   request={"method": "PATCH", "path": "/x"}, undo={"op": "release-hold", "path": "/x"})
    j.outcome(seq, "ok")
    assert said in render_markdown(build_report(j.records()))


def test_the_report_says_the_self_arming_hold_was_in_force_and_whether_recovery_lifted_it(tmp_path):
    j = Journal.create(tmp_path, incident_id="inc-self", meta={"trigger": _trigger(time.time()), "dry_run": False})
    j.record("trigger", trigger=_trigger(time.time()), journaled_after_s=0.001)
    why = "the Tenant CRD tenants.capsule.clastix.io is absent"
    j.record("self-hold", installed=True, in_force=True, why=why, adopted_crd_uid="u1", tenant_crd_uid=None)
    j.record("breaker-verified", step="verify-breaker", probe="tenant-a-ns-01", by="self-arming hold",
             refusal="ValidatingAdmissionPolicy 'responder-namespace-hold-self' ...")
    text = render_markdown(build_report(j.records()))
    assert f"Self-arming hold (`responder protect`) in force when the run began: {why}" in text
    assert "**still in force**" in text
    assert "was refused by self-arming hold" in text and "refused by Capsule's webhook" not in text
    lift = j.intent("restore-capsule", "release-hold", "ValidatingAdmissionPolicy/responder-namespace-hold-self",
                    request={"method": "PATCH", "path": "/x"})
    j.outcome(lift, "ok")
    text = render_markdown(build_report(j.records()))
    assert "lifted by recovery once every namespace was re-adopted" in text and "still in force" not in text
    assert build_report(j.records())["actions"]["self_arming_hold"]["lifted"] is True
