"""Resumable append-only JSONL store (``generations.jsonl``, ``judgments.jsonl``).

Layout: line 1 is a header ``{"_store": KIND, "version": 1, "fingerprint": F, "settings": S}``;
every other line is one record with a key (default ``(id, sample)``) and the ``run`` id
of the process that wrote it.

Guarantees:

- :meth:`JsonlStore.append` writes a batch of records in one ``write``, then ``flush`` and
  ``fsync``: once it returns, a kill at any moment loses none of them.
- A kill *during* a write leaves complete lines plus at most one torn last line (no
  trailing newline, or not valid JSON). Reopening truncates the torn line away (counted in
  ``recovered_torn_lines``, reported on stderr); that record is then produced again, once.
  A bad line anywhere else is corruption, not a torn write: a :class:`UserError` naming
  the line.
- The header is checked before anything else: a file whose first line is not this kind of
  store's header, or whose fingerprint differs from the current one, is a
  :class:`UserError` (naming the file and the first differing setting) and is never
  truncated or written to. Only then is a torn last line cut away.
- One writer at a time: the file is ``flock``-ed while open (released by the OS on kill).
- A key appearing twice (cannot happen through this class) keeps its first record.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from polyalign.errors import UserError

STORE_VERSION = 1


def new_run_id() -> str:
    """A fresh id for one process's contributions to a store (12 hex chars)."""
    return uuid.uuid4().hex[:12]


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    """A short ``key: old != new`` description of where two settings dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    stored, now = json.dumps(old, default=str), json.dumps(new, default=str)
    return f"{prefix.rstrip('.') or 'settings'}: stored {stored} != now {now}"


def peek_fingerprint(path: str | Path) -> str | None:
    """The fingerprint in a store file's header line, or None (no file, no readable header).

    Read only; lets a caller pick which of several stores a set of settings belongs to
    before opening (and locking) one.
    """
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError:
        return None
    header = JsonlStore._parse(first)
    value = header.get("fingerprint") if header else None
    return value if isinstance(value, str) else None


class JsonlStore:
    """An append-only, crash-safe JSONL store of keyed records (see the module docstring).

    ``kind`` names what is stored (``"generations"``); ``fingerprint`` is a short hash of
    ``settings`` (everything that changes a record's content). ``key_fields`` name the
    record fields that identify a unit of work; ``hint`` ends the settings-mismatch message.
    ``refuse_reuse`` (a reason) makes a store that already holds records a :class:`UserError`:
    used when the model's identity is too weak to prove the records are its own.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        kind: str,
        fingerprint: str,
        settings: dict[str, Any] | None = None,
        key_fields: Sequence[str] = ("id", "sample"),
        run_id: str | None = None,
        hint: str = "use another output folder or delete the file to start over",
        refuse_reuse: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.hint = hint
        self.refuse_reuse = refuse_reuse
        self.kind = kind
        self.fingerprint = fingerprint
        self.settings = settings or {}
        self.key_fields = tuple(key_fields)
        self.run_id = run_id or new_run_id()
        self.recovered_torn_lines = 0
        self.duplicates = 0
        self.appended = 0
        self._records: dict[tuple, dict[str, Any]] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._handle = open(self.path, "a+b")  # noqa: SIM115 - kept open for appends
            if created:  # make the new directory entry durable too
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise UserError(f"cannot open store: {exc.strerror or exc}", file=self.path) from None
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            raise UserError("store is in use by another running process (one writer at a time)",
                            file=self.path) from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # -- reading ---------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"_store": self.kind, "version": STORE_VERSION, "fingerprint": self.fingerprint,
                "settings": self.settings}

    def _load(self) -> None:
        self._handle.seek(0)
        data = self._handle.read()
        if not data:
            self._write_lines([self._header()])
            return
        # The header is checked before anything is truncated: a file that is not this kind
        # of store (or one written with other settings) is refused and left byte for byte.
        own_prefix = ('{"_store": ' + json.dumps(self.kind)).encode()
        first, newline, _rest = data.partition(b"\n")
        if not newline:
            # One line without a newline: only a torn write of our own header may be cut away.
            if not (data.startswith(own_prefix) or own_prefix.startswith(data)):
                raise UserError(f"not a polyalign {self.kind} store (first line is not its header); left untouched",
                                file=self.path, line=1)
            self.recovered_torn_lines += 1
            self._report_torn()
            self._truncate(0)
            self._write_lines([self._header()])
            return
        header = self._parse(first)
        if header is None or header.get("_store") != self.kind:
            raise UserError(f"not a polyalign {self.kind} store (first line is not its header); left untouched",
                            file=self.path, line=1)
        if header.get("fingerprint") != self.fingerprint:
            diff = _first_difference(header.get("settings"), self.settings)
            raise UserError(f"was written with different settings ({diff}); {self.hint}", file=self.path,
                            field="settings")
        lines = data.split(b"\n")
        # ``data`` ends with b"\n" for a clean file, so the last element is b"" then.
        complete, tail = lines[:-1], lines[-1]
        keep_bytes = len(data) - len(tail)
        if tail:
            self.recovered_torn_lines += 1
        parsed: list[tuple[int, dict[str, Any]]] = []
        for number, raw in enumerate(complete[1:], start=2):
            if not raw.strip():
                continue
            obj = self._parse(raw)
            if obj is None:
                if number == len(complete) and not tail:
                    # A torn final line that happened to end at a newline boundary.
                    self.recovered_torn_lines += 1
                    keep_bytes -= len(raw) + 1
                    continue
                raise UserError(f"corrupt {self.kind} store line (not a torn last line); fix or delete the file",
                                file=self.path, line=number) from None
            parsed.append((number, obj))
        if parsed and self.refuse_reuse:
            raise UserError(f"holds {len(parsed)} earlier record(s), but {self.refuse_reuse}: they cannot be shown to "
                            f"come from this model; {self.hint}", file=self.path, field="model")
        if self.recovered_torn_lines:
            self._truncate(keep_bytes)
            self._report_torn()
        for number, obj in parsed:
            try:
                key = self.key_of(obj)
            except KeyError as exc:
                raise UserError(f"record lacks its key field {exc.args[0]!r}", file=self.path, line=number) from None
            if key in self._records:
                self.duplicates += 1
                continue
            self._records[key] = obj

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any] | None:
        """A line's JSON object, or None when it is not one (bad bytes, bad JSON, too deep)."""
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        return obj if isinstance(obj, dict) else None

    def _report_torn(self) -> None:
        print(f"polyalign: {self.path}: removed {self.recovered_torn_lines} torn last line(s) from an interrupted "
              "write; that work is redone", file=sys.stderr)

    def key_of(self, record: dict[str, Any]) -> tuple:
        """The record's key: the values of ``key_fields``."""
        return tuple(record[f] for f in self.key_fields)

    def __contains__(self, key: tuple) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self._records.get(key)

    def done_keys(self) -> set[tuple]:
        """Keys of every record in the store (done work)."""
        return set(self._records)

    def records(self) -> list[dict[str, Any]]:
        """All records, in the order they were written (first occurrence per key)."""
        return list(self._records.values())

    # -- writing ---------------------------------------------------------------------
    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append records durably (one write + flush + fsync); returns how many were new.

        Records whose key is already stored are skipped (counted in ``duplicates``) so a
        caller can never create two records for one key.
        """
        fresh: list[dict[str, Any]] = []
        for record in records:
            record = {**record, "run": record.get("run", self.run_id)}
            key = self.key_of(record)
            if key in self._records:
                self.duplicates += 1
                continue
            self._records[key] = record
            fresh.append(record)
        if fresh:
            self._write_lines(fresh)
            self.appended += len(fresh)
        return len(fresh)

    def _write_lines(self, objs: list[dict[str, Any]]) -> None:
        blob = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode("utf-8")
        try:
            self._handle.seek(0, os.SEEK_END)
            self._handle.write(blob)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise UserError(f"cannot write store: {exc.strerror or exc}", file=self.path) from None

    def _truncate(self, size: int) -> None:
        self._handle.flush()
        os.ftruncate(self._handle.fileno(), size)
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            finally:
                self._handle.close()

    def __enter__(self) -> JsonlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
