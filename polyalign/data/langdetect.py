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
* :func:`language_mismatch` *flags* a declared label as wrong (reporting lingua's
  confidence; the threshold is tunable: ``min_confidence``, ``--language-threshold``). A
  text mostly written in a script the declared language does not use is flagged at any
  length (Han characters are never ``en``). Otherwise short and mixed-script texts are
  unreliable, so it flags only when all of these hold: the declared language is
  one lingua knows, the text has at least :data:`MIN_CHARS_FOR_CHECK` non-space characters,
  the declared language's own script (for non-Latin scripts) does not occur in the text at
  all, lingua's top language differs from the declared one with confidence >= 0.9, and
  lingua gives the declared language < 0.05, the two are not close relatives (da/sv/no,
  id/ms, hi/mr, es/pt, cs/sk, ...) unless the text is long, and no segment of the text
  is in the declared language (a French line with glued words is not Yoruba). On the shared data these rules flag none
  of the 17.5k texts with a declared language (MLC, MultiJail, XSafety, RTP-LX, detox), where
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


# Scripts that name a language well enough to contradict a label even on a short text
# (Han without kana -> Chinese, kana -> Japanese, Hangul -> Korean, ...).
_SCRIPT_LANGUAGE: tuple[tuple[str, str], ...] = (
    ("ja", _SCRIPTS["ja"]), ("ko", _SCRIPTS["ko"]), ("zh", _SCRIPTS["zh"]), ("ar", _SCRIPTS["ar"]),
    ("ru", _SCRIPTS["ru"]), ("hi", _SCRIPTS["hi"]), ("bn", _SCRIPTS["bn"]), ("th", _SCRIPTS["th"]),
    ("el", _SCRIPTS["el"]), ("he", _SCRIPTS["he"]), ("ta", _SCRIPTS["ta"]), ("te", _SCRIPTS["te"]),
    ("gu", _SCRIPTS["gu"]), ("pa", _SCRIPTS["pa"]),
)
_SCRIPT_LANGUAGE_RE = tuple((code, re.compile(f"[{chars}]")) for code, chars in _SCRIPT_LANGUAGE)
# Share of a text's letters in one foreign script that contradicts a label by script alone.
SCRIPT_SHARE = 0.8

# Closely related languages lingua confuses on short texts (Danish/Swedish/Norwegian,
# Indonesian/Malay, Hindi/Marathi, Spanish/Portuguese/Catalan/Galician, Czech/Slovak,
# Russian/Ukrainian, the BCMS languages): a text declared in one and detected as another
# is flagged only from RELATED_MIN_CHARS non-space characters on.
RELATED_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"da", "sv", "no", "nb", "nn"}), frozenset({"id", "ms"}), frozenset({"hi", "mr", "ne"}),
    frozenset({"es", "pt", "ca", "gl"}), frozenset({"cs", "sk"}), frozenset({"ru", "uk", "be"}),
    frozenset({"hbs", "sr", "hr", "bs"}), frozenset({"zu", "xh"}),
)
RELATED_MIN_CHARS = 200
# A segment of the text in the declared language covering this share of its letters
# (lingua's multi-language detection) means a mixed or glued text, not a wrong label:
# "Veuillez traduire : jeveuxnuire..." scores Yoruba 0.96 as a whole.
DECLARED_SEGMENT_SHARE = 0.2


def related(a: str, b: str) -> bool:
    """Whether two base language codes are in one of :data:`RELATED_GROUPS`."""
    return any(a in group and b in group for group in RELATED_GROUPS)


def script_mismatch(text: str, declared: str) -> tuple[str, float] | None:
    """``(language of the script, share of letters)`` when at least :data:`SCRIPT_SHARE` of
    the text's letters (2 or more) are in one script the declared language does not use
    and none is in the declared language's own script; works on texts of any length."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 2:
        return None
    base = _base(declared)
    own = _SCRIPT_RE.get(base)
    if own is not None and any(own.search(c) for c in letters):
        return None
    if base == "ja" and _SCRIPT_RE["zh"].search(text):  # Japanese is written with Han too
        return None
    if base == "ko" and _SCRIPT_RE["zh"].search(text):  # Korean may use Hanja
        return None
    if own is None and base not in SUPPORTED_LANGUAGES:
        return None  # a language we know no script for (ps, ku, hbs written in Cyrillic or Latin ...)
    for code, pattern in _SCRIPT_LANGUAGE_RE:
        if code == base or (own is not None and pattern.pattern == own.pattern):
            continue
        count = sum(1 for c in letters if pattern.search(c))
        if count and count / len(letters) >= SCRIPT_SHARE:
            if code == "zh" and _SCRIPT_RE["ja"].search(text):
                code = "ja"
            return code, count / len(letters)
    return None


def _declared_segment_share(text: str, declared: str) -> float:
    """Share of the text's characters that lingua's multi-language pass gives to ``declared``."""
    detector = get_detector()
    total = len(text) or 1
    covered = 0
    for segment in detector.detect_multiple_languages_of(text):
        if segment.language.iso_code_639_1.name.lower() == declared:
            covered += segment.end_index - segment.start_index
    return covered / total


def language_mismatch(text: str, declared: str, min_confidence: float | None = None) -> tuple[str, float] | None:
    """``(detected, confidence)`` when ``text`` is confidently not in ``declared``; else None.

    Rules (see the module docstring): a text mostly in a script the declared language
    does not use is flagged at any length (:func:`script_mismatch`); otherwise only texts
    of >= :data:`MIN_CHARS_FOR_CHECK` non-space characters without the declared script,
    whose top language differs with confidence >= ``min_confidence`` (default
    :data:`MISMATCH_CONFIDENCE`), where the declared language scores < 0.05, is not a
    close relative of the detected one on a text under :data:`RELATED_MIN_CHARS`, and has
    no segment covering :data:`DECLARED_SEGMENT_SHARE` of the text.
    """
    try:
        base = _base(declared)
    except ValueError:
        return None
    hit = script_mismatch(text, declared)
    if hit is not None:
        return hit
    if base not in SUPPORTED_LANGUAGES:
        return None
    length = len("".join(text.split()))
    if length < MIN_CHARS_FOR_CHECK:
        return None
    script = _SCRIPT_RE.get(base)
    if script is not None and script.search(text):
        return None
    from lingua import IsoCode639_1, Language

    threshold = MISMATCH_CONFIDENCE if min_confidence is None else min_confidence
    detector = get_detector()
    values = detector.compute_language_confidence_values(text)
    if not values:
        return None
    top = values[0]
    detected = top.language.iso_code_639_1.name.lower()
    if detected == base or top.value < threshold:
        return None
    if related(base, detected) and length < RELATED_MIN_CHARS:
        return None
    declared_language = Language.from_iso_code_639_1(getattr(IsoCode639_1, base.upper()))
    own = detector.compute_language_confidence(text, declared_language)
    if own >= DECLARED_CEILING:
        return None
    if _declared_segment_share(text, base) >= DECLARED_SEGMENT_SHARE:
        return None
    return detected, float(top.value)
