"""The TUI model (responder.tui.state): events in, rows / counts / steps / breaker out."""

from __future__ import annotations

from responder.incident import triage
from responder.cluster.watch import ADDED, DELETED, MODIFIED, SYNCED, TYPE_GONE, WatchEvent
from responder.incident.engine import EngineEvent
from responder.tui.replay import crd_obj, deployment_obj, namespace_obj, tenant_obj, webhook_obj
from responder.tui.state import TuiState, capsule_version, format_journal

TS = "2026-09-21T13:33:20Z"
STREAMS = ("crd", "tenants", "namespaces", "deployment", "validatingwebhooks", "mutatingwebhooks")


def ev(type_: str, resource: str, obj: dict, at: float = 1000.0) -> WatchEvent:
    return WatchEvent(type_, resource, obj, at)


def eng(kind: str, step: str, at: float = 1000.0, **data) -> EngineEvent:
    return EngineEvent(kind, step, data, at)


def listed(model: TuiState, *, tenants=("alpha", "beta"), per=2, crd_deleting: str | None = None) -> TuiState:
    """The initial lists of a small cluster, then SYNCED for every stream."""
    model.apply_watch(ev(ADDED, "crd", crd_obj(deleting=crd_deleting)))
    for t in tenants:
        model.apply_watch(ev(ADDED, "tenants", tenant_obj(t)))
        for i in range(per):
            model.apply_watch(ev(ADDED, "namespaces", namespace_obj(f"{t}-{i}", t)))
    model.apply_watch(ev(ADDED, "namespaces", namespace_obj("kube-system", None)))
    model.apply_watch(ev(ADDED, "namespaces", namespace_obj("plain", None)))
    model.apply_watch(ev(ADDED, "deployment", deployment_obj(2)))
    model.apply_watch(ev(ADDED, "validatingwebhooks", webhook_obj()))
    for stream in STREAMS:
        model.apply_watch(ev(SYNCED, stream, {"metadata": {}}))
    return model


def new_model(**kw) -> TuiState:
    return TuiState(protected=triage.protected_namespaces(), **kw)


def states(model: TuiState) -> dict[str, str]:
    return {name: row.state for name, row in model.rows.items()}


def test_no_verdict_before_the_triage_streams_listed():
    model = new_model()
    model.apply_watch(ev(ADDED, "namespaces", namespace_obj("alpha-0", "alpha")))  # its Tenant not listed yet
    assert not model.ready
    assert not model.flush() and model.rows == {}
    for stream in ("crd", "tenants"):
        model.apply_watch(ev(SYNCED, stream, {}))
    assert not model.ready
    model.apply_watch(ev(SYNCED, "namespaces", {}))
    assert model.ready
    # The Tenant never came: owner not found, so triage (not the TUI) says at-risk.
    changes = model.flush()
    assert [r.name for r in changes.added] == ["alpha-0"]
    assert model.rows["alpha-0"].state == "at-risk"


def test_initial_list_gives_rows_counts_and_groups():
    model = listed(new_model())
    changes = model.flush()
    assert {r.name for r in changes.added} == {"alpha-0", "alpha-1", "beta-0", "beta-1", "kube-system", "plain"}
    assert states(model) == {"alpha-0": "safe", "alpha-1": "safe", "beta-0": "safe", "beta-1": "safe",
                             "kube-system": "protected", "plain": "safe"}
    assert model.rows["alpha-0"].tenant == "alpha" and model.rows["plain"].tenant == ""
    assert model.counts == {"safe": 5, "protected": 1}
    assert changes.tenants["alpha"] == {"safe": 2}
    assert changes.tenants[""] == {"safe": 1, "protected": 1}
    assert model.tenant_summary("") == "safe 1 protected 1"
    assert not model.flush(), "nothing changed since"


def test_crd_deleting_puts_every_tenant_namespace_at_risk():
    model = listed(new_model())
    model.flush()
    model.apply_watch(ev(MODIFIED, "crd", crd_obj(deleting=TS, rv=2)))
    changes = model.flush()
    assert sorted(after.name for _, after in changes.updated) == ["alpha-0", "alpha-1", "beta-0", "beta-1"]
    assert all(before.state == "safe" and after.state == "at-risk" for before, after in changes.updated)
    assert "is being deleted" in model.rows["alpha-0"].reason
    assert model.counts == {"at-risk": 4, "safe": 1, "protected": 1}
    assert model.tenant_counts["alpha"] == {"at-risk": 2}


def test_detach_write_then_modified_namespace_is_detached():
    model = listed(new_model(), crd_deleting=TS)
    model.flush()
    model.apply_engine(eng("write", "detach", action="detach", target="alpha-0", method="PATCH", dry_run=False))
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-0", "alpha", rv=3, owned=False)))
    changes = model.flush()
    assert [(b.state, a.state) for b, a in changes.updated] == [("at-risk", "detached")]
    assert model.rows["alpha-0"].tenant == "alpha"
    assert "Detached by responder from Tenant 'alpha'" in model.rows["alpha-0"].reason


def test_detach_intents_from_the_journal_mark_namespaces_detached():
    """Batched writes (StepContext.write_many) emit no `write` event: the journal says what was detached."""
    model = listed(new_model(), crd_deleting=TS)
    model.flush()
    intent = {"seq": 9, "kind": "intent", "step": "detach", "action": "detach", "target": "beta-1", "dry_run": False,
              "undo": {"op": "reattach", "ownerReferences": [{"kind": "Tenant", "name": "beta"}]}}
    dry = {**intent, "seq": 10, "target": "beta-0", "dry_run": True}
    other = {**intent, "seq": 11, "action": "release-finalizer", "target": "alpha-0"}
    model.add_journal_intents([intent, dry, other])
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("beta-1", "beta", rv=3, owned=False)))
    model.flush()
    assert model.detached == {"beta-1": "beta"}
    assert model.rows["beta-1"].state == "detached"
    assert model.rows["beta-0"].state == model.rows["alpha-0"].state == "at-risk"


def test_a_failed_detach_stays_at_risk():
    model = listed(new_model(), crd_deleting=TS)
    model.flush()
    model.add_journal_intents([{"kind": "intent", "action": "detach", "target": "alpha-0", "dry_run": False}])
    model.flush()
    assert model.rows["alpha-0"].state == "at-risk", "the Tenant reference is still there"


def test_dry_run_write_does_not_count_as_detached():
    model = listed(new_model(), crd_deleting=TS)
    model.flush()
    model.apply_engine(eng("write", "detach", action="detach", target="alpha-0", method="PATCH", dry_run=True))
    assert not model.flush(), "a dry-run write changes nothing"
    assert model.rows["alpha-0"].state == "at-risk"


def test_repeated_updates_of_a_row_are_coalesced():
    model = listed(new_model())
    model.flush()
    for rv in range(2, 12):
        model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-0", "alpha", rv=rv, terminating=TS)))
    changes = model.flush()
    assert len(changes.updated) == 1
    assert changes.updated[0][1].state == "terminating"


def test_deleted_namespaces_tenant_ones_become_gone_others_leave():
    model = listed(new_model())
    model.flush()
    model.apply_watch(ev(DELETED, "namespaces", namespace_obj("alpha-1", "alpha")))
    model.apply_watch(ev(DELETED, "namespaces", namespace_obj("plain", None)))
    changes = model.flush()
    assert [(b.name, a.state) for b, a in changes.updated] == [("alpha-1", "gone")]
    assert "no longer exists" in model.rows["alpha-1"].reason
    assert [r.name for r in changes.removed] == ["plain"]
    assert "plain" not in model.rows
    assert model.counts == {"safe": 3, "protected": 1, "gone": 1}


def test_tenant_deleted_retriages_its_namespaces_only():
    model = listed(new_model())
    model.flush()
    model.apply_watch(ev(DELETED, "tenants", tenant_obj("beta")))
    changes = model.flush()
    assert sorted(a.name for _, a in changes.updated) == ["beta-0", "beta-1"]
    assert model.rows["beta-0"].state == "at-risk" and model.rows["alpha-0"].state == "safe"
    assert "gone (not found or UID differs)" in model.rows["beta-0"].reason


def test_tenant_type_gone_counts_as_listed():
    model = new_model()
    model.apply_watch(ev(SYNCED, "crd", {}))
    model.apply_watch(ev(TYPE_GONE, "tenants", {"metadata": {}}))
    model.apply_watch(ev(ADDED, "namespaces", namespace_obj("alpha-0", "alpha")))
    model.apply_watch(ev(SYNCED, "namespaces", {}))
    assert model.ready
    model.flush()
    assert model.rows["alpha-0"].state == "at-risk"
    assert any("resource type gone" in line.text for line in model.feed)


def test_seed_adds_known_namespaces_gone_before_start():
    model = listed(new_model())
    view = triage.ClusterView(crd_present=True, crd_deleting=False,
                              tenants={"alpha": tenant_obj("alpha"), "beta": tenant_obj("beta")},
                              namespaces=dict(model.namespaces), protected=triage.protected_namespaces(),
                              known_namespaces={"alpha-9": "alpha"})
    model.seed(view)
    model.flush()
    assert model.rows["alpha-9"].state == "gone" and model.rows["alpha-9"].tenant == "alpha"


def test_flush_limit_spreads_a_large_retriage_over_frames():
    model = listed(new_model(), tenants=[f"t{i}" for i in range(10)], per=10)
    first = model.flush(limit=30)
    assert len(first.added) == 30 and not first.complete and model.pending == 72
    rest = model.flush(limit=None)
    assert len(rest.added) == 72 and rest.complete and model.pending == 0


def test_latency_arrivals_are_released_with_the_frame_that_shows_them():
    model = listed(new_model(track_latency=True))
    first = model.flush()
    assert len(first.arrivals) == 11 + len(STREAMS)  # every event so far: 11 ADDED, one SYNCED per stream
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-0", "alpha", rv=5, terminating=TS)),
                      arrived=123.0)
    assert model.flush().arrivals == [123.0]
    # A row left for a later frame (flush limit) keeps its event's arrival until the frame that shows it.
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-1", "alpha", rv=5)), arrived=6.0)
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("beta-1", "beta", rv=5)), arrived=7.0)
    model.apply_engine(eng("step-progress", "detach", done=1, total=4), arrived=8.0)
    assert sorted(model.flush(limit=1).arrivals) == [6.0, 8.0]
    assert model.flush().arrivals == [7.0]


def test_breaker_states_from_engine_events_and_replicas():
    model = listed(new_model())
    assert model.breaker()[0] == "armed"
    model.apply_engine(eng("step-started", "breaker", action="trip-breaker"))
    model.apply_engine(eng("write", "breaker", action="scale-capsule", target="capsule-controller-manager",
                           method="PATCH", dry_run=False))
    assert model.breaker()[0] == "armed", "the write is sent, Capsule not at 0 yet"
    model.apply_watch(ev(MODIFIED, "deployment", deployment_obj(0, rv=2)))
    assert model.breaker() == ("tripped", "Capsule at 0 replicas")
    model.apply_engine(eng("step-finished", "breaker", status="finished", summary="ok", breaker="tripped"))
    assert model.breaker() == ("tripped", "Capsule at 0 replicas; not verified yet")
    model.apply_engine(eng("step-started", "verify-breaker", action="verify-breaker"))
    model.apply_engine(eng("step-finished", "verify-breaker", status="finished", summary="ok", breaker="verified"))
    assert model.breaker()[0] == "verified"
    model.apply_watch(ev(MODIFIED, "deployment", deployment_obj(2, rv=3)))
    state, why = model.breaker()
    assert state == "armed" and "no longer holds" in why


def test_breaker_unavailable_not_verified_dry_run_and_unknown():
    assert new_model().breaker()[0] == "unknown"
    unavailable = listed(new_model())
    unavailable.apply_engine(eng("step-finished", "breaker", status="finished", breaker="unavailable"))
    assert unavailable.breaker()[0] == "unavailable"
    unverified = listed(new_model())
    unverified.apply_watch(ev(MODIFIED, "deployment", deployment_obj(0, rv=2)))
    unverified.apply_engine(eng("step-finished", "verify-breaker", status="finished",
                                breaker="not refused within 30s: admitted"))
    state, why = unverified.breaker()
    assert state == "tripped" and "NOT verified (not refused within 30s" in why
    dry = listed(new_model(dry_run=True))
    dry.apply_engine(eng("step-finished", "breaker", status="finished", breaker="dry-run"))
    assert dry.breaker() == ("armed", "dry run: nothing was tripped")


def test_hold_armed_not_armed_or_unknown():
    model = new_model()
    assert model.hold() == ("unknown", "not read"), "no session has said yet"
    version = model.header_version
    model.set_hold(None)
    assert model.hold() == ("armed", "") and model.header_version == version + 1
    model.set_hold(None)
    assert model.header_version == version + 1, "unchanged: the header is not redrawn"
    model.set_hold("not installed (policy missing)")
    assert model.hold() == ("not armed", "not installed (policy missing)") and model.header_version == version + 2


def test_capsule_version_from_image_tag_label_or_unknown():
    assert capsule_version(deployment_obj(1, version="v0.12.4")) == "v0.12.4"
    by_label = deployment_obj(1, version="v0.14.0")
    by_label["spec"]["template"]["spec"]["containers"][0]["image"] = "registry/capsule@sha256:abc"
    assert capsule_version(by_label) == "0.14.0"
    assert capsule_version(None) == "?"
    assert capsule_version({"metadata": {}, "spec": {}}) == "?"


def test_mode():
    assert new_model().mode() == "auto"
    assert new_model(auto=False).mode() == "confirm"
    assert new_model(yes=True).mode() == "auto --yes"
    model = new_model(auto=False)
    model.set_dry_run(True)
    assert model.mode() == "dry-run"


def test_steps_progress_confirmation_and_elapsed():
    model = new_model(steps=[("breaker", "trip-breaker", "trip it"), ("detach", "detach-namespaces", "detach")])
    assert [s.status for s in model.steps.values()] == ["pending", "pending"]
    model.apply_engine(eng("step-started", "detach", at=100.0, action="detach-namespaces", description="d"))
    model.apply_engine(eng("step-progress", "detach", done=40, total=200, note="pass 1: 200 at risk"))
    step = model.steps["detach"]
    assert (step.status, step.done, step.total, step.note) == ("running", 40, 200, "pass 1: 200 at risk")
    assert step.elapsed(now=102.5) == 2.5
    model.apply_engine(eng("confirm", "detach", summary="finalize 2", answer="2", writes=2))
    assert step.status == "waiting" and model.waiting_confirmation == "detach"
    model.apply_engine(eng("step-progress", "detach", done=200, total=200))
    assert step.status == "running" and model.waiting_confirmation is None
    model.apply_engine(eng("step-finished", "detach", at=104.0, status="finished", summary="detached 200"))
    assert (step.status, step.summary) == ("finished", "detached 200")
    assert step.elapsed(now=999.0) == 4.0, "a finished step's time stops"
    model.apply_engine(eng("step-started", "surprise"))
    assert "surprise" in model.steps, "a step the runbook list did not have still shows"


def test_feed_is_bounded_summarises_initial_lists_and_flags_alerts():
    model = listed(new_model(feed_limit=5))
    assert [line.type for line in model.feed] == ["SYNCED"] * 5
    assert "listed 6" in [line.text for line in model.feed if line.resource == "namespaces"][0]
    for i in range(20):
        model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-0", "alpha", rv=i)))
    model.apply_watch(ev(DELETED, "namespaces", namespace_obj("alpha-1", "alpha")))
    assert len(model.feed) == 5 and model.feed_total == 6 + 21
    assert model.feed[-1].alert and model.feed[-1].text.endswith("DELETED  namespaces alpha-1  deleted")
    assert len(model.take_feed(model.feed_total - 2)) == 2
    assert len(model.take_feed(0)) == 5


def test_journal_lines():
    model = new_model()
    model.add_journal_records([
        {"seq": 5, "ts": "2026-09-21T13:33:21.250Z", "kind": "intent", "step": "detach", "action": "detach",
         "target": "alpha-0", "dry_run": True},
        {"seq": 6, "ts": "2026-09-21T13:33:21.300Z", "kind": "outcome", "intent": 5, "status": "ok"},
        {"seq": 7, "ts": "2026-09-21T13:33:22.000Z", "kind": "step", "step": "detach", "status": "finished",
         "detail": "detached 1"}])
    assert list(model.journal_tail) == ["13:33:21 #5 detach detach alpha-0 (dry-run)",
                                        "13:33:21 #6 -> #5 ok",
                                        "13:33:22 step detach finished: detached 1"]
    assert format_journal({"ts": "x", "kind": "custom"}) == "x custom"


def test_seed_with_the_objects_the_events_gave_retriages_only_what_is_new():
    model = listed(new_model())
    model.flush()
    view = triage.ClusterView(crd_present=True, crd_deleting=False, tenants=dict(model.tenants),
                              namespaces=dict(model.namespaces), protected=triage.protected_namespaces(),
                              known_namespaces={"alpha-9": "alpha"}, detached={})
    model.seed(view)
    assert model.pending == 1, "only the namespace the shadow adds"
    assert [r.name for r in model.flush().added] == ["alpha-9"]
    crd_gone = triage.ClusterView(crd_present=False, crd_deleting=False, tenants=dict(model.tenants),
                                  namespaces=dict(model.namespaces), protected=triage.protected_namespaces())
    model.seed(crd_gone)
    assert model.pending == len(model.rows), "the CRD changed: everything is re-triaged"
    model.flush()
    assert model.rows["alpha-0"].state == "at-risk"



def test_recovery_events_show_restoring_restored_and_readopted():
    """Recovery: a namespace lost in the incident is restored by Velero, then re-adopted by the recreated Tenant."""
    model = listed(new_model(), crd_deleting=TS)
    model.flush()
    model.apply_watch(ev(DELETED, "namespaces", namespace_obj("alpha-0", "alpha")))
    model.apply_watch(ev(TYPE_GONE, "tenants", {"metadata": {}}))
    model.flush()
    assert model.rows["alpha-0"].state == "gone"
    model.apply_engine(eng("restore", "restore", target="alpha-0", status="restoring", dry_run=False))
    model.flush()
    assert model.rows["alpha-0"].state == "restoring"
    # Velero recreates it without ownerReferences; the CRD and the Tenant come back (new UID).
    model.apply_watch(ev(ADDED, "crd", crd_obj()))
    model.apply_watch(ev(ADDED, "namespaces", namespace_obj("alpha-0", "alpha", rv=5, owned=False)))
    model.apply_engine(eng("restore", "restore", target="alpha-0", status="restored", dry_run=False))
    model.flush()
    assert model.rows["alpha-0"].state == "restored", model.rows["alpha-0"].reason
    model.apply_watch(ev(ADDED, "tenants", tenant_obj("alpha", rv=7)))
    model.apply_watch(ev(MODIFIED, "namespaces", namespace_obj("alpha-0", "alpha", rv=6)))
    model.apply_engine(eng("readopt", "readopt", target="alpha-0", tenant="alpha", dry_run=False))
    model.flush()
    assert model.rows["alpha-0"].state == "re-adopted", model.rows["alpha-0"].reason
    assert model.counts["re-adopted"] == 1 and model.tenant_counts["alpha"]["re-adopted"] == 1


def test_dry_run_recovery_events_change_nothing():
    model = listed(new_model())
    model.flush()
    model.apply_engine(eng("readopt", "readopt", target="alpha-0", tenant="alpha", dry_run=True))
    model.apply_engine(eng("restore", "restore", target="alpha-1", status="restoring", dry_run=True))
    assert not model.flush()


def test_velero_location_phase_for_the_header():
    model = new_model()
    assert model.velero() == "?"
    model.apply_watch(ev(SYNCED, "backupstoragelocations", {"metadata": {}}))
    assert model.velero() == "none"
    model.apply_watch(ev(ADDED, "backupstoragelocations", {"metadata": {"name": "default"}, "spec": {"default": True},
                                                           "status": {"phase": "Unavailable"}}))
    assert model.velero() == "Unavailable"
