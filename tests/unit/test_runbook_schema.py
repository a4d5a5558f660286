"""Runbook validation: a good runbook parses into Steps; bad and hostile ones fail with file:line: field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from responder.errors import RunbookError
from responder.runbook import ActionSpec, ParamSpec, Runbook, Step, load_runbook, parse_runbook
from responder.runbook.schema import MAX_BYTES

ACTIONS = {
    "trip-breaker": ActionSpec("trip-breaker", {
        "concurrency": ParamSpec(int, default=64),
        "capsuleNamespace": ParamSpec(str, default="capsule-system"),
    }),
    "snapshot-tenants": ActionSpec("snapshot-tenants", {
        "capsuleNamespace": ParamSpec(str, default="capsule-system"),
        "include": ParamSpec(list, default=[]),
    }),
    "delete-webhook": ActionSpec("delete-webhook", {"name": ParamSpec(str, required=True)}, destructive=True),
    "restore-tenants": ActionSpec("restore-tenants", {
        "snapshot": ParamSpec(str, required=True),
        "ratio": ParamSpec(float, default=1.0),
        "selector": ParamSpec((str, dict), default=None),
    }),
}

VALID = """\
apiVersion: responder.dev/v1
kind: Runbook
metadata:
  name: capsule-tenant-crd-deletion
  description: Stop the cascade, then bring tenants back.
spec:
  triggers: [crd-deleting, tenants-vanished, namespace-terminating]
  params:
    capsuleNamespace: capsule
    snapshot: /var/lib/responder/snap.json
  steps:
    - id: breaker
      action: trip-breaker
      phase: contain
      description: Deny Tenant deletes.
      timeout: 30s
      params: {concurrency: 16}
    - id: snapshot
      action: snapshot-tenants
      phase: contain
      continueOnError: true
      timeout: 2m
      params:
        capsuleNamespace: other
        include: [a, b]
    - id: drop-webhook
      action: delete-webhook
      phase: contain
      confirm: true
      timeout: 45
      params: {name: capsule-validating}
    - id: restore
      action: restore-tenants
      phase: recover
      confirm: false
      params: {ratio: 2, selector: {team: a}}
"""


def test_valid_runbook_parses_into_steps() -> None:
    rb = parse_runbook(VALID, ACTIONS, source="runbooks/crd.yaml")
    assert isinstance(rb, Runbook)
    assert rb.name == "capsule-tenant-crd-deletion"
    assert rb.description == "Stop the cascade, then bring tenants back."
    assert rb.triggers == ("crd-deleting", "tenants-vanished", "namespace-terminating")
    assert dict(rb.params) == {"capsuleNamespace": "capsule", "snapshot": "/var/lib/responder/snap.json"}
    assert rb.path == Path("runbooks/crd.yaml")
    assert [s.id for s in rb.steps] == ["breaker", "snapshot", "drop-webhook", "restore"]

    breaker, snapshot, drop, restore = rb.steps
    assert breaker == Step(id="breaker", action="trip-breaker", phase="contain",
                           description="Deny Tenant deletes.", confirm=False, timeout=30.0,
                           continue_on_error=False,
                           # step value, then runbook default over the action default
                           params={"concurrency": 16, "capsuleNamespace": "capsule"},
                           line=12, explicit_params=frozenset({"concurrency"}))
    assert (snapshot.timeout, snapshot.continue_on_error, snapshot.line) == (120.0, True, 18)
    assert dict(snapshot.params) == {"capsuleNamespace": "other", "include": ["a", "b"]}
    assert (drop.confirm, drop.timeout, drop.line, dict(drop.params)) == (
        True, 45.0, 26, {"name": "capsule-validating"})
    assert restore.phase == "recover" and restore.timeout == 60.0 and restore.line == 32
    # Required `snapshot` comes from the runbook params; an int is fine for a float param.
    assert dict(restore.params) == {"snapshot": "/var/lib/responder/snap.json", "ratio": 2,
                                    "selector": {"team": "a"}}
    with pytest.raises(TypeError):
        breaker.params["concurrency"] = 1  # type: ignore[index]


def test_action_defaults_fill_unset_params_and_are_not_shared() -> None:
    text = HEAD + "    - {id: a, action: snapshot-tenants, phase: contain}\n" \
                  "    - {id: b, action: snapshot-tenants, phase: contain}\n"
    rb = parse_runbook(text, ACTIONS)
    a, b = rb.steps
    assert dict(a.params) == {"capsuleNamespace": "capsule-system", "include": []}
    assert a.params["include"] is not b.params["include"]
    assert a.params["include"] is not ACTIONS["snapshot-tenants"].params["include"].default
    assert rb.triggers == () and rb.steps[0].line == 7


def test_cli_overrides_runbook_params_but_not_step_params() -> None:
    rb = parse_runbook(VALID, ACTIONS)
    over = rb.with_params({"capsuleNamespace": "capsule-prod", "concurrency": "8"}, ACTIONS)
    breaker, snapshot = over.steps[0], over.steps[1]
    assert breaker.params["capsuleNamespace"] == "capsule-prod"
    assert breaker.params["concurrency"] == 16  # the step set it itself
    assert snapshot.params["capsuleNamespace"] == "other"
    assert over.params["capsuleNamespace"] == "capsule-prod"
    assert rb.steps[0].params["capsuleNamespace"] == "capsule"  # the original is unchanged
    over2 = parse_runbook(HEAD + "    - {id: a, action: trip-breaker, phase: contain}\n", ACTIONS) \
        .with_params({"concurrency": "8"}, ACTIONS)
    assert over2.steps[0].params["concurrency"] == 8
    with pytest.raises(RunbookError, match=r"--param concurrency: expected an integer, got 'many'"):
        rb.with_params({"concurrency": "many"}, ACTIONS)
    with pytest.raises(RunbookError, match=r"--param concurrence: .*did you mean 'concurrency'"):
        rb.with_params({"concurrence": 3}, ACTIONS)


def test_merge_keys_and_anchors_are_allowed() -> None:
    text = HEAD + ("    - &base {id: a, action: trip-breaker, phase: contain, timeout: 10s}\n"
                   "    - <<: *base\n"
                   "      id: b\n")
    a, b = parse_runbook(text, ACTIONS).steps
    assert (b.id, b.action, b.timeout, b.line) == ("b", "trip-breaker", 10.0, 8)


HEAD = """\
apiVersion: responder.dev/v1
kind: Runbook
metadata:
  name: rb
spec:
  steps:
"""  # steps start on line 7

OK_STEP = "    - {id: ok, action: trip-breaker, phase: contain}\n"


def steps(*lines: str) -> str:
    return HEAD + "".join(lines)


BOMB = "\n".join([
    "apiVersion: responder.dev/v1",
    "kind: Runbook",
    "metadata: {name: rb}",
    "spec:",
    "  params:",
    '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    "    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]",
    "    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]",
    "    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]",
    "    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]",
    "    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]",
    "  steps: []",
])

# (case id, runbook text, expected line, expected field path, a fragment of the problem)
BAD = [
    ("not-yaml", steps("    - id: a\n", "      action: trip-breaker\n", "     phase: contain\n"),
     9, "(document)", "not valid YAML"),
    ("tab-indent", steps("\t- id: a\n"), 7, "(document)", "not valid YAML"),
    ("unclosed-flow", "apiVersion: responder.dev/v1\nkind: [Runbook\n", 3, "(document)", "not valid YAML"),
    ("not-a-mapping", "- apiVersion\n- kind\n", 1, "(document)", "expected a mapping"),
    ("empty", "# nothing here\n", 1, "(document)", "empty"),
    ("api-version", HEAD.replace("responder.dev/v1", "responder.dev/v2") + OK_STEP, 1, "apiVersion",
     "expected 'responder.dev/v1', got 'responder.dev/v2'"),
    ("kind", HEAD.replace("kind: Runbook", "kind: Playbook") + OK_STEP, 2, "kind", "expected 'Runbook'"),
    ("missing-name", HEAD.replace("  name: rb", "  description: x") + OK_STEP, 3, "metadata.name",
     "required field is missing"),
    ("top-level-typo", HEAD + OK_STEP + "sepc: {}\n", 8, "sepc", "unknown field; did you mean 'spec'?"),
    ("spec-key-typo", HEAD.replace("  steps:", "  trigers: [manual]\n  steps:") + OK_STEP, 6, "spec.trigers",
     "did you mean 'triggers'?"),
    ("step-key-typo", steps(OK_STEP, "    - id: b\n", "      action: trip-breaker\n", "      phase: contain\n",
                            "      timout: 30s\n"), 11, "spec.steps[1].timout", "did you mean 'timeout'?"),
    ("empty-steps", HEAD.replace("  steps:\n", "  steps: []\n"), 6, "spec.steps", "at least one step"),
    ("missing-steps", HEAD.replace("  steps:\n", "  triggers: [manual]\n"), 5, "spec.steps",
     "required field is missing"),
    ("steps-not-list", HEAD.replace("  steps:\n", "  steps: breaker\n"), 6, "spec.steps", "expected a list"),
    ("step-not-mapping", steps(OK_STEP, "    - breaker\n"), 8, "spec.steps[1]", "expected a mapping"),
    ("duplicate-id", steps(OK_STEP, "    - {id: b, action: trip-breaker, phase: contain}\n",
                           "    - id: ok\n", "      action: trip-breaker\n", "      phase: contain\n"),
     9, "spec.steps[2].id", "duplicate step id 'ok' (also spec.steps[0], line 7)"),
    ("bad-id", steps("    - {id: Breaker_1, action: trip-breaker, phase: contain}\n"), 7, "spec.steps[0].id",
     "invalid step id 'Breaker_1'"),
    ("missing-id", steps(OK_STEP, "    - action: trip-breaker\n", "      phase: contain\n"), 8,
     "spec.steps[1].id", "required field is missing"),
    ("unknown-action", steps(OK_STEP, "    - id: b\n", "      action: trip-braker\n", "      phase: contain\n"),
     9, "spec.steps[1].action", "unknown action 'trip-braker'; did you mean 'trip-breaker'?"),
    ("unknown-phase", steps("    - id: a\n", "      action: trip-breaker\n", "      phase: containment\n"),
     9, "spec.steps[0].phase", "unknown phase 'containment'"),
    ("contain-after-recover", steps(
        "    - {id: r, action: restore-tenants, phase: recover, params: {snapshot: s}}\n",
        "    - id: late\n", "      action: trip-breaker\n", "      phase: contain\n"),
     10, "spec.steps[1].phase", "a contain step cannot come after recover step 'r' (spec.steps[0])"),
    ("timeout-word", steps(OK_STEP, OK_STEP.replace("ok", "b"), "    - id: c\n", "      action: trip-breaker\n",
                           "      phase: contain\n", "      timeout: soon\n"),
     12, "spec.steps[2].timeout", "expected a duration like 30s or 2m, got 'soon'"),
    ("timeout-hours", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: 2h}\n"), 7,
     "spec.steps[0].timeout", "got '2h'"),
    ("timeout-zero", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: 0s}\n"), 7,
     "spec.steps[0].timeout", "more than 0s and at most 3600s, got '0s'"),
    ("timeout-negative", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: -5}\n"), 7,
     "spec.steps[0].timeout", "got -5"),
    ("timeout-too-long", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: 61m}\n"), 7,
     "spec.steps[0].timeout", "at most 3600s, got '61m'"),
    ("timeout-nan", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: .nan}\n"), 7,
     "spec.steps[0].timeout", "got nan"),
    ("timeout-bool", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: true}\n"), 7,
     "spec.steps[0].timeout", "expected a duration"),
    ("param-wrong-type", steps("    - id: a\n", "      action: trip-breaker\n", "      phase: contain\n",
                               "      params:\n", "        concurrency: lots\n"),
     11, "spec.steps[0].params.concurrency", "expected an integer, got 'lots'"),
    ("param-bool-for-int", steps("    - {id: a, action: trip-breaker, phase: contain, params: {concurrency: yes}}\n"),
     7, "spec.steps[0].params.concurrency", "expected an integer, got True"),
    ("param-unknown", steps("    - id: a\n", "      action: trip-breaker\n", "      phase: contain\n",
                            "      params:\n", "        concurency: 3\n"),
     11, "spec.steps[0].params.concurency", "unknown parameter for action 'trip-breaker'; did you mean 'concurrency'?"),
    ("param-required-missing", steps(OK_STEP, "    - id: r\n", "      action: restore-tenants\n",
                                     "      phase: recover\n"),
     8, "spec.steps[1]", "action 'restore-tenants' needs parameter 'snapshot'"),
    ("params-not-mapping", steps("    - {id: a, action: trip-breaker, phase: contain, params: [1]}\n"), 7,
     "spec.steps[0].params", "expected a mapping"),
    ("runbook-param-typo", HEAD.replace("  steps:", "  params:\n    capsuleNamespce: x\n  steps:") + OK_STEP,
     7, "spec.params.capsuleNamespce", "did you mean 'capsuleNamespace'?"),
    ("runbook-param-type", HEAD.replace("  steps:", "  params:\n    concurrency: many\n  steps:") + OK_STEP,
     7, "spec.params.concurrency", "expected an integer, got 'many'"),
    ("confirm-not-bool", steps("    - id: d\n", "      action: delete-webhook\n", "      phase: contain\n",
                               '      confirm: "yes"\n', "      params: {name: w}\n"),
     10, "spec.steps[0].confirm", "expected true or false, got 'yes'"),
    ("destructive-unconfirmed", steps("    - id: d\n", "      action: delete-webhook\n", "      phase: contain\n",
                                      "      confirm: false\n", "      params: {name: w}\n"),
     10, "spec.steps[0].confirm", "'delete-webhook' is destructive"),
    ("destructive-confirm-omitted", steps(OK_STEP, "    - {id: d, action: delete-webhook, phase: contain, "
                                                   "params: {name: w}}\n"),
     8, "spec.steps[1].confirm", "is destructive"),
    ("unknown-trigger", HEAD.replace("  steps:", "  triggers:\n    - manual\n    - crd-deleted\n  steps:") + OK_STEP,
     8, "spec.triggers[1]", "unknown trigger 'crd-deleted'; did you mean 'crd-deleting'?"),
    ("duplicate-key", steps("    - id: a\n", "      action: trip-breaker\n", "      phase: contain\n",
                            "      id: b\n"), 10, "spec.steps[0].id", "duplicate key (first at line 7)"),
    ("yes-no-key", HEAD + OK_STEP + "on: push\n", 8, "on", "is read as True, not a string"),
    ("python-tag", steps("    - !!python/object/apply:os.getcwd []\n"), 7, "spec.steps[0]",
     "unsupported YAML tag '!!python/object/apply:os.getcwd'"),
    ("local-tag", steps("    - {id: a, action: trip-breaker, phase: contain, timeout: !duration 30s}\n"), 7,
     "spec.steps[0].timeout", "unsupported YAML tag '!duration'"),
    ("two-documents", HEAD + OK_STEP + "---\n" + HEAD + OK_STEP, 8, "(document)", "more than one YAML document"),
    ("alias-bomb", BOMB, 6, "spec.params.d*", "expands to more than 10000 YAML nodes"),
    ("recursive-alias", HEAD.replace("  steps:", "  params:\n    loop: &l [*l]\n  steps:") + OK_STEP, 7,
     "spec.params.loop[0][0]*", "nested deeper than"),
    ("deep-nesting", "apiVersion: " + "[" * 5000 + "]" * 5000 + "\n", 1, "(document)", "nested deeper than"),
    ("too-many-steps", HEAD + "".join(f"    - {{id: s{i}, action: trip-breaker, phase: contain}}\n"
                                      for i in range(201)), 6, "spec.steps", "201 steps, more than the limit of 200"),
    ("control-char", HEAD + OK_STEP + "# bell \x07\n", 8, "(document)", "unacceptable character"),
]


def test_enough_distinct_bad_cases() -> None:
    assert len({case[0] for case in BAD}) == len(BAD) >= 15


@pytest.mark.parametrize("text, line, field, problem", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_runbook_names_file_line_and_field(text: str, line: int, field: str, problem: str) -> None:
    with pytest.raises(RunbookError) as err:
        parse_runbook(text, ACTIONS, source="runbooks/bad.yaml")
    message = err.value.message
    # A trailing "*" in `field` means "this path or deeper" (where an expansion limit hit).
    prefix = f"runbooks/bad.yaml:{line}: {field.rstrip('*')}"
    assert message.startswith(prefix), message
    rest = message[len(prefix):]
    assert rest.startswith(": ") or (field.endswith("*") and rest[:1] in "[."), message
    assert problem in message, message
    assert err.value.fix, "every runbook error carries a fix hint"


def test_unknown_action_lists_known_actions() -> None:
    with pytest.raises(RunbookError) as err:
        parse_runbook(steps("    - {id: a, action: nuke-it, phase: contain}\n"), ACTIONS)
    assert err.value.fix == "known actions: delete-webhook, restore-tenants, snapshot-tenants, trip-breaker"


def test_a_wrong_type_says_what_to_write_then_what_the_parameter_means() -> None:
    described = {"trip-breaker": ActionSpec("trip-breaker", {
        "concurrency": ParamSpec(int, default=64, description="PATCH requests in flight")})}
    with pytest.raises(RunbookError) as err:
        parse_runbook(steps("    - {id: a, action: trip-breaker, phase: contain, params: {concurrency: lots}}\n"),
                      described)
    assert err.value.fix == "set concurrency to an integer (PATCH requests in flight)"


def test_python_tag_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.mkdir [{str(marker)!r}]\n"
    text = steps("    - {id: a, action: trip-breaker, phase: contain}\n") + "    - " + payload
    with pytest.raises(RunbookError, match=r":8: spec\.steps\[1\]: unsupported YAML tag '!!python/object/apply"):
        parse_runbook(text, ACTIONS)
    assert not marker.exists()
    # The payload is live: an unsafe loader would have run it. (This is what the check above prevents.)
    yaml.unsafe_load(payload)
    assert marker.exists()


def test_load_runbook_reports_the_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runbooks").mkdir()
    text = VALID.replace("      timeout: 45\n", "      timeout: soon\n")
    (tmp_path / "runbooks" / "x.yaml").write_text(text)
    with pytest.raises(RunbookError) as err:
        load_runbook(Path("runbooks/x.yaml"), ACTIONS)
    assert err.value.message == \
        "runbooks/x.yaml:30: spec.steps[2].timeout: expected a duration like 30s or 2m, got 'soon'"

    (tmp_path / "runbooks" / "ok.yaml").write_text(VALID)
    rb = load_runbook(Path("runbooks/ok.yaml"), ACTIONS)
    assert rb.path == Path("runbooks/ok.yaml") and len(rb.steps) == 4

    with pytest.raises(RunbookError, match=r"^runbooks/missing\.yaml: cannot read runbook"):
        load_runbook(Path("runbooks/missing.yaml"), ACTIONS)


def test_oversized_runbook_is_refused(tmp_path: Path) -> None:
    big = HEAD + OK_STEP + "# " + "x" * MAX_BYTES + "\n"
    with pytest.raises(RunbookError, match=r"^<string>:1: \(document\): runbook is larger than 1 MiB"):
        parse_runbook(big, ACTIONS)
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(RunbookError, match=re.escape(f"{path}:1: (document): runbook is larger than 1 MiB")):
        load_runbook(path, ACTIONS)
    # Just under the limit is fine: the limit is on size, not on comments.
    ok = HEAD + OK_STEP + "# " + "x" * (MAX_BYTES - len(HEAD + OK_STEP) - 10) + "\n"
    assert parse_runbook(ok, ACTIONS).steps[0].id == "ok"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes((HEAD + OK_STEP).encode() + b"# caf\xe9\n")
    with pytest.raises(RunbookError, match=re.escape(f"{path}:8: (document): not UTF-8")):
        load_runbook(path, ACTIONS)
