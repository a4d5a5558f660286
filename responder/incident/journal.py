"""Crash-safe incident journal: one JSON object per line, fsync'd before `record` returns.

Every mutating step is journaled as an `intent` BEFORE the request is sent and an `outcome` AFTER it
returns. After a crash (SIGKILL at any point) the journal tells a resumer what is done, what is
unknown (`pending`: sent, but no answer recorded) and what can be undone (`undo_plan`).

Record kinds written here: incident-opened, intent, outcome, undone, step. Callers may add their own.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import functools
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from responder.errors import JournalError

REDACTED = "<redacted>"
OUTCOME_STATUSES = frozenset({"ok", "skipped", "failed"})
_DONE_STATUSES = ("ok", "skipped")  # an outcome that makes its mutation done (not to be redone)
STEP_STATUSES = frozenset({"started", "finished", "failed", "skipped"})
RESERVED_FIELDS = frozenset({"seq", "ts", "incident", "kind"})

# Redaction is by what a value IS, never by a key name found anywhere:
# - a Secret (kind: Secret, or an item of a SecretList): its data/stringData values (key names kept)
#   and the last-applied-configuration annotation, which repeats them;
# - a FIELD whose exact name is a credential (below);
# - never the keys of a map keyed by data (namespace, Tenant or annotation names): those are not field
#   names, and recovery reads several of them back as truth (see _DATA_KEYED_RECORD_FIELDS).
#
# Field names are compared after lower-casing and dropping '-'/'_' (client-key-data, clientKeyData and
# client_key_data are one name). Exact names only, no suffix match: a suffix also matches data
# (`oncall-token`, `auth-secret`) and ordinary fields (automountServiceAccountToken is a bool,
# serviceAccountToken a projected-volume source), and the credentials responder can meet have
# well-known names: kubeconfig users (token, password, client-key[-data]), auth-provider config
# (id-token, refresh-token, access-token, client-secret) and HTTP headers.
_SECRET_KEYS = frozenset({
    "token", "bearer", "bearertoken", "idtoken", "refreshtoken", "accesstoken", "authtoken",
    "password", "passwd", "secret", "clientsecret", "secretkey", "secretaccesskey",
    "clientkey", "clientkeydata", "keydata", "privatekey", "apikey",
    "authorization", "proxyauthorization", "cookie", "setcookie", "xauthtoken", "xapikey",
})
# Kubernetes fields whose value is a map keyed by user data (an annotation, label or schema property
# name), at any depth: their keys are never taken for field names, so `nginx.ingress.kubernetes.io/
# auth-secret: basic-auth` keeps its value (recreated Tenants carry it back into the cluster). An
# annotation or label VALUE that is itself a credential is not redacted: responder never writes one, and
# Kubernetes stores those values in plain text for anyone who can read the object anyway.
_DATA_KEYED_FIELDS = frozenset({"annotations", "labels", "nodeSelector", "matchLabels", "properties"})
# The journal's own maps keyed by data, per record kind: field -> how many levels of keys are data.
# Recovery reads them back as its source of truth (actions/recover.py, session.py), so a namespace
# named `ci-token` must keep its Tenant and a Tenant body its fields; no key-name redaction below them
# for that many levels (a Secret met deeper down is still redacted by its kind).
_DATA_KEYED_RECORD_FIELDS: dict[str, dict[str, int]] = {
    # Session.capture_snapshot: namespace -> Tenant name, namespace -> ownerReference template,
    # "<Kind>/<name>" -> webhook configuration.
    "snapshot": {"namespaces": 1, "owners": 1, "webhooks": 1},
    # ChooseBackup: lost namespace -> Tenant, namespace -> {resource -> count}, Tenant name -> body.
    "recovery-plan": {"lost": 1, "counts": 2, "tenants": 1},
    # WaitLostGone: rescued namespace -> {resource -> count}.
    "recovery-gone": {"rescue_counts": 2},
    # RecreateTenants: Tenant name -> UID.
    "recovery-tenants": {"uids": 1},
    # VerifyRecovery: namespace -> missing objects.
    "recovery-verify": {"content_missing": 1},
}
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_incident_id(now: _dt.datetime | None = None) -> str:
    """`inc-20261126T142233Z-1a2b`: sortable by time, unique enough for one operator's directory."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"inc-{now.astimezone(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def _timestamp() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def record_epoch(ts: str) -> float:
    """Epoch seconds of a record's `ts`."""
    return _dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _is_secret_name(key)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    # Cached: the same few keys recur in every record, and redaction runs on the hot write path.
    return key.lower().replace("-", "").replace("_", "") in _SECRET_KEYS


def redact(value: Any, *, secret_object: bool = False, data_levels: int = 0) -> Any:
    """A copy of `value` with secrets replaced by "<redacted>"; the input is not modified.

    `secret_object` marks a dict known to be a Secret without saying so (a SecretList item).
    `data_levels` > 0 marks `value` as a map keyed by data, that many levels deep: its keys are not
    field names (never redacted for their name) and its values are judged one level further down."""
    if isinstance(value, dict):
        if data_levels > 0:
            return {key: redact(item, data_levels=data_levels - 1) for key, item in value.items()}
        kind = value.get("kind")
        is_secret = secret_object or kind == "Secret"
        out: dict = {}
        for key, item in value.items():
            if key in _DATA_KEYED_FIELDS:
                out[key] = redact(item, data_levels=1)
            elif _is_secret_key(key):
                out[key] = REDACTED
            elif is_secret and key in ("data", "stringData"):
                # Keep the key names (useful in a report), never the values.
                out[key] = {k: REDACTED for k in item} if isinstance(item, dict) else REDACTED
            elif kind == "SecretList" and key == "items" and isinstance(item, list):
                out[key] = [redact(i, secret_object=True) for i in item]
            else:
                out[key] = redact(item)
        if is_secret:
            _redact_last_applied(out)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, data_levels=data_levels) for item in value]
    return value


def _redact_last_applied(secret: dict) -> None:
    """kubectl apply keeps a Secret's whole manifest, data included, in an annotation."""
    meta = secret.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(annotations, dict) and _LAST_APPLIED in annotations:
        secret["metadata"] = {**meta, "annotations": {**annotations, _LAST_APPLIED: REDACTED}}


def _redact_record(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` of a `kind` record, redacted; the journal's data-keyed maps keep their keys' values."""
    data_keyed = _DATA_KEYED_RECORD_FIELDS.get(kind, {})
    out: dict[str, Any] = {}
    for key, item in fields.items():
        if key in data_keyed:
            out[key] = redact(item, data_levels=data_keyed[key])
        elif _is_secret_key(key):
            out[key] = REDACTED
        else:
            out[key] = redact(item)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Journal:
    """An append-only JSONL journal for one incident. Open for writing, it holds an exclusive flock."""

    def __init__(self, path: Path, incident_id: str, fd: int | None, records: list[dict]) -> None:
        # Use Journal.create / Journal.open; this constructor does no I/O.
        self.path = path
        self.incident_id = incident_id
        self._fd = fd
        self._size = os.fstat(fd).st_size if fd is not None else 0  # kept here, not fstat'ed per record
        self._records = records
        self._next_seq = (records[-1]["seq"] + 1) if records else 1
        self._unsynced_dir: Path | None = None  # a new journal's directory, fsync'd with its first synced record
        # Indexes for the resume/undo queries, kept up to date by record(): done() is asked once per
        # namespace during recovery, and a scan of the whole journal each time blocked the event loop.
        self._intents: dict[int, dict] = {}  # seq -> intent record, oldest first
        self._status: dict[Any, Any] = {}  # intent seq -> status of its LAST outcome (present = has one)
        self._pending: dict[int, None] = {}  # intent seqs with no outcome, oldest first (an ordered set)
        self._undone: set[Any] = set()  # intent seqs named by an `undone` record
        self._key_of: dict[int, tuple] = {}  # intent seq -> (step, action, target)
        self._first: dict[tuple, int] = {}  # (step, action, target) -> seq of its first intent
        self._done: dict[tuple, int] = {}  # (step, action, target) -> its intents whose last outcome is done
        self._odd: list[int] = []  # seqs of intents whose (step, action, target) is not hashable
        for rec in records:
            self._index(rec)

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, incident_id: str | None = None,
               meta: dict | None = None, sync: bool = True) -> "Journal":
        """Start a new journal `<directory>/<incident_id>.jsonl`; its first record is `incident-opened`.
        `sync=False` defers the fsyncs (the file's and its directory's) to the first synced record: an
        incident's first write, which must not wait for three fsyncs on a busy disk first."""
        incident_id = incident_id or new_incident_id()
        if not _INCIDENT_ID.match(incident_id):
            raise JournalError(f"invalid incident id {incident_id!r}",
                               fix="use letters, digits, '.', '_' and '-' only (it becomes a file name)")
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create journal directory {directory}: {exc.strerror}",
                               fix="choose a writable --journal DIR") from exc
        path = directory / f"{incident_id}.jsonl"
        try:
            # O_EXCL: never append a new incident onto someone else's journal.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except FileExistsError as exc:
            raise JournalError(f"journal {path} already exists",
                               fix="resume it instead, or pick another incident id") from exc
        except OSError as exc:
            raise JournalError(f"cannot create journal {path}: {exc.strerror}",
                               fix="choose a writable --journal DIR") from exc
        try:
            cls._lock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        journal = cls(path, incident_id, fd, [])
        journal._unsynced_dir = directory  # so the new file's name survives a power cut, not only its data
        journal.record("incident-opened", meta=dict(meta or {}), sync=sync)
        return journal

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> "Journal":
        """Open an existing journal to resume, undo or report. `readonly` skips the lock (reports)."""
        path = Path(path)
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR | os.O_APPEND) | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise JournalError(f"journal {path} does not exist",
                               fix="pass the path of an existing <incident>.jsonl file") from exc
        except OSError as exc:
            raise JournalError(f"cannot open journal {path}: {exc.strerror}",
                               fix="check the file's permissions") from exc
        try:
            if not readonly:
                cls._lock(fd, path)
            data = _read_all(fd)
            records, complete_len = _parse(data, path)
            if not readonly and complete_len < len(data):
                # A torn tail from a crash mid-write: cut it so the next record starts on a fresh line.
                # That record was never acknowledged, so its request was never sent.
                os.ftruncate(fd, complete_len)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        incident_id = str(records[0].get("incident") or path.stem) if records else path.stem
        return cls(path, incident_id, None if readonly else fd, records)

    @staticmethod
    def _lock(fd: int, path: Path) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JournalError(
                    f"journal {path} is in use by another responder process",
                    fix="wait for that run to finish or stop it; the lock is released when it exits",
                ) from exc
            raise JournalError(f"cannot lock journal {path}: {exc.strerror}",
                               fix="keep journals on a local filesystem that supports flock") from exc

    @property
    def writable(self) -> bool:
        """Open for appending (not read-only, not closed)."""
        return self._fd is not None

    def close(self) -> None:
        """Release the lock, with every record on disk (those appended with sync=False included)."""
        if self._fd is not None:
            self._fsync()
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- writing -------------------------------------------------------------------------------

    def record(self, kind: str, *, sync: bool = True, **fields: Any) -> dict:
        """Append one record and fsync it; when this returns the record survives a crash.

        `sync=False` defers the fsync to the next `sync()` (group commit for batches of writes)."""
        if self._fd is None:
            raise JournalError(f"journal {self.path} is not open for writing",
                               fix="open it with Journal.open(path) (not readonly) to append")
        clash = RESERVED_FIELDS & fields.keys()
        if clash:
            raise ValueError(f"record fields {sorted(clash)} are reserved")
        entry = {"seq": self._next_seq, "ts": _timestamp(), "incident": self.incident_id, "kind": kind}
        entry.update(_redact_record(kind, fields))
        try:
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"),
                              default=_json_default) + "\n"
        except (TypeError, ValueError) as exc:
            raise JournalError(f"cannot journal a {kind!r} record: {exc}",
                               fix="pass only JSON-compatible values to the journal") from exc
        data = line.encode("utf-8")
        size = self._size
        try:
            # One write of the whole line (O_APPEND), so a crash leaves at most one torn line at the end.
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                self._fsync()
            self._size = size + len(data)
        except OSError as exc:
            # A half-written line (disk full) must not stay in the middle of the file.
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise JournalError(f"cannot write journal {self.path}: {exc.strerror}",
                               fix="free disk space or fix the journal directory, then resume") from exc
        # Keep exactly what a reader will see (a JSON round trip turns tuples into lists, etc.).
        entry = json.loads(line)
        self._records.append(entry)
        self._next_seq += 1
        self._index(entry)
        return entry

    def _index(self, rec: dict) -> None:
        """Add one record (read on open, or just written) to the query indexes. Any record kind may
        come through record(), so this looks at what was written, not at which method wrote it."""
        kind = rec.get("kind")
        if kind == "intent":
            seq = rec["seq"]
            self._intents[seq] = rec
            if seq not in self._status:
                self._pending[seq] = None
            key = _intent_key(rec)
            if not _hashable(key):
                self._odd.append(seq)
                return
            self._key_of[seq] = key
            self._first.setdefault(key, seq)
            if self._status.get(seq) in _DONE_STATUSES:  # an outcome written before its intent
                self._done[key] = self._done.get(key, 0) + 1
        elif kind == "outcome" and "intent" in rec and _hashable(rec["intent"]):
            # The last outcome wins: a resumer may record "ok" after an earlier "failed".
            seq, status = rec["intent"], rec.get("status")
            was_done = self._status.get(seq) in _DONE_STATUSES
            self._status[seq] = status
            self._pending.pop(seq, None)
            key = self._key_of.get(seq)
            if key is not None and was_done != (status in _DONE_STATUSES):
                self._done[key] = self._done.get(key, 0) + (-1 if was_done else 1)
        elif kind == "undone" and "intent" in rec and _hashable(rec["intent"]):
            self._undone.add(rec["intent"])

    def intent(self, step: str, action: str, target: str, *, request: dict | None = None,
               undo: dict | None = None, dry_run: bool = False, sync: bool = True) -> int:
        """Journal a mutation before sending it; returns the intent's seq (pass it to `outcome`).
        With `sync=False` the caller must call `sync()` before sending the request."""
        entry = self.record("intent", sync=sync, step=step, action=action, target=target, request=request,
                            undo=undo, dry_run=bool(dry_run))
        return entry["seq"]

    def outcome(self, intent_seq: int, status: str, *, detail: str = "",
                response: dict | None = None, sync: bool = True) -> dict:
        """Journal what the cluster answered for intent `intent_seq`. An outcome lost in a crash
        leaves its intent pending, which a resumed run re-checks, so batches may defer its fsync."""
        if status not in OUTCOME_STATUSES:
            raise ValueError(f"outcome status must be one of {sorted(OUTCOME_STATUSES)}, not {status!r}")
        self._intent(intent_seq)
        return self.record("outcome", sync=sync, intent=intent_seq, status=status, detail=detail, response=response)

    def sync(self) -> None:
        """fsync what was appended with sync=False."""
        if self._fd is not None:
            self._fsync()

    def _fsync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        if self._unsynced_dir is not None:
            _fsync_dir(self._unsynced_dir)
            self._unsynced_dir = None

    def mark_undone(self, intent_seq: int, *, detail: str = "") -> dict:
        """Journal that the undo payload of intent `intent_seq` has been applied."""
        self._intent(intent_seq)
        return self.record("undone", intent=intent_seq, detail=detail)

    def step(self, step: str, status: str, *, detail: str = "", sync: bool = True) -> dict:
        """Journal a runbook step's progress (started|finished|failed|skipped)."""
        if status not in STEP_STATUSES:
            raise ValueError(f"step status must be one of {sorted(STEP_STATUSES)}, not {status!r}")
        return self.record("step", step=step, status=status, detail=detail, sync=sync)

    # ---- reading -------------------------------------------------------------------------------

    def records(self) -> list[dict]:
        return [dict(r) for r in self._records]

    def _intent(self, seq: int) -> dict:
        rec = self._intents.get(seq) if isinstance(seq, int) else None
        if rec is not None:
            return rec
        for rec in self._records:
            if rec["seq"] == seq:
                if rec.get("kind") == "intent":
                    return rec
                raise ValueError(f"record {seq} in {self.path} is a {rec.get('kind')!r}, not an intent")
        raise ValueError(f"no intent {seq} in journal {self.path}")

    def done(self, step: str, action: str, target: str) -> bool:
        """True when this exact mutation already succeeded (or was found unnecessary): an intent for it
        whose last outcome is ok or skipped (dry-run intents included)."""
        key = (step, action, target)
        if not _hashable(key):
            return any(self._status.get(seq) in _DONE_STATUSES for seq in self._odd_seqs(key))
        return self._done.get(key, 0) > 0

    def first_intent(self, step: str, action: str, target: str) -> dict | None:
        """The first intent recorded for this mutation (any outcome or none, dry-run or not), or None:
        its undo payload holds the state from before the incident."""
        key = (step, action, target)
        seq = self._first.get(key) if _hashable(key) else next(self._odd_seqs(key), None)
        return dict(self._intents[seq]) if seq is not None else None

    def _odd_seqs(self, key: tuple) -> Iterator[int]:
        # A list-valued step, action or target (JSON has no tuples) cannot be a dict key; the few
        # such intents are kept in order in a list and compared one by one.
        return (seq for seq in self._odd if _intent_key(self._intents[seq]) == key)

    def pending(self) -> list[dict]:
        """Intents with no outcome, oldest first: sent or not, nobody knows; re-check the cluster."""
        return [dict(self._intents[seq]) for seq in self._pending]

    def undo_plan(self) -> list[dict]:
        """What to undo, newest first: intents that succeeded for real and are not undone yet.

        Each entry is {"intent": seq, "step", "action", "target", "undo": <the intent's undo payload>};
        pass entry["intent"] to `mark_undone` once the payload has been applied.
        """
        plan = []
        for seq, r in reversed(self._intents.items()):
            if (self._status.get(seq) == "ok" and not r.get("dry_run")
                    and r.get("undo") is not None and seq not in self._undone):
                plan.append({"intent": seq, "step": r.get("step"), "action": r.get("action"),
                             "target": r.get("target"), "undo": r["undo"]})
        return plan

    def step_state(self) -> dict[str, str]:
        """step id -> its last status (started|finished|failed|skipped)."""
        state: dict[str, str] = {}
        for r in self._records:
            kind = r.get("kind")
            if kind == "step" and "step" in r and "status" in r:
                state[r["step"]] = r["status"]
            elif isinstance(kind, str) and kind.startswith("step-") and "step" in r:
                # Tolerate the spelled-out kinds ("step-started", "step-finished", ...).
                state[r["step"]] = kind[len("step-"):]
        return state


def _intent_key(rec: dict) -> tuple:
    return rec.get("step"), rec.get("action"), rec.get("target")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:  # a list or dict where a name or seq belongs (a hand-edited journal)
        return False
    return True


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes, path: Path) -> tuple[list[dict], int]:
    """Records in `data` and the length of its complete lines. A torn last line is ignored;
    anything wrong before it is corruption, which a resumer must not guess around."""
    records: list[dict] = []
    complete_len = data.rfind(b"\n") + 1  # 0 when there is no complete line at all
    lines = data[:complete_len].split(b"\n")[:-1]
    prev_seq = 0
    for lineno, raw in enumerate(lines, start=1):
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JournalError(f"journal {path}:{lineno}: corrupt record ({exc})",
                               fix="restore the journal from a copy, or move the corrupt line aside "
                                   "and check the cluster by hand before resuming") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or "kind" not in rec:
            raise JournalError(f"journal {path}:{lineno}: not a journal record",
                               fix="this file is not a responder journal, or it was edited by hand")
        if rec["seq"] <= prev_seq:
            raise JournalError(f"journal {path}:{lineno}: record seq {rec['seq']} after {prev_seq}",
                               fix="the journal was edited or two files were concatenated; "
                                   "restore it from a copy")
        prev_seq = rec["seq"]
        records.append(rec)
    return records, complete_len


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # best effort: some filesystems do not allow opening directories
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def open_incident_journal(path: Path, *, readonly: bool = False) -> Journal:
    """A journal named on the command line (resume, undo, report), checked to be one before it is read
    in full: a text file is no journal, rather than a corrupt one."""
    path = Path(path)
    if path.is_dir():
        raise JournalError(f"journal {path} is a directory, not a journal file",
                           fix="pass the inc-*.jsonl file inside it (printed by watch/run)")
    if not path.is_file():
        raise JournalError(f"journal {path} does not exist", fix="pass the inc-*.jsonl path printed by watch/run")
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        opened = json.loads(first).get("kind") == "incident-opened"
    except (ValueError, AttributeError):
        opened = False
    if not opened:
        raise JournalError(f"{path} is not a responder journal (its first line is not an incident-opened record)",
                           fix="pass the inc-*.jsonl path printed by watch/run")
    return Journal.open(path, readonly=readonly)
