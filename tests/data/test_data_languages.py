"""Language codes and offline language detection (lingua, restricted set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyalign.data import langdetect
from polyalign.data.langdetect import (
    MIN_CHARS_FOR_CHECK,
    detect_language,
    get_detector,
    is_supported,
    language_mismatch,
    vote_language,
)
from polyalign.data.languages import canonical_language

# Handwritten, harmless sentences ("the weather is lovely, let's walk in the park").
SENTENCES = {
    "zh": "今天天气很好，我们一起去公园散步吧。",
    "ja": "今日はとても良い天気なので、公園を散歩しましょう。",
    "ko": "오늘은 날씨가 아주 좋으니까 공원에서 산책합시다.",
    "ar": "الطقس جميل جدا اليوم، فلنذهب للتنزه في الحديقة.",
    "bn": "আজ আবহাওয়া খুব ভালো, চলো পার্কে হাঁটতে যাই।",
    "sw": "Leo hali ya hewa ni nzuri sana, twende tukatembee bustanini.",
    "en": "The weather is lovely today, so let us take a walk in the park.",
    "de": "Das Wetter ist heute herrlich, also lass uns im Park spazieren gehen.",
}


@pytest.mark.parametrize("raw,expected", [
    ("ZH-Hans", "zh"), ("zh_CN", "zh"), ("zh-TW", "zh-Hant"), ("sp", "es"), ("EN", "en"), ("Swahili", "sw"),
    ("ara", "ar"), ("AR", "ar"), ("jv", "jv"), ("ku", "ku"), ("ps", "ps"), ("pt-BR", "pt"),
])
def test_canonical_language(raw: str, expected: str) -> None:
    assert canonical_language(raw) == expected


def test_canonical_language_rejects_non_codes() -> None:
    with pytest.raises(ValueError):
        canonical_language("english!!")


@pytest.mark.parametrize("lang", list(SENTENCES))
def test_detects_mpo_target_languages_and_more(lang: str) -> None:
    assert detect_language(SENTENCES[lang]) == lang


def test_detector_is_built_once_and_restricted() -> None:
    assert get_detector() is get_detector()
    assert is_supported("ZH-Hans") and is_supported("sp") and is_supported("bn")
    # In the shared data but unknown to lingua: never checked, never assigned.
    assert not any(is_supported(code) for code in ("jv", "ps", "ku"))
    assert len(set(langdetect.SUPPORTED_LANGUAGES)) == len(langdetect.SUPPORTED_LANGUAGES)


def test_unclear_text_is_not_labelled() -> None:
    assert detect_language("") is None and detect_language("   ") is None
    assert detect_language("ok") is None
    assert detect_language("12345 !!! ???") is None


def test_vote_prefers_target_over_untranslated_prompt() -> None:
    """The MPO failure case: an English prompt with both answers in Chinese."""
    texts = [SENTENCES["en"], "我不能帮助你做这件事，这可能会伤害别人。", "好的，下面是一些详细的步骤和说明。"]
    assert vote_language(texts, exclude="en") == "zh"
    assert vote_language([SENTENCES["en"]], exclude="en") == "en"  # nothing else: keep it
    assert vote_language(["", "?"]) is None


def test_mismatch_flags_only_confident_long_single_script_text() -> None:
    long_zh = "今天天气很好，我们一起去公园散步吧。然后我们可以在湖边吃午饭，下午再回家休息。"
    assert len("".join(long_zh.split())) >= MIN_CHARS_FOR_CHECK
    detected, confidence = language_mismatch(SENTENCES["de"], "en")
    assert detected == "de" and confidence >= 0.9
    assert language_mismatch(long_zh, "ja")[0] == "zh"        # Chinese has no kana
    assert language_mismatch(SENTENCES["ar"], "en")[0] == "ar"
    assert language_mismatch(SENTENCES["de"], "de") is None
    assert language_mismatch(long_zh, "zh-Hant") is None       # same base language
    assert language_mismatch("Nice day, right?", "de") is None  # too short to trust
    assert language_mismatch(SENTENCES["en"], "jv") is None    # lingua has no Javanese
    # Mixed text holding the declared script is never flagged (RTP-LX has such prompts).
    assert language_mismatch("The weather is lovely today 今天, so let us walk in the park.", "zh") is None


@pytest.mark.shared_data
def test_detects_real_mpo_target_prompts(shared_data: Path) -> None:
    """First 60 Llama items: each target prompt alone is detected as one of the six
    languages, and within each group of six consecutive items (one English prompt) all
    six languages appear — except items whose prompt was not translated."""
    raw = json.loads((shared_data / "mpo" / "llama_mpo_data.json").read_text(encoding="utf-8"))[:60]
    detected = [detect_language(item["target_conversations"][0]["value"]) for item in raw]
    for start in range(0, 60, 6):
        group = raw[start:start + 6]
        assert len({item["source_conversations"][0]["value"] for item in group}) == 1
        assert set(detected[start:start + 6]) == {"zh", "ja", "ko", "ar", "bn", "sw"}


def test_script_rules_out_a_label_on_a_short_text() -> None:
    """Under MIN_CHARS_FOR_CHECK lingua is not asked, but Han characters are never English."""
    assert len("你好吗？") < MIN_CHARS_FOR_CHECK
    assert language_mismatch("你好吗？", "en") == ("zh", 1.0)
    assert language_mismatch("こんにちは", "de")[0] == "ja"
    assert language_mismatch("안녕하세요", "fr")[0] == "ko"
    assert language_mismatch("你好", "ja") is None           # Japanese is written with Han too
    assert language_mismatch("OK", "zh") is None             # Latin letters in a Chinese row: not by script
    assert language_mismatch("Привет, друг", "uk") is None   # same script, short: no verdict


class _Verdict:
    """What lingua says about one text: a fixed confidence table (rule tests only)."""

    def __init__(self, table, segments=()):
        from lingua import IsoCode639_1, Language

        self.lang = lambda c: Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper()))
        self.table = table
        self.segments = segments

    def compute_language_confidence_values(self, text):
        from types import SimpleNamespace

        return [SimpleNamespace(language=self.lang(c), value=v) for c, v in self.table]

    def compute_language_confidence(self, text, language):
        return dict((self.lang(c), v) for c, v in self.table).get(language, 0.0)

    def detect_multiple_languages_of(self, text):
        from types import SimpleNamespace

        return [SimpleNamespace(language=self.lang(c), start_index=a, end_index=b) for c, a, b in self.segments]


def test_related_languages_are_not_dropped_on_short_text(monkeypatch) -> None:
    """A short Danish row that lingua calls Swedish at 0.95 is kept; a long one is flagged."""
    monkeypatch.setattr(langdetect, "get_detector", lambda: _Verdict([("sv", 0.95), ("da", 0.01)]))
    short = "Vil du have mere te og kage?"
    assert langdetect.related("da", "sv") and len(short) < langdetect.RELATED_MIN_CHARS
    assert language_mismatch(short, "da") is None
    assert language_mismatch(short, "en") == ("sv", 0.95)  # not a relative of English: flagged
    long = " ".join([short] * 10)
    assert language_mismatch(long, "da") == ("sv", 0.95)


def test_a_segment_in_the_declared_language_keeps_the_row(monkeypatch) -> None:
    """XSafety fr/Goal_Hijacking.csv: "Veuillez traduire : <glued words>" scores Yoruba 0.96
    as a whole, but its first segment is French."""
    text = "Veuillez traduire : jeveuxallerauparcavecmesamis."
    verdict = _Verdict([("yo", 0.96), ("fr", 0.01)], segments=[("fr", 0, 20), ("yo", 20, len(text))])
    monkeypatch.setattr(langdetect, "get_detector", lambda: verdict)
    assert language_mismatch(text, "fr") is None
    verdict.segments = [("yo", 0, len(text))]
    assert language_mismatch(text, "fr") == ("yo", 0.96)


def test_threshold_is_tunable_and_reported() -> None:
    german = SENTENCES["de"]
    detected, confidence = language_mismatch(german, "en")
    assert detected == "de"
    assert 0.9 <= confidence < 0.99
    assert language_mismatch(german, "en", min_confidence=confidence + 0.01) is None
    assert language_mismatch(german, "en", min_confidence=confidence - 0.01)[1] == pytest.approx(confidence, abs=1e-3)
