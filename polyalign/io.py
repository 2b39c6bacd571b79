"""Small I/O helpers shared by every layer: atomic writes, fingerprints, JSONL.

Results are always written atomically (temp file in the same folder, fsync, rename) so a
crash or a full disk never leaves a half-written results file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from polyalign.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (all or nothing), with the usual permissions."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write here: {exc.strerror or exc}", file=path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; results are meant to be shared like any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write: {exc.strerror or exc}", file=path) from None
    fsync_dir(path.parent)  # the rename itself must survive a power cut, not only the bytes


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so a rename or a new entry in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and platforms) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def append_jsonl_durably(path: str | Path, obj: Any) -> None:
    """Append one JSON line in a single ``write`` on an ``O_APPEND`` descriptor, then fsync.

    Concurrent appenders never interleave inside a line, and a line cut by a crash (no
    trailing newline) is closed with a newline first, so the next line is never glued to it
    (the reader then sees one bad line and reports it; see :func:`read_jsonl_tolerant`).
    """
    path = Path(path)
    line = json.dumps(obj, ensure_ascii=False) + "\n"
    try:
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            prefix = ""
            if size:
                with open(path, "rb") as handle:
                    handle.seek(size - 1)
                    prefix = "" if handle.read(1) == b"\n" else "\n"
            os.write(fd, (prefix + line).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot append: {exc.strerror or exc}", file=path) from None
    if created:
        fsync_dir(path.parent)


def read_jsonl_tolerant(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """``(objects, bad_line_numbers)`` of an append-only log: a line torn by a crash is skipped
    and its number returned, so the caller reports it instead of failing on its own log."""
    objects: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            bad.append(number)
            continue
        (objects.append(obj) if isinstance(obj, dict) else bad.append(number))
    return objects, bad


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def file_fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (or of a folder's files, sorted by name)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


HASH_CACHE_ENV = "POLYALIGN_CACHE_DIR"


def hash_cache_dir() -> Path:
    """Where :func:`content_sha256` keeps its cache (``$POLYALIGN_CACHE_DIR/file-hashes``)."""
    base = os.environ.get(HASH_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "polyalign")
    return Path(base) / "file-hashes"


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"dev": st.st_dev, "inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def content_sha256(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, cached by (device, inode, size, mtime_ns).

    Model weights are gigabytes, so their hash is computed once and kept in
    :func:`hash_cache_dir` (one small JSON per file, named by device and inode, so a moved
    or renamed folder keeps its entries); a file rewritten in place, replaced (new inode),
    resized or touched is hashed again. The stat is taken before and after hashing: a file
    that changed while it was read is not cached. An unwritable cache only costs the
    re-hash, never the answer.
    """
    path = Path(path).resolve()
    before = path.stat()
    key = _stat_key(before)
    entry = hash_cache_dir() / f"{before.st_dev}-{before.st_ino}.json"
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if (isinstance(cached, dict) and cached.get("stat") == key
                and str(cached.get("sha256", "")).startswith("sha256:")):
            return str(cached["sha256"])
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = "sha256:" + digest.hexdigest()
    if _stat_key(path.stat()) == key:
        try:
            atomic_write_json(entry, {"path": str(path), "stat": key, "sha256": value})
        except UserError:
            pass
    return value


def text_fingerprint(*parts: Any) -> str:
    """A stable short hash of JSON-serialisable parts (cache keys)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require_file(path: str | Path) -> Path:
    """Return ``Path(path)`` or raise a :class:`UserError` when it is not a readable file."""
    path = Path(path)
    if not path.exists():
        raise UserError("no such file or folder", file=path)
    if path.is_dir():
        raise UserError("is a folder, expected a file", file=path)
    if not os.access(path, os.R_OK):
        raise UserError("file is not readable", file=path)
    return path


def read_text_strict(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole text file; undecodable bytes are a :class:`UserError` naming the line."""
    path = require_file(path)
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"undecodable bytes for {encoding} at byte {exc.start}", file=path, line=line
        ) from None


def read_json_file(path: str | Path) -> Any:
    """A whole JSON file; an unreadable file or invalid JSON is a :class:`UserError` (with the line)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror}", file=path) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON: {exc.msg}", file=path, line=exc.lineno) from None


def replace_marked_block(text: str, block: str, begin: str, end: str, source: str | Path) -> str:
    """``text`` with everything from the ``begin`` marker to the ``end`` marker replaced by ``block``
    (generated README blocks); the markers must appear once each, in that order."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"needs exactly one {begin!r} line followed by one {end!r} line", file=source)
    return text[: text.index(begin)] + block + text[text.index(end) + len(end):]


JSON_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


def rewrite_marked_block(path: Path, block: str, begin: str, end: str) -> bool:
    """Replace the marked block of the file ``path`` with ``block`` (atomically, only when it differs);
    returns whether the file changed."""
    text = path.read_text(encoding="utf-8")
    new = replace_marked_block(text, block, begin, end, path)
    if new != text:
        atomic_write_text(path, new)
    return new != text


def marked_block(text: str, begin: str, end: str) -> str | None:
    """The text from the ``begin`` marker through the ``end`` marker, or None when either is missing."""
    return text[text.index(begin): text.index(end) + len(end)] if begin in text and end in text else None


def read_yaml_document(path: str | Path) -> tuple[Any, Any]:
    """``(value, node)`` of a YAML file: its parsed value and its node tree (which carries each key's
    line); invalid YAML is a UserError naming the file and line."""
    text = read_text_strict(path)
    try:
        node = yaml.compose(text)
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=path,
                        line=mark.line + 1 if mark else None) from None
    return value, node


def json_type_name(value: Any) -> str:
    """How a JSON value's type reads in a message ("a number", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def parse_jsonl(text: str, path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of JSONL ``text`` read from ``path``.

    A line that is not a JSON object is a :class:`UserError` with its line number; a file
    whose last line is cut mid-object reports that it looks truncated.
    """
    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            last = all(not rest.strip() for rest in lines[number:])
            hint = " (file looks truncated)" if last and not text.endswith("\n") else ""
            raise UserError(f"invalid JSON: {exc.msg} at column {exc.colno}{hint}", file=path, line=number) from None
        except RecursionError:  # json's C parser recurses once per nesting level
            raise UserError("invalid JSON: nested too deeply", file=path, line=number) from None
        if not isinstance(obj, dict):
            raise UserError(f"expected a JSON object per line, got {json_type_name(obj)}", file=path, line=number)
        yield number, obj


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (see :func:`parse_jsonl`)."""
    yield from parse_jsonl(read_text_strict(path, encoding="utf-8-sig"), path)
