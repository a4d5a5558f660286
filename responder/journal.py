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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from responder.errors import JournalError

REDACTED = "<redacted>"
OUTCOME_STATUSES = frozenset({"ok", "skipped", "failed"})
STEP_STATUSES = frozenset({"started", "finished", "failed", "skipped"})
RESERVED_FIELDS = frozenset({"seq", "ts", "incident", "kind"})

# Compared after lower-casing and dropping '-'/'_', so clientKeyData and client_key_data match too.
_SECRET_KEYS = frozenset({
    "token", "password", "secret", "authorization", "bearer",
    "clientkey", "clientkeydata", "keydata",
})
# idToken, refreshToken, clientSecret, adminPassword: the same secrets under a longer name.
_SECRET_SUFFIXES = ("token", "password", "secret")
_INCIDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_incident_id(now: _dt.datetime | None = None) -> str:
    """`inc-20261126T142233Z-1a2b`: sortable by time, unique enough for one operator's directory."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"inc-{now.astimezone(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def _timestamp() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _is_secret_name(key)


@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    # Cached: the same few keys recur in every record, and redaction runs on the hot write path.
    norm = key.lower().replace("-", "").replace("_", "")
    return norm in _SECRET_KEYS or norm.endswith(_SECRET_SUFFIXES)


def redact(value: Any, *, secret_object: bool = False) -> Any:
    """A copy of `value` with secrets replaced by "<redacted>"; the input is not modified.

    `secret_object` marks a dict known to be a Secret without saying so (a SecretList item)."""
    if isinstance(value, dict):
        kind = value.get("kind")
        is_secret = secret_object or kind == "Secret"
        out: dict = {}
        for key, item in value.items():
            if _is_secret_key(key):
                out[key] = REDACTED
            elif is_secret and key in ("data", "stringData"):
                # Keep the key names (useful in a report), never the values.
                out[key] = {k: REDACTED for k in item} if isinstance(item, dict) else REDACTED
            elif kind == "SecretList" and key == "items" and isinstance(item, list):
                out[key] = [redact(i, secret_object=True) for i in item]
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


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

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, incident_id: str | None = None,
               meta: dict | None = None) -> "Journal":
        """Start a new journal `<directory>/<incident_id>.jsonl`; its first record is `incident-opened`."""
        incident_id = incident_id or new_incident_id()
        if not _INCIDENT_ID.match(incident_id):
            raise JournalError(f"invalid incident id {incident_id!r}",
                               fix="use letters, digits, '.', '_' and '-' only (it becomes a file name)")
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create journal directory {directory}: {exc.strerror}",
                               fix="choose a writable --journal-dir") from exc
        path = directory / f"{incident_id}.jsonl"
        try:
            # O_EXCL: never append a new incident onto someone else's journal.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except FileExistsError as exc:
            raise JournalError(f"journal {path} already exists",
                               fix="resume it instead, or pick another incident id") from exc
        except OSError as exc:
            raise JournalError(f"cannot create journal {path}: {exc.strerror}",
                               fix="choose a writable --journal-dir") from exc
        try:
            cls._lock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        _fsync_dir(directory)  # so the new file's name survives a power cut, not only its data
        journal = cls(path, incident_id, fd, [])
        journal.record("incident-opened", meta=dict(meta or {}))
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

    def close(self) -> None:
        """Release the lock. Records are already on disk; closing is not needed for durability."""
        if self._fd is not None:
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
        entry.update(redact(fields))
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
                os.fsync(self._fd)
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
        return entry

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
            os.fsync(self._fd)

    def mark_undone(self, intent_seq: int, *, detail: str = "") -> dict:
        """Journal that the undo payload of intent `intent_seq` has been applied."""
        self._intent(intent_seq)
        return self.record("undone", intent=intent_seq, detail=detail)

    def step(self, step: str, status: str, *, detail: str = "") -> dict:
        """Journal a runbook step's progress (started|finished|failed|skipped)."""
        if status not in STEP_STATUSES:
            raise ValueError(f"step status must be one of {sorted(STEP_STATUSES)}, not {status!r}")
        return self.record("step", step=step, status=status, detail=detail)

    # ---- reading -------------------------------------------------------------------------------

    def records(self) -> list[dict]:
        return [dict(r) for r in self._records]

    def _intent(self, seq: int) -> dict:
        # Seqs run 1, 2, 3... with no gaps (checked on read), so a record's seq is its position.
        candidates = self._records[seq - 1:seq] if 0 < seq <= len(self._records) else []
        if not candidates or candidates[0]["seq"] != seq:
            candidates = self._records
        for rec in candidates:
            if rec["seq"] == seq:
                if rec.get("kind") != "intent":
                    raise ValueError(f"record {seq} in {self.path} is a {rec.get('kind')!r}, not an intent")
                return rec
        raise ValueError(f"no intent {seq} in journal {self.path}")

    def _outcomes(self) -> dict[int, dict]:
        # The last outcome wins: a resumer may record "ok" after an earlier "failed".
        return {r["intent"]: r for r in self._records if r.get("kind") == "outcome" and "intent" in r}

    def _intents(self) -> Iterable[dict]:
        return (r for r in self._records if r.get("kind") == "intent")

    def done(self, step: str, action: str, target: str) -> bool:
        """True when this exact mutation already succeeded (or was found unnecessary)."""
        outcomes = self._outcomes()
        return any(
            r.get("step") == step and r.get("action") == action and r.get("target") == target
            and outcomes.get(r["seq"], {}).get("status") in ("ok", "skipped")
            for r in self._intents()
        )

    def pending(self) -> list[dict]:
        """Intents with no outcome, oldest first: sent or not, nobody knows; re-check the cluster."""
        outcomes = self._outcomes()
        return [dict(r) for r in self._intents() if r["seq"] not in outcomes]

    def undo_plan(self) -> list[dict]:
        """What to undo, newest first: intents that succeeded for real and are not undone yet.

        Each entry is {"intent": seq, "step", "action", "target", "undo": <the intent's undo payload>};
        pass entry["intent"] to `mark_undone` once the payload has been applied.
        """
        outcomes = self._outcomes()
        undone = {r["intent"] for r in self._records if r.get("kind") == "undone" and "intent" in r}
        plan = []
        for r in self._intents():
            if (outcomes.get(r["seq"], {}).get("status") == "ok" and not r.get("dry_run")
                    and r.get("undo") is not None and r["seq"] not in undone):
                plan.append({"intent": r["seq"], "step": r.get("step"), "action": r.get("action"),
                             "target": r.get("target"), "undo": r["undo"]})
        plan.reverse()
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
