"""XSafety (Wang et al., 2024): one header-less, one-column file per category, one folder
per language (``<lang>/<Category>.csv`` or ``.xlsx``) -> :class:`EvalPrompt`.

The released files are row-aligned translations: row *i* of a category is the same item in
every language. What the release does, and what the reader does about it:

* **file names differ by language** (``Crimes_And_Illegal_Activities_en``, ``Insult_n``,
  ``Crimes_And_Illegal_Activitie`` truncated, ``commen_sense`` misspelt): each name maps
  to one of :data:`CATEGORIES` (suffix ``_n``/``_<lang>`` removed, then the closest
  canonical name by letters, similarity >= :data:`MIN_SIMILARITY`); ``category`` is the
  canonical name, ``metadata["category_raw"]`` the file's own. A name matching none keeps
  its own spelling as a category of its own (listed by :func:`xsafety_files`' callers).
* **a second file for one category in one language** (upstream ``hi/`` has both
  ``commonsense.csv`` and ``commen_sense.csv``, two translations of the same 200 items):
  the file whose name is the canonical spelling (else the closest, then the first by
  name) is read; every row of the other is a located skip ``alternative file``, so ids
  stay one item each and nothing is lost silently.
* **trailing empty columns** (``en/Unfairness_And_Discrimination_n.csv`` has 2): ignored
  when empty on every row; a non-empty second cell is an error naming file, line, column.
* **``.xlsx`` files** (all of ``bn/`` but ``commonsense``): read with openpyxl, first sheet,
  located as ``file:row``.
* **whitespace-only rows** (``ru/Insult.csv`` row 165): a located ``empty text`` skip that
  keeps its position, so later ids are not renumbered and stay aligned across languages.

Ids: ``"xsafety-<lang>-<Category>-<row>"`` with ``row`` the 0-based data-row index in the
file; ``source_id`` = ``"<Category>-<row>"`` (equal across languages for the same item).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polyalign.data.formats.common import Loc, csv_rows, is_blank, known_language, xlsx_rows
from polyalign.data.languages import canonical_language
from polyalign.data.records import EvalPrompt
from polyalign.data.validation import ALTERNATIVE, EMPTY, Item, LangCheck, Skip
from polyalign.errors import UserError

CATEGORIES: tuple[str, ...] = (
    "Crimes_And_Illegal_Activities", "Ethics_And_Morality", "Goal_Hijacking", "Inquiry_With_Unsafe_Opinion",
    "Insult", "Mental_Health", "Physical_Harm", "Privacy_And_Property", "Prompt_Leaking", "Reverse_Exposure",
    "Role_Play_Instruction", "Unfairness_And_Discrimination", "Unsafe_Instruction_Topic", "Commonsense",
)
SUFFIXES = (".csv", ".xlsx")
# Truncation by one or two letters and one-letter misspellings score >= 0.9; the closest
# two distinct categories ("Insult" / "Mental_Health" ...) score < 0.5.
MIN_SIMILARITY = 0.85


def _strip_suffix(stem: str) -> str:
    """``Insult_n`` / ``Crimes_And_Illegal_Activities_en`` -> without the release's suffix."""
    return re.sub(r"_(n|[a-z]{2})$", "", stem, flags=re.IGNORECASE) or stem


def _letters(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def canonical_category(stem: str) -> tuple[str, float]:
    """``(canonical name, similarity)`` for a file stem; the stem itself (suffix removed)
    with similarity 0 when no canonical name is close enough."""
    base = _strip_suffix(stem)
    letters = _letters(base)
    best, score = base, 0.0
    for name in CATEGORIES:
        ratio = difflib.SequenceMatcher(None, letters, _letters(name)).ratio()
        if ratio > score:
            best, score = name, ratio
    return (best, score) if score >= MIN_SIMILARITY else (base, 0.0)


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                  and not p.name.startswith((".", "~$")))


def xsafety_files(path: Path, language: str | None) -> list[tuple[Path, str]]:
    """``(file, language)`` pairs for an XSafety root, language folder or single file."""
    if path.is_file():
        lang = language or known_language(path.parent.name)
        if lang is None:
            raise UserError("cannot tell the language of this XSafety file from its folder name; "
                            "pass language= (--language)", file=path, field="language")
        return [(path, canonical_language(lang))]
    own = known_language(path.name)
    if own is not None and _data_files(path):
        return [(f, canonical_language(language or own)) for f in _data_files(path)]
    out = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        lang = known_language(sub.name)
        if lang is not None:
            out.extend((f, lang) for f in _data_files(sub))
    if not out:
        raise UserError("no XSafety files found (expected <lang>/<Category>.csv or .xlsx)", file=path)
    return out


def _rows(file: Path) -> tuple[list[tuple[int, list[str]]], str]:
    """Data rows of one file and how a row is located (``line`` for CSV, ``row`` for xlsx)."""
    if file.suffix.lower() == ".xlsx":
        return xlsx_rows(file), "row"
    return csv_rows(file), "line"


def _primary_files(files: list[tuple[Path, str]]) -> dict[tuple[str, str], Path]:
    """The file read for each (language, category): canonical spelling first, then the
    closest name, then the first by name."""
    best: dict[tuple[str, str], tuple[tuple[int, float, str], Path]] = {}
    for file, lang in files:
        category, score = canonical_category(file.stem)
        exact = _strip_suffix(file.stem).lower() == category.lower()
        rank = (0 if exact else 1, -score, file.name)
        key = (lang, category)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, file)
    return {key: file for key, (_, file) in best.items()}


def read_xsafety(path: Path, *, language: str | None = None, **_: Any) -> Iterator[Item | Skip]:
    """XSafety files -> EvalPrompt per data row, :class:`Skip` per blank row or row of an
    alternative file (see the module docstring)."""
    files = xsafety_files(path, language)
    primary = _primary_files(files)
    for file, lang in files:
        category, _score = canonical_category(file.stem)
        kept = primary[(lang, category)]
        rows, unit = _rows(file)
        where = f"{file.parent.name}/{file.name}"
        for index, (line, row) in enumerate(rows):
            loc = Loc(str(file), line)
            if kept != file:
                yield Skip(str(file), line, None, ALTERNATIVE,
                           f"second {category} file for {lang}; {kept.name} is the one read", lang)
                continue
            if len(row) > 1 and not is_blank(row[1:]):
                column = next(i for i, c in enumerate(row[1:], start=2) if c.strip())
                raise loc.error(f"column {column}", f"expected one column (header-less XSafety file), "
                                f"but {unit} {line} has text in column {column}")
            text = row[0] if row else ""
            if not text.strip():
                yield Skip(str(file), line, "column 1", EMPTY, f"{unit} {line}: empty prompt (whitespace only); "
                           f"its position {index} is kept so later ids stay aligned", lang)
                continue
            record = EvalPrompt(id=f"xsafety-{lang}-{category}-{index}", language=lang, text=text,
                                benchmark="xsafety", category=category, source_id=f"{category}-{index}",
                                metadata={"file": where, "category_raw": file.stem, unit: line})
            yield Item(record, loc.file, line, [LangCheck("column 1", text, lang)])
