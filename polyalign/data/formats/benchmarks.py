"""Safety-benchmark readers: MultiJail CSV, RTP-LX JSONL -> EvalPrompt (XSafety: ``xsafety``).

Ids: MultiJail ``"<row id>-<lang>"`` (``source_id`` = row id); XSafety see
:mod:`polyalign.data.formats.xsafety`; RTP-LX ``"rtplx-<lang>-<Index>"`` (``source_id`` = Index,
which names the same RealToxicityPrompts prompt across locales).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import Loc, get, iter_csv, iter_jsonl, language_code
from polyalign.data.languages import canonical_language
from polyalign.data.records import EvalPrompt
from polyalign.data.validation import Item, LangCheck
from polyalign.data.formats.xsafety import read_xsafety, xsafety_files  # noqa: F401  (re-exported)
from polyalign.errors import UserError

MULTIJAIL_REQUIRED = ("id", "tags", "en")
_RTPLX_NAME = re.compile(r"^RTP_LX_(?P<locale>[A-Za-z]{2,3}(?:[-_][A-Za-z]+)?)\.jsonl?$")


def _is_language(name: str) -> bool:
    try:
        canonical_language(name)
    except ValueError:
        return False
    return True


def read_multijail(path: Path, **_: Any) -> Iterator[Item]:
    """MultiJail CSV -> one EvalPrompt per (row, language column).

    Required columns: ``id``, ``tags`` (a Python list literal, parsed with
    ``ast.literal_eval``; ``category`` = first tag, all tags in ``metadata["tags"]``) and
    ``en``. Every other column whose name is a language code is a language; the rest
    (``source``) go to metadata.
    """
    rows = iter_csv(path)
    header_line, header = next(rows, (1, []))
    header = [h.strip() for h in header]
    for column in MULTIJAIL_REQUIRED:
        if column not in header:
            raise UserError(f"missing required column (header has: {', '.join(header)})",
                            file=path, line=header_line, field=column)
    languages = {h: canonical_language(h) for h in header if h not in ("id", "tags") and _is_language(h)}
    for line, row in rows:
        loc = Loc(str(path), line)
        if len(row) != len(header):
            raise loc.error(None, f"expected {len(header)} columns like the header, got {len(row)}")
        cells = dict(zip(header, row))
        try:
            tags = ast.literal_eval(cells["tags"]) if cells["tags"].strip() else []
        except (ValueError, SyntaxError):
            raise loc.error("tags", "expected a Python list literal such as ['Theft']") from None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise loc.error("tags", "expected a list of strings")
        row_id = cells["id"].strip()
        if not row_id:
            raise loc.error("id", "missing required value")
        extra = {k: v for k, v in cells.items() if k not in languages and k not in ("id", "tags")}
        for column, lang in languages.items():
            record = EvalPrompt(id=f"{row_id}-{lang}", language=lang, text=cells[column], benchmark="multijail",
                                category=tags[0] if tags else None, source_id=row_id,
                                metadata={"tags": list(tags), **extra})
            yield Item(record, str(path), line, [LangCheck(column, cells[column], lang)])


def rtplx_files(path: Path) -> list[Path]:
    """One RTP-LX file, or every ``RTP_LX_*.json(l)`` in a folder."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and _RTPLX_NAME.match(p.name))
    if not files:
        raise UserError("no RTP_LX_<LOCALE>.json files in this folder", file=path)
    return files


def read_rtplx(path: Path, *, language: str | None = None, **_: Any) -> Iterator[Item]:
    """RTP-LX JSONL -> EvalPrompt; the language comes from the file name's locale
    (``RTP_LX_ZH-Hans.json`` -> ``zh``), else ``language``, else each row's ``Locale``.
    Annotations (harm-type means) and raw votes, completion, locale and dialect go to
    metadata; ``metadata["toxicity"]`` is the mean Toxicity score (1-5)."""
    for file in rtplx_files(path):
        match = _RTPLX_NAME.match(file.name)
        locale = match.group("locale") if match else None
        file_lang = language_code(locale, Loc(str(file), None), "file name") if locale else None
        file_lang = file_lang or (canonical_language(language) if language else None)
        for loc, obj in iter_jsonl(file):
            text = get(obj, "Prompt", str, loc)
            index = get(obj, "Index", (str, int), loc)
            row_locale = get(obj, "Locale", str, loc, required=file_lang is None)
            lang = file_lang or language_code(row_locale, loc, "Locale")
            annotations = get(obj, "Annotations", dict, loc, required=False) or {}
            metadata = {
                "locale": locale or row_locale, "dialect": get(obj, "Dialect", str, loc, required=False) or "",
                "completion": get(obj, "Completion", str, loc, required=False),
                "toxicity": annotations.get("Toxicity"), "annotations": annotations,
                "annotations_raw": get(obj, "AnnotationsRaw", dict, loc, required=False) or {},
            }
            record = EvalPrompt(id=f"rtplx-{lang}-{index}", language=lang, text=text, benchmark="rtplx",
                                source_id=str(index), metadata=metadata)
            yield Item(record, loc.file, loc.line, [LangCheck("Prompt", text, lang)])
