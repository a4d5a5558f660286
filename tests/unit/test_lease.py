"""The writer Lease's pure decisions (responder/cluster/lease.py): expired?, who leads?, take over?"""

from __future__ import annotations

from responder.cluster.lease import (LEASE_DURATION, LeaseRecord, Observation, decide, holder_live, lease_object,
                                     micro_time, next_record, observe, parse_time, record_from, released_record)

ME, OTHER = "guard/pod-a/1-aaaaaa", "guard/pod-b/1-bbbbbb"


def held(holder: str = OTHER, rv: str = "10", renewed_at: float | None = 1000.0, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=LEASE_DURATION, acquired_at=900.0, renewed_at=renewed_at,
                       transitions=transitions, resource_version=rv)


def test_no_lease_is_created():
    assert decide(None, ME, now=0.0) == "create"
    first = next_record(None, ME, wall_now=1000.0)
    assert (first.holder, first.transitions, first.acquired_at, first.renewed_at) == (ME, 0, 1000.0, 1000.0)


def test_our_own_lease_is_renewed_keeping_acquire_time_and_transitions():
    ours = held(ME, transitions=3)
    assert decide(Observation(ours, since=0.0), ME, now=100.0) == "renew"  # ours even when "expired"
    renewed = next_record(ours, ME, wall_now=1010.0)
    assert (renewed.acquired_at, renewed.renewed_at, renewed.transitions) == (900.0, 1010.0, 3)
    assert renewed.resource_version == "10"  # the update is conditioned on the version read


def test_a_live_holder_is_waited_for_until_its_record_stays_unchanged_for_the_duration():
    seen = Observation(held(), since=50.0)
    assert holder_live(seen, now=50.0) and decide(seen, ME, now=50.0) == "wait"
    assert decide(seen, ME, now=50.0 + LEASE_DURATION - 0.01) == "wait"
    assert not holder_live(seen, now=50.0 + LEASE_DURATION)
    assert decide(seen, ME, now=50.0 + LEASE_DURATION) == "acquire"


def test_a_renewal_restarts_the_observation_clock():
    seen = observe(None, held(rv="10"), now=50.0)
    same = observe(seen, held(rv="10"), now=60.0)
    assert same.since == 50.0  # unchanged record: the clock keeps running
    renewed = observe(same, held(rv="11", renewed_at=1010.0), now=64.0)
    assert renewed.since == 64.0
    assert decide(renewed, ME, now=50.0 + LEASE_DURATION) == "wait"  # it renewed: still live


def test_takeover_counts_a_transition_and_sets_acquire_time():
    taken = next_record(held(transitions=4), ME, wall_now=2000.0)
    assert (taken.holder, taken.transitions, taken.acquired_at, taken.renewed_at) == (ME, 5, 2000.0, 2000.0)
    assert taken.resource_version == "10"


def test_a_released_lease_is_taken_at_once_and_counts_a_transition():
    released = released_record(held(ME, transitions=2), wall_now=1500.0)
    assert released.holder == "" and released.duration == 1.0
    seen = Observation(released, since=100.0)
    assert not holder_live(seen, now=100.0) and decide(seen, OTHER, now=100.0) == "acquire"
    assert next_record(released, OTHER, wall_now=1501.0).transitions == 3  # client-go: the holder changed


def test_lease_object_round_trips():
    record = LeaseRecord(ME, 15.0, 1764670000.25, 1764670010.5, 7, "42")
    obj = lease_object("responder-system", "responder", record)
    assert obj["apiVersion"] == "coordination.k8s.io/v1" and obj["kind"] == "Lease"
    assert obj["metadata"]["resourceVersion"] == "42"
    assert obj["spec"] == {"holderIdentity": ME, "leaseDurationSeconds": 15, "leaseTransitions": 7,
                           "acquireTime": "2025-12-02T10:06:40.250000Z", "renewTime": "2025-12-02T10:06:50.500000Z"}
    assert record_from(obj) == record
    assert "resourceVersion" not in lease_object("ns", "n", LeaseRecord(ME))["metadata"]  # a create
    assert parse_time(micro_time(1.5)) == 1.5 and parse_time("not a time") is None and parse_time(None) is None


def test_a_lease_written_by_another_tool_with_missing_fields_reads_as_free_with_defaults():
    record = record_from({"metadata": {"resourceVersion": "3"}, "spec": {}})
    assert record.holder == "" and record.duration == LEASE_DURATION and record.transitions == 0
    assert decide(Observation(record, since=0.0), ME, now=0.0) == "acquire"


def test_identity_names_the_role_place_boot_and_process(monkeypatch):
    from responder.cluster.lease import boot_id, holder_identity

    monkeypatch.setenv("POD_NAME", "responder-guard-7d9f-x2")
    role, place, process = holder_identity("guard").split("/")
    boot, pid, suffix = process.split(".")
    assert (role, place, pid) == ("guard", "responder-guard-7d9f-x2", str(__import__("os").getpid()))
    assert boot == (boot_id() or "unknown") and len(suffix) == 6
    assert holder_identity("guard") != holder_identity("guard")


def test_only_a_one_shot_responder_gone_from_this_machine_is_known_dead():
    from responder.cluster.lease import dead_here

    gone, running = (lambda pid: False), (lambda pid: True)
    here = dict(place="laptop", boot="abc123")
    assert dead_here("responder/laptop/abc123.4242.f00d12", **here, alive=gone)
    assert not dead_here("responder/laptop/abc123.4242.f00d12", **here, alive=running)  # still running
    assert not dead_here("responder/other-host/abc123.4242.f00d12", **here, alive=gone)  # another machine
    assert not dead_here("responder/laptop/def456.4242.f00d12", **here, alive=gone)  # before a reboot: unknown
    assert not dead_here("guard/laptop/abc123.4242.f00d12", **here, alive=gone)  # guards: only by expiry
    assert not dead_here("responder/laptop/unknown.4242.f00d12", place="laptop", boot="", alive=gone)
    for odd in ("", "responder", "responder/laptop", "responder/laptop/abc123.x.y", "kube-controller-manager_0a1b"):
        assert not dead_here(odd, **here, alive=gone), odd


def test_a_lease_released_after_the_journal_closed_is_not_journaled(tmp_path):
    from types import SimpleNamespace

    from responder.cluster.lease import LeadershipChange
    from responder.incident.journal import Journal
    from responder.response.leadership import journal_leadership

    journal = Journal.create(tmp_path, incident_id="inc-1")
    session = SimpleNamespace(journal=journal)
    listener = journal_leadership(session)
    listener(LeadershipChange(event="acquired", holder="me", previous_holder="", transitions=1))
    journal.close()
    listener(LeadershipChange(event="released", holder="", previous_holder="me", transitions=1))  # no JournalError
    kinds = [r["event"] for r in Journal.open(tmp_path / "inc-1.jsonl", readonly=True).records() if r["kind"] == "leadership"]
    assert kinds == ["acquired"]
