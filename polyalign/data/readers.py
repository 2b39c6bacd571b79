"""Read any supported data set into typed records, with format auto-detection.

Formats (``format=`` / ``--format``), and what auto-detection looks for:

=============  =============================================================================
``canonical``  JSONL of records' ``to_dict`` form with a ``"type"`` field (or an eval prompt /
               variants / parallel pair recognisable from its keys); see ``formats/canonical``
``mpo``        ``*.json`` holding a JSON list of MPO items (``source_conversations`` ...)
``mlc``        JSONL with ``prompt``, ``chosen``, ``rejected`` and ``prompt_<lang>`` keys
``trl``        JSONL with ``chosen`` and ``rejected`` (``prompt`` optional: implicit prompt)
``llamafactory`` LLaMA-Factory preference data: ``conversations``+``chosen``+``rejected``
               (sharegpt) or ``instruction``+``chosen``+``rejected`` (alpaca)
``multijail``  CSV whose header has ``id`` and ``tags`` (plus ``en``, ``zh``, ...)
``xsafety``    a folder of ``<lang>/`` folders of CSV/xlsx files, a ``<lang>/`` folder, or a
               header-less one-column CSV (trailing empty columns allowed) or an ``.xlsx``
               inside a ``<lang>/`` folder
``rtplx``      ``RTP_LX_<LOCALE>.json`` files (JSONL), or a folder of them
``parallel``   a folder of >= 2 ``.txt``/``.jsonl`` files, one per language
``jsonl``      any other JSONL: needs ``column_map`` (see ``formats/generic``)

Wherever JSON Lines is read, a file holding one JSON array of objects is read too.
``csv``        any other CSV: needs ``column_map``
=============  =============================================================================

Structural errors raise :class:`~polyalign.errors.UserError`; content problems are in
``ReadResult.problems`` and their rows counted in ``ReadResult.skipped`` (see
:mod:`polyalign.data.validation`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyalign.data.formats.benchmarks import is_rtplx_file_name, read_multijail, read_rtplx
from polyalign.data.formats.canonical import read_canonical
from polyalign.data.formats.common import first_object, is_blank, iter_csv, known_language, read_text
from polyalign.data.formats.generic import read_generic
from polyalign.data.formats.llamafactory import llamafactory_style, read_llamafactory
from polyalign.data.formats.parallel import PARALLEL_SUFFIXES, read_parallel, single_parallel_file
from polyalign.data.formats.preference import read_mlc, read_mpo, read_trl
from polyalign.data.formats.xsafety import SUFFIXES as XSAFETY_SUFFIXES
from polyalign.data.formats.xsafety import read_xsafety
from polyalign.data.records import EvalPrompt, ParallelPair, PreferencePair, PromptVariants
from polyalign.data.validation import Item, Problem, Record, Tally, validate_items
from polyalign.errors import UserError

FORMATS = ("canonical", "mpo", "mlc", "trl", "llamafactory", "multijail", "xsafety", "rtplx", "parallel", "jsonl",
           "csv")
_CANONICAL_TYPES = ("preference_pair", "parallel_pair", "prompt_variants", "eval_prompt")
log = logging.getLogger("polyalign.data")


@dataclass
class ReadResult:
    """What a read produced: kept records, content problems, skip counts by reason, and
    the data rows read / used / skipped per language (``tally``): every data row of the
    input is a record or a counted, located skip, ``rows == len(records) + sum(skipped)``."""

    path: Path
    format: str
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    tally: Tally = field(default_factory=Tally)
    notes: list[str] = field(default_factory=list)  # what the reader decided, e.g. a detected language

    def record_types(self) -> Counter:
        """``{"PreferencePair": n, ...}``."""
        return Counter(type(r).__name__ for r in self.records)

    @property
    def rows(self) -> int:
        """Data rows the reader went through (records + skipped)."""
        return self.tally.total()["read"]


def _detect_folder(path: Path) -> str:
    entries = list(path.iterdir())
    if any(p.is_file() and is_rtplx_file_name(p.name) for p in entries):
        return "rtplx"
    if known_language(path.name) and any(p.suffix.lower() in XSAFETY_SUFFIXES for p in entries):
        return "xsafety"
    if any(p.is_dir() and known_language(p.name) and any(f.suffix.lower() in XSAFETY_SUFFIXES for f in p.iterdir())
           for p in entries):
        return "xsafety"
    if sum(p.is_file() and p.suffix in PARALLEL_SUFFIXES for p in entries) >= 2:
        return "parallel"
    raise UserError("no recognisable data files in this folder (expected RTP_LX_*.json, <lang>/*.csv, or "
                    "one .txt/.jsonl file per language); pass --format", file=path, field="format")


def _detect_csv(path: Path) -> str:
    _, header = next(iter_csv(path))
    names = {h.strip() for h in header}
    if {"id", "tags"} <= names:
        return "multijail"
    # XSafety files are header-less single-column files, some with trailing empty columns.
    if known_language(path.parent.name) and (len(header) == 1 or is_blank(header[1:])):
        return "xsafety"
    return "csv"


def _detect_json(path: Path) -> str:
    text = read_text(path, "jsonl")
    if text.lstrip().startswith("["):
        head = text[:4096]
        if "source_conversations" in head or "target_conversations" in head:
            return "mpo"
    obj = first_object(path)
    keys = set(obj)
    if obj.get("type") in _CANONICAL_TYPES or {"dominant", "target"} <= keys or {"id", "prompts"} <= keys \
            or {"text", "benchmark"} <= keys:
        return "canonical"
    if {"Prompt", "Locale"} <= keys:
        return "rtplx"
    if "prompt" in keys and any(k.startswith("prompt_") for k in keys):
        return "mlc"
    if llamafactory_style(keys) is not None:
        return "llamafactory"
    if "chosen" in keys or "rejected" in keys:
        return "trl"
    if single_parallel_file(path, obj):
        return "parallel"
    return "jsonl"


def detect_format(path: str | Path) -> str:
    """The format name of a file or folder (see the module table); a UserError when unclear."""
    path = Path(path)
    if not path.exists():
        raise UserError("no such file or folder", file=path)
    if path.is_dir():
        return _detect_folder(path)
    if is_rtplx_file_name(path.name):
        return "rtplx"
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        if known_language(path.parent.name):
            return "xsafety"
        raise UserError("an .xlsx file is read as XSafety data only inside a <lang>/ folder; save other "
                        "spreadsheets as CSV", file=path, field="format")
    if suffix == ".csv":
        return _detect_csv(path)
    if suffix in (".json", ".jsonl"):
        return _detect_json(path)
    raise UserError(f"cannot detect the format of a {suffix or 'suffix-less'} file; pass --format "
                    f"(one of {', '.join(FORMATS)})", file=path, field="format")


def read_records(
    path: str | Path,
    format: str | None = None,
    *,
    column_map: dict[str, str] | None = None,
    language: str | None = None,
    dominant_language: str | None = None,
    detect_language: bool = True,
    check_language: bool = True,
    strict: bool = False,
    language_threshold: float | None = None,
) -> ReadResult:
    """Read ``path`` (auto-detected unless ``format``) into records.

    ``language`` declares the language where the format has none (TRL without a
    ``language`` column, generic files, MPO target sides, a lone XSafety file);
    ``dominant_language`` is MPO's source side (detected by majority vote when None, see
    :func:`~polyalign.data.formats.preference.read_mpo`). ``detect_language=False`` turns lingua off
    entirely (no guessing, no mismatch checks); ``check_language=False`` keeps guessing
    labels but skips the declared-vs-detected mismatch check. ``strict=True`` raises on the
    first content problem instead of skipping the row. ``language_threshold`` is the lingua
    confidence from which a contradicted label is a "language mismatch" (default 0.9).
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown format {format!r} (expected one of {', '.join(FORMATS)})", file=path,
                        field="format")
    if not path.exists():
        raise UserError("no such file or folder", file=path)
    fmt = format or detect_format(path)
    kwargs: dict[str, Any] = {"language": language, "detect_language": detect_language, "column_map": column_map}
    notes: list[str] = []
    if fmt == "mpo":
        items = read_mpo(path, dominant_language=dominant_language, language=language,
                         detect_language=detect_language, notes=notes)
    elif fmt in ("jsonl", "csv"):
        items = read_generic(path, fmt=fmt, **kwargs)
    else:
        reader = {"canonical": read_canonical, "mlc": read_mlc, "trl": read_trl, "llamafactory": read_llamafactory,
                  "multijail": read_multijail,
                  "xsafety": read_xsafety, "rtplx": read_rtplx, "parallel": read_parallel}[fmt]
        items = reader(path, **kwargs)
    checking = detect_language and check_language
    items = list(items)  # parse everything first: structural errors before any (slow) language check
    tally = Tally()
    if language_threshold is not None and not 0.0 < language_threshold <= 1.0:
        raise UserError(f"the language threshold is a confidence in (0, 1], got {language_threshold}",
                        field="language_threshold")
    records, problems, skipped = validate_items(items, check_language=checking, strict=strict, tally=tally,
                                                min_confidence=language_threshold)
    return ReadResult(path=path, format=fmt, records=records, problems=problems, skipped=skipped, tally=tally,
                      notes=notes)


def _load(path: str | Path, format: str | None, kind: type, noun: str, kw: dict[str, Any]) -> list[Any]:
    result = read_records(path, format, **kw)
    wrong = Counter(type(r).__name__ for r in result.records if not isinstance(r, kind))
    if wrong:
        found = ", ".join(f"{n} {name}" for name, n in wrong.items())
        raise UserError(f"expected {noun}, but this {result.format} data holds {found} records", file=path)
    if result.skipped:
        log.warning("%s: skipped %d rows (%s); first problem: %s", path, sum(result.skipped.values()),
                    ", ".join(f"{k}: {v}" for k, v in result.skipped.items()), result.problems[0])
    return list(result.records)


def load_eval_prompts(path: str | Path, format: str | None = None, **kw: Any) -> list[EvalPrompt]:
    """Evaluation prompts (MultiJail, XSafety, RTP-LX, canonical, generic with ``text``)."""
    return _load(path, format, EvalPrompt, "evaluation prompts", kw)


def load_preference_pairs(path: str | Path, format: str | None = None, **kw: Any) -> list[PreferencePair]:
    """Preference pairs (TRL, MLC, canonical, generic with ``chosen``/``rejected``)."""
    return _load(path, format, PreferencePair, "preference pairs", kw)


def load_parallel_pairs(path: str | Path, format: str | None = None, **kw: Any) -> list[ParallelPair]:
    """MPO parallel pairs (official MPO JSON, canonical)."""
    return _load(path, format, ParallelPair, "parallel (MPO) pairs", kw)


def load_prompt_variants(path: str | Path, format: str | None = None, **kw: Any) -> list[PromptVariants]:
    """Prompt variants (multiway-parallel folders, canonical); preference pairs carrying
    ``variants`` yield those variants. MLC files are judged on their prompts alone (the MLC
    loss needs no answers), so a row whose chosen answer is empty still gives its prompts."""
    fmt = format or detect_format(path)
    if fmt == "mlc":
        parsed = [Item(item.record.variants, item.file, item.line, item.checks)
                  for item in read_mlc(Path(path), language=kw.get("language"))]
        checking = kw.get("detect_language", True) and kw.get("check_language", True)
        tally = Tally()
        records, problems, skipped = validate_items(parsed, check_language=checking, strict=kw.get("strict", False),
                                                    tally=tally)
        result = ReadResult(Path(path), fmt, records, problems, skipped, tally)
    else:
        result = read_records(path, fmt, **kw)
    out = []
    for record in result.records:
        if isinstance(record, PreferencePair) and record.variants is not None:
            out.append(record.variants)
        elif isinstance(record, PromptVariants):
            out.append(record)
        else:
            raise UserError(f"expected prompt variants, but this {result.format} data holds "
                            f"{type(record).__name__} records", file=path)
    if result.skipped:
        log.warning("%s: skipped %d rows; first problem: %s", path, sum(result.skipped.values()), result.problems[0])
    return out
