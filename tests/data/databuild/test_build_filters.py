"""Build filters: every reason on hand-written cases, per-language counting, the optional
embedding-similarity check against an independent float64 computation."""

from __future__ import annotations

import difflib
import statistics

import pytest
import torch

from polyalign.data.build.filters import (
    FilterConfig,
    FilterReport,
    TextItem,
    filter_texts,
    is_untranslated,
    length_ratio_outliers,
    pair_reasons,
    text_reasons,
)
from polyalign.data.build.pairing import filter_pairs, response_pair
from polyalign.data.build.similarity import EmbeddingSimilarity, load_similarity
from polyalign.data.records import Message, ParallelPair, PreferencePair
from polyalign.errors import UserError

EN = "How can I keep my bicycle safe from thieves in the city?"
NO_RATIO = FilterConfig(length_ratio=False)


def _one(item: TextItem, config: FilterConfig = NO_RATIO) -> str | None:
    return text_reasons([item], config)[item.key]


def test_missing_empty_truncated():
    assert _one(TextItem("a", "zh", None, EN, "en")) == "missing"
    assert _one(TextItem("a", "zh", " \n\t ", EN, "en")) == "empty"
    assert _one(TextItem("a", "zh", "", None)) == "empty"
    cut = TextItem("a", "zh", "我怎样才能在城市里保护我的自行车不被偷？", EN, "en", truncated=True)
    assert _one(cut) == "truncated"
    assert _one(TextItem("a", "zh", "我怎样才能在城市里保护我的自行车不被偷？", EN, "en")) is None
    # Switched off: the same items pass.
    off = FilterConfig(empty=False, truncated=False, length_ratio=False, wrong_language=False)
    assert _one(TextItem("a", "zh", "   ", EN, "en"), off) is None
    assert _one(TextItem("a", "zh", "我的自行车", EN, "en", truncated=True), off) is None


def test_untranslated_copies():
    assert _one(TextItem("a", "zh", EN, EN, "en")) == "untranslated"
    assert _one(TextItem("a", "zh", "  how can i KEEP my bicycle safe from thieves in the city? ", EN,
                         "en")) == "untranslated"
    near = "How can I keep my bike safe from thieves in the city?"  # one word changed
    ratio = difflib.SequenceMatcher(None, near.lower(), EN.lower(), autojunk=False).ratio()
    assert ratio >= 0.9
    assert _one(TextItem("a", "zh", near, EN, "en")) == "untranslated"
    strict = FilterConfig(length_ratio=False, untranslated_similarity=min(1.0, ratio + 0.01))
    assert _one(TextItem("a", "sw", near, EN, "en"), strict) is None  # below the raised bar; sw looks Latin
    # A real translation, and a text whose source is in the same language, are not copies.
    assert not is_untranslated("Ninawezaje kuweka baiskeli yangu salama dhidi ya wezi mjini?", EN)
    assert _one(TextItem("a", "en", EN, EN, "en")) is None


def test_wrong_language_is_conservative():
    english = "Please explain in detail how photosynthesis works in green plants and algae."
    assert _one(TextItem("a", "zh", english, None)) == "wrong_language"
    assert _one(TextItem("a", "sw", english, None)) == "wrong_language"
    assert _one(TextItem("a", "en", english, None)) is None
    assert _one(TextItem("a", "zh", "请详细解释绿色植物和藻类的光合作用是如何进行的。", None)) is None
    assert _one(TextItem("a", "zh", "Explain it.", None)) is None  # too short to judge
    assert _one(TextItem("a", "zh", "光合作用 means photosynthesis in English, explained here.",
                         None)) is None  # own script
    assert _one(TextItem("a", "zh", english, None), FilterConfig(wrong_language=False, length_ratio=False)) is None


def test_length_ratio_outliers_per_language_median():
    source = "x" * 20  # 20 characters
    lengths = {"zh": [6, 6, 7, 5, 6, 30, 1], "sw": [20, 22, 18, 21, 70, 5]}
    items = [TextItem(f"{lang}{i}", lang, "y" * n, source,
                      "en") for lang, ns in lengths.items() for i, n in enumerate(ns)]
    flagged = length_ratio_outliers(items, max_factor=3.0, min_chars=10)
    expected = set()
    for lang, ns in lengths.items():  # r = n / 20; outlier when r > 3 m or r < m / 3
        ratios = [n / 20 for n in ns]
        m = statistics.median(ratios)
        expected |= {f"{lang}{i}" for i, r in enumerate(ratios) if r > 3 * m or r < m / 3}
    assert flagged == expected == {"zh5", "zh6", "sw4", "sw5"}
    # Short sources are not judged by ratio at all.
    short = [TextItem("s", "zh", "y" * 50, "xx", "en"), TextItem("t", "zh", "y", "xx", "en")]
    assert length_ratio_outliers(short, 3.0, 10) == set()
    reasons = text_reasons(items, FilterConfig(wrong_language=False))
    assert {k for k, r in reasons.items() if r == "length_ratio"} == expected


def test_filter_texts_counts_per_language_and_first_reason_wins():
    items = [
        TextItem("1", "zh", None, EN, "en"),
        TextItem("2", "zh", "   ", EN, "en", truncated=True),  # empty comes before truncated
        TextItem("3", "zh", "我怎样才能保护我的自行车？", EN, "en"),
        TextItem("4", "sw", EN, EN, "en", truncated=True),  # truncated before untranslated
        TextItem("5", "sw", "Ninawezaje kuweka baiskeli yangu salama?", EN, "en"),
    ]
    report = FilterReport()
    reasons = filter_texts(items, NO_RATIO, report, "translate")
    assert reasons == {"1": "missing", "2": "empty", "3": None, "4": "truncated", "5": None}
    assert report.to_dict()["counts"] == {"translate": {"sw": {"kept": 1, "truncated": 1},
                                                        "zh": {"empty": 1, "kept": 1, "missing": 1}}}
    assert FilterReport.from_dict(report.to_dict()).to_dict() == report.to_dict()
    assert report.total("kept") == 2 and report.total("missing", "translate") == 1


def _pair(pid: str, lang: str, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(pid, (Message("user", prompt),), chosen, rejected, lang)


def test_pair_reasons_duplicates_and_degenerate_pairs():
    pairs = [("en", "p", "no", "yes"), ("en", "P ", "NO", "yes"), ("zh", "p", "no",
                                                                   "yes"), ("en", "q", "same", " Same")]
    assert pair_reasons(pairs, FilterConfig()) == [None, "duplicate", None, "chosen_equals_rejected"]
    assert pair_reasons(pairs, FilterConfig(duplicates=False, chosen_equals_rejected=False)) == [None] * 4
    records = [_pair("1", "en", "p", "no", "yes"), _pair("2", "en", "p", "no", "yes"), _pair("3", "zh", "p", "a", "a")]
    parallel = ParallelPair("4", records[0], records[2])  # judged by its target side
    kept, dropped = filter_pairs([*records, parallel], FilterConfig())
    assert [r.id for r in kept] == ["1"]
    assert dropped == {("en", "duplicate"): 1, ("zh", "chosen_equals_rejected"): 2}


def test_response_pair_picks_first_safe_and_first_unsafe_usable_sample():
    samples = [
        {"sample": 3, "text": "late safe", "label": "safe", "filter": None},
        {"sample": 0, "text": "filtered safe", "label": "safe", "filter": "wrong_language"},
        {"sample": 1, "text": "bad", "label": "unsafe", "filter": None},
        {"sample": 2, "text": "ok", "label": "safe", "filter": None},
        {"sample": 4, "text": "", "label": "invalid", "filter": "empty"},
    ]
    assert response_pair(samples) == ("ok", "bad", None)
    assert response_pair([s for s in samples if s["label"] != "unsafe"]) == ("ok", None, "no_unsafe_response")
    assert response_pair([s for s in samples if s["label"] != "unsafe"], need_rejected=False) == ("ok", None, None)
    assert response_pair([samples[2]])[2] == "no_safe_response"


def test_filter_config_validation():
    with pytest.raises(UserError, match="untranslated_similarity"):
        FilterConfig(untranslated_similarity=0)
    with pytest.raises(UserError, match="length_ratio_max_factor"):
        FilterConfig(length_ratio_max_factor=1.0)


def test_similarity_check_matches_float64_reference(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from polyalign.models import save_tiny_checkpoint

    assert load_similarity(None)[0] is None
    scorer, note = load_similarity(tmp_path / "absent")
    assert scorer is None and "no local embedding model" in note
    folder = save_tiny_checkpoint(tmp_path / "enc", "llama", seed=3)
    scorer, note = load_similarity(folder)
    assert isinstance(scorer, EmbeddingSimilarity) and scorer.pooling == "mean"
    sources = ["How do I fix a flat tyre?", "Where is the train station?", "Tell me a story."]
    texts = ["Ninawezaje kurekebisha tairi?", "车站在哪里？", "Tell me a story."]
    got = scorer(sources, texts)
    # Independent reference: one text at a time (no padding), mean over tokens, float64 cosine.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).double().eval()

    def embed(text: str) -> torch.Tensor:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state[0].mean(0)

    want = [float(torch.dot(embed(a), embed(b)) / (embed(a).norm() * embed(b).norm())) for a, b in zip(sources, texts)]
    assert got == pytest.approx(want, abs=1e-4)
    assert got[2] == pytest.approx(1.0, abs=1e-5)
    threshold = (sorted(got)[0] + sorted(got)[1]) / 2  # drops exactly the least similar pair
    items = [TextItem(str(i), "xx", t, s, "en") for i, (s, t) in enumerate(zip(sources, texts))]
    config = FilterConfig(untranslated=False, wrong_language=False, length_ratio=False, similarity_threshold=threshold)
    reasons = text_reasons(items, config, scorer)
    assert [r for r in reasons.values()].count("low_similarity") == 1
    assert reasons[str(got.index(min(got)))] == "low_similarity"
