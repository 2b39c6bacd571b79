"""Offline language identification with lingua, restricted to a fixed language set.

The detector is built once, lazily, and cached at module level: lingua loads each
language's n-gram models on first use (a few seconds in all), after which a short text
takes well under a millisecond. Restricting the candidate set to the languages this
project meets (everything in the shared benchmark data plus common ones) makes detection
both faster and less error-prone than "all 75 languages".

Two uses, with two different bars:

* :func:`detect_language` *assigns* a label to unlabelled text (the official MPO data
  carries none): it returns lingua's best guess when its confidence is at least 0.5 or
  at least twice the runner-up's.
* :func:`language_mismatch` *flags* a declared label as wrong. Short texts and mixed-script
  texts are unreliable, so it flags only when all of these hold: the declared language is
  one lingua knows, the text has at least :data:`MIN_CHARS_FOR_CHECK` non-space characters,
  the declared language's own script (for non-Latin scripts) does not occur in the text at
  all, lingua's top language differs from the declared one with confidence >= 0.9, and
  lingua gives the declared language < 0.05. On the shared data these rules flag none of
  the 17.5k texts with a declared language (MLC, MultiJail, XSafety, RTP-LX, detox), where
  the loose rule "top != declared" flags ~190 (Hindi vs Marathi, Indonesian vs Malay); they
  do flag the 17 Gemma MPO target prompts that were left untranslated (English).
"""

from __future__ import annotations

import re
from functools import lru_cache

from polyalign.data.languages import canonical_language

# Every language in ../shared/data that lingua supports, plus common ones. Pashto (ps),
# Kurdish (ku) and Javanese (jv) appear in the data but lingua has no model for them:
# texts declared in those languages are never checked, and such text is never *assigned*
# one of them by detection.
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "ja", "ko", "ar", "bn", "sw", "ru", "ur", "it", "vi", "th", "de", "hi",
    "cs", "pl", "sv", "es", "pt", "fr", "nl", "id", "tr", "fa", "uk", "he", "el", "ta",
    "te", "mr", "ro", "hu", "fi", "da", "ms", "tl", "gu", "pa", "yo", "zu",
)

MIN_CHARS_FOR_CHECK = 20
MISMATCH_CONFIDENCE = 0.9
DECLARED_CEILING = 0.05

# Characters of a language's own (non-Latin) script. A text containing any of them is not
# flagged as "not in that language": mixed texts (a Chinese sentence quoting English) fool
# n-gram models, never a script test. Japanese uses kana only, so Chinese text mislabelled
# as Japanese (Han characters, no kana) is still caught.
_SCRIPTS: dict[str, str] = {
    "zh": r"\u3400-\u4dbf\u4e00-\u9fff",
    "ja": r"\u3040-\u30ff",
    "ko": r"\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
    "ar": r"\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff",
    "ru": r"\u0400-\u04ff",
    "hi": r"\u0900-\u097f",
    "bn": r"\u0980-\u09ff",
    "th": r"\u0e00-\u0e7f",
    "el": r"\u0370-\u03ff",
    "he": r"\u0590-\u05ff",
    "ta": r"\u0b80-\u0bff",
    "te": r"\u0c00-\u0c7f",
    "gu": r"\u0a80-\u0aff",
    "pa": r"\u0a00-\u0a7f",
}
for _same, _as in (("fa", "ar"), ("ur", "ar"), ("uk", "ru"), ("mr", "hi")):
    _SCRIPTS[_same] = _SCRIPTS[_as]
_SCRIPT_RE = {code: re.compile(f"[{chars}]") for code, chars in _SCRIPTS.items()}


@lru_cache(maxsize=1)
def get_detector():  # -> lingua.LanguageDetector (lingua imported lazily: it is a Rust extension)
    """The module-wide detector over :data:`SUPPORTED_LANGUAGES` (built on first call)."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in SUPPORTED_LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*languages).build()


def _base(code: str) -> str:
    return canonical_language(code).split("-")[0]


def is_supported(code: str) -> bool:
    """Whether detection knows the (canonicalised) language ``code``."""
    try:
        return _base(code) in SUPPORTED_LANGUAGES
    except ValueError:
        return False


def language_confidences(text: str, top: int = 3) -> list[tuple[str, float]]:
    """lingua's ``top`` (language, confidence) pairs, confidences summing to <= 1."""
    values = get_detector().compute_language_confidence_values(text)
    return [(v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values[:top] if v.value > 0]


def detect_language(text: str, min_confidence: float = 0.5, min_ratio: float = 2.0) -> str | None:
    """Best-guess canonical language of ``text``, or ``None`` when lingua is unsure.

    lingua's confidences are relative over the candidate set, so a short but clear
    sentence can score only ~0.4 (``"How do I bake bread at home?"``: en 0.38, tl 0.07).
    The guess is accepted when ``top >= min_confidence`` or ``top >= min_ratio * second``.
    """
    if not text or not text.strip():
        return None
    best = language_confidences(text, top=2)
    if not best:
        return None
    top = best[0][1]
    second = best[1][1] if len(best) > 1 else 0.0
    if top < min_confidence and top < min_ratio * second:
        return None
    return canonical_language(best[0][0])


def vote_language(texts: list[str], exclude: str | None = None) -> str | None:
    """Most frequent confident detection over ``texts``, ignoring ``exclude`` if possible.

    Used for MPO target sides (prompt, chosen, rejected): a few target prompts were left
    untranslated (English) while both answers are in the target language, so one vote per
    text, preferring languages other than the dominant one, recovers the label.
    Ties go to the earliest text's language.
    """
    detected = [d for d in (detect_language(t) for t in texts) if d is not None]
    preferred = [d for d in detected if d != exclude] or detected
    if not preferred:
        return None
    return max(preferred, key=lambda d: (preferred.count(d), -preferred.index(d)))


def language_mismatch(text: str, declared: str) -> tuple[str, float] | None:
    """``(detected, confidence)`` when ``text`` is confidently not in ``declared``; else None.

    See the module docstring for the exact rule (length, script, confidence >= 0.9,
    declared language's confidence < 0.05).
    """
    if not is_supported(declared):
        return None
    declared = _base(declared)
    if len("".join(text.split())) < MIN_CHARS_FOR_CHECK:
        return None
    script = _SCRIPT_RE.get(declared)
    if script is not None and script.search(text):
        return None
    from lingua import IsoCode639_1, Language

    detector = get_detector()
    values = detector.compute_language_confidence_values(text)
    if not values:
        return None
    top = values[0]
    detected = top.language.iso_code_639_1.name.lower()
    if detected == declared or top.value < MISMATCH_CONFIDENCE:
        return None
    declared_language = Language.from_iso_code_639_1(getattr(IsoCode639_1, declared.upper()))
    own = detector.compute_language_confidence(text, declared_language)
    if own >= DECLARED_CEILING:
        return None
    return detected, float(top.value)
