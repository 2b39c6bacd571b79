"""Language codes: one canonical code per language.

Canonical codes are lowercase ISO 639-1 where one exists (``zh`` for Chinese in any of
``zh``, ``ZH``, ``zh-Hans``, ``zh_CN``; ``es`` for XSafety's ``sp``), ISO 639-3 otherwise.
Traditional Chinese keeps its script: ``zh-Hant``.

:func:`language_tag` keeps a region as well (``de-CH``, ``pt-BR``): data sets that ship
regional files beside the plain language (RTP-LX's ``DE`` and ``DE-CH``, ``PT`` and
``PT-BR``) keep them apart. RTP-LX's ``BCMS`` (Bosnian, Croatian, Montenegrin, Serbian in
one file) is tagged ``hbs``, the ISO 639-3 code of that macrolanguage (``sh``/``bcms`` are
accepted for it); Norwegian Bokmal (``NO-NB``) is ``nb``.
"""

from __future__ import annotations

import re

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "zh-Hant": "Chinese (Traditional)", "ja": "Japanese",
    "ko": "Korean", "ar": "Arabic", "bn": "Bengali", "sw": "Swahili", "ru": "Russian",
    "ur": "Urdu", "ps": "Pashto", "ku": "Kurdish", "it": "Italian", "vi": "Vietnamese",
    "th": "Thai", "jv": "Javanese", "de": "German", "hi": "Hindi", "fr": "French",
    "es": "Spanish", "pt": "Portuguese", "nl": "Dutch", "pl": "Polish", "sv": "Swedish",
    "cs": "Czech", "id": "Indonesian", "tr": "Turkish", "fa": "Persian", "uk": "Ukrainian",
    "he": "Hebrew", "el": "Greek", "ta": "Tamil", "te": "Telugu", "mr": "Marathi",
    "gu": "Gujarati", "pa": "Punjabi", "yo": "Yoruba", "ha": "Hausa", "am": "Amharic",
    "zu": "Zulu", "tl": "Tagalog", "ms": "Malay", "ro": "Romanian", "hu": "Hungarian",
    "fi": "Finnish", "da": "Danish", "no": "Norwegian", "ca": "Catalan",
    "hbs": "Serbo-Croatian (BCMS)", "nb": "Norwegian Bokmal", "sk": "Slovak",
}
# Languages inside a macrolanguage tag used by a data set: a hint when one is asked for.
MACROLANGUAGE = {"sr": "hbs", "hr": "hbs", "bs": "hbs", "cnr": "hbs"}

# Codes seen in released data sets that are not ISO 639-1, and common aliases.
_ALIASES: dict[str, str] = {
    "sp": "es",  # XSafety
    "zh-hans": "zh", "zh-cn": "zh", "zh-sg": "zh", "cn": "zh", "chs": "zh", "zho": "zh",
    "zh-hant": "zh-Hant", "zh-tw": "zh-Hant", "zh-hk": "zh-Hant", "cht": "zh-Hant",
    "jp": "ja", "kr": "ko", "eng": "en", "ben": "bn", "swa": "sw", "swh": "sw",
    "ara": "ar", "rus": "ru", "jpn": "ja", "kor": "ko", "urd": "ur", "pus": "ps",
    "kur": "ku", "kmr": "ku", "ckb": "ku", "ita": "it", "vie": "vi", "tha": "th",
    "jav": "jv", "deu": "de", "ger": "de", "hin": "hi", "fra": "fr", "fre": "fr",
    "spa": "es", "por": "pt", "nld": "nl", "pol": "pl", "swe": "sv", "ces": "cs",
    "ind": "id", "in": "id", "iw": "he",
    "bcms": "hbs", "sh": "hbs", "no-nb": "nb", "nob": "nb",
}

_NAME_TO_CODE = {name.lower(): code for code, name in LANGUAGE_NAMES.items()}
_CODE_RE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def canonical_language(code: str) -> str:
    """Map any spelling of a language code (or English name) to its canonical code.

    Raises ``ValueError`` for something that is not a language code at all; an unknown but
    well-formed code is lower-cased and returned (users may work with any language).
    """
    raw = code.strip()
    key = raw.lower().replace("_", "-")
    if key in _ALIASES:
        return _ALIASES[key]
    if key in _NAME_TO_CODE:
        return _NAME_TO_CODE[key]
    if not _CODE_RE.match(raw):
        raise ValueError(f"not a language code: {code!r}")
    base = key.split("-")[0]
    if base in _ALIASES:
        return _ALIASES[base]
    if base in LANGUAGE_NAMES or len(base) in (2, 3):
        return base
    raise ValueError(f"not a language code: {code!r}")


_REGION = re.compile(r"^([A-Za-z]{2}|[0-9]{3})$")


def language_tag(code: str) -> str:
    """:func:`canonical_language` keeping a region subtag: ``DE-CH`` -> ``de-CH``,
    ``pt_br`` -> ``pt-BR``, ``ZH-Hans`` -> ``zh``, ``BCMS`` -> ``hbs``. Raises
    ``ValueError`` like :func:`canonical_language`."""
    base = canonical_language(code)
    key = code.strip().lower().replace("_", "-")
    if key in _ALIASES or "-" in base:
        return base
    parts = code.strip().replace("_", "-").split("-")
    regions = [p for p in parts[1:] if _REGION.match(p)]
    return f"{base}-{regions[0].upper()}" if regions else base


def language_name(code: str) -> str:
    """English name of a canonical code or tag (the code itself when unknown)."""
    if code in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[code]
    base, _, region = code.partition("-")
    return f"{LANGUAGE_NAMES[base]} ({region})" if region and base in LANGUAGE_NAMES else code
