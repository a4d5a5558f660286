"""The incident journal: durable JSONL, torn-tail tolerance, resume/undo queries, redaction, locking."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from responder.errors import JournalError
from responder.incident.journal import Journal, redact

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REPO = Path(__file__).resolve().parents[2]


def file_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_create_writes_opened_record(tmp_path: Path) -> None:
    with Journal.create(tmp_path / "j", meta={"cluster": "prod", "runbook": "rb"}) as j:
        assert re.fullmatch(r"inc-\d{8}T\d{6}Z-[0-9a-f]{4}", j.incident_id)
        assert j.path == tmp_path / "j" / f"{j.incident_id}.jsonl"
        recs = file_records(j.path)
    assert len(recs) == 1
    first = recs[0]
    assert first["seq"] == 1 and first["kind"] == "incident-opened"
    assert first["incident"] == j.incident_id
    assert first["meta"] == {"cluster": "prod", "runbook": "rb"}
    assert TS.match(first["ts"]), first["ts"]
    assert list(first)[:4] == ["seq", "ts", "incident", "kind"]


def test_create_refuses_existing_incident(tmp_path: Path) -> None:
    Journal.create(tmp_path, incident_id="inc-a").close()
    with pytest.raises(JournalError, match="already exists"):
        Journal.create(tmp_path, incident_id="inc-a")
    with pytest.raises(JournalError, match="invalid incident id"):
        Journal.create(tmp_path, incident_id="../escape")


def test_records_are_readable_by_a_fresh_open(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, incident_id="inc-1")
    seq = j.intent("breaker", "patch-webhook", "vwc/capsule", request={"op": "replace"}, undo={"op": "back"})
    j.outcome(seq, "ok", detail="patched", response={"code": 200})
    j.record("note", text="hello", n=3)
    written = j.records()
    # No close(): every record is on disk as soon as record() returns. A fresh reader (readonly,
    # so the writer's lock does not matter) sees exactly the same records.
    reader = Journal.open(j.path, readonly=True)
    assert reader.records() == written
    assert [r["seq"] for r in written] == [1, 2, 3, 4]
    assert reader.incident_id == "inc-1"
    j.close()

    # A writer that re-opens continues the sequence after the existing records.
    with Journal.open(j.path) as again:
        rec = again.record("note", text="after")
        assert rec["seq"] == 5
    assert [r["seq"] for r in file_records(j.path)] == [1, 2, 3, 4, 5]


def test_readonly_journal_cannot_write(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, incident_id="inc-ro")
    j.close()
    with pytest.raises(JournalError, match="not open for writing"):
        j.record("note")
    with pytest.raises(JournalError, match="not open for writing"):
        Journal.open(j.path, readonly=True).record("note")


def test_reserved_fields_and_bad_statuses_rejected(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-r") as j:
        with pytest.raises(ValueError, match="reserved"):
            j.record("note", seq=99)
        seq = j.intent("s", "a", "t")
        with pytest.raises(ValueError, match="status"):
            j.outcome(seq, "great")
        with pytest.raises(ValueError, match="no intent 42"):
            j.outcome(42, "ok")
        with pytest.raises(ValueError, match="not an intent"):
            j.mark_undone(1)  # record 1 is incident-opened
        assert len(j.records()) == 2  # nothing bad reached the journal


def test_torn_last_line_is_ignored_and_next_append_starts_fresh(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, incident_id="inc-torn")
    j.intent("s1", "a", "t1")
    j.close()
    with open(j.path, "ab") as fh:  # a crash in the middle of writing record 3
        fh.write(b'{"seq":3,"ts":"2026-11-26T14:22:33.000Z","incident":"inc-torn","kind":"inte')

    reader = Journal.open(j.path, readonly=True)
    assert [r["seq"] for r in reader.records()] == [1, 2]

    with Journal.open(j.path) as again:
        assert [r["seq"] for r in again.records()] == [1, 2]
        assert again.record("note", text="next")["seq"] == 3
    lines = j.path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    recs = [json.loads(line) for line in lines[:-1]]  # every line parses: the torn bytes are gone
    assert [(r["seq"], r["kind"]) for r in recs] == [(1, "incident-opened"), (2, "intent"), (3, "note")]


def test_empty_file_from_crash_right_after_create(tmp_path: Path) -> None:
    path = tmp_path / "inc-empty.jsonl"
    path.write_bytes(b'{"seq":1,"ts":"x","inci')  # crashed while writing the first record
    with Journal.open(path) as j:
        assert j.records() == []
        assert j.incident_id == "inc-empty"
        assert j.record("incident-opened", meta={})["seq"] == 1


@pytest.mark.parametrize("bad, why", [
    (b"{not json}\n", "corrupt record"),
    (b"[1, 2]\n", "not a journal record"),
    (b'{"seq": 1, "kind": "note"}\n', "seq 1 after 2"),
])
def test_corrupt_middle_line_names_file_and_line(tmp_path: Path, bad: bytes, why: str) -> None:
    j = Journal.create(tmp_path, incident_id="inc-bad")
    j.record("note", n=1)
    j.record("note", n=2)
    j.close()
    lines = j.path.read_bytes().splitlines(keepends=True)
    lines[2] = bad  # line 3 of 3; it is complete (ends in \n), so it is not a torn tail
    lines.append(b'{"seq": 9, "kind": "note"}\n')
    j.path.write_bytes(b"".join(lines))
    with pytest.raises(JournalError) as err:
        Journal.open(j.path)
    assert f"{j.path}:3:" in err.value.message
    assert why in err.value.message
    assert err.value.fix
    # The failed open did not leave the file locked: a second try fails the same way, not "in use".
    with pytest.raises(JournalError) as again:
        Journal.open(j.path)
    assert f"{j.path}:3:" in again.value.message


def test_done_pending_and_undo_plan(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-q") as j:
        a = j.intent("breaker", "patch", "webhook/a", undo={"restore": "a"})
        j.outcome(a, "ok")
        b = j.intent("breaker", "patch", "webhook/b", undo={"restore": "b"})
        j.outcome(b, "failed", detail="409")
        c = j.intent("detach", "patch", "ns/c", undo={"restore": "c"})
        j.outcome(c, "skipped", detail="already detached")
        d = j.intent("detach", "patch", "ns/d", undo={"restore": "d"})
        j.outcome(d, "ok")
        e = j.intent("detach", "patch", "ns/e", undo={"restore": "e"})  # crash before the answer
        f = j.intent("detach", "patch", "ns/f", undo=None)
        j.outcome(f, "ok")  # nothing to undo
        g = j.intent("detach", "patch", "ns/g", undo={"restore": "g"})
        j.outcome(g, "ok")

        assert j.done("breaker", "patch", "webhook/a")
        assert not j.done("breaker", "patch", "webhook/b")  # failed
        assert j.done("detach", "patch", "ns/c")  # skipped counts as done
        assert not j.done("detach", "patch", "ns/e")  # no outcome
        assert not j.done("detach", "patch", "ns/zzz")
        assert not j.done("breaker", "patch", "ns/d")  # the step must match too

        assert [p["seq"] for p in j.pending()] == [e]
        assert j.pending()[0]["target"] == "ns/e"

        plan = j.undo_plan()
        assert [p["intent"] for p in plan] == [g, d, a]  # newest first; failed/skipped/pending/no-undo out
        assert plan[0] == {"intent": g, "step": "detach", "action": "patch", "target": "ns/g",
                           "undo": {"restore": "g"}}

        j.mark_undone(d, detail="restored")
        assert [p["intent"] for p in j.undo_plan()] == [g, a]

        # A retry that later succeeds: the last outcome counts.
        j.outcome(b, "ok")
        assert j.done("breaker", "patch", "webhook/b")
        assert [p["intent"] for p in j.undo_plan()] == [g, b, a]

    # The same answers after a restart.
    again = Journal.open(j.path, readonly=True)
    assert [p["intent"] for p in again.undo_plan()] == [g, b, a]
    assert [p["seq"] for p in again.pending()] == [e]


def test_dry_run_intents_are_never_undone(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-dry") as j:
        real = j.intent("s", "delete", "x", undo={"create": "x"})
        j.outcome(real, "ok")
        dry = j.intent("s", "delete", "y", undo={"create": "y"}, dry_run=True)
        j.outcome(dry, "ok")
        assert [p["intent"] for p in j.undo_plan()] == [real]
        assert j.records()[-2]["dry_run"] is True


# The resume/undo queries as they were before the journal kept indexes: a full scan per call. The
# indexed answers must stay exactly these.
def ref_outcomes(records: list[dict]) -> dict:
    return {r["intent"]: r for r in records if r.get("kind") == "outcome" and "intent" in r}


def ref_done(records: list[dict], step: str, action: str, target: str) -> bool:
    outcomes = ref_outcomes(records)
    return any(r.get("step") == step and r.get("action") == action and r.get("target") == target
               and outcomes.get(r["seq"], {}).get("status") in ("ok", "skipped")
               for r in records if r.get("kind") == "intent")


def ref_first_intent(records: list[dict], step: str, action: str, target: str) -> dict | None:
    return next((r for r in records if r.get("kind") == "intent" and r.get("step") == step
                 and r.get("action") == action and r.get("target") == target), None)


def ref_pending(records: list[dict]) -> list[dict]:
    outcomes = ref_outcomes(records)
    return [r for r in records if r.get("kind") == "intent" and r["seq"] not in outcomes]


def ref_undo_plan(records: list[dict]) -> list[dict]:
    outcomes = ref_outcomes(records)
    undone = {r["intent"] for r in records if r.get("kind") == "undone" and "intent" in r}
    plan = [{"intent": r["seq"], "step": r.get("step"), "action": r.get("action"), "target": r.get("target"),
             "undo": r["undo"]}
            for r in records if r.get("kind") == "intent" and outcomes.get(r["seq"], {}).get("status") == "ok"
            and not r.get("dry_run") and r.get("undo") is not None and r["seq"] not in undone]
    return plan[::-1]


def assert_queries_match_reference(j: Journal, keys: list[tuple[str, str, str]]) -> None:
    recs = j.records()
    for key in keys:
        assert j.done(*key) == ref_done(recs, *key), key
        assert j.first_intent(*key) == ref_first_intent(recs, *key), key
    assert j.pending() == ref_pending(recs)
    assert j.undo_plan() == ref_undo_plan(recs)


def test_indexed_queries_answer_like_a_full_scan(tmp_path: Path) -> None:
    import random

    rnd = random.Random(20261126)
    keys = [(s, a, t) for s in ("contain", "recover") for a in ("detach", "readopt") for t in ("ns-1", "ns-2", "ns-3")]
    keys.append(("recover", "readopt", "never-written"))
    seqs: list[int] = []
    with Journal.create(tmp_path, incident_id="inc-idx") as j:
        for i in range(400):
            roll = rnd.random()
            if roll < 0.35 or not seqs:
                step, action, target = rnd.choice(keys[:-1])
                seqs.append(j.intent(step, action, target, undo=rnd.choice([None, {"op": "x", "i": i}]),
                                     dry_run=rnd.random() < 0.15, sync=False))
            elif roll < 0.75:  # first, retried and contradicting outcomes: the last one counts
                j.outcome(rnd.choice(seqs), rnd.choice(["ok", "skipped", "failed"]), sync=False)
            elif roll < 0.85:
                j.mark_undone(rnd.choice(seqs))
            elif roll < 0.9:  # written with record(), as a caller may: indexed just the same
                j.record("outcome", sync=False, intent=rnd.choice(seqs), status=rnd.choice(["ok", "failed"]))
            else:
                j.record("note", sync=False, text="not an intent", intent=rnd.choice(seqs))
            if i % 40 == 0:
                assert_queries_match_reference(j, keys)
        # An outcome written (by hand) before its intent, and one with no status at all.
        ahead = len(j.records()) + 2
        j.record("outcome", intent=ahead, status="ok")
        assert j.intent("recover", "readopt", "ns-late", undo={"op": "late"}) == ahead
        j.record("outcome", intent=seqs[0])
        keys.append(("recover", "readopt", "ns-late"))
        assert j.done("recover", "readopt", "ns-late")
        assert_queries_match_reference(j, keys)
        j.sync()
        assert j.pending() and j.undo_plan() and any(j.done(*k) for k in keys)  # the test covers all three
    # The same answers from the indexes built on open, readonly and for writing.
    assert_queries_match_reference(Journal.open(j.path, readonly=True), keys)
    with Journal.open(j.path) as again:
        assert_queries_match_reference(again, keys)
        again.outcome(again.pending()[0]["seq"], "ok")
        assert_queries_match_reference(again, keys)


def test_list_valued_names_still_match(tmp_path: Path) -> None:
    # JSON has no tuples: a list target cannot be a dict key, but done() still finds it like a scan would.
    with Journal.create(tmp_path, incident_id="inc-odd") as j:
        seq = j.intent("s", "a", ["x", "y"])  # type: ignore[arg-type]
        assert not j.done("s", "a", ["x", "y"])  # type: ignore[arg-type]
        j.outcome(seq, "ok")
        assert j.done("s", "a", ["x", "y"])  # type: ignore[arg-type]
        assert not j.done("s", "a", ("x", "y"))  # type: ignore[arg-type]
        assert j.first_intent("s", "a", ["x", "y"])["seq"] == seq  # type: ignore[arg-type,index]


class CountingList(list):
    iterations = 0

    def __iter__(self):
        CountingList.iterations += 1
        return super().__iter__()


def test_queries_do_not_scan_the_journal(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-scan") as j:
        for i in range(500):
            seq = j.intent("detach", "detach", f"ns-{i}", undo={"op": "reattach"}, sync=False)
            if i % 5:
                j.outcome(seq, "ok", sync=False)
        j.sync()
        j._records = CountingList(j._records)
        CountingList.iterations = 0
        for i in range(500):
            assert j.done("detach", "detach", f"ns-{i}") == bool(i % 5)
            assert not j.done("readopt", "readopt", f"ns-{i}")
            assert j.first_intent("detach", "detach", f"ns-{i}")["target"] == f"ns-{i}"  # type: ignore[index]
        j.outcome(j.pending()[0]["seq"], "ok")
        j.mark_undone(2)
        assert len(j.pending()) == 99 and len(j.undo_plan()) == 400
        assert CountingList.iterations == 0  # no query walked the list of records


def test_step_state(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-steps") as j:
        j.step("breaker", "started")
        j.step("breaker", "finished")
        j.step("snapshot", "started")
        j.step("detach", "skipped", detail="not needed")
        j.record("step-failed", step="snapshot")  # the spelled-out kind is understood too
        with pytest.raises(ValueError):
            j.step("x", "running")
        assert j.step_state() == {"breaker": "finished", "snapshot": "failed", "detach": "skipped"}


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    secret_obj = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tenant-creds"},
        "data": {"ca.crt": "U1VQRVJTRUNSRVREQVRB"}, "stringData": {"pw": "plain-text-hunter2"},
    }
    request = {
        "headers": {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.TOKENVALUE"},
        "body": secret_obj,
        "items": [{"kind": "Secret", "data": {"k": "TElTVElURU0="}}],
        "user": {"Token": "abc-token-123", "client-key-data": "LS0tS0VZREFUQQ==", "idToken": "idtok-999"},
    }
    secret_list = {"kind": "SecretList", "items": [{"metadata": {"name": "s"}, "data": {"x": "TElTVFNFQ1JFVA=="}}]}
    with Journal.create(tmp_path, incident_id="inc-sec") as j:
        seq = j.intent("backup", "get", "secret/tenant-creds", request=request, undo={"create": secret_obj})
        j.outcome(seq, "ok", response=secret_list)
        j.record("note", token="note-token-777", password="pw-888", nested=[{"secret": "s3cr3t"}])
        rec = j.records()[1]
    raw = j.path.read_bytes()
    for needle in [b"U1VQRVJTRUNSRVREQVRB", b"plain-text-hunter2", b"TOKENVALUE", b"TElTVElURU0=",
                   b"abc-token-123", b"LS0tS0VZREFUQQ==", b"idtok-999", b"TElTVFNFQ1JFVA==",
                   b"note-token-777", b"pw-888", b"s3cr3t"]:
        assert needle not in raw, needle
    assert raw.count(b"<redacted>") >= 11
    # Structure survives: key names stay, non-secret fields stay, the caller's dicts are untouched.
    assert rec["request"]["body"]["data"] == {"ca.crt": "<redacted>"}
    assert rec["request"]["body"]["metadata"] == {"name": "tenant-creds"}
    assert rec["undo"]["create"]["stringData"] == {"pw": "<redacted>"}
    assert secret_obj["data"]["ca.crt"] == "U1VQRVJTRUNSRVREQVRB"
    assert request["user"]["Token"] == "abc-token-123"


def test_redact_leaves_ordinary_data_alone() -> None:
    obj = {"kind": "ConfigMap", "data": {"token-ttl": "1h"}, "tokens": 3, "tokenFile": "/x", "spec": [1, 2]}
    assert redact(obj) == obj


def test_second_writer_is_refused(tmp_path: Path) -> None:
    first = Journal.create(tmp_path, incident_id="inc-lock")
    with pytest.raises(JournalError) as err:
        Journal.open(first.path)
    assert "is in use by another responder process" in err.value.message
    assert err.value.fix
    # Readers are fine while a writer runs (report), and the writer can still write.
    assert len(Journal.open(first.path, readonly=True).records()) == 1
    first.record("note")
    first.close()
    with Journal.open(first.path) as second:
        assert second.record("note")["seq"] == 3


def test_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-lock2") as j:
        code = textwrap.dedent(f"""
            import sys
            from responder.errors import JournalError
            from responder.incident.journal import Journal
            try:
                Journal.open({str(j.path)!r})
            except JournalError as exc:
                print(exc.message)
                sys.exit(7)
        """)
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 7, proc.stderr
        assert "in use by another responder process" in proc.stdout


CHILD = """
import sys
from pathlib import Path
from responder.incident.journal import Journal

j = Journal.create(Path(sys.argv[1]), incident_id="inc-kill", meta={"child": True})
i = 0
while True:
    i += 1
    seq = j.intent("step-%d" % (i % 7), "patch", "ns/t%d" % i, request={"i": i, "pad": "x" * (i % 5000)},
                   undo={"i": i})
    print(seq, flush=True)  # acknowledged: record() returned, so this record must survive
"""


def test_sigkill_mid_write_keeps_every_complete_record(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 300:
                break
        # The child keeps writing while we read; SIGKILL lands at an arbitrary point in a write.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert len(acked) >= 300

    path = tmp_path / "inc-kill.jsonl"
    with Journal.open(path) as j:  # the kill released the lock, and the journal re-opens for writing
        recs = j.records()
        seqs = [r["seq"] for r in recs]
        assert seqs == list(range(1, len(recs) + 1))  # no gaps, no duplicates
        assert set(acked) <= set(seqs)  # everything acknowledged is there
        assert recs[0]["kind"] == "incident-opened"
        for r in recs[1:]:
            i = r["request"]["i"]
            assert r["kind"] == "intent" and r["seq"] == i + 1
            assert r["target"] == f"ns/t{i}" and r["request"]["pad"] == "x" * (i % 5000)
            assert r["undo"] == {"i": i}
        # Killed between intent and outcome: all of them are pending, none are done or undoable.
        assert len(j.pending()) == len(recs) - 1
        assert j.undo_plan() == []
        assert j.record("note", text="resumed")["seq"] == len(recs) + 1
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def test_journal_file_is_private(tmp_path: Path) -> None:
    with Journal.create(tmp_path, incident_id="inc-mode") as j:
        assert os.stat(j.path).st_mode & 0o777 == 0o600
