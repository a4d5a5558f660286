"""Runbook files: parsed with safe YAML only, validated in full before any step runs.

Every error is a RunbookError whose message reads `<file>:<line>: <field path>: <problem>`, e.g.
`runbooks/x.yaml:14: spec.steps[2].timeout: expected a duration like 30s or 2m, got 'soon'`,
with a `fix` hint. Line numbers come from the composed YAML nodes, so they point at the offending
key or value, not at the start of the document.

Hostile input is refused before it can cost much: files over 1 MiB, more than one document, more
than MAX_NODES nodes (counted with aliases expanded, which stops alias bombs and recursive aliases),
nesting deeper than MAX_DEPTH, and any tag outside plain YAML (`!!python/object` is never constructed).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from responder.errors import RunbookError

API_VERSION = "responder.dev/v1"
KIND = "Runbook"
KNOWN_TRIGGERS = frozenset({"crd-deleting", "tenants-rebuilt", "tenants-vanished", "namespace-terminating", "manual"})
PHASES = ("contain", "recover")
MAX_BYTES = 1 << 20
MAX_NODES = 10_000
MAX_DEPTH = 64
MAX_STEPS = 200
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0

TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
METADATA_KEYS = ("name", "description")
SPEC_KEYS = ("triggers", "detection", "params", "steps")
DETECTION_KEYS = ("tenantBurst", "window", "orphanedNamespaces", "strict")
STEP_KEYS = ("id", "action", "phase", "description", "confirm", "timeout", "continueOnError", "params")

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_T + t for t in ("null", "bool", "int", "float", "str", "timestamp"))
_SEQ_TAG = _T + "seq"
_MAP_TAG = _T + "map"
_MERGE_TAG = _T + "merge"
_STEP_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_DURATION = re.compile(r"^(\d+)(s|m)$")

Path_ = tuple  # a field path: ("spec", "steps", 2, "timeout")


@dataclass(frozen=True)
class ParamSpec:
    type: type | tuple[type, ...]
    required: bool = False
    default: object = None
    description: str = ""


@dataclass(frozen=True)
class ActionSpec:
    name: str
    params: Mapping[str, ParamSpec]
    destructive: bool = False
    description: str = ""


@dataclass(frozen=True)
class Step:
    id: str
    action: str
    phase: str
    description: str
    confirm: bool
    timeout: float
    continue_on_error: bool
    # Every parameter the action declares: the step's own value, else the runbook's spec.params
    # value, else the ActionSpec default.
    params: Mapping[str, object]
    line: int
    # Names the step set itself; CLI overrides of runbook params do not replace these.
    explicit_params: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DetectionSettings:
    """spec.detection: what tells the cascade from routine tenant work (see responder/incident/detect.py)."""

    tenant_burst: int = 3  # Tenants deleted within the window: an incident (one or two: offboarding)
    window_seconds: float = 10.0
    # Namespaces turning Terminating within the window because their Tenant is gone (not found, or a new
    # UID) while responder never saw that Tenant being deleted: an incident (fewer: a notice).
    orphaned_namespaces: int = 3
    strict: bool = False  # every Tenant deletion is an incident (clusters where no Tenant is deleted by hand)

    def to_json(self) -> dict[str, Any]:
        return {"tenantBurst": self.tenant_burst, "window": f"{self.window_seconds:g}s",
                "orphanedNamespaces": self.orphaned_namespaces, "strict": self.strict}


@dataclass(frozen=True)
class Runbook:
    name: str
    description: str
    triggers: tuple[str, ...]
    params: Mapping[str, object]
    steps: tuple[Step, ...]
    path: Path
    detection: DetectionSettings = DetectionSettings()

    def with_params(self, overrides: Mapping[str, object], actions: Mapping[str, ActionSpec]) -> "Runbook":
        """A copy with runbook-level params overridden (the CLI's --param); a step's own params win.

        String values (as a CLI gives them) are read as YAML scalars when the parameter is not a string,
        so "8" becomes 8 and "true" becomes True.
        """
        declared = _declared_params(actions[s.action] for s in self.steps)
        merged = dict(self.params)
        for name, value in overrides.items():
            specs = declared.get(name)
            if not specs:
                hint = _did_you_mean(name, declared)
                raise RunbookError(f"{self.path}: --param {name}: no step of this runbook takes this "
                                   f"parameter{hint}",
                                   fix=f"parameters: {', '.join(sorted(declared)) or '(none)'}")
            for spec in specs:
                if isinstance(value, str) and not _type_ok(value, spec.type) and len(value) <= 1000:
                    try:
                        parsed = yaml.safe_load(value)
                    except yaml.YAMLError:
                        parsed = value
                    if not isinstance(parsed, (dict, list)):
                        value = parsed
                if not _type_ok(value, spec.type):
                    raise RunbookError(f"{self.path}: --param {name}: expected {_type_name(spec.type)}, "
                                       f"got {_describe(value)}",
                                       fix=f"pass --param {name}=<{_type_name(spec.type)}>")
            merged[name] = value
        steps = []
        for step in self.steps:
            params = dict(step.params)
            for name in actions[step.action].params:
                if name in overrides and name not in step.explicit_params:
                    params[name] = copy.deepcopy(merged[name])
            steps.append(dataclasses.replace(step, params=MappingProxyType(params)))
        return dataclasses.replace(self, params=MappingProxyType(merged), steps=tuple(steps))


# ---- entry points ------------------------------------------------------------------------------

def load_runbook(path: Path, actions: Mapping[str, ActionSpec]) -> Runbook:
    """Read and validate a runbook file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)  # never read a huge file whole just to refuse it
    except OSError as exc:
        raise RunbookError(f"{path}: cannot read runbook: {exc.strerror}",
                           fix="check the path given with --runbook") from exc
    if len(data) > MAX_BYTES:
        raise RunbookError(f"{path}:1: (document): runbook is larger than 1 MiB",
                           fix="a runbook is a short list of steps; check that this is the right file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RunbookError(f"{path}:{line}: (document): not UTF-8 text",
                           fix="save the runbook as UTF-8") from exc
    return dataclasses.replace(parse_runbook(text, actions, source=str(path)), path=path)


def parse_runbook(text: str, actions: Mapping[str, ActionSpec], *, source: str = "<string>") -> Runbook:
    """Validate runbook YAML `text`; `source` names it in error messages."""
    doc = _Doc(source)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise doc.fail((), "runbook is larger than 1 MiB", line=1,
                       fix="a runbook is a short list of steps; check that this is the right file")
    root = doc.compose(text)
    data = doc.convert(root, ())
    return _validate(doc, data, actions)


# ---- YAML with limits and line numbers ---------------------------------------------------------

class _Limit(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops composing once the document is too big or too deep, before the
    pure-Python composer recurses its way into a RecursionError."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node:  # type: ignore[override]
        mark = self.peek_event().start_mark
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Limit(mark.line + 1, f"more than {MAX_NODES} YAML nodes")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Doc:
    """One runbook being read: remembers the line of every field path for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}      # path -> line of its value
        self.key_lines: dict[Path_, int] = {}  # path -> line of its key (or of its "- " list item)
        self._count = 0
        self._constructor = SafeConstructor()

    # -- errors

    def line_of(self, path: Path_, *, at_key: bool = False) -> int:
        if at_key and path in self.key_lines:
            return self.key_lines[path]
        if path in self.lines:
            return self.lines[path]
        # A missing field: point at the key of the nearest parent that exists.
        parent = path[:-1]
        while parent:
            if parent in self.key_lines:
                return self.key_lines[parent]
            if parent in self.lines:
                return self.lines[parent]
            parent = parent[:-1]
        return self.lines.get((), 1)

    def fail(self, path: Path_, problem: str, *, fix: str | None = None, line: int | None = None,
             at_key: bool = False) -> RunbookError:
        if line is None:
            line = self.line_of(path, at_key=at_key)
        return RunbookError(f"{self.source}:{line}: {_field(path)}: {problem}", fix=fix)

    # -- composing

    def compose(self, text: str) -> Node:
        loader = None
        try:
            loader = _Loader(text)  # the reader rejects control characters right here
            node = loader.get_single_node()
        except _Limit as exc:
            raise self.fail((), f"refusing the runbook: {exc.problem}", line=exc.line,
                            fix=f"a runbook has at most {MAX_NODES} nodes and {MAX_DEPTH} levels of "
                                "nesting; check for runaway anchors/aliases") from None
        except RecursionError:
            raise self.fail((), "refusing the runbook: nested too deeply", line=1,
                            fix="flatten the document") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            if exc.problem == "but found another document":
                raise self.fail((), "more than one YAML document (found another here)", line=line,
                                fix="put one runbook per file and remove the extra '---'") from None
            problem = f"{exc.context}: {exc.problem}" if exc.context else str(exc.problem)
            raise self.fail((), f"not valid YAML: {problem}", line=line,
                            fix="check the indentation and quoting around this line") from None
        except yaml.reader.ReaderError as exc:
            line = text[:exc.position].count("\n") + 1
            char = chr(exc.character) if isinstance(exc.character, int) else exc.character
            raise self.fail((), f"not valid YAML: unacceptable character {char!r}", line=line,
                            fix="remove control characters from the file") from None
        except yaml.YAMLError as exc:
            raise self.fail((), f"not valid YAML: {exc}", line=1,
                            fix="check the file's YAML syntax") from None
        finally:
            if loader is not None:
                loader.dispose()
        if node is None:
            raise self.fail((), "the runbook is empty", line=1,
                            fix=f"start from apiVersion: {API_VERSION} / kind: {KIND}")
        return node

    # -- converting nodes to Python values, with aliases expanded and counted

    def _tick(self, node: Node, path: Path_, depth: int) -> None:
        self._count += 1
        if self._count > MAX_NODES:
            raise self.fail(path, f"refusing the runbook: it expands to more than {MAX_NODES} YAML nodes",
                            line=node.start_mark.line + 1,
                            fix="this looks like an anchor/alias bomb; write the values out instead")
        if depth > MAX_DEPTH:
            raise self.fail(path, f"refusing the runbook: nested deeper than {MAX_DEPTH} levels",
                            line=node.start_mark.line + 1,
                            fix="check for an alias that refers to its own anchor")

    def _bad_tag(self, node: Node, path: Path_) -> RunbookError:
        tag = node.tag.replace(_T, "!!", 1) if node.tag.startswith(_T) else node.tag
        return self.fail(path, f"unsupported YAML tag {tag!r}; only plain YAML values are allowed",
                         line=node.start_mark.line + 1, fix="remove the tag")

    def convert(self, node: Node, path: Path_, depth: int = 0) -> Any:
        self._tick(node, path, depth)
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise self._bad_tag(node, path)
            return self._constructor.construct_object(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self._bad_tag(node, path)
            items = []
            for i, child in enumerate(node.value):
                self.key_lines[path + (i,)] = child.start_mark.line + 1
                items.append(self.convert(child, path + (i,), depth + 1))
            return items
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                raise self._bad_tag(node, path)
            out: dict[str, Any] = {}
            for key, knode, vnode in self._pairs(node, path, depth):
                self.key_lines[path + (key,)] = knode.start_mark.line + 1
                out[key] = self.convert(vnode, path + (key,), depth + 1)
            return out
        raise self._bad_tag(node, path)  # pragma: no cover - the composer makes only these three

    def _pairs(self, node: MappingNode, path: Path_, depth: int) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) of a mapping, `<<` merges applied (explicit keys win)."""
        pairs: list[tuple[str, Node, Node]] = []
        seen: dict[str, int] = {}
        merges: list[Node] = []
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                merges.append(vnode)
                continue
            key = self._key(knode, path, depth)
            if key in seen:
                raise self.fail(path + (key,), f"duplicate key (first at line {seen[key]})",
                                line=knode.start_mark.line + 1, fix="remove one of the two")
            seen[key] = knode.start_mark.line + 1
            pairs.append((key, knode, vnode))
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for src in sources:
                self._tick(src, path, depth + 1)
                if not isinstance(src, MappingNode) or src.tag != _MAP_TAG:
                    raise self.fail(path, "'<<' must merge a mapping or a list of mappings",
                                    line=src.start_mark.line + 1, fix="merge an anchored mapping: <<: *name")
                for key, knode, vnode in self._pairs(src, path, depth + 1):
                    if key not in seen:
                        seen[key] = knode.start_mark.line + 1
                        pairs.append((key, knode, vnode))
        return pairs

    def _key(self, knode: Node, path: Path_, depth: int) -> str:
        self._tick(knode, path, depth + 1)
        line = knode.start_mark.line + 1
        if not isinstance(knode, ScalarNode):
            raise self.fail(path, "mapping keys must be plain strings", line=line, fix="use a plain key")
        if knode.tag not in _SCALAR_TAGS:
            raise self._bad_tag(knode, path)
        key = self._constructor.construct_object(knode)
        if not isinstance(key, str):
            # YAML 1.1 reads `on:`/`yes:` as booleans and `1:` as an integer.
            raise self.fail(path + (str(knode.value),), f"key {knode.value!r} is read as {_describe(key)}, "
                            "not a string", line=line, fix=f'quote it: "{knode.value}":')
        return key


# ---- validation --------------------------------------------------------------------------------

def _field(path: Path_) -> str:
    if not path:
        return "(document)"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    # A recursive alias makes paths as deep as the nesting limit; the start is what locates it.
    return out if len(out) <= 120 else out[:117] + "..."


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number",
               list: "a list", dict: "a mapping"}


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _type_ok(value: object, types: type | tuple[type, ...]) -> bool:
    for t in types if isinstance(types, tuple) else (types,):
        if t is bool:
            if isinstance(value, bool):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):  # True is not a count
                return True
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif t is type(None):
            if value is None:
                return True
        elif isinstance(value, t):
            return True
    return False


def _did_you_mean(word: str, choices: object) -> str:
    options = [str(c) for c in choices]  # type: ignore[attr-defined]
    by_case = [c for c in options if c.lower() == word.lower()]
    close = by_case or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(doc: _Doc, mapping: dict, path: Path_, allowed: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in allowed:
            raise doc.fail(path + (key,), f"unknown field{_did_you_mean(key, allowed)}", at_key=True,
                           fix=f"{_field(path)} fields are: {', '.join(allowed)}")


def _get(doc: _Doc, mapping: dict, path: Path_, key: str, types: type | tuple[type, ...], *,
         required: bool = False, default: object = None, fix: str | None = None) -> Any:
    if key not in mapping:
        if required:
            raise doc.fail(path + (key,), "required field is missing",
                           fix=fix or f"add {key}: <{_type_name(types)}>")
        return default
    value = mapping[key]
    if not _type_ok(value, types):
        raise doc.fail(path + (key,), f"expected {_type_name(types)}, got {_describe(value)}",
                       fix=fix or f"set {key} to {_type_name(types)}")
    return value


def _mapping(doc: _Doc, value: object, path: Path_, what: str) -> dict:
    if not isinstance(value, dict):
        raise doc.fail(path, f"expected a mapping ({what}), got {_describe(value)}",
                       fix=f"write {_field(path)} as key: value lines")
    return value


def _timeout(doc: _Doc, step: dict, path: Path_) -> float:
    if "timeout" not in step:
        return DEFAULT_TIMEOUT
    return _duration(doc, step, path, "timeout", MAX_TIMEOUT)


def _duration(doc: _Doc, mapping: dict, path: Path_, key: str, maximum: float) -> float:
    value = mapping[key]
    fix = f"write a duration like 30s or 2m (or a number of seconds), at most {int(maximum)}s"
    if isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = float(int(m.group(1)) * (60 if m.group(2) == "m" else 1))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise doc.fail(path + (key,), f"expected a duration like 30s or 2m, got {_describe(value)}",
                       fix=fix)
    # NaN compares false both ways, so check it explicitly.
    if not math.isfinite(seconds) or seconds <= 0 or seconds > maximum:
        raise doc.fail(path + (key,), f"{key} must be more than 0s and at most "
                       f"{int(maximum)}s, got {_describe(value)}", fix=fix)
    return seconds


MAX_DETECTION_WINDOW = 600.0
MAX_DETECTION_COUNT = 10_000


def _detection(doc: _Doc, spec: dict) -> DetectionSettings:
    """spec.detection, every field optional (the defaults are DetectionSettings')."""
    path: Path_ = ("spec", "detection")
    if "detection" not in spec:
        return DetectionSettings()
    raw = spec["detection"]
    if raw is None:
        return DetectionSettings()
    raw = _mapping(doc, raw, path, "tenantBurst, window, orphanedNamespaces, strict")
    _check_keys(doc, raw, path, DETECTION_KEYS)
    default = DetectionSettings()

    def count(key: str, minimum: int, default_value: int, meaning: str) -> int:
        value = _get(doc, raw, path, key, int, default=default_value,
                     fix=f"set {key} to a whole number from {minimum} to {MAX_DETECTION_COUNT} ({meaning})")
        if not minimum <= value <= MAX_DETECTION_COUNT:
            raise doc.fail(path + (key,), f"expected {minimum} to {MAX_DETECTION_COUNT}, got {value}",
                           fix=f"set {key} to a whole number from {minimum} to {MAX_DETECTION_COUNT} ({meaning}); "
                               f"default {default_value}")
        return value

    burst = count("tenantBurst", 2, default.tenant_burst,
                  "Tenants deleted within the window that make an incident; strict: true makes every one")
    orphaned = count("orphanedNamespaces", 1, default.orphaned_namespaces,
                     "namespaces turning Terminating within the window because their Tenant is gone")
    window = _duration(doc, raw, path, "window", MAX_DETECTION_WINDOW) if "window" in raw else default.window_seconds
    strict = _get(doc, raw, path, "strict", bool, default=default.strict, fix="strict: true or strict: false")
    return DetectionSettings(tenant_burst=burst, window_seconds=window, orphaned_namespaces=orphaned, strict=strict)


def _declared_params(used: Iterable[ActionSpec]) -> dict[str, list[ParamSpec]]:
    """parameter name -> the ParamSpecs of the actions that take it."""
    declared: dict[str, list[ParamSpec]] = {}
    for action in used:
        for name, spec in action.params.items():
            declared.setdefault(name, []).append(spec)
    return declared


def _validate(doc: _Doc, data: object, actions: Mapping[str, ActionSpec]) -> Runbook:
    root = _mapping(doc, data, (), "a runbook with apiVersion, kind, metadata and spec")
    _check_keys(doc, root, (), TOP_KEYS)

    api_version = _get(doc, root, (), "apiVersion", str, required=True, fix=f"apiVersion: {API_VERSION}")
    if api_version != API_VERSION:
        raise doc.fail(("apiVersion",), f"expected {API_VERSION!r}, got {_describe(api_version)}",
                       fix=f"apiVersion: {API_VERSION}")
    kind = _get(doc, root, (), "kind", str, required=True, fix=f"kind: {KIND}")
    if kind != KIND:
        raise doc.fail(("kind",), f"expected {KIND!r}, got {_describe(kind)}", fix=f"kind: {KIND}")

    if "metadata" not in root:
        raise doc.fail(("metadata",), "required field is missing", fix="add metadata: {name: <runbook-name>}")
    metadata = _mapping(doc, root["metadata"], ("metadata",), "name and description")
    _check_keys(doc, metadata, ("metadata",), METADATA_KEYS)
    name = _get(doc, metadata, ("metadata",), "name", str, required=True, fix="add name: <runbook-name>")
    if not _NAME.match(name) or len(name) > 63:
        raise doc.fail(("metadata", "name"), f"invalid name {name!r}",
                       fix="use lower-case letters, digits and '-', at most 63 characters")
    description = _get(doc, metadata, ("metadata",), "description", str, default="")

    if "spec" not in root:
        raise doc.fail(("spec",), "required field is missing", fix="add spec: with triggers and steps")
    spec = _mapping(doc, root["spec"], ("spec",), "triggers, params and steps")
    _check_keys(doc, spec, ("spec",), SPEC_KEYS)

    triggers_raw = _get(doc, spec, ("spec",), "triggers", list, default=[])
    triggers: list[str] = []
    known = ", ".join(sorted(KNOWN_TRIGGERS))
    for i, trig in enumerate(triggers_raw):
        path = ("spec", "triggers", i)
        if not isinstance(trig, str) or trig not in KNOWN_TRIGGERS:
            hint = _did_you_mean(trig, KNOWN_TRIGGERS) if isinstance(trig, str) else ""
            raise doc.fail(path, f"unknown trigger {_describe(trig)}{hint}", fix=f"known triggers: {known}")
        if trig in triggers:
            raise doc.fail(path, f"trigger {trig!r} is listed twice", fix="remove the duplicate")
        triggers.append(trig)
    detection = _detection(doc, spec)

    runbook_params = _mapping(doc, spec.get("params", {}), ("spec", "params"), "parameter: value")
    for pname in runbook_params:
        if not _PARAM_NAME.match(pname):
            raise doc.fail(("spec", "params", pname), "invalid parameter name", at_key=True,
                           fix="use letters, digits, '-' and '_', starting with a letter")

    if "steps" not in spec:
        raise doc.fail(("spec", "steps"), "required field is missing", fix="add steps: with at least one step")
    steps_raw = spec["steps"]
    if not isinstance(steps_raw, list):
        raise doc.fail(("spec", "steps"), f"expected a list of steps, got {_describe(steps_raw)}",
                       fix="write each step as a '- id: ...' item")
    if not steps_raw:
        raise doc.fail(("spec", "steps"), "a runbook needs at least one step", at_key=True, fix="add a step")
    if len(steps_raw) > MAX_STEPS:
        raise doc.fail(("spec", "steps"), f"{len(steps_raw)} steps, more than the limit of {MAX_STEPS}",
                       at_key=True, fix="split the runbook")

    parsed: list[tuple[dict, Path_, ActionSpec]] = []
    seen_ids: dict[str, int] = {}
    first_recover: tuple[int, str] | None = None
    action_names = ", ".join(sorted(actions)) or "(none)"
    for i, raw in enumerate(steps_raw):
        path: Path_ = ("spec", "steps", i)
        step = _mapping(doc, raw, path, "a step with id, action and phase")
        _check_keys(doc, step, path, STEP_KEYS)

        step_id = _get(doc, step, path, "id", str, required=True)
        if not _STEP_ID.match(step_id) or len(step_id) > 63:
            raise doc.fail(path + ("id",), f"invalid step id {step_id!r}",
                           fix="use lower-case letters, digits and '-' (like trip-breaker), at most 63")
        if step_id in seen_ids:
            j = seen_ids[step_id]
            raise doc.fail(path + ("id",), f"duplicate step id {step_id!r} (also spec.steps[{j}], line "
                           f"{doc.line_of(('spec', 'steps', j, 'id'))})", fix="give every step its own id")
        seen_ids[step_id] = i

        action_name = _get(doc, step, path, "action", str, required=True,
                           fix=f"add action: <one of {action_names}>")
        if action_name not in actions:
            raise doc.fail(path + ("action",), f"unknown action {action_name!r}"
                           f"{_did_you_mean(action_name, actions)}", fix=f"known actions: {action_names}")
        action = actions[action_name]

        phase = _get(doc, step, path, "phase", str, required=True, fix="add phase: contain or phase: recover")
        if phase not in PHASES:
            raise doc.fail(path + ("phase",), f"unknown phase {phase!r}{_did_you_mean(phase, PHASES)}",
                           fix="phase is contain or recover")
        if phase == "recover" and first_recover is None:
            first_recover = (i, step_id)
        if phase == "contain" and first_recover is not None:
            j, other = first_recover
            raise doc.fail(path + ("phase",), f"a contain step cannot come after recover step {other!r} "
                           f"(spec.steps[{j}])", fix="move all contain steps before the recover steps")

        _get(doc, step, path, "description", str)
        confirm = _get(doc, step, path, "confirm", bool, default=False, fix="confirm: true or confirm: false")
        if action.destructive and not confirm:
            raise doc.fail(path + ("confirm",), f"action {action_name!r} is destructive, so the step must "
                           "be confirmed", fix="set confirm: true (the operator confirms, or passes --yes)")
        _timeout(doc, step, path)
        _get(doc, step, path, "continueOnError", bool, fix="continueOnError: true or false")

        step_params = _mapping(doc, step.get("params", {}), path + ("params",), "parameter: value")
        for pname, value in step_params.items():
            ppath = path + ("params", pname)
            pspec = action.params.get(pname)
            if pspec is None:
                raise doc.fail(ppath, f"unknown parameter for action {action_name!r}"
                               f"{_did_you_mean(pname, action.params)}", at_key=True,
                               fix=f"{action_name} takes: {', '.join(action.params) or 'no parameters'}")
            if not _type_ok(value, pspec.type):
                raise doc.fail(ppath, f"expected {_type_name(pspec.type)}, got {_describe(value)}",
                               fix=_param_fix(pname, pspec))
        for pname, pspec in action.params.items():
            if pspec.required and pname not in step_params and pname not in runbook_params:
                raise doc.fail(path + ("params",) if "params" in step else path,
                               f"action {action_name!r} needs parameter {pname!r}",
                               fix=f"set params.{pname} on the step or spec.params.{pname}")
        parsed.append((step, path, action))

    # Runbook-level params are defaults for the steps' actions: each must mean something to one of
    # them (a typo would otherwise be silently ignored) and have the type those actions expect.
    declared = _declared_params(a for _, _, a in parsed)
    for pname, value in runbook_params.items():
        ppath = ("spec", "params", pname)
        if pname not in declared:
            raise doc.fail(ppath, f"no step's action takes this parameter{_did_you_mean(pname, declared)}",
                           at_key=True, fix=f"parameters used here: {', '.join(sorted(declared)) or '(none)'}")
        for pspec in declared[pname]:
            if not _type_ok(value, pspec.type):
                raise doc.fail(ppath, f"expected {_type_name(pspec.type)}, got {_describe(value)}",
                               fix=_param_fix(pname, pspec))

    steps: list[Step] = []
    for step, path, action in parsed:
        own = step.get("params", {})
        params: dict[str, object] = {}
        for pname, pspec in action.params.items():
            source = own if pname in own else runbook_params if pname in runbook_params else None
            # Deep copies: steps must not share (and mutate) one list from the runbook or ActionSpec.
            params[pname] = copy.deepcopy(source[pname] if source is not None else pspec.default)
        steps.append(Step(
            id=step["id"],
            action=step["action"],
            phase=step["phase"],
            description=step.get("description", ""),
            confirm=step.get("confirm", False),
            timeout=_timeout(doc, step, path),
            continue_on_error=step.get("continueOnError", False),
            params=MappingProxyType(params),
            line=doc.line_of(path, at_key=True),
            explicit_params=frozenset(own),
        ))

    return Runbook(
        name=name,
        description=description,
        triggers=tuple(triggers),
        params=MappingProxyType(dict(runbook_params)),
        steps=tuple(steps),
        path=Path(doc.source),
        detection=detection,
    )


def _param_fix(name: str, spec: ParamSpec) -> str:
    """`set concurrency to an integer (PATCH requests in flight)`: what to write, then what it means."""
    fix = f"set {name} to {_type_name(spec.type)}"
    return f"{fix} ({spec.description})" if spec.description else fix
