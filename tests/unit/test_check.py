"""`responder check`: every rule of the table against its fixtures, reading manifests, the CI conventions (exit
codes, JSON, SARIF, one-line bad-input messages), and the real Capsule chart rendered by the lab's helm."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from responder.actions.breaker import armed_hold_in_place, armed_hold_objects
from responder.names import (ARMED_HOLD_BINDING, ARMED_HOLD_POLICY, HOLD_PARAM, HOLD_PARAM_GROUP, HOLD_PARAM_KIND,
                             HOLD_PARAM_VERSION, PROTECT_BINDING, PROTECT_POLICY, TENANT_CRD)
from responder.ops.check import (RULES, RULES_BY_ID, ChangeSet, ClusterFacts, Manifest, ReadOnlyClient, build_report,
                                 crd_changes, evaluate, load_manifests, parse_manifests, render_sarif, render_table)
from responder.ops.doctor import CAPSULE_GROUPS
from responder.ops.protect import policy_objects, protection_from

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "check"
RESPONDER = [sys.executable, "-m", "responder"]


# ---- the rule table against its fixtures -------------------------------------------------------------------


def live_objects(path: Path) -> list[dict[str, Any]]:
    """A fixture of the live cluster; `InstalledByResponderProtect` stands for what `responder protect` installs
    (today's objects, so a change to them does not leave the fixture behind)."""
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "InstalledByResponderProtect":
            param = {"apiVersion": f"{HOLD_PARAM_GROUP}/{HOLD_PARAM_VERSION}", "kind": HOLD_PARAM_KIND,
                     "metadata": {"name": HOLD_PARAM}}
            out += {"crds": policy_objects([TENANT_CRD]), "hold": [*armed_hold_objects(), param]}.get(
                doc.get("only"), [*policy_objects([TENANT_CRD]), *armed_hold_objects(), param])
        elif doc:
            out.append(doc)
    return out


def cluster_facts(objects: list[dict[str, Any]]) -> ClusterFacts:
    """What read_cluster would make of these live objects: the same pure readers (protection_from,
    armed_hold_in_place) that read_protection and read_armed_hold apply to what they GET."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    vap, binding = "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"
    protection = protection_from(by_name.get((vap, PROTECT_POLICY)), by_name.get((binding, PROTECT_BINDING)))
    hold = armed_hold_in_place({vap: by_name.get((vap, ARMED_HOLD_POLICY)),
                                binding: by_name.get((binding, ARMED_HOLD_BINDING)),
                                HOLD_PARAM_KIND: by_name.get((HOLD_PARAM_KIND, HOLD_PARAM))})
    crds = [Manifest(o, "<cluster>") for o in objects
            if o["kind"] == "CustomResourceDefinition" and o["spec"]["group"] in CAPSULE_GROUPS]
    return ClusterFacts("fixture", "https://fixture", crds, protection.protects(TENANT_CRD), protection.served, hold)


def fixture_changeset(rule_id: str, case: str) -> ChangeSet:
    folder = FIXTURES / rule_id
    old = load_manifests([str(folder / "from.yaml")]) if (folder / "from.yaml").exists() else None
    live = folder / f"{case}.cluster.yaml"
    return ChangeSet(load_manifests([str(folder / f"{case}.yaml")]), old,
                     cluster_facts(live_objects(live)) if live.exists() else None)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_every_rule_fires_on_its_failing_fixture_and_not_on_its_passing_one(rule) -> None:
    folder = FIXTURES / rule.id
    assert (folder / "fail.yaml").exists() and (folder / "pass.yaml").exists(), \
        f"rule {rule.id} needs fixtures {folder}/fail.yaml and pass.yaml"
    failing = evaluate(fixture_changeset(rule.id, "fail"), [rule])
    assert failing, f"{rule.id} did not fire on its failing fixture"
    assert all(f.rule == rule.id and f.severity == rule.severity and f.detail and f.why and f.fix for f in failing)
    assert evaluate(fixture_changeset(rule.id, "pass")) == [], "the passing fixture must be clean under every rule"


def test_every_fixture_folder_is_a_rule_and_every_rule_is_complete() -> None:
    assert {p.name for p in FIXTURES.iterdir() if p.is_dir()} == set(RULES_BY_ID)
    assert len(RULES_BY_ID) == len(RULES)
    for rule in RULES:
        assert rule.severity in ("error", "warning", "info") and rule.title and rule.why and rule.fix


def test_the_tenant_crd_comes_first_and_the_removal_names_the_old_file() -> None:
    old = parse_manifests(yaml.safe_dump_all([_crd("resourcepools"), _crd("tenants")]), "old.yaml")
    findings = evaluate(ChangeSet(parse_manifests(yaml.safe_dump(_crd("configs")), "new.yaml"), old),
                        [RULES_BY_ID["capsule-crd-removed"]])
    assert [f.object for f in findings] == [f"CustomResourceDefinition/{TENANT_CRD}",
                                            "CustomResourceDefinition/resourcepools.capsule.clastix.io"]
    assert findings[0].where.startswith("old.yaml:") and findings[0].source == "old.yaml"


def test_crds_moving_from_the_release_into_the_hook_configmaps_are_removed_from_the_release() -> None:
    inline = parse_manifests(yaml.safe_dump(_crd("tenants")), "inline.yaml")
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "capsule-crds-tenants",
                                                                       "namespace": "capsule-system"},
                 "data": {"content": yaml.safe_dump(_crd("tenants"))}}
    hooked = parse_manifests(yaml.safe_dump(configmap), "hooked.yaml")
    rule = [RULES_BY_ID["capsule-crd-removed"]]
    [finding] = evaluate(ChangeSet(hooked, inline), rule)
    assert "only inside ConfigMap capsule-system/capsule-crds-tenants" in finding.detail
    # The other way round, or a hook-applied CRD dropped: no tool tracks the hook's CRDs, nothing is deleted.
    assert evaluate(ChangeSet(inline, hooked), rule) == []
    assert evaluate(ChangeSet(parse_manifests(yaml.safe_dump({**configmap, "data": {}}), "none.yaml"), hooked),
                    rule) == []


def test_a_crd_as_a_helm_hook_is_replaced_on_every_upgrade_even_without_a_delete_policy() -> None:
    hook = _crd("tenants", annotations={"helm.sh/hook": "pre-install,pre-upgrade",
                                        "helm.sh/resource-policy": "keep"})
    [finding] = evaluate(ChangeSet(parse_manifests(yaml.safe_dump(hook), "x.yaml")))
    assert finding.rule == "capsule-crd-replaced" and "before-hook-creation (Helm's default)" in finding.detail


def test_gitops_objects_without_the_crds_in_the_set_are_judged_by_their_values() -> None:
    release = {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
               "metadata": {"name": "capsule", "namespace": "capsule-system"},
               "spec": {"chart": {"spec": {"chart": "capsule"}}, "upgrade": {"force": True}, "values": {}}}
    findings = {(f.rule, f.object) for f in evaluate(ChangeSet(parse_manifests(yaml.safe_dump(release), "hr.yaml")))}
    assert findings == {("capsule-crd-replaced", "HelmRelease/capsule-system/capsule"),
                        ("capsule-crd-not-kept", "HelmRelease/capsule-system/capsule")}
    release["spec"].update(upgrade={}, values={"crds": {"keep": True}})
    assert evaluate(ChangeSet(parse_manifests(yaml.safe_dump(release), "hr.yaml"))) == []


def test_an_argo_application_of_the_chart_needs_keep_and_prune_false_on_crds_it_cannot_show() -> None:
    app = yaml.safe_load((FIXTURES / "argocd-prunes-capsule-crds" / "fail.yaml").read_text().split("---")[0])
    app["spec"]["syncPolicy"]["syncOptions"] = ["Replace=true"]
    app["spec"]["source"]["helm"] = {"parameters": [{"name": "crds.keep", "value": "false"}]}
    rules = {f.rule for f in evaluate(ChangeSet(parse_manifests(yaml.safe_dump(app), "app.yaml")))}
    assert rules == {"capsule-crd-replaced", "capsule-crd-not-kept", "argocd-prunes-capsule-crds"}
    app["spec"]["source"]["chart"] = app["spec"]["source"]["repoURL"] = "https://charts.example.com/ingress-nginx"
    assert evaluate(ChangeSet(parse_manifests(yaml.safe_dump(app), "app.yaml"))) == []


def test_an_applicationset_is_judged_by_its_template() -> None:
    app = yaml.safe_load((FIXTURES / "argocd-prunes-capsule-crds" / "fail.yaml").read_text().split("---")[0])
    app["spec"]["source"]["helm"] = {}
    appset = {"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
              "metadata": {"name": "capsule-everywhere", "namespace": "argocd"},
              "spec": {"generators": [{"clusters": {}}],
                       "template": {"metadata": {"name": "capsule-{{name}}"}, "spec": app["spec"]}}}
    findings = evaluate(ChangeSet(parse_manifests(yaml.safe_dump(appset), "appset.yaml")))
    assert {(f.rule, f.object) for f in findings} == {
        (rule, "ApplicationSet/argocd/capsule-everywhere (ApplicationSet template)")
        for rule in ("capsule-crd-not-kept", "argocd-prunes-capsule-crds")}
    assert all(f.where == "appset.yaml:1" for f in findings)


def test_stored_versions_of_the_live_crd_count_as_versions_in_use() -> None:
    live = _crd("tenants", annotations={"helm.sh/resource-policy": "keep"})
    live["spec"]["versions"] = [{"name": "v1beta2", "served": True, "storage": True}]
    live["status"] = {"storedVersions": ["v1beta1", "v1beta2"]}
    new = _crd("tenants", annotations={"helm.sh/resource-policy": "keep"})
    new["spec"]["versions"] = [{"name": "v1beta2", "served": True, "storage": True}]
    cluster = ClusterFacts("c", "s", [Manifest(live, "<cluster>")], True, True, None)
    [finding] = evaluate(ChangeSet(parse_manifests(yaml.safe_dump(new), "new.yaml"), cluster=cluster))
    assert finding.rule == "tenant-crd-version-removed" and "storedVersions" in finding.detail
    # Stored at a version no longer served, then removed: still a finding.
    live["spec"]["versions"].insert(0, {"name": "v1beta1", "served": False, "storage": False})
    [finding] = evaluate(ChangeSet(parse_manifests(yaml.safe_dump(new), "new.yaml"), cluster=cluster))
    assert finding.detail == "version v1beta1 removed while Tenants may be stored at it"


def test_against_the_cluster_an_absent_crd_counts_only_when_the_set_manages_capsule() -> None:
    live = Manifest(_crd("tenants", annotations={"meta.helm.sh/release-name": "capsule",
                                                 "helm.sh/resource-policy": "keep"}), "<cluster>")
    cluster = ClusterFacts("c", "s", [live], True, True, None)
    app_only = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "shop"}}
    assert evaluate(ChangeSet(parse_manifests(yaml.safe_dump(app_only), "web.yaml"), cluster=cluster)) == []
    tenants = {"apiVersion": "capsule.clastix.io/v1beta2", "kind": "Tenant", "metadata": {"name": "shop"}}
    assert evaluate(ChangeSet(parse_manifests(yaml.safe_dump(tenants), "tenants.yaml"), cluster=cluster)) == []
    same_release = dict(app_only, metadata={"name": "capsule-x", "namespace": "capsule-system",
                                            "annotations": {"meta.helm.sh/release-name": "capsule"}})
    [finding] = evaluate(ChangeSet(parse_manifests(yaml.safe_dump(same_release), "c.yaml"), cluster=cluster))
    assert finding.rule == "capsule-crd-removed" and finding.where == "the live cluster" and finding.source is None


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        return [prefix] + [p for k, v in obj.items() for p in _paths(v, prefix + (k,))]
    if isinstance(obj, list):
        return [prefix] + [p for i, v in enumerate(obj) for p in _paths(v, prefix + (i,))]
    return [prefix]


def test_malformed_objects_are_judged_not_crashed_on() -> None:
    """Every field of every fixture object replaced, one at a time, by a value of the wrong shape."""
    import copy

    objects = [m.obj for folder in sorted(FIXTURES.iterdir()) for f in sorted(folder.glob("*.yaml"))
               for m in parse_manifests(f.read_text(), f.name)]
    cluster = ClusterFacts("c", "s", [], False, True, "not installed")
    tried = 0
    for obj in objects:
        for path in _paths(obj)[1:]:
            for wrong in ["x", 7, None, [], {}, ["y"], {"z": 1}]:
                bent = copy.deepcopy(obj)
                target = bent
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = wrong
                if not isinstance(bent.get("kind"), str):
                    continue  # not an object at all: parse_manifests refuses it
                new = [Manifest(bent, "bent.yaml")]
                evaluate(ChangeSet(new, [Manifest(o, "old.yaml") for o in objects], cluster))
                live = ClusterFacts("c", "s", [Manifest(bent, "<cluster>")], True, True, None)
                evaluate(ChangeSet(new, cluster=live))
                tried += 1
    assert tried > 500


def _crd(plural: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.capsule.clastix.io",
                         **({"annotations": annotations} if annotations else {})},
            "spec": {"group": "capsule.clastix.io", "names": {"plural": plural, "kind": plural.title()},
                     "scope": "Cluster", "versions": [{"name": "v1beta2", "served": True, "storage": True}]}}


# ---- reading manifests -----------------------------------------------------------------------------------------


def test_lists_folders_stdin_json_and_crds_inside_configmaps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "list.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "List", "items": [_crd("tenants"), _crd("resourcepools")]}))
    (tmp_path / "a" / "cm.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "capsule-crds-x", "namespace": "capsule-system"},
         "data": {"content": "---\n" + yaml.safe_dump(_crd("tenantowners"))}}))
    (tmp_path / "a" / "README.md").write_text("not a manifest")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "x.yaml").write_text("{{ not rendered }}")
    manifests = load_manifests([str(tmp_path / "a"), "-"], stdin=lambda: "---\n---\n" + yaml.safe_dump(_crd("x")))
    names = [(m.kind, m.name, bool(m.via)) for m in manifests]
    assert ("ConfigMap", "capsule-crds-x", False) in names
    assert ("CustomResourceDefinition", "tenantowners.capsule.clastix.io", True) in names
    assert {n for k, n, _ in names if k == "CustomResourceDefinition"} == {
        f"{p}.capsule.clastix.io" for p in ("tenants", "resourcepools", "tenantowners", "x")}
    assert [m.line for m in manifests if m.source == "-"] == [3]


def test_kustomize_build_output_with_a_leading_separator_and_line_numbers() -> None:
    text = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n" + yaml.safe_dump(_crd("tenants"))
    manifests = parse_manifests(text, "built.yaml")
    assert [(m.kind, m.line) for m in manifests] == [("Namespace", 2), ("CustomResourceDefinition", 7)]


BAD_INPUT = [
    ("not-yaml", lambda d: ["--to", _write(d, "x.yaml", "kind: [unclosed\n")], ("x.yaml:", "not valid yaml")),
    ("a-template", lambda d: ["--to", _write(d, "t.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                                                         "  name: {{ .Release.Name }}\n")], ("not valid yaml",)),
    ("unknown-file", lambda d: ["--to", str(d / "nope.yaml")], ("nope.yaml: does not exist",)),
    ("empty-set", lambda d: ["--to", _write(d, "empty.yaml", "---\n# nothing rendered\n")],
     ("no kubernetes objects found",)),
    ("empty-from", lambda d: ["--from", _write(d, "old.yaml", ""), "--to", str(FIXTURES / "capsule-crd-not-kept"
                                                                               / "pass.yaml")],
     ("no kubernetes objects found in --from", "first install")),
    ("empty-folder", lambda d: ["--to", str(d)], ("no kubernetes objects found",)),
    ("values-file", lambda d: ["--to", _write(d, "values.yaml", "crds:\n  keep: true\n")],
     ("values.yaml:1: not a kubernetes object",)),
    ("binary", lambda d: ["--to", _write(d, "b.yaml", bytes(range(256)))], ("not utf-8",)),
    ("stdin-twice", lambda d: ["--from", "-", "--to", "-"], ("stdin (-) given more than once",)),
    ("kubeconfig-without-cluster", lambda d: ["--to", "-", "--context", "prod"], ("without --cluster",)),
    ("bad-fail-on", lambda d: ["--to", "-", "--fail-on", "fatal"], ("invalid choice: 'fatal'",)),
]


def _write(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


@pytest.mark.parametrize("argv, says", [pytest.param(a, s, id=i) for i, a, s in BAD_INPUT])
def test_bad_input_exits_2_with_one_error_line_and_its_fix(argv, says, tmp_path: Path) -> None:
    proc = subprocess.run([*RESPONDER, "check", *argv(tmp_path)], capture_output=True, text=True, input="",
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "error: " in lines[0] and lines[1].startswith("  fix: "), proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    for phrase in says:
        assert phrase in proc.stderr.lower(), proc.stderr


# ---- CI conventions -------------------------------------------------------------------------------------------


def _run(*argv: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*RESPONDER, "check", *argv], capture_output=True, text=True, input=stdin, timeout=60,
                          cwd=cwd)


def test_exit_codes_follow_fail_on(tmp_path: Path) -> None:
    hold = str(FIXTURES / "namespace-hold-not-armed" / "pass.yaml")
    not_kept = str(FIXTURES / "capsule-crd-not-kept" / "fail.yaml")
    assert _run("--to", hold, cwd=tmp_path).returncode == 0
    assert _run("--to", not_kept, cwd=tmp_path).returncode == 1
    assert _run("--to", not_kept, "--fail-on", "never", cwd=tmp_path).returncode == 0
    removed = FIXTURES / "capsule-crd-removed"
    proc = _run("--from", str(removed / "from.yaml"), "--to", "-", cwd=tmp_path,
                stdin=(removed / "fail.yaml").read_text())
    assert proc.returncode == 1 and "capsule-crd-removed" in proc.stdout and "FAIL (--fail-on error)" in proc.stdout


def test_a_warning_fails_only_at_fail_on_warning() -> None:
    cluster = ClusterFacts("c", "s", [], True, True, "not installed")
    findings = evaluate(ChangeSet(parse_manifests(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                                                  "metadata": {"name": "a"}}), "n.yaml"),
                                  cluster=cluster))
    assert [f.rule for f in findings] == ["namespace-hold-not-armed"]
    cs = ChangeSet([], cluster=cluster)
    assert not build_report(cs, findings, "error", inputs={"to": ["n.yaml"]})["failed"]
    assert build_report(cs, findings, "warning", inputs={"to": ["n.yaml"]})["failed"]


def test_json_and_sarif_name_the_rule_object_file_and_line(tmp_path: Path) -> None:
    fixture = tmp_path / "crd.yaml"
    shutil.copy(FIXTURES / "capsule-crd-replaced" / "fail.yaml", fixture)
    report = json.loads(_run("--to", "crd.yaml", "-o", "json", cwd=tmp_path).stdout)
    [finding] = report["findings"]
    assert finding["rule"] == "capsule-crd-replaced" and finding["object"].endswith(TENANT_CRD)
    assert finding["where"] == "crd.yaml:2" and "replace --force" in finding["detail"] and report["failed"]
    sarif = json.loads(_run("--to", "crd.yaml", "-o", "sarif", cwd=tmp_path).stdout)
    assert sarif["version"] == "2.1.0" and len(sarif["runs"]) == 1
    run = sarif["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [r.id for r in RULES]
    [result] = run["results"]
    assert result["ruleId"] == "capsule-crd-replaced" and result["level"] == "error"
    assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == "capsule-crd-replaced"
    assert result["locations"][0]["physicalLocation"] == {"artifactLocation": {"uri": "crd.yaml"},
                                                          "region": {"startLine": 2}}


def test_sarif_places_a_cluster_fact_at_the_first_file_checked(tmp_path: Path) -> None:
    cs = ChangeSet([], cluster=ClusterFacts("c", "s", [], False, True, None))
    report = build_report(cs, evaluate(cs), "error", inputs={"to": ["-"]})
    [result] = render_sarif(report)["runs"][0]["results"]
    assert result["ruleId"] == "tenant-crd-unprotected" and "locations" not in result  # stdin only: no file
    [result] = render_sarif(report, base=tmp_path, anchor=str(tmp_path / "out" / "all.yaml"))["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"] == {"artifactLocation": {"uri": "out/all.yaml"},
                                                          "region": {"startLine": 1}}


def test_the_cluster_reader_cannot_write() -> None:
    reader = ReadOnlyClient(object())
    for name in ("request", "patch", "apply", "delete", "post"):
        with pytest.raises(AttributeError, match="reads only"):
            getattr(reader, name)


# ---- the real Capsule chart (the lab's helm and Go module cache; no running lab) -------------------------------


def render_capsule_chart(line: str, *values: str) -> str:
    """`helm template` of Capsule's chart from the Go module cache, as the lab renders it (responder.lab.capsule)."""
    from responder.lab.build import CAPSULE_VERSIONS, ensure_built
    from responder.lab.capsule import chart_dir

    helm = ensure_built(["helm"])["helm"]
    with tempfile.TemporaryDirectory(prefix="check-chart-") as tmp:
        chart = Path(tmp) / "capsule"
        shutil.copytree(chart_dir(line), chart)
        for path in chart.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        # The release workflow stamps the version; the capsule-proxy subchart (off by default) is not vendored.
        meta["version"] = meta["appVersion"] = CAPSULE_VERSIONS[line].lstrip("v")
        meta.pop("dependencies", None)
        (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
        (chart / "Chart.lock").unlink(missing_ok=True)
        args = [a for v in values for a in ("--set", v)]
        proc = subprocess.run([str(helm), "template", "capsule", str(chart), "--namespace", "capsule-system", *args],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def charts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("charts")
    out = {}
    for line in ("0.12", "0.14"):
        for name, values in (("default", ()), ("keep", ("crds.keep=true",))):
            out[f"{line}-{name}"] = folder / f"capsule-{line}-{name}.yaml"
            out[f"{line}-{name}"].write_text(render_capsule_chart(line, *values))
    return out


@pytest.mark.lab
@pytest.mark.parametrize("line", ["0.12", "0.14"])
def test_the_capsule_chart_with_default_values_does_not_keep_its_crds(charts, line, tmp_path) -> None:
    proc = _run("--to", str(charts[f"{line}-default"]), "-o", "json", cwd=tmp_path)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and {f["rule"] for f in report["findings"]} == {"capsule-crd-not-kept"}
    crds = [f["object"].split("/", 1)[1] for f in report["findings"]]
    assert crds[0] == TENANT_CRD and len(crds) == len(set(crds)) >= 7
    # The chart's default (crds.inline false) ships them in ConfigMaps its hook Job applies.
    assert all("inside ConfigMap capsule-system/capsule-crds-" in f["where"] for f in report["findings"])


@pytest.mark.lab
@pytest.mark.parametrize("line", ["0.12", "0.14"])
def test_the_capsule_chart_with_crds_keep_is_clean(charts, line, tmp_path) -> None:
    proc = _run("--to", str(charts[f"{line}-keep"]), cwd=tmp_path)
    assert proc.returncode == 0 and "no findings: pass" in proc.stdout, proc.stdout


@pytest.mark.lab
def test_the_upgrade_from_0_12_4_to_0_14_0_keeps_every_crd_and_the_tenant_versions(charts, tmp_path) -> None:
    proc = _run("--from", str(charts["0.12-keep"]), "--to", str(charts["0.14-keep"]), "-o", "json", cwd=tmp_path)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["findings"] == [] and report["mode"] == "diff"
    changes = {c["crd"]: c for c in report["crd_changes"]}
    tenant = report["crd_changes"][0]
    assert tenant["crd"] == TENANT_CRD and tenant["change"] == "versions unchanged"
    assert tenant["after"] == ["v1beta1 (served)", "v1beta2 (served, storage)"]
    assert not [c for c in changes.values() if c["change"] in ("removed", "versions changed")]
    added = sorted(n.split(".")[0] for n, c in changes.items() if c["change"] == "added")
    assert added == ["customquotas", "globalcustomquotas", "globalresourcequotas", "quantityledgers", "rulestatuses"]
    # The same upgrade with the chart's defaults: no CRD removed or changed, every CRD still not kept.
    defaults = json.loads(_run("--from", str(charts["0.12-default"]), "--to", str(charts["0.14-default"]), "-o", "json",
                               cwd=tmp_path).stdout)
    assert {f["rule"] for f in defaults["findings"]} == {"capsule-crd-not-kept"}
    table = render_table(defaults)
    assert f"{TENANT_CRD}: versions unchanged: v1beta1 (served), v1beta2 (served, storage)" in table


def test_crd_changes_report_versions_before_and_after() -> None:
    old = parse_manifests(yaml.safe_dump(_crd("tenants")), "old.yaml")
    changed = _crd("tenants")
    changed["spec"]["versions"].append({"name": "v1", "served": True, "storage": False})
    [entry] = crd_changes(ChangeSet(parse_manifests(yaml.safe_dump(changed), "new.yaml"), old))
    assert entry == {"crd": TENANT_CRD, "change": "versions changed", "before": ["v1beta2 (served, storage)"],
                     "after": ["v1beta2 (served, storage)", "v1 (served)"]}
