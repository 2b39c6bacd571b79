"""Content checks on parsed records, producing :class:`Problem` s.

Policy (shared by every reader):

* *Structural* errors (a file that cannot be parsed, a missing or mistyped field, an
  unknown role, undecodable bytes, a truncated file) raise
  :class:`~polyalign.errors.UserError` while parsing; nothing downstream can be trusted.
* *Content* problems in otherwise well-formed rows are collected here. Each one skips its
  row, becomes a :class:`Problem` and is counted in ``skipped[reason]``; nothing is
  dropped silently. With ``strict=True`` the first content problem raises instead.

Content problems and their reasons (the keys of ``ReadResult.skipped``):

=====================  ====================================================================
``empty text``         a prompt turn, response or prompt text is empty or whitespace only
``chosen == rejected``  the two responses are identical after stripping whitespace
``duplicate id``       a record id seen before in the same read (the first one is kept)
``unknown language``   no label was given and lingua could not tell (label ``und``)
``language mismatch``  a declared language that lingua confidently contradicts (see
                       :func:`polyalign.data.langdetect.language_mismatch`); only prompt
                       texts are checked, since responses may legitimately differ
``alternative file``   XSafety: a second file for a category one language already has (the
                       upstream ``hi/commen_sense.csv`` beside ``hi/commonsense.csv``)
=====================  ====================================================================

Readers yield an :class:`Item` per data row that parsed into a record and a :class:`Skip`
per data row they could not turn into one (a whitespace-only CSV row, a row of an
alternative file): a skip is counted and located like any content problem, so for every
read ``rows == len(records) + sum(skipped.values())`` (see :class:`Tally`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from polyalign.data.langdetect import language_mismatch
from polyalign.data.records import EvalPrompt, Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.errors import UserError

Record = PreferencePair | ParallelPair | PromptVariants | EvalPrompt

EMPTY = "empty text"
SAME = "chosen == rejected"
DUPLICATE = "duplicate id"
MISMATCH = "language mismatch"
UNKNOWN = "unknown language"
ALTERNATIVE = "alternative file"


@dataclass(frozen=True)
class Problem:
    """One content problem; ``str()`` has the same ``file:line: field 'x': message`` shape
    as :class:`~polyalign.errors.UserError`. ``reason`` is the ``skipped`` counter key."""

    file: str
    line: int | None
    field: str | None
    message: str
    reason: str = ""

    def __str__(self) -> str:
        return str(UserError(self.message, file=self.file, line=self.line, field=self.field))

    def to_error(self) -> UserError:
        return UserError(self.message, file=self.file, line=self.line, field=self.field)


@dataclass(frozen=True)
class LangCheck:
    """A text whose declared language should be checked: ``(field, text, declared)``."""

    field: str
    text: str
    language: str


@dataclass
class Item:
    """A parsed record with where it came from and which texts have declared languages."""

    record: Record
    file: str
    line: int | None
    checks: list[LangCheck] = field(default_factory=list)
    label: str = ""  # e.g. "item 41" for JSON lists, prefixed to messages


@dataclass
class Skip:
    """A data row that is counted and located but gives no record (see the module docstring)."""

    file: str
    line: int | None
    field: str | None
    reason: str
    message: str
    language: str | None = None
    label: str = ""


def record_language(record: Record) -> str | None:
    """The language a record is counted under: its own, a parallel pair's target side,
    prompt variants' one language; ``None`` for variants in several languages."""
    if isinstance(record, ParallelPair):
        return record.target.language
    if isinstance(record, (PreferencePair, EvalPrompt)):
        return record.language
    if isinstance(record, PromptVariants) and len(record.prompts) == 1:
        return next(iter(record.prompts))
    return None


@dataclass
class Tally:
    """Data rows read / used (kept as records) / skipped, in all and per language
    (``"*"`` for rows without one language). ``read == used + skipped`` always."""

    per_language: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, language: str | None, used: bool) -> None:
        row = self.per_language.setdefault(language or "*", {"read": 0, "used": 0, "skipped": 0})
        row["read"] += 1
        row["used" if used else "skipped"] += 1

    def total(self) -> dict[str, int]:
        out = {"read": 0, "used": 0, "skipped": 0}
        for row in self.per_language.values():
            for key in out:
                out[key] += row[key]
        return out

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {lang: dict(row) for lang, row in sorted(self.per_language.items())}


def _prompt_problems(prefix: str, prompt: tuple[Message, ...]) -> list[tuple[str, str, str]]:
    out = []
    for index, message in enumerate(prompt):
        if not message.content.strip():
            out.append((f"{prefix}[{index}].content", EMPTY, f"empty {message.role} turn"))
    if not prompt:
        out.append((prefix, EMPTY, "prompt has no turns"))
    return out


def _language_problems(language: str, prefix: str = "") -> list[tuple[str, str, str]]:
    if language != "und":
        return []
    return [(prefix + "language", UNKNOWN, "no language label and detection could not tell; "
             "pass language= (--language)")]


def _pair_problems(pair: PreferencePair, prefix: str = "") -> list[tuple[str, str, str]]:
    out = _prompt_problems(prefix + "prompt", pair.prompt) + _language_problems(pair.language, prefix)
    for name in ("chosen", "rejected"):
        if not getattr(pair, name).strip():
            out.append((prefix + name, EMPTY, f"empty {name} response"))
    if pair.chosen.strip() and pair.chosen.strip() == pair.rejected.strip():
        out.append((prefix + "rejected", SAME, "chosen and rejected responses are identical"))
    if pair.variants is not None:
        out.extend(_variant_problems(pair.variants, prefix + "variants."))
    return out


def _variant_problems(variants: PromptVariants, prefix: str = "") -> list[tuple[str, str, str]]:
    out = []
    for language, prompt in variants.prompts.items():
        out.extend(_prompt_problems(f"{prefix}{language}", prompt))
    return out


def record_problems(record: Record) -> list[tuple[str, str, str]]:
    """Content problems of one record as ``(field, reason, message)`` (no id/language checks)."""
    if isinstance(record, ParallelPair):
        return _pair_problems(record.dominant, "dominant.") + _pair_problems(record.target, "target.")
    if isinstance(record, PreferencePair):
        return _pair_problems(record)
    if isinstance(record, PromptVariants):
        return _variant_problems(record)
    if isinstance(record, EvalPrompt):
        empty = [("text", EMPTY, "empty prompt text")] if not record.text.strip() else []
        return empty + _language_problems(record.language)
    raise TypeError(f"not a record: {type(record).__name__}")


def validate_items(
    items: Iterable[Item | Skip], *, check_language: bool = True, strict: bool = False,
    tally: Tally | None = None, min_confidence: float | None = None,
) -> tuple[list[Record], list[Problem], Counter]:
    """Run content checks; return ``(kept records, problems, skipped counter)``.

    A row with several problems is reported once per problem but counted once in
    ``skipped``, under its first problem's reason. :class:`Skip` rows are counted and
    reported as they are. ``tally`` (optional) receives every row, per language;
    ``min_confidence`` is the language-mismatch threshold (lingua confidence, default 0.9).
    """
    kept: list[Record] = []
    problems: list[Problem] = []
    skipped: Counter = Counter()
    seen: dict[str, tuple[str, int | None]] = {}
    tally = tally if tally is not None else Tally()
    for item in items:
        if isinstance(item, Skip):
            problem = Problem(item.file, item.line, item.field,
                              f"{item.label}: {item.message}" if item.label else item.message, item.reason)
            if strict:
                raise problem.to_error()
            skipped[item.reason] += 1
            problems.append(problem)
            tally.add(item.language, used=False)
            continue
        language = record_language(item.record)
        found = list(record_problems(item.record))
        if item.record.id in seen:
            first_file, first_line = seen[item.record.id]
            where = f"{first_file}:{first_line}" if first_line is not None else first_file
            found.append(("id", DUPLICATE, f"duplicate id {item.record.id!r} (first at {where})"))
        if check_language and not found:
            for check in item.checks:
                hit = language_mismatch(check.text, check.language, min_confidence)
                if hit is not None:
                    detected, confidence = hit
                    found.append(
                        (check.field, MISMATCH, f"declared language {check.language!r} but the text looks "
                         f"like {detected!r} (confidence {confidence:.2f})")
                    )
        if not found:
            seen[item.record.id] = (item.file, item.line)
            kept.append(item.record)
            tally.add(language, used=True)
            continue
        skipped[found[0][1]] += 1
        tally.add(language, used=False)
        for field_name, reason, message in found:
            text = f"{item.label}: {message}" if item.label else message
            problem = Problem(item.file, item.line, field_name, text, reason)
            if strict:
                raise problem.to_error()
            problems.append(problem)
    return kept, problems, skipped
