"""`responder check`: catch a change that would delete or replace Capsule's CRDs before a pipeline applies it.

Reads rendered manifests (files, folders, `-` for stdin; multi-document YAML or JSON, `List` kinds, `helm
template` and `kustomize build` output), including the CRDs Capsule's chart embeds in its CRD-lifecycle
ConfigMaps (the hook Job applies them), Argo CD `Application`s and Flux `Kustomization`/`HelmRelease`s.

Modes:
  --to NEW                 lint: what applying NEW (and its GitOps settings) could do to the CRDs
  --from OLD --to NEW      a change between two renderings
  --to NEW --cluster       NEW against the live cluster, read-only (GET and LIST only: the client handed to the
                           reads cannot write, dry runs included)

The rules are one table (RULES): id, severity, title, why it matters for the tenants, the fix, and a small
matcher. Each finding names its rule, the object and where it was read.

Exit codes (responder.errors): 0 no finding at or above --fail-on; 1 findings at or above it; 2 bad input (not
YAML, a path that does not exist, no objects); 3 cluster unreachable, 4 refused (with --cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK, ConfigError
from responder.names import TENANT_CRD
from responder.ops.doctor import CAPSULE_GROUPS, CRDS_PATH, KEEP_ANNOTATION

EXIT_CLEAN = EXIT_OK
EXIT_FINDINGS = EXIT_NOT_CONTAINED  # 1: a finding at or above --fail-on

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (INFO, WARNING, ERROR)  # ascending
SARIF_LEVEL = {ERROR: "error", WARNING: "warning", INFO: "note"}
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 64 << 20  # a rendered chart is well under this; refuse a runaway file instead of reading it

ARGO_SYNC_OPTIONS = "argocd.argoproj.io/sync-options"
ARGO_TRACKING_ID = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE_LABEL = "app.kubernetes.io/instance"
FLUX_PRUNE = "kustomize.toolkit.fluxcd.io/prune"
FLUX_FORCE = "kustomize.toolkit.fluxcd.io/force"
FLUX_KS_NAME = "kustomize.toolkit.fluxcd.io/name"
HELM_HOOK = "helm.sh/hook"
HELM_HOOK_DELETE_POLICY = "helm.sh/hook-delete-policy"
HELM_RELEASE_NAME = "meta.helm.sh/release-name"
CRD_KIND = "CustomResourceDefinition"
CLUSTER_SOURCE = "<cluster>"  # a Manifest read from the live cluster, not from a file


# ---- reading manifests ----------------------------------------------------------------------------------------


@dataclass
class Manifest:
    obj: dict[str, Any]
    source: str  # a file path, or "-" for stdin
    line: int = 1  # where its document starts
    via: str | None = None  # the object that carries it (a CRD inside a ConfigMap the chart's hook Job applies)

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind") or "")

    @property
    def name(self) -> str:
        return str(dig(self.obj, "metadata", "name") or "")

    @property
    def namespace(self) -> str:
        return str(dig(self.obj, "metadata", "namespace") or "")

    @property
    def annotations(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in mapping(dig(self.obj, "metadata", "annotations")).items()}

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in mapping(dig(self.obj, "metadata", "labels")).items()}

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"

    @property
    def where(self) -> str:
        if self.source == CLUSTER_SOURCE:
            return "the live cluster"
        at = f"{self.source}:{self.line}"
        return f"{at} (inside {self.via})" if self.via else at


def dig(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]... through mappings only; None when a step is missing or not a mapping, so a malformed
    object is judged as lacking the field instead of crashing the check."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bad(path: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}", fix=fix)


RENDER_FIX = "pass rendered manifests: the output of `helm template` or `kustomize build`, or plain Kubernetes YAML"


def _documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """(line, value) for each YAML document; safe loading only (no Python tags are constructed)."""
    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node.start_mark.line + 1, loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise _bad(f"{source}{line}", f"not valid YAML ({exc.problem})", RENDER_FIX) from None
    except yaml.YAMLError as exc:
        raise _bad(source, f"not valid YAML ({str(exc).splitlines()[0]})", RENDER_FIX) from None
    finally:
        loader.dispose()


def _embedded_crds(configmap: Manifest) -> list[Manifest]:
    """CRDs inside a ConfigMap's data (Capsule's chart: `capsule-crds-<name>`, applied by its hook Job)."""
    out = []
    for key, value in sorted(mapping(configmap.obj.get("data")).items(), key=lambda item: str(item[0])):
        if not isinstance(value, str) or CRD_KIND not in value:
            continue
        try:
            docs = list(yaml.safe_load_all(value))
        except yaml.YAMLError:
            continue  # data that merely mentions the word; not ours to judge
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == CRD_KIND:
                out.append(Manifest(doc, configmap.source, configmap.line,
                                    via=f"ConfigMap {configmap.namespace}/{configmap.name} data {key}"))
    return out


def parse_manifests(text: str, source: str) -> list[Manifest]:
    """Kubernetes objects in one file's text; `List` kinds expanded, CRDs embedded in ConfigMaps added."""
    out: list[Manifest] = []
    for line, doc in _documents(text, source):
        if doc is None:
            continue  # empty documents: `helm template` leaves them between templates
        if not (isinstance(doc, dict) and isinstance(doc.get("kind"), str) and isinstance(doc.get("apiVersion"), str)):
            raise _bad(f"{source}:{line}", "not a Kubernetes object (a document without apiVersion and kind)",
                       RENDER_FIX + "; a values file or an unrendered template does not belong here")
        items = doc.get("items") if str(doc["kind"]).endswith("List") else None
        for obj in (items if isinstance(items, list) else [doc]):
            if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
                raise _bad(f"{source}:{line}", f"an item of this {doc['kind']} is not a Kubernetes object", RENDER_FIX)
            manifest = Manifest(obj, source, line)
            out.append(manifest)
            if manifest.kind == "ConfigMap":
                out.extend(_embedded_crds(manifest))
    return out


def _read_text(path: Path, shown: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise _bad(shown, f"larger than {MAX_FILE_BYTES >> 20} MiB", "split the rendering into several files")
        data = path.read_bytes()
    except OSError as exc:
        raise _bad(shown, f"cannot be read ({exc.strerror})", "check the path and its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(shown, "not UTF-8 text (a binary file?)", RENDER_FIX) from None


def load_manifests(paths: list[str], stdin: Callable[[], str] | None = None, *, flag: str = "--to") -> list[Manifest]:
    """Every object under `paths` (files, folders searched for *.yaml/*.yml/*.json, `-` for stdin)."""
    read_stdin = stdin or sys.stdin.read
    out: list[Manifest] = []
    for given in paths:
        if given == "-":
            out.extend(parse_manifests(read_stdin(), "-"))
            continue
        path = Path(given)
        if not path.exists():
            raise _bad(given, "does not exist", "check the path (a file, a folder of manifests, or - for stdin)")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            for file in files:
                out.extend(parse_manifests(_read_text(file, str(file)), str(file)))
            continue
        out.extend(parse_manifests(_read_text(path, given), given))
    if not out:
        shown = " ".join(paths)
        first = "; for a first install leave out --from" if flag == "--from" else ""
        raise ConfigError(f"{shown}: no Kubernetes objects found in {flag} (an empty rendering)",
                          fix="check the render step (helm template / kustomize build) produced output, and the "
                              f"folder holds .yaml, .yml or .json files{first}")
    return out


# ---- what the rules look at -----------------------------------------------------------------------------------


def is_capsule_crd(m: Manifest) -> bool:
    return m.kind == CRD_KIND and dig(m.obj, "spec", "group") in CAPSULE_GROUPS


def capsule_crds(manifests: Iterable[Manifest]) -> dict[str, Manifest]:
    """Capsule's CRDs by name, the Tenant CRD first; a top-level object wins over an embedded copy."""
    found: dict[str, Manifest] = {}
    for m in manifests:
        if is_capsule_crd(m) and (m.name not in found or (found[m.name].via and not m.via)):
            found[m.name] = m
    return dict(sorted(found.items(), key=lambda item: (item[0] != TENANT_CRD, item[0])))


def sync_options(options: Iterable[Any] | str | None) -> dict[str, str]:
    """Argo CD sync options ("Prune=false", or the annotation's comma-separated form) as a dict."""
    parts = options.split(",") if isinstance(options, str) else options if isinstance(options, list) else []
    out = {}
    for part in parts:
        key, _, value = str(part).strip().partition("=")
        if key:
            out[key] = value.strip()
    return out


def _mentions_capsule(*texts: Any) -> bool:
    return any("capsule" in str(t).lower() and "capsule-proxy" not in str(t).lower() for t in texts if t)


def argo_sources(app: Manifest) -> list[dict[str, Any]]:
    sources = dig(app.obj, "spec", "sources")
    return [s for s in [dig(app.obj, "spec", "source"), *(sources if isinstance(sources, list) else [])]
            if isinstance(s, dict)]


def argo_manages_capsule(app: Manifest, crds: dict[str, Manifest]) -> bool:
    """An Application whose source is Capsule (chart, repository or path), or whose tracking marks Capsule's CRDs."""
    if any(_mentions_capsule(s.get("chart"), s.get("repoURL"), s.get("path")) for s in argo_sources(app)):
        return True
    return any(crd.labels.get(ARGO_INSTANCE_LABEL) == app.name and not crd.annotations.get(HELM_RELEASE_NAME)
               or crd.annotations.get(ARGO_TRACKING_ID, "").split(":", 1)[0] == app.name for crd in crds.values())


def flux_covers_capsule(ks: Manifest, crds: dict[str, Manifest], manifests: list[Manifest]) -> bool:
    """A Kustomization whose path or name is Capsule's, or that applied Capsule's CRDs or Capsule's HelmRelease."""
    if _mentions_capsule(dig(ks.obj, "spec", "path"), ks.name):
        return True
    mine = [m for m in manifests if m.labels.get(FLUX_KS_NAME) == ks.name]
    return any(is_capsule_crd(m) or (m.kind == "HelmRelease" and helmrelease_is_capsule(m)) for m in mine)


def helmrelease_is_capsule(hr: Manifest) -> bool:
    return _mentions_capsule(dig(hr.obj, "spec", "chart", "spec", "chart"), dig(hr.obj, "spec", "chartRef", "name"))


def argo_helm_values(app: Manifest) -> list[dict[str, Any]]:
    """The Helm values an Application sets (valuesObject, values text, parameters)."""
    out: list[dict[str, Any]] = []
    for source in argo_sources(app):
        helm = mapping(source.get("helm"))
        if isinstance(helm.get("valuesObject"), dict):
            out.append(helm["valuesObject"])
        if isinstance(helm.get("values"), str):
            try:
                parsed = yaml.safe_load(helm["values"])
            except yaml.YAMLError:
                parsed = None
            if isinstance(parsed, dict):
                out.append(parsed)
        parameters = helm.get("parameters")
        for p in (parameters if isinstance(parameters, list) else []):
            if isinstance(p, dict) and p.get("name") == "crds.keep":
                out.append({"crds": {"keep": str(p.get("value")).lower() == "true"}})
    return out


def values_keep_crds(values: list[dict[str, Any]]) -> bool:
    return any(dig(v, "crds", "keep") in (True, "true") for v in values)


def served_versions(crd: Manifest | dict[str, Any]) -> dict[str, dict[str, Any]]:
    obj = crd.obj if isinstance(crd, Manifest) else crd
    versions = dig(obj, "spec", "versions")
    return {str(v.get("name")): v for v in (versions if isinstance(versions, list) else []) if isinstance(v, dict)}


@dataclass
class ClusterFacts:
    """What --cluster read (GET/LIST only)."""

    context: str
    server: str
    crds: list[Manifest]  # the live Capsule CRDs
    tenant_crd_protected: bool
    protection_served: bool
    hold_why_not: str | None  # None: armed


@dataclass
class ChangeSet:
    new: list[Manifest]
    old: list[Manifest] | None = None
    cluster: ClusterFacts | None = None

    @property
    def new_crds(self) -> dict[str, Manifest]:
        return capsule_crds(self.new)

    @property
    def before_crds(self) -> dict[str, Manifest] | None:
        """Capsule's CRDs before the change: OLD, else the live cluster's (when NEW manages Capsule at all)."""
        if self.old is not None:
            return capsule_crds(self.old)
        if self.cluster is not None:
            return capsule_crds(self.cluster.crds) if self.manages_capsule() else {}
        return None

    def manages_capsule(self) -> bool:
        """Does NEW manage Capsule's install (so a Capsule CRD absent from it is one its apply would prune)? A
        Capsule CRD or the CapsuleConfiguration in it, or an object of the Helm release / Argo CD app / Flux
        Kustomization that owns a live Capsule CRD. Tenants alone do not count: a repository of Tenants does not
        install Capsule."""
        if any(is_capsule_crd(m) or (m.kind == "CapsuleConfiguration"
                                     and str(m.obj.get("apiVersion")).split("/")[0] in CAPSULE_GROUPS)
               for m in self.new):
            return True
        owners = set()
        for crd in (self.cluster.crds if self.cluster else []):
            owners |= _owner_marks(crd)
        return any(_owner_marks(m) & owners for m in self.new)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.new if m.kind == kind]

    def applications(self) -> list[Manifest]:
        """Argo CD Applications, and the template of each ApplicationSet (every Application it generates)."""
        out = [m for m in self.of_kind("Application") if str(m.obj.get("apiVersion")).startswith("argoproj.io/")]
        for appset in self.of_kind("ApplicationSet"):
            template = mapping(dig(appset.obj, "spec", "template"))
            if str(appset.obj.get("apiVersion")).startswith("argoproj.io/") and template:
                name = f"{appset.name} (ApplicationSet template)"
                out.append(Manifest({"apiVersion": appset.obj["apiVersion"], "kind": "ApplicationSet",
                                     "metadata": {**mapping(template.get("metadata")), "name": name,
                                                  "namespace": appset.namespace},
                                     "spec": mapping(template.get("spec"))}, appset.source, appset.line))
        return out


def _owner_marks(m: Manifest) -> set[tuple[str, str]]:
    marks = set()
    if m.annotations.get(HELM_RELEASE_NAME):
        marks.add(("helm", m.annotations[HELM_RELEASE_NAME]))
    if m.annotations.get(ARGO_TRACKING_ID):
        marks.add(("argocd", m.annotations[ARGO_TRACKING_ID].split(":", 1)[0]))
    if m.labels.get(FLUX_KS_NAME):
        marks.add(("flux", m.labels[FLUX_KS_NAME]))
    return marks


# ---- the rules -------------------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One place a rule matched: the object and what exactly was found there."""

    manifest: Manifest | None
    detail: str
    object: str = ""  # when there is no manifest (a cluster fact)


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    title: str
    why: str
    fix: str
    match: Callable[[ChangeSet], Iterable[Hit]]


def _crd_removed(cs: ChangeSet) -> Iterator[Hit]:
    before, after = cs.before_crds, cs.new_crds
    for name, crd in (before or {}).items():
        if crd.via:
            continue  # only inside the chart's hook ConfigMaps before: no tool tracks it, so dropping it deletes nothing
        kept = (f" ({KEEP_ANNOTATION}: keep makes Helm leave it; Argo CD, Flux and kubectl apply --prune ignore that "
                "annotation)" if crd.annotations.get(KEEP_ANNOTATION) == "keep" else "")
        now = after.get(name)
        if now is None:
            yield Hit(crd, "in the current state, not in the new set" + kept)
        elif now.via and cs.old is not None:
            # The switch Capsule 0.7 made (issue #1181): the release's own CRD objects leave the manifest, the hook
            # Job applies them before the upgrade, and Helm then deletes what left the release.
            yield Hit(crd, f"a release resource now, only inside {now.via} in the new set (applied by the chart's hook "
                           "Job): the upgrade deletes the release's CRD after the hook ran" + kept)


def _version_removed(cs: ChangeSet) -> Iterator[Hit]:
    before, after = cs.before_crds, cs.new_crds
    if not before or TENANT_CRD not in before or TENANT_CRD not in after:
        return
    old, new = served_versions(before[TENANT_CRD]), served_versions(after[TENANT_CRD])
    stored = dig(before[TENANT_CRD].obj, "status", "storedVersions")
    stored = [str(name) for name in stored] if isinstance(stored, list) else []
    for name, version in old.items():
        in_storage = version.get("storage") or name in stored
        if version.get("served") and not mapping(new.get(name)).get("served"):
            gone = "removed" if name not in new else "no longer served"
            yield Hit(after[TENANT_CRD], f"version {name} {gone} (served before"
                                         f"{'; Tenants may be stored at it' if in_storage else ''})")
        elif in_storage and name not in new:
            yield Hit(after[TENANT_CRD], f"version {name} removed while Tenants may be stored at it")
    for name in stored:
        if name not in new and name not in old:
            yield Hit(after[TENANT_CRD], f"version {name} is in the live CRD's status.storedVersions and not in "
                                         "the new CRD")


def _replace_on_object(m: Manifest) -> str | None:
    options = sync_options(m.annotations.get(ARGO_SYNC_OPTIONS))
    if options.get("Replace") == "true":
        force = options.get("Force") == "true"
        how = ("kubectl replace --force: deleted and created again" if force
               else "kubectl replace: the whole object overwritten")
        return f"{ARGO_SYNC_OPTIONS}: {m.annotations[ARGO_SYNC_OPTIONS]} ({how})"
    if m.annotations.get(FLUX_FORCE) == "enabled":
        return f"{FLUX_FORCE}: enabled (Flux deletes and creates it again when an apply fails)"
    if HELM_HOOK in m.annotations and not m.via:
        policy = m.annotations.get(HELM_HOOK_DELETE_POLICY) or "before-hook-creation (Helm's default)"
        if "before-hook-creation" in policy or "hook-succeeded" in policy or "hook-failed" in policy:
            return (f"a Helm hook ({HELM_HOOK}: {m.annotations[HELM_HOOK]}) with delete policy {policy}: Helm deletes "
                    "it before creating it again on every install/upgrade")
    return None


def _crd_replaced(cs: ChangeSet) -> Iterator[Hit]:
    crds = cs.new_crds
    for crd in crds.values():
        why = _replace_on_object(crd)
        if why:
            yield Hit(crd, why)
    for app in cs.applications():
        options = sync_options(dig(app.obj, "spec", "syncPolicy", "syncOptions"))
        if options.get("Replace") == "true" and argo_manages_capsule(app, crds):
            force = options.get("Force") == "true"
            yield Hit(app, f"syncOptions Replace=true{', Force=true' if force else ''} on an Application that manages "
                           f"Capsule: every object, its CRDs included, is "
                           f"{'deleted and created again' if force else 'overwritten whole with kubectl replace'}")
    for ks in cs.of_kind("Kustomization"):
        if dig(ks.obj, "spec", "force") is True and flux_covers_capsule(ks, crds, cs.new):
            yield Hit(ks, "spec.force: true on a Kustomization that applies Capsule: Flux deletes and creates again an "
                          "object whose apply fails (an immutable field), a CRD included")
    for hr in cs.of_kind("HelmRelease"):
        if dig(hr.obj, "spec", "upgrade", "force") is True and helmrelease_is_capsule(hr):
            yield Hit(hr, "spec.upgrade.force: true on Capsule's HelmRelease: Helm upgrades through a replacement "
                          "strategy (delete and create)")


def _crd_not_kept(cs: ChangeSet) -> Iterator[Hit]:
    crds = cs.new_crds
    for crd in crds.values():
        if crd.annotations.get(KEEP_ANNOTATION) != "keep":
            yield Hit(crd, f"no {KEEP_ANNOTATION}: keep" + (
                " (applied by the chart's CRD hook Job, so `helm uninstall` leaves it today; crds.inline=true, or a "
                "tool that applies this rendering, makes it a release resource)" if crd.via else ""))
    if crds:
        return
    # The CRDs are not in the set: judge the chart values the GitOps objects give Capsule's chart.
    for hr in cs.of_kind("HelmRelease"):
        values = dig(hr.obj, "spec", "values")
        if helmrelease_is_capsule(hr) and not values_keep_crds([values] if isinstance(values, dict) else []):
            yield Hit(hr, "Capsule's HelmRelease does not set crds.keep: true in spec.values")
    for app in cs.applications():
        if argo_manages_capsule(app, crds) and any(s.get("chart") for s in argo_sources(app)) \
                and not values_keep_crds(argo_helm_values(app)):
            yield Hit(app, "the Application installs Capsule's chart without crds.keep: true in its Helm values")


def _argo_prune(cs: ChangeSet) -> Iterator[Hit]:
    crds = cs.new_crds
    # CRDs only inside the chart's hook ConfigMaps are applied by its Job: Argo CD does not track, so never prunes them.
    tracked = {n: c for n, c in crds.items() if not c.via}
    for app in cs.applications():
        if not argo_manages_capsule(app, crds) or (crds and not tracked):
            continue
        prune = ("automated sync with prune: true" if dig(app.obj, "spec", "syncPolicy", "automated", "prune") is True
                 else "a sync with prune")
        if not tracked:
            yield Hit(app, f"manages Capsule; its CRDs are not in this set, so nothing shows they carry "
                           f"{ARGO_SYNC_OPTIONS}: Prune=false,Delete=false ({prune} or deleting the Application "
                           "deletes them)")
            continue
        for crd in tracked.values():
            options = sync_options(crd.annotations.get(ARGO_SYNC_OPTIONS))
            missing = [o for o in ("Prune", "Delete") if options.get(o) != "false"]
            if missing:
                yield Hit(crd, f"managed by Application {app.name} without "
                               f"{', '.join(o + '=false' for o in missing)} in {ARGO_SYNC_OPTIONS} ({prune}, or "
                               "deleting the Application, deletes it)")


def _flux_prune(cs: ChangeSet) -> Iterator[Hit]:
    # CRDs only inside the chart's hook ConfigMaps are applied by its Job, not by Flux: its prune never sees them.
    crds = {n: c for n, c in cs.new_crds.items() if not c.via}
    for ks in cs.of_kind("Kustomization"):
        if "kustomize.toolkit.fluxcd.io" not in str(ks.obj.get("apiVersion")):
            continue
        if dig(ks.obj, "spec", "prune") is not True:
            continue
        if not flux_covers_capsule(ks, crds, cs.new):
            continue
        mine = [c for c in crds.values() if c.labels.get(FLUX_KS_NAME) == ks.name] or list(crds.values())
        # Flux reads its prune opt-out from an annotation or a label.
        unguarded = [c for c in mine if "disabled" not in (c.annotations.get(FLUX_PRUNE), c.labels.get(FLUX_PRUNE))]
        if not mine:
            yield Hit(ks, f"prune: true on a Kustomization that applies Capsule; its CRDs are not in this set, so "
                          f"nothing shows they carry {FLUX_PRUNE}: disabled")
        for crd in unguarded:
            yield Hit(crd, f"pruned by Kustomization {ks.namespace}/{ks.name} (prune: true) without {FLUX_PRUNE}: "
                           "disabled")


def _protection_missing(cs: ChangeSet) -> Iterator[Hit]:
    if cs.cluster is None or cs.cluster.tenant_crd_protected:
        return
    why = ("this API server does not serve ValidatingAdmissionPolicy (Kubernetes >= 1.30)"
           if not cs.cluster.protection_served else "no responder protect policy refuses its DELETE")
    yield Hit(None, why, object=f"{CRD_KIND}/{TENANT_CRD} (cluster {cs.cluster.context})")


def _hold_not_armed(cs: ChangeSet) -> Iterator[Hit]:
    if cs.cluster is None or cs.cluster.hold_why_not is None:
        return
    yield Hit(None, cs.cluster.hold_why_not, object=f"NamespaceHold (cluster {cs.cluster.context})")


TENANTS_GONE = ("deleting a Capsule CRD deletes every object of its kind through storage, past every webhook; "
                "for the Tenant CRD that is every Tenant, and then the garbage collector (Capsule >= 0.13: Capsule "
                "itself) deletes every tenant namespace with everything in it")

RULES: tuple[Rule, ...] = (
    Rule("capsule-crd-removed", ERROR, "A Capsule CRD is in the current state and not in the new one",
         "applying the new set with prune (Helm, Argo CD, Flux, kubectl apply --prune) deletes the CRD: "
         + TENANTS_GONE,
         "put the CRD back into the set, or stop the tool from pruning it (helm.sh/resource-policy: keep, Argo CD "
         "Prune=false, Flux kustomize.toolkit.fluxcd.io/prune: disabled) before applying",
         _crd_removed),
    Rule("capsule-crd-replaced", ERROR, "A Capsule CRD is replaced rather than updated",
         "a delete-and-create of a CRD deletes every object of its kind first: " + TENANTS_GONE + "; a replace "
         "without delete overwrites the whole CRD, dropping fields others set (the conversion webhook's caBundle: "
         "Tenant reads that need conversion fail)",
         "update CRDs in place: kubectl apply --server-side (never replace --force); drop Replace=true/Force=true "
         "and Flux force for them; do not make a CRD a Helm hook",
         _crd_replaced),
    Rule("tenant-crd-version-removed", ERROR, "A served or stored version is removed from the Tenant CRD",
         "Tenants stored at the removed version can no longer be read or converted, and clients and controllers "
         "using it (Capsule, capsule-proxy, pipelines) fail: tenant operations stop, and a recovery cannot read "
         "the Tenants it needs",
         "keep the version served until every Tenant is stored at the new one (a storage migration), then remove "
         "it from status.storedVersions before dropping it",
         _version_removed),
    Rule("capsule-crd-not-kept", ERROR, "A Capsule CRD lacks helm.sh/resource-policy: keep",
         "`helm uninstall` of Capsule, or an upgrade that stops rendering the CRD, deletes it: " + TENANTS_GONE,
         "install Capsule's chart with --set crds.keep=true (the template reads it though values.yaml does not list "
         "it), or annotate the CRDs helm.sh/resource-policy: keep",
         _crd_not_kept),
    Rule("argocd-prunes-capsule-crds", ERROR, "An Argo CD Application can prune or delete Capsule's CRDs",
         "a prune (an automated sync with prune, or a manual one) of a CRD that left the source, or deleting the "
         "Application (its resources finalizer), deletes the CRD: " + TENANTS_GONE,
         "annotate Capsule's CRDs argocd.argoproj.io/sync-options: Prune=false,Delete=false (the chart's "
         "crds.annotations value; the documented crds.annnotations spelling is ignored by the template)",
         _argo_prune),
    Rule("flux-prunes-capsule-crds", ERROR, "A Flux Kustomization with prune covers Capsule's CRDs",
         "with prune: true Flux deletes what left the source, and everything it applied when the Kustomization is "
         "deleted: " + TENANTS_GONE,
         "label or annotate Capsule's CRDs kustomize.toolkit.fluxcd.io/prune: disabled, or keep the CRDs in a "
         "Kustomization without prune",
         _flux_prune),
    Rule("tenant-crd-unprotected", ERROR, "Nothing in the cluster refuses deleting the Tenant CRD",
         "one mistaken `kubectl delete crd`, prune or uninstall starts the cascade: " + TENANTS_GONE,
         "run `responder protect` as a cluster admin (a ValidatingAdmissionPolicy that refuses the DELETE unless "
         "the CRD is annotated responder.dev/allow-delete=true)",
         _protection_missing),
    Rule("namespace-hold-not-armed", WARNING, "responder's namespace hold is not armed",
         "during an incident the breaker then creates the hold, which the API server enforces only at its next "
         "policy refresh (up to ~1 s): a window in which tenant namespaces can still be deleted",
         "run `responder protect --only hold` as a cluster admin",
         _hold_not_armed),
)
RULES_BY_ID = {r.id: r for r in RULES}


# ---- findings and reports ---------------------------------------------------------------------------------------


@dataclass
class Finding:
    rule: str
    severity: str
    title: str
    object: str
    where: str | None  # file:line, None for a cluster fact
    detail: str
    why: str
    fix: str
    source: str | None = None  # the file (for SARIF); None for stdin or the cluster
    line: int | None = None


def evaluate(cs: ChangeSet, rules: Iterable[Rule] = RULES) -> list[Finding]:
    findings = []
    for rule in rules:
        for hit in rule.match(cs):
            m = hit.manifest
            findings.append(Finding(
                rule.id, rule.severity, rule.title, m.ref if m else hit.object, m.where if m else None, hit.detail,
                rule.why, rule.fix, source=m.source if m and m.source not in ("-", CLUSTER_SOURCE) else None,
                line=m.line if m else None))
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    return findings


def crd_changes(cs: ChangeSet) -> list[dict[str, Any]]:
    """Each Capsule CRD before -> after: added, removed, or its versions (served/storage) before and after."""
    before, after = cs.before_crds, cs.new_crds
    if before is None:
        return [{"crd": n, "change": "present", "after": _versions(c)} for n, c in after.items()]
    out = []
    for name in list(before) + [n for n in after if n not in before]:
        old, new = before.get(name), after.get(name)
        change = ("removed" if new is None else "added" if old is None
                  else "versions unchanged" if _versions(old) == _versions(new) else "versions changed")
        entry: dict[str, Any] = {"crd": name, "change": change}
        if old is not None:
            entry["before"] = _versions(old)
        if new is not None:
            entry["after"] = _versions(new)
        out.append(entry)
    out.sort(key=lambda e: (e["crd"] != TENANT_CRD, e["change"] == "versions unchanged", e["crd"]))
    return out


def _versions(crd: Manifest) -> list[str]:
    """['v1beta1 (served)', 'v1beta2 (served, storage)']"""
    out = []
    for name, v in served_versions(crd).items():
        flags = [f for f in ("served", "storage") if v.get(f)]
        out.append(f"{name} ({', '.join(flags) or 'not served'})")
    return out


def failing(findings: list[Finding], fail_on: str) -> bool:
    if fail_on == "never":
        return False
    floor = SEVERITIES.index(fail_on)
    return any(SEVERITIES.index(f.severity) >= floor for f in findings)


def build_report(cs: ChangeSet, findings: list[Finding], fail_on: str, *,
                 inputs: dict[str, list[str]]) -> dict[str, Any]:
    mode = "cluster" if cs.cluster else "diff" if cs.old is not None else "lint"
    counts = {s: sum(f.severity == s for f in findings) for s in reversed(SEVERITIES)}
    report: dict[str, Any] = {
        "mode": mode, "inputs": inputs, "objects": {"new": len(cs.new), "old": len(cs.old) if cs.old else None},
        "fail_on": fail_on, "failed": failing(findings, fail_on), "counts": counts,
        "findings": [asdict(f) for f in findings], "crd_changes": crd_changes(cs),
    }
    if cs.cluster:
        report["cluster"] = {"context": cs.cluster.context, "server": cs.cluster.server}
    return report


def render_table(report: dict[str, Any]) -> str:
    against = {"lint": "no comparison (lint)", "diff": f"compared with {' '.join(report['inputs'].get('from') or [])}",
               "cluster": f"compared with the live cluster ({(report.get('cluster') or {}).get('context')})"}
    lines = [f"responder check: {report['objects']['new']} object(s) in {' '.join(report['inputs']['to'])}; "
             f"{against[report['mode']]}"]
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for f in report["findings"]:  # already in severity order
        by_rule.setdefault(f["rule"], []).append(f)
    for rule, found in by_rule.items():
        first = found[0]
        lines.append(f"{first['severity'].upper():<8}{rule}: {first['title']} ({len(found)})")
        for f in found:
            lines.append(f"  {f['object']}" + (f"  {f['where']}" if f["where"] else "") + f": {f['detail']}")
        lines.append(f"  why: {first['why']}")
        lines.append(f"  fix: {first['fix']}")
    # Every change, and the Tenant CRD's versions whatever happened to them; the rest of the unchanged CRDs counted.
    changes = [c for c in report["crd_changes"] if c["change"] != "present"]
    shown = [c for c in changes if c["change"] != "versions unchanged" or c["crd"] == TENANT_CRD]
    if changes:
        unchanged = len(changes) - len(shown)
        lines.append("Capsule CRDs:" + (f" ({unchanged} more with versions unchanged)" if unchanged else ""))
        for c in shown:
            versions = (f"{', '.join(c.get('before') or [])} -> {', '.join(c.get('after') or [])}"
                        if c["change"] == "versions changed" else ", ".join(c.get("after") or c.get("before") or []))
            lines.append(f"  {c['crd']}: {c['change']}: {versions}")
    counts = ", ".join(f"{n} {s}(s)" for s, n in report["counts"].items() if n) or "no findings"
    lines.append(f"{counts}: {'FAIL' if report['failed'] else 'pass'} (--fail-on {report['fail_on']})")
    return "\n".join(lines) + "\n"


def render_sarif(report: dict[str, Any], *, base: Path | None = None, anchor: str | None = None) -> dict[str, Any]:
    """SARIF 2.1.0: one run, the rule table as the driver's rules, each finding a result at its file and line.
    A finding about the cluster has no file: it is placed at line 1 of `anchor` (the first manifest file checked),
    since code-scanning uploads (GitHub's) refuse a result without a location; with stdin only it has none."""
    base = base or Path.cwd()
    rules = [{"id": r.id, "name": r.id, "shortDescription": {"text": r.title}, "fullDescription": {"text": r.why},
              "help": {"text": r.fix}, "defaultConfiguration": {"level": SARIF_LEVEL[r.severity]}} for r in RULES]
    index = {r.id: i for i, r in enumerate(RULES)}
    results = []
    for f in report["findings"]:
        result: dict[str, Any] = {
            "ruleId": f["rule"], "ruleIndex": index[f["rule"]], "level": SARIF_LEVEL[f["severity"]],
            "message": {"text": f"{f['object']}: {f['detail']}. {f['why']}. Fix: {f['fix']}"},
        }
        source, line = (f["source"], f["line"]) if f["source"] else (anchor, 1)
        if source:
            path = Path(source).resolve()
            try:
                uri = path.relative_to(base.resolve()).as_posix()
            except ValueError:
                uri = path.as_uri()
            result["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": uri},
                                                         "region": {"startLine": line or 1}}}]
        results.append(result)
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "responder-check", "rules": rules}}, "results": results}]}


# ---- the cluster, read-only ----------------------------------------------------------------------------------------


class ReadOnlyClient:
    """Only the reading calls of KubeClient: check's cluster reads go through this, so nothing can be written
    (no request, no patch, no dry run)."""

    _ALLOWED = ("get", "get_or_none", "list_all")

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name not in self._ALLOWED:
            raise AttributeError(f"responder check reads only; {name} is not available")
        return getattr(self._client, name)


async def read_cluster(client: Any, context: str, server: str) -> ClusterFacts:
    from responder.actions.breaker import read_armed_hold
    from responder.ops.protect import read_protection

    reader = ReadOnlyClient(client)
    crds = (await reader.list_all(CRDS_PATH))["items"]
    # A LIST's items carry no apiVersion/kind; give them theirs so the rules see CRDs.
    live = [Manifest({"apiVersion": "apiextensions.k8s.io/v1", "kind": CRD_KIND, **c}, CLUSTER_SOURCE)
            for c in crds if dig(c, "spec", "group") in CAPSULE_GROUPS]
    status = await read_protection(reader)
    return ClusterFacts(context, server, live, status.protects(TENANT_CRD), status.served,
                        await read_armed_hold(reader))


# ---- command line -------------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="before applying a change (CI/CD, GitOps): would it delete or replace "
                                      "Capsule's CRDs?")
    p.add_argument("--to", nargs="+", required=True, metavar="PATH",
                   help="the rendered manifests to apply: files, folders, - for stdin")
    p.add_argument("--from", dest="from_", nargs="+", metavar="PATH",
                   help="the rendering applied today, to compare with")
    p.add_argument("--cluster", action="store_true",
                   help="compare with the live cluster (read-only: GET and LIST only) and check responder's protection")
    # The same flags as `responder protect`: only --cluster uses them.
    p.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG, merged, or ~/.kube/config)")
    p.add_argument("--context", help="the kubeconfig context to use")
    p.add_argument("--fail-on", choices=[*reversed(SEVERITIES), "never"], default=ERROR,
                   help="exit 1 when a finding is at or above this severity (default error)")
    p.add_argument("-o", "--output", choices=["table", "json", "sarif"], default="table")
    p.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    if (args.from_ or []).count("-") + args.to.count("-") > 1:
        raise ConfigError("stdin (-) given more than once", fix="pass - for one of --from/--to, files for the other")
    if not args.cluster and (args.kubeconfig or args.context):
        raise ConfigError("--kubeconfig/--context given without --cluster", fix="add --cluster to compare with that "
                                                                               "cluster, or drop them")
    new = load_manifests(args.to)
    old = load_manifests(args.from_, flag="--from") if args.from_ else None
    cluster = None
    if args.cluster:
        from responder.cluster.client import KubeClient
        from responder.cluster.kubeconfig import load_cluster_access

        access = load_cluster_access(args.kubeconfig, args.context)

        async def go() -> ClusterFacts:
            async with KubeClient(access, retry_deadline=10.0) as client:
                return await read_cluster(client, access.context, access.display_server)

        cluster = asyncio.run(go())
    cs = ChangeSet(new, old, cluster)
    findings = evaluate(cs)
    report = build_report(cs, findings, args.fail_on, inputs={"to": list(args.to), "from": list(args.from_ or [])})
    if args.output == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif args.output == "sarif":
        anchor = next((m.source for m in new if m.source != "-"), None)
        sys.stdout.write(json.dumps(render_sarif(report, anchor=anchor), indent=2) + "\n")
    else:
        sys.stdout.write(render_table(report))
    return EXIT_FINDINGS if report["failed"] else EXIT_CLEAN


__all__ = ["RULES", "RULES_BY_ID", "Rule", "Finding", "Manifest", "ChangeSet", "ClusterFacts", "load_manifests",
           "parse_manifests", "evaluate", "crd_changes", "build_report", "render_table", "render_sarif", "failing",
           "read_cluster", "ReadOnlyClient", "add_parser", "EXIT_CLEAN", "EXIT_FINDINGS"]
