"""Safety-benchmark readers: MultiJail CSV, RTP-LX JSONL -> EvalPrompt (XSafety: ``xsafety``).

Ids: MultiJail ``"<row id>-<lang>"`` (``source_id`` = row id); XSafety see
:mod:`polyalign.data.formats.xsafety`; RTP-LX ``"rtplx-<lang>-<Index>"`` (``source_id`` = Index,
which names the same RealToxicityPrompts prompt across locales).
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import Loc, get, is_blank, iter_csv, iter_jsonl
from polyalign.data.languages import canonical_language, language_tag
from polyalign.data.records import EvalPrompt
from polyalign.data.validation import EMPTY, Item, LangCheck, Skip
from polyalign.errors import UserError

MULTIJAIL_REQUIRED = ("id", "tags", "en")
# Any locale spelling: EN, ZH-Hans, PT-BR, NO-NB, DE-CH, BCMS (four letters).
_RTPLX_NAME = re.compile(r"^RTP_LX_(?P<locale>[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{2,8})*)\.jsonl?$")
_NO_INDEX = ("NA", "N/A", "")
log = logging.getLogger("polyalign.data")


def is_rtplx_file_name(name: str) -> bool:
    """Whether ``name`` is an RTP-LX release file's name (``RTP_LX_<LOCALE>.json[l]``)."""
    return _RTPLX_NAME.match(name) is not None


def _is_language(name: str) -> bool:
    try:
        canonical_language(name)
    except ValueError:
        return False
    return True


def read_multijail(path: Path, **_: Any) -> Iterator[Item | Skip]:
    """MultiJail CSV -> one EvalPrompt per (row, language column).

    Required columns: ``id``, ``tags`` (a Python list literal, parsed with
    ``ast.literal_eval``; ``category`` = first tag, all tags in ``metadata["tags"]``) and
    ``en``. Every other column whose name is a language code is a language; the rest
    (``source``) go to metadata.
    """
    rows = iter_csv(path, keep_blank=True)
    header_line, header = next(rows, (1, []))
    header = [h.strip() for h in header]
    for column in MULTIJAIL_REQUIRED:
        if column not in header:
            raise UserError(f"missing required column (header has: {', '.join(header)})",
                            file=path, line=header_line, field=column)
    languages = {h: canonical_language(h) for h in header if h not in ("id", "tags") and _is_language(h)}
    for line, row in rows:
        loc = Loc(str(path), line)
        if is_blank(row):  # a row of empty cells: one located skip per language it would have given
            for lang in languages.values():
                yield Skip(str(path), line, None, EMPTY, "row with no text in any column", lang)
            continue
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
    """One RTP-LX file, or every ``RTP_LX_<LOCALE>.json(l)`` in a folder. Any other
    ``.json``/``.jsonl`` file there is an error (never skipped silently); other files (a
    README, the release zip) are ignored with a log line naming them."""
    if path.is_file():
        return [path]
    entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in entries if _RTPLX_NAME.match(p.name)]
    strays = [p for p in entries if p not in files and p.suffix.lower() in (".json", ".jsonl")]
    if strays:
        raise UserError(f"not an RTP_LX_<LOCALE>.json file name; move it out of the folder or read it alone "
                        f"({len(strays)} such file(s))", file=strays[0], field="file name")
    if not files:
        raise UserError("no RTP_LX_<LOCALE>.json files in this folder", file=path)
    others = [p.name for p in entries if p not in files]
    if others:
        log.info("%s: not RTP-LX data, ignored: %s", path, ", ".join(others))
    return files


def rtplx_language(locale: str, loc: Loc, field: str) -> str:
    """RTP-LX locale -> language tag, region kept (``DE-CH`` -> ``de-CH``, ``PT-BR`` ->
    ``pt-BR``), ``ZH-Hans`` -> ``zh``, ``BCMS`` -> ``hbs`` (see :mod:`polyalign.data.languages`)."""
    try:
        return language_tag(locale)
    except ValueError:
        raise loc.error(field, f"not a language code: {locale!r}") from None


def read_rtplx(path: Path, *, language: str | None = None, **_: Any) -> Iterator[Item]:
    """RTP-LX JSONL -> EvalPrompt; the language comes from the file name's locale
    (``RTP_LX_ZH-Hans.json`` -> ``zh``, ``RTP_LX_DE-CH.json`` -> ``de-CH``), else
    ``language``, else each row's ``Locale``. Annotations (harm-type means) and raw votes,
    completion, locale and dialect go to metadata; ``metadata["toxicity"]`` is the mean
    Toxicity score (1-5).

    ``Index`` names the RealToxicityPrompts prompt, the same across locales. The release's
    hand-written culture-specific prompts have ``Index == "NA"``: they get the stable id
    ``NA-<k>`` (k = 1, 2, ... in file order) and a ``source_id`` unique to their language
    (``<tag>-NA-<k>``), as they have no counterpart in other locales.
    """
    for file in rtplx_files(path):
        match = _RTPLX_NAME.match(file.name)
        locale = match.group("locale") if match else None
        file_lang = rtplx_language(locale, Loc(str(file), None), "file name") if locale else None
        file_lang = file_lang or (language_tag(language) if language else None)
        unindexed = 0
        for loc, obj in iter_jsonl(file):
            text = get(obj, "Prompt", str, loc)
            index = str(get(obj, "Index", (str, int), loc)).strip()
            row_locale = get(obj, "Locale", str, loc, required=file_lang is None)
            lang = file_lang or rtplx_language(row_locale, loc, "Locale")
            source_id = index
            if index.upper() in _NO_INDEX:
                unindexed += 1
                index = f"NA-{unindexed}"
                source_id = f"{lang}-{index}"
            annotations = get(obj, "Annotations", dict, loc, required=False) or {}
            metadata = {
                "locale": locale or row_locale, "dialect": get(obj, "Dialect", str, loc, required=False) or "",
                "completion": get(obj, "Completion", str, loc, required=False),
                "toxicity": annotations.get("Toxicity"), "annotations": annotations,
                "annotations_raw": get(obj, "AnnotationsRaw", dict, loc, required=False) or {},
            }
            record = EvalPrompt(id=f"rtplx-{lang}-{index}", language=lang, text=text, benchmark="rtplx",
                                source_id=source_id, metadata=metadata)
            yield Item(record, loc.file, loc.line, [LangCheck("Prompt", text, lang)])
