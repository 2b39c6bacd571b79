"""Parsing helpers shared by the format readers: strict decoding, JSON lists with line
numbers, JSONL, CSV rows with their starting line, typed field access, chat turns.

Every helper raises :class:`~polyalign.errors.UserError` naming file, line and field.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyalign.data.languages import LANGUAGE_NAMES, canonical_language
from polyalign.data.records import Message
from polyalign.errors import UserError
from polyalign.io import JSON_TYPE_NAMES, json_type_name, parse_jsonl, require_file

# Role spellings in released data -> our roles. ShareGPT uses human/gpt; Gemma uses model.
ROLE_ALIASES = {"user": "user", "assistant": "assistant", "system": "system",
                "human": "user", "gpt": "assistant", "model": "assistant"}
_WS = re.compile(r"[ \t\n\r]*")
# Long prompts in one CSV cell are legitimate; the csv module's default cap is 128 KiB.
# The cap is process-wide state, so it is raised only while one of our files is parsed
# (see _csv_field_limit) and restored afterwards, never for the rest of the process.
CSV_FIELD_LIMIT = 2**31 - 1


type_name = json_type_name


@dataclass(frozen=True)
class Loc:
    """Where a row is: file, 1-based line, and an optional label such as ``item 41``."""

    file: str
    line: int | None
    label: str = ""

    def error(self, field: str | None, message: str) -> UserError:
        text = f"{self.label}: {message}" if self.label else message
        return UserError(text, file=self.file, line=self.line, field=field)


def _field_with_replacement(raw_line: str, kind: str, header: str | None) -> str | None:
    """Which field of a line holds U+FFFD after lossy decoding (best effort)."""
    if kind == "jsonl":
        try:
            obj = json.loads(raw_line)
        except json.JSONDecodeError:
            return None
        if isinstance(obj, dict):
            for key, value in obj.items():
                if "\ufffd" in json.dumps(value, ensure_ascii=False):
                    return str(key)
    if kind == "csv":
        try:
            with _csv_field_limit(CSV_FIELD_LIMIT):
                cells = next(csv.reader([raw_line]), [])
                names = next(csv.reader([header]), []) if header else []
        except csv.Error:
            return None
        for index, cell in enumerate(cells):
            if "\ufffd" in cell:
                return names[index] if index < len(names) else f"column {index + 1}"
    return None


def read_text(path: str | Path, kind: str = "text", encoding: str = "utf-8-sig") -> str:
    """Decode a file strictly (a leading UTF-8 BOM is dropped); an empty file is an error.

    Undecodable bytes raise a UserError with the line and, for JSONL/CSV (``kind``), the
    field or column holding them.
    """
    path = require_file(path)
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        lines = data.decode(encoding, errors="replace").split("\n")
        header = lines[0] if kind == "csv" and line > 1 else None
        field = _field_with_replacement(lines[line - 1], kind, header)
        raise UserError(
            f"undecodable bytes for UTF-8 at byte {exc.start} (0x{data[exc.start]:02x}); "
            "save the file as UTF-8", file=path, line=line, field=field,
        ) from None
    if not text.strip():
        raise UserError("file is empty (no records)", file=path, line=1)
    return text


def iter_json_list(path: str | Path) -> Iterator[tuple[Loc, int, Any]]:
    """Yield ``(loc, index, item)`` for each item of a JSON list file.

    ``loc.line`` is the line where the item starts (the released MPO files are indented,
    ~30 lines per item), ``loc.label`` is ``item <index>``. A list cut mid-way reports that
    the file looks truncated, naming the last complete item.
    """
    text = read_text(path, "json")
    decoder = json.JSONDecoder()
    looks_cut = not text.rstrip().endswith("]")
    pos = _WS.match(text, 0).end()
    if text[pos] != "[":
        raise UserError(f"expected a JSON list starting with '[', got {text[pos]!r}",
                        file=path, line=text.count("\n", 0, pos) + 1)
    pos, index, line, counted = pos + 1, 0, 1, 0

    def truncated() -> UserError:
        return UserError(f"file looks truncated: the JSON list ends inside or after item {index} "
                         f"({index} complete items)", file=path, line=text.count("\n") + 1)

    while True:
        pos = _WS.match(text, pos).end()
        if pos >= len(text):
            raise truncated()
        if text[pos] == "]" and index == 0:
            pos += 1
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if looks_cut:
                raise truncated() from None
            raise UserError(f"item {index}: invalid JSON: {exc.msg} at column {exc.colno}",
                            file=path, line=exc.lineno) from None
        yield Loc(str(path), line, f"item {index}"), index, item
        index += 1
        pos = _WS.match(text, end).end()
        if pos >= len(text):
            raise truncated()
        if text[pos] == "]":
            pos += 1
            break
        if text[pos] != ",":
            raise UserError(f"item {index - 1}: invalid JSON: expected ',' or ']' after the item",
                            file=path, line=text.count("\n", 0, pos) + 1)
        pos += 1
    rest = _WS.match(text, pos).end()
    if rest < len(text):
        raise UserError("invalid JSON: extra data after the list", file=path, line=text.count("\n", 0, rest) + 1)


def iter_jsonl(path: str | Path) -> Iterator[tuple[Loc, dict[str, Any]]]:
    """Yield ``(loc, object)`` per non-blank line; a cut last line says "truncated".

    A file holding one JSON array of objects (``[{...}, {...}]``, as LLaMA-Factory and
    many exports write) is read the same way, item by item (``loc.label`` = ``item <i>``,
    ``loc.line`` = the line where the item starts)."""
    text = read_text(path, "jsonl")
    if text.lstrip().startswith("["):
        for loc, _index, item in iter_json_list(path):
            if not isinstance(item, dict):
                raise loc.error(None, f"expected an object, got {type_name(item)}")
            yield loc, item
        return
    for number, obj in parse_jsonl(text, path):
        yield Loc(str(path), number), obj


def first_object(path: str | Path) -> dict[str, Any]:
    """The first object of a JSON Lines file or JSON array (format detection)."""
    for _loc, obj in iter_jsonl(path):
        return obj
    raise UserError("file is empty (no records)", file=path, line=1)


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """Raise the csv module's (process-wide) field size cap for the duration of a parse."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def csv_rows(path: str | Path) -> list[tuple[int, list[str]]]:
    """Every CSV row as ``(start_line, cells)``, blank lines included (as ``[]``), trailing
    blank lines excluded. Parsed eagerly so that the raised field cap never outlives it."""
    text = read_text(path, "csv")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    with _csv_field_limit(CSV_FIELD_LIMIT):
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise UserError(f"invalid CSV: {exc}", file=path, line=start) from None
            rows.append((start, row))
    while rows and not rows[-1][1]:  # trailing empty lines are no rows
        rows.pop()
    return rows


def is_blank(cells: list[Any] | tuple[Any, ...]) -> bool:
    """No cell holds anything but whitespace (``None`` cells of a spreadsheet count as empty)."""
    return not any(cell is not None and str(cell).strip() for cell in cells)


def iter_csv(path: str | Path, *, keep_blank: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(start_line, cells)`` per CSV row (quoted multi-line cells allowed; the
    header, if any, is row 1). Malformed quoting is an error with its line.

    Empty lines are never rows; rows of whitespace-only cells are left out unless
    ``keep_blank`` (readers that keep them count each as a located skip).
    """
    for start, row in csv_rows(path):
        if row and (keep_blank or not is_blank(row)):  # an empty line is no row, as in JSON Lines
            yield start, row


def xlsx_rows(path: str | Path) -> list[tuple[int, list[str]]]:
    """``(row number, cells as strings)`` of the first worksheet of an ``.xlsx`` file
    (trailing empty rows excluded; ``None`` -> ``""``). Needs openpyxl (a core dependency).

    A workbook whose other sheets hold data is an error: which sheet is meant is unclear.
    """
    path = require_file(path)
    try:
        import openpyxl
    except ImportError:  # pragma: no cover - a core dependency
        raise UserError("reading .xlsx files needs openpyxl (pip install openpyxl)", file=path) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException kinds
        raise UserError(f"not a readable .xlsx workbook: {exc}", file=path) from None
    try:
        sheets = book.worksheets
        if not sheets:
            raise UserError("workbook has no worksheet", file=path)
        others = [s.title for s in sheets[1:] if any(not is_blank(r) for r in s.iter_rows(values_only=True))]
        if others:
            raise UserError(f"data in several sheets ({sheets[0].title}, {', '.join(others)}); save the one "
                            "to read on its own", file=path, field="sheet")
        rows = [(number, ["" if c is None else str(c) for c in row])
                for number, row in enumerate(sheets[0].iter_rows(values_only=True), start=1)]
    finally:
        book.close()
    while rows and is_blank(rows[-1][1]):
        rows.pop()
    if not rows:
        raise UserError("file is empty (no records)", file=path, line=1)
    return rows


def get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], loc: Loc, *, required: bool = True,
        field: str | None = None) -> Any:
    """``obj[key]`` checked to be of ``kind``; missing/mistyped is a UserError on ``loc``."""
    name = field or key
    if key not in obj or obj[key] is None:
        if required:
            raise loc.error(name, "missing required field")
        return None
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(JSON_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise loc.error(name, f"expected {wanted}, got {type_name(value)}")
    return value


def parse_message(value: Any, loc: Loc, field: str) -> Message:
    """One turn, ``{"role", "content"}`` or ShareGPT ``{"from", "value"}``."""
    if not isinstance(value, dict):
        raise loc.error(field, f"expected a chat turn object, got {type_name(value)}")
    role_key, text_key = ("role", "content") if "role" in value or "content" in value else ("from", "value")
    role = get(value, role_key, str, loc, field=f"{field}.{role_key}")
    content = get(value, text_key, str, loc, field=f"{field}.{text_key}")
    if role not in ROLE_ALIASES:
        raise loc.error(f"{field}.{role_key}", f"unknown role {role!r} (expected one of "
                        f"{', '.join(sorted(ROLE_ALIASES))})")
    return Message(ROLE_ALIASES[role], content)


def parse_turns(value: Any, loc: Loc, field: str) -> tuple[Message, ...]:
    """A list of turns (see :func:`parse_message`)."""
    if not isinstance(value, list):
        raise loc.error(field, f"expected a list of chat turns, got {type_name(value)}")
    return tuple(parse_message(turn, loc, f"{field}[{i}]") for i, turn in enumerate(value))


def user_prompt(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


def known_language(name: str) -> str | None:
    """Canonical code when ``name`` is a *known* language (folder names like ``en``, ``sp``);
    ``None`` for other names, even well-formed ones like ``mlc``."""
    try:
        code = canonical_language(name)
    except ValueError:
        return None
    return code if code in LANGUAGE_NAMES else None


def language_code(value: str, loc: Loc, field: str) -> str:
    """Canonical language code, or a UserError naming the field."""
    try:
        return canonical_language(value)
    except ValueError:
        raise loc.error(field, f"not a language code: {value!r}") from None


def message_dicts_sharegpt(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    """Turns in the ShareGPT spelling used by the official MPO/MLC files."""
    back = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"from": back[m.role], "value": m.content} for m in messages]
