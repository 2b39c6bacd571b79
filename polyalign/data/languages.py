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

# One row per language: canonical code, English name, FLORES-200 code (NLLB-200's language token;
# None where none is mapped) and whether M2M100 (418M / 1.2B) has its ``__code__`` token.
LANGUAGES: tuple[tuple[str, str, str | None, bool], ...] = (
    ("en", "English", "eng_Latn", True),
    ("zh", "Chinese", "zho_Hans", True),
    ("zh-Hant", "Chinese (Traditional)", "zho_Hant", False),
    ("ja", "Japanese", "jpn_Jpan", True),
    ("ko", "Korean", "kor_Hang", True),
    ("ar", "Arabic", "arb_Arab", True),
    ("bn", "Bengali", "ben_Beng", True),
    ("sw", "Swahili", "swh_Latn", True),
    ("ru", "Russian", "rus_Cyrl", True),
    ("ur", "Urdu", "urd_Arab", True),
    ("ps", "Pashto", "pbt_Arab", True),
    ("ku", "Kurdish", "kmr_Latn", False),
    ("it", "Italian", "ita_Latn", True),
    ("vi", "Vietnamese", "vie_Latn", True),
    ("th", "Thai", "tha_Thai", True),
    ("jv", "Javanese", "jav_Latn", True),
    ("de", "German", "deu_Latn", True),
    ("hi", "Hindi", "hin_Deva", True),
    ("fr", "French", "fra_Latn", True),
    ("es", "Spanish", "spa_Latn", True),
    ("pt", "Portuguese", "por_Latn", True),
    ("nl", "Dutch", "nld_Latn", True),
    ("pl", "Polish", "pol_Latn", True),
    ("sv", "Swedish", "swe_Latn", True),
    ("cs", "Czech", "ces_Latn", True),
    ("id", "Indonesian", "ind_Latn", True),
    ("tr", "Turkish", "tur_Latn", True),
    ("fa", "Persian", "pes_Arab", True),
    ("uk", "Ukrainian", "ukr_Cyrl", True),
    ("he", "Hebrew", "heb_Hebr", True),
    ("el", "Greek", "ell_Grek", True),
    ("ta", "Tamil", "tam_Taml", True),
    ("te", "Telugu", "tel_Telu", False),
    ("mr", "Marathi", "mar_Deva", True),
    ("gu", "Gujarati", "guj_Gujr", True),
    ("pa", "Punjabi", "pan_Guru", True),
    ("yo", "Yoruba", "yor_Latn", True),
    ("ha", "Hausa", "hau_Latn", True),
    ("am", "Amharic", "amh_Ethi", True),
    ("zu", "Zulu", "zul_Latn", True),
    ("tl", "Tagalog", "tgl_Latn", True),
    ("ms", "Malay", "zsm_Latn", True),
    ("ro", "Romanian", "ron_Latn", True),
    ("hu", "Hungarian", "hun_Latn", True),
    ("fi", "Finnish", "fin_Latn", True),
    ("da", "Danish", "dan_Latn", True),
    ("no", "Norwegian", "nob_Latn", True),
    ("ca", "Catalan", "cat_Latn", True),
    ("hbs", "Serbo-Croatian (BCMS)", None, False),
    ("nb", "Norwegian Bokmal", None, False),
    ("sk", "Slovak", None, False),
)
LANGUAGE_NAMES: dict[str, str] = {code: name for code, name, _, _ in LANGUAGES}
NLLB_CODES: dict[str, str] = {code: flores for code, _, flores, _ in LANGUAGES if flores is not None}
M2M100_LANGUAGES = frozenset(code for code, _, _, m2m100 in LANGUAGES if m2m100)
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
