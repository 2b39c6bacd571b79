"""Quality filters for translated and self-generated text, with reasons counted per language.

Text-level reasons, checked in this order (an item is dropped for its first reason):

``missing``         no text at all (the translation failed after retries)
``empty``           only whitespace
``truncated``       cut at a length limit (input or output; ``finish_reason == "length"``)
``untranslated``    a copy of the source: equal after normalisation (NFKC, case-folded,
                    whitespace collapsed), or ``difflib.SequenceMatcher`` ratio >=
                    ``untranslated_similarity`` (default 0.9) -- only when the target
                    language differs from the source language
``wrong_language``  lingua is confident the text is in another language
                    (:func:`polyalign.data.langdetect.language_mismatch`: >= 20 characters,
                    none of the declared language's own script, top language confidence
                    >= 0.9, declared language < 0.05)
``length_ratio``    ``r = len(text) / len(source)`` (characters without whitespace) is an
                    outlier among its language: ``r > m * f`` or ``r < m / f`` where ``m``
                    is the median ``r`` of that language's items whose source has at least
                    ``length_ratio_min_chars`` characters and ``f = length_ratio_max_factor``
                    (default 3). A per-language median, because scripts differ: a Chinese
                    translation of English has ~0.3 x its characters.
``low_similarity``  cosine between source and text embeddings below the threshold
                    (only with a local multilingual embedding model; see ``similarity.py``)

Pair-level reasons: ``chosen_equals_rejected`` (normalised equal answers: no preference
signal) and ``duplicate`` (same language, prompt, chosen and rejected as an earlier pair).
"""

from __future__ import annotations

import difflib
import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from polyalign.errors import UserError

TEXT_REASONS = ("missing", "empty", "truncated", "untranslated", "wrong_language", "length_ratio", "low_similarity")
PAIR_REASONS = ("chosen_equals_rejected", "duplicate")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class FilterConfig:
    """Which filters run and their thresholds (the ``filters:`` section of the build YAML)."""

    empty: bool = True
    truncated: bool = True
    untranslated: bool = True
    untranslated_similarity: float = 0.9
    wrong_language: bool = True
    length_ratio: bool = True
    length_ratio_max_factor: float = 3.0
    length_ratio_min_chars: int = 10
    duplicates: bool = True
    chosen_equals_rejected: bool = True
    similarity_model: str | None = None
    similarity_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.untranslated_similarity <= 1:
            raise UserError("must be in (0, 1]", field="filters.untranslated_similarity")
        if self.length_ratio_max_factor <= 1:
            raise UserError("must be > 1", field="filters.length_ratio_max_factor")
        if not -1 <= self.similarity_threshold <= 1:
            raise UserError("must be in [-1, 1]", field="filters.similarity_threshold")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TextItem:
    """One text to check. ``source`` is the text it translates (``None`` for generations)."""

    key: str
    language: str
    text: str | None
    source: str | None = None
    source_language: str | None = None
    truncated: bool = False


@dataclass
class FilterReport:
    """Counts ``{stage: {language: {reason|"kept": n}}}``; ``checked`` lists applied filters."""

    counts: dict[str, dict[str, Counter]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, stage: str, language: str, reason: str, n: int = 1) -> None:
        self.counts.setdefault(stage, {}).setdefault(language, Counter())[reason] += n

    def total(self, reason: str, stage: str | None = None) -> int:
        stages = [stage] if stage else list(self.counts)
        return sum(c[reason] for s in stages for c in self.counts.get(s, {}).values())

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {s: {lang: dict(sorted(c.items())) for lang, c in sorted(langs.items())}
                           for s, langs in self.counts.items()}, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterReport:
        counts = {s: {lang: Counter(c) for lang, c in langs.items()} for s, langs in data.get("counts", {}).items()}
        return cls(counts=counts, notes=list(data.get("notes", [])))


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed (what "the same text" means here)."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _chars(text: str) -> int:
    return len("".join(text.split()))


def is_empty(text: str) -> bool:
    return not text.strip()


def is_untranslated(text: str, source: str, threshold: float = 0.9) -> bool:
    """``text`` is (nearly) a copy of ``source``: normalised equal, or difflib ratio >= threshold."""
    a, b = normalize(text), normalize(source)
    if a == b:
        return True
    return bool(a and b) and difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold


def is_wrong_language(text: str, language: str) -> bool:
    """lingua is confident ``text`` is not in ``language`` (conservative; see the docstring)."""
    from polyalign.data.langdetect import language_mismatch

    return language_mismatch(text, language) is not None


def length_ratio_outliers(items: Sequence[TextItem], max_factor: float = 3.0, min_chars: int = 10) -> set[str]:
    """Keys of items whose length ratio is an outlier within their language (see the docstring)."""
    ratios: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for item in items:
        if item.source is None or item.text is None or _chars(item.source) < min_chars:
            continue
        ratios[item.language].append((item.key, _chars(item.text) / _chars(item.source)))
    flagged: set[str] = set()
    for values in ratios.values():
        median = statistics.median(r for _, r in values)
        if median <= 0:  # most outputs empty: the empty filter speaks for them
            continue
        flagged.update(k for k, r in values if r > median * max_factor or r < median / max_factor)
    return flagged


def text_reasons(
    items: Sequence[TextItem],
    config: FilterConfig,
    similarity: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict[str, str | None]:
    """``{key: first failing reason or None}`` for every item (see the module docstring)."""
    out: dict[str, str | None] = {}
    for item in items:
        reason = None
        if item.text is None:
            reason = "missing"
        elif config.empty and is_empty(item.text):
            reason = "empty"
        elif config.truncated and item.truncated:
            reason = "truncated"
        elif (config.untranslated and item.source is not None and item.source_language != item.language
              and is_untranslated(item.text, item.source, config.untranslated_similarity)):
            reason = "untranslated"
        elif config.wrong_language and is_wrong_language(item.text, item.language):
            reason = "wrong_language"
        out[item.key] = reason
    if config.length_ratio:
        alive = [i for i in items if out[i.key] is None]
        for key in length_ratio_outliers(alive, config.length_ratio_max_factor, config.length_ratio_min_chars):
            out[key] = "length_ratio"
    if similarity is not None:
        alive = [i for i in items if out[i.key] is None and i.source is not None and i.text is not None]
        if alive:
            scores = similarity([i.source for i in alive], [i.text for i in alive])  # type: ignore[misc]
            for item, score in zip(alive, scores, strict=True):
                if score < config.similarity_threshold:
                    out[item.key] = "low_similarity"
    return out


def filter_texts(
    items: Sequence[TextItem],
    config: FilterConfig,
    report: FilterReport,
    stage: str,
    similarity: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict[str, str | None]:
    """:func:`text_reasons`, with every item counted in ``report`` under ``stage``
    (``kept`` or its reason, per language)."""
    reasons = text_reasons(items, config, similarity)
    for item in items:
        report.add(stage, item.language, reasons[item.key] or "kept")
    return reasons


def pair_reasons(pairs: Sequence[tuple[str, str, str, str]], config: FilterConfig) -> list[str | None]:
    """For ``(language, prompt, chosen, rejected)`` tuples: the first failing pair reason or None."""
    seen: set[tuple[str, str, str, str]] = set()
    out: list[str | None] = []
    for language, prompt, chosen, rejected in pairs:
        key = (language, normalize(prompt), normalize(chosen), normalize(rejected))
        if config.chosen_equals_rejected and key[2] == key[3]:
            out.append("chosen_equals_rejected")
        elif config.duplicates and key in seen:
            out.append("duplicate")
        else:
            out.append(None)
        seen.add(key)
    return out
