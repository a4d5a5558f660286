"""Attached to a guard: which Lease holders a TUI attaches to, which Incident it follows, which step waits for
its approval, and the approval itself (`approve_step`, shared with `responder approve`): one write, the
Incident's spec.approvals, with the caller's identity. A session attached to a guard opens no incident and runs
no step. No cluster: nothing here connects."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from responder.cluster.client import JSON_PATCH
from responder.cluster.kubeconfig import load_cluster_access
from responder.cluster.lease import LeaseHeld, holder_role
from responder.errors import ConfigError, NotFound, ResponderError
from responder.response import session as session_module
from responder.response.approval import approve_step
from responder.response.attach import (LEASE_PATH, GuardFollower, GuardView, attach_target, awaiting_approval,
                                       pick_incident, snapshot_owners)
from responder.response.incident_object import CONTAINED, RECOVERED, WAITING, INCIDENTS_PATH, pack_json
from responder.response.session import Session, SessionOptions, resolve_runbook

from .kubeconfigs import unreachable_kubeconfig

GUARD = "guard/responder-guard-7c9d-x2/3f2a1b.1.ab12cd"


def incident(name: str = "inc-1", *, phase: str = WAITING, waiting: str | None = "recreate-tenants",
             created: str = "2026-12-02T10:00:00Z", approvals: list | None = None, steps: list | None = None) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created, "resourceVersion": "7"},
            "spec": {"incidentId": name.upper(), "approvals": list(approvals or [])},
            "status": {"phase": phase, "waitingFor": waiting, "leader": GUARD,
                       "approvalSteps": ["recreate-tenants", "restore", "readopt"], "steps": list(steps or [])}}


def test_holder_identities_name_their_role_and_place():
    assert holder_role(GUARD) == ("guard", "responder-guard-7c9d-x2")
    assert holder_role("responder/laptop/abc.42.ffffff") == ("responder", "laptop")
    assert holder_role("") == ("", "") and holder_role("kube-controller-manager") == ("", "")


def test_a_tui_attaches_only_to_a_guard():
    assert attach_target(GUARD) == "responder-guard-7c9d-x2"
    # A TUI or a headless run holding the Lease keeps no Incident to follow: refused, as before.
    assert attach_target("responder/laptop/abc.42.ffffff") is None
    assert attach_target("") is None and attach_target("someone-else") is None


def test_the_incident_followed():
    old = incident("inc-old", phase=RECOVERED, waiting=None, created="2026-12-01T00:00:00Z")
    first = incident("inc-a", created="2026-12-02T10:00:00Z")
    newer = incident("inc-b", phase=CONTAINED, waiting=None, created="2026-12-02T11:00:00Z")
    assert pick_incident([], None) is None
    assert pick_incident([old], None) is None  # an ended incident from before is not the guard's incident now
    assert pick_incident([old, first, newer], None)["metadata"]["name"] == "inc-b"  # the newest open one
    # The one followed stays shown, ended or not, while it exists.
    ended = incident("inc-a", phase=RECOVERED, waiting=None)
    assert pick_incident([ended, newer], "inc-a")["metadata"]["name"] == "inc-a"
    assert pick_incident([newer], "inc-gone")["metadata"]["name"] == "inc-b"


def test_the_step_awaiting_approval():
    assert awaiting_approval(incident()) == "recreate-tenants"
    assert awaiting_approval(incident(phase=CONTAINED, waiting=None)) is None
    approved = incident(approvals=[{"step": "recreate-tenants", "approver": "alice", "approvedAt": "t"}])
    assert awaiting_approval(approved) is None  # approved already: the guard is about to run it
    assert awaiting_approval(incident(waiting="detach")) is None  # not a step that waits for approval
    done = incident(steps=[{"id": "recreate-tenants", "status": "finished", "finishedAt": "t"}])
    assert awaiting_approval(done) is None


def test_the_snapshot_says_which_tenant_owned_each_namespace():
    obj = incident()
    assert snapshot_owners(obj) == {}
    obj["status"]["snapshot"] = pack_json({"namespaces": {"a-ns-1": "a"}, "owners": {"a-ns-1": {"name": "a"}}})
    assert snapshot_owners(obj) == {"a-ns-1": "a"}
    obj["status"]["snapshot"]["sha256"] = "0" * 64
    assert snapshot_owners(obj) == {}  # a damaged snapshot marks nothing


class FakeClient:
    """The Incident API as approve_step uses it: GET, the SelfSubjectReview, a JSON patch."""

    def __init__(self, obj: dict | None, username: str = "alice@example.com") -> None:
        self.obj = obj
        self.username = username
        self.writes: list[tuple[str, list, bool]] = []

    async def get_or_none(self, path: str):
        if self.obj is None or not path.endswith("/" + self.obj["metadata"]["name"]):
            return None
        return copy.deepcopy(self.obj)

    async def get(self, path: str):
        obj = await self.get_or_none(path)
        assert obj is not None, path
        return obj

    async def request(self, method: str, path: str, *, dry_run: bool, body: dict):
        assert method == "POST" and path.endswith("/selfsubjectreviews") and dry_run is False
        return {"status": {"userInfo": {"username": self.username}}}

    async def patch(self, path: str, ops, *, patch_type: str, dry_run: bool):
        assert patch_type == JSON_PATCH and path == f"{INCIDENTS_PATH}/{self.obj['metadata']['name']}"
        self.writes.append((path, ops, dry_run))
        if not dry_run:
            self.obj["spec"].setdefault("approvals", []).append(ops[-1]["value"] if ops[-1]["path"].endswith("/-")
                                                                else ops[-1]["value"][0])
        return copy.deepcopy(self.obj)


async def test_an_approval_is_one_write_with_the_callers_identity():
    client = FakeClient(incident())
    result = await approve_step(client, "inc-1", "recreate-tenants")
    assert result["approver"] == "alice@example.com" and result["already"] is False and result["approvedAt"]
    assert len(client.writes) == 1
    path, ops, dry_run = client.writes[0]
    # Guarded by the list as read (no approval yet), not by the resourceVersion the guard's status writes move.
    assert ops[0] == {"op": "test", "path": "/spec/approvals", "value": []} and dry_run is False
    assert client.obj["spec"]["approvals"] == [{"step": "recreate-tenants", "approver": "alice@example.com",
                                                "approvedAt": result["approvedAt"]}]
    # Approved again (another on-call, a second modal): the first approval stands, nothing written.
    again = await approve_step(FakeClient(client.obj, "bob"), "inc-1", "recreate-tenants")
    assert again["already"] is True and again["approver"] == "alice@example.com"


async def test_bad_approvals_write_nothing():
    for obj, step, words in ((None, "restore", "no Incident inc-1"),
                             (incident(), "detach", "not a recovery step"),
                             (incident(phase=RECOVERED, waiting=None), "restore", "has ended")):
        client = FakeClient(obj)
        with pytest.raises(ConfigError, match=words):
            await approve_step(client, "inc-1", step)
        assert client.writes == []


async def test_a_dry_run_approval_is_sent_as_one(tmp_path: Path):
    client = FakeClient(incident())
    result = await approve_step(client, "inc-1", "recreate-tenants", dry_run=True)
    assert result["dry_run"] is True and [w[2] for w in client.writes] == [True]
    assert client.obj["spec"]["approvals"] == []


def _session(tmp_path: Path) -> Session:
    return Session(load_cluster_access(str(unreachable_kubeconfig(tmp_path))),
                   SessionOptions(runbook=resolve_runbook(None), journal_dir=tmp_path / "incidents"))


@pytest.mark.parametrize("holder, attach, attached", [(GUARD, True, True), (GUARD, False, False),
                                                      ("responder/laptop/abc.42.ffffff", True, False)])
async def test_a_session_attaches_to_a_leading_guard_or_refuses(tmp_path: Path, monkeypatch, holder, attach, attached):
    async def held(session):
        error = LeaseHeld("another responder holds this cluster's Lease")
        error.holder = holder
        raise error

    monkeypatch.setattr(session_module, "hold_writer_lease", held)
    session = _session(tmp_path)
    try:
        if not attached:  # a headless watch, or a holder that is not a guard: refused as before (exit 6)
            with pytest.raises(LeaseHeld):
                await session.hold_lease(attach=attach)
            assert session.attached_to == ""
            return
        await session.hold_lease(attach=attach)
        assert session.attached_to == holder and session.leadership is None
        # Attached: what it detects opens no incident here, and no step can run (no engine: nothing written).
        assert session.may_open is not None and not session.may_open()
        with pytest.raises(ResponderError, match="runs no step"):
            session.make_engine()
    finally:
        await session.close()


class ReadOnlyCluster:
    """The Lease and the Incidents as GuardFollower reads them; any other call fails the test."""

    def __init__(self, holder: str, items: list | None) -> None:
        self.holder = holder
        self.items = items  # None: the Incident CRD is not installed
        self.calls: list[str] = []

    async def get_or_none(self, path: str):
        self.calls.append(f"GET {path}")
        assert path == LEASE_PATH
        return {"metadata": {"resourceVersion": "3"}, "spec": {"holderIdentity": self.holder}}

    async def get(self, path: str):
        self.calls.append(f"LIST {path}")
        assert path == INCIDENTS_PATH
        if self.items is None:
            raise NotFound(404, "NotFound", "the server could not find the requested resource")
        return {"items": copy.deepcopy(self.items)}


async def test_the_follower_reads_the_lease_and_the_incident_only():
    cluster = ReadOnlyCluster(GUARD, None)
    follower = GuardFollower(cluster, GUARD)  # type: ignore[arg-type]
    seen = await follower.look()
    assert seen == GuardView(GUARD, None)  # no CRD: nothing to follow yet, no error
    cluster.items = [incident("inc-a", phase=CONTAINED, waiting=None)]
    seen = await follower.look()
    assert seen.incident["metadata"]["name"] == "inc-a" and seen.owners == {}
    # The snapshot arrives; then a failover: the standby leads and keeps the same Incident going.
    cluster.items[0]["status"]["snapshot"] = pack_json({"owners": {"a-ns-1": {"name": "a"}}})
    cluster.holder = "guard/responder-guard-7c9d-q8/3f2a1b.1.ee34ff"
    cluster.items.append(incident("inc-b", created="2026-12-02T12:00:00Z"))
    seen = await follower.look()
    assert seen.holder == cluster.holder and follower.holder == cluster.holder
    assert seen.incident["metadata"]["name"] == "inc-a" and seen.owners == {"a-ns-1": "a"}
    assert {c.split()[0] for c in cluster.calls} == {"GET", "LIST"}
