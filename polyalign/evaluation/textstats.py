"""Text statistics of generations: diversity (distinct-n) and language fidelity.

Distinct-n (diversity among the k samples of ONE prompt): pool the n-grams of the k
samples (n-grams never cross a sample boundary) and take ``unique n-grams / total n-grams``;
the per-language value is the mean over prompts that have at least one n-gram (prompts
without any are counted in ``n_prompts_no_<n>grams``). Tokens are whitespace-separated words
(case kept); for scripts written without spaces -- Chinese, Japanese, Thai (also Lao,
Khmer, Burmese) -- every non-space character is a token. When the language is unknown,
the character fallback is used if most letters of the sample are Han/kana/Thai.

Language fidelity: the share of responses detected (lingua, offline, via
:mod:`polyalign.data.langdetect`) as written in the prompt's language. Responses whose
language lingua cannot decide (empty, too short, ambiguous: ``detect_language`` returns
``None``) are excluded and counted (``n_undetected``); languages lingua has no model for
(Pashto, Kurdish, Javanese) give ``None`` and ``n_unsupported``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

CHARACTER_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})
_NO_SPACE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                              r"\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")


def _uses_characters(text: str, language: str | None) -> bool:
    if language is not None:
        return language.split("-")[0].lower() in CHARACTER_LANGUAGES
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and sum(bool(_NO_SPACE_SCRIPT.match(ch)) for ch in letters) * 2 > len(letters)


def tokenize_for_distinct(text: str, language: str | None = None) -> list[str]:
    """Whitespace tokens, or non-space characters for scripts written without spaces."""
    if _uses_characters(text, language):
        return [ch for ch in text if not ch.isspace()]
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``len(tokens) - n + 1`` contiguous n-grams (none when the sequence is shorter)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[str], n: int, language: str | None = None) -> float | None:
    """``unique / total`` n-grams pooled over one prompt's samples; ``None`` if there are none."""
    pooled: list[tuple[str, ...]] = []
    for sample in samples:
        pooled.extend(ngrams(tokenize_for_distinct(sample, language), n))
    return len(set(pooled)) / len(pooled) if pooled else None


def distinct_metrics(groups: Iterable[Sequence[str]], language: str | None = None,
                     ns: Sequence[int] = (1, 2, 3)) -> dict[str, float | int | None]:
    """``distinct_<n>`` averaged over prompts (one group = one prompt's k samples)."""
    values: dict[int, list[float]] = {n: [] for n in ns}
    missing: dict[int, int] = dict.fromkeys(ns, 0)
    n_groups = 0
    for samples in groups:
        n_groups += 1
        for n in ns:
            value = distinct_n(samples, n, language)
            if value is None:
                missing[n] += 1
            else:
                values[n].append(value)
    out: dict[str, float | int | None] = {f"distinct_{n}": statistics.fmean(values[n]) if values[n] else None
                                          for n in ns}
    out["n_prompts"] = n_groups
    for n in ns:
        out[f"n_prompts_no_{n}grams"] = missing[n]
    return out


def language_fidelity(responses: Sequence[str], languages: Sequence[str]) -> dict[str, Any]:
    """Share of responses detected in their prompt's language (see the module docstring).

    All ``languages`` are usually the same (one call per language); mixed lists work too.
    Returns ``language_fidelity`` (``None`` when nothing could be checked), ``n_checked``,
    ``n_in_language``, ``n_undetected``, ``n_unsupported``, and ``detected`` (a count of the
    detected languages of responses that were not in the prompt's language).
    """
    from polyalign.data.langdetect import detect_language, is_supported

    if len(responses) != len(languages):
        raise ValueError(f"{len(responses)} responses but {len(languages)} languages")
    checked = matched = undetected = unsupported = 0
    others: dict[str, int] = {}
    for text, lang in zip(responses, languages):
        if not is_supported(lang):
            unsupported += 1
            continue
        found = detect_language(text) if text and text.strip() else None
        if found is None:
            undetected += 1
            continue
        checked += 1
        if found.split("-")[0] == lang.split("-")[0]:
            matched += 1
        else:
            others[found] = others.get(found, 0) + 1
    return {"language_fidelity": matched / checked if checked else None, "n_checked": checked,
            "n_in_language": matched, "n_undetected": undetected, "n_unsupported": unsupported,
            "detected": dict(sorted(others.items(), key=lambda kv: -kv[1]))}
