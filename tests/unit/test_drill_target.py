"""Pure logic of the drill on an existing cluster (the --target guard), the scenarios' webhook
patches and the bench's bookkeeping (no cluster)."""

from __future__ import annotations

import argparse
import time

import pytest
import yaml

from responder.cli import main
from responder.cluster.watch import DELETED, MODIFIED, WatchEvent
from responder.drill.cascade_bench import Tracker, table
from responder.drill.existing import check_target, target_guard
from responder.drill.scenarios import _policy_ops, breaker_hooks

CONTEXTS = ["sandbox", "prod"]


def test_matching_target_is_allowed():
    d = target_guard(target="sandbox", context=None, current_context="sandbox", contexts=CONTEXTS)
    assert d.allowed and d.context == "sandbox"
    d = target_guard(target="prod", context="prod", current_context="sandbox", contexts=CONTEXTS)
    assert d.allowed and d.context == "prod"


def test_missing_target_is_refused_and_names_the_context():
    d = target_guard(target=None, context=None, current_context="sandbox", contexts=CONTEXTS)
    assert not d.allowed and "--target sandbox" in d.message and "nothing was written" in d.message


def test_target_must_match_the_context_in_use_not_just_exist():
    # --target names another existing context than the current-context: refused.
    d = target_guard(target="sandbox", context=None, current_context="prod", contexts=CONTEXTS)
    assert not d.allowed and "'prod'" in d.message and "current-context" in d.message
    # --context wins over the current-context.
    d = target_guard(target="sandbox", context="prod", current_context="sandbox", contexts=CONTEXTS)
    assert not d.allowed and "from --context" in d.message


def test_unknown_context_or_no_context_is_refused():
    assert not target_guard(target="x", context="x", current_context="sandbox", contexts=CONTEXTS).allowed
    assert not target_guard(target="sandbox", context=None, current_context=None, contexts=CONTEXTS).allowed


def _kubeconfig(tmp_path, current="sandbox"):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in CONTEXTS]}))
    return path


def test_check_target_reads_the_kubeconfig(tmp_path):
    kc = str(_kubeconfig(tmp_path))
    assert check_target(kc, None, "sandbox").allowed
    assert not check_target(kc, None, "prod").allowed
    assert check_target(kc, "prod", "prod").allowed


def test_cli_refuses_with_exit_2_before_any_request(tmp_path, capsys):
    # The server is 127.0.0.1:1 (nothing listens): a refusal must come from the guard, not the network.
    kc = str(_kubeconfig(tmp_path))
    assert main(["drill", "--kubeconfig", kc, "--target", "prod"]) == 2
    err = capsys.readouterr().err
    assert "refusing to drill" in err and err.count("error:") == 1
    assert main(["drill", "--kubeconfig", kc]) == 2
    assert "without --target" in capsys.readouterr().err


def test_breaker_hooks_and_policy_ops():
    hooks = [
        {"name": "ns.capsule", "failurePolicy": "Fail",
         "rules": [{"apiGroups": [""], "resources": ["namespaces"], "operations": ["CREATE", "DELETE"]}]},
        {"name": "pods.capsule", "failurePolicy": "Fail",
         "rules": [{"apiGroups": [""], "resources": ["pods"], "operations": ["CREATE"]}]},
        {"name": "ns-open.capsule", "failurePolicy": "Ignore",
         "rules": [{"apiGroups": [""], "resources": ["namespaces"], "operations": ["*"]}]},
    ]
    assert [h["name"] for h in breaker_hooks(hooks)] == ["ns.capsule"]
    ops = _policy_ops(hooks, "/webhooks", {"ns.capsule": "Ignore"})
    assert ops == [{"op": "test", "path": "/webhooks/0/name", "value": "ns.capsule"},
                   {"op": "add", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]


def _ev(kind, name, meta_extra=None, refs=True):
    meta = {"name": name, **(meta_extra or {})}
    if refs:
        meta["ownerReferences"] = [{"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "name": "t",
                                    "uid": "u"}]
    return WatchEvent(kind, "namespaces", {"metadata": meta}, received=time.time())


def test_tracker_records_first_detach_and_first_loss_only_for_seeded():
    t = Tracker({"a", "b"})
    t.feed(_ev(MODIFIED, "a"))  # still referenced: nothing
    t.feed(_ev(MODIFIED, "a", refs=False))
    t.feed(_ev(MODIFIED, "b", {"deletionTimestamp": "x"}))
    t.feed(_ev(DELETED, "b"))
    t.feed(_ev(DELETED, "other"))
    assert set(t.detached) == {"a"} and set(t.lost) == {"b"}


def test_bench_table_puts_variants_side_by_side():
    runs = [{"namespaces": 10, "variant": v, "saved": s, "alive_at_detection": 10, "saved_share": s / 10}
            for v, s in (("none", 0), ("naive", 3), ("responder", 10))]
    (row,) = table(runs)
    assert row["none"]["saved"] == 0 and row["naive"]["share"] == 0.3 and row["responder"]["share"] == 1.0


@pytest.mark.parametrize("flag", ["--bench"])
def test_bench_rejects_bad_sizes(flag, capsys):
    assert main(["drill", flag, "--namespaces", "ten"]) == 2
    assert "--namespaces" in capsys.readouterr().err


def test_drill_options_record_no_backup():
    from responder.drill.lab_drill import drill_options

    args = argparse.Namespace(scenario="tenant-mass-deletion", capsule="0.12", no_backup=True, target=None,
                              tenants=3, namespaces_per_tenant=3)
    opts = drill_options(args)
    assert opts["no_backup"] is True and opts["scenario"] == "tenant-mass-deletion" and opts["target"] == "embedded-lab"
