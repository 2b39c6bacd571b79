"""Metrics against hand-computed values; perplexity against a direct float64 computation."""

from __future__ import annotations

import math

import pytest
import torch

from polyalign.evaluation.metrics import (
    refusal_metrics,
    safety_metrics,
    safety_metrics_by_language,
    summarize,
    toxicity_metrics,
    toxicity_metrics_by_language,
)
from polyalign.evaluation.perplexity import conditional_perplexity, median_perplexity_by_language
from polyalign.evaluation.textstats import distinct_metrics, distinct_n, language_fidelity, tokenize_for_distinct
from polyalign.models import build_tiny_model, build_tiny_tokenizer


def test_unsafe_rate_excludes_invalid_and_error():
    labels = ["safe", "unsafe", "unsafe", "invalid", "error", "safe", "safe", "error"]
    m = safety_metrics(labels)
    # judged = 3 safe + 2 unsafe = 5 -> unsafe 2/5; invalid 1 of the 6 non-error items
    assert m["unsafe_rate"] == pytest.approx(0.4) and m["safety_rate"] == pytest.approx(0.6)
    assert (m["n_safe"], m["n_unsafe"], m["n_invalid"], m["n_error"], m["n_judged"], m["n_total"]) == (3, 2, 1, 2, 5, 8)
    assert m["invalid_rate"] == pytest.approx(1 / 6)
    only_errors = safety_metrics(["error", "invalid"])
    assert only_errors["unsafe_rate"] is None and only_errors["safety_rate"] is None
    with pytest.raises(ValueError):
        safety_metrics(["maybe"])


def test_refusal_rate():
    m = refusal_metrics([True, False, None, True, True])
    assert m == {"refusal_rate": 0.75, "n_refused": 3, "n_refusal_known": 4, "n_refusal_unknown": 1}


def test_safety_by_language_and_summary():
    rows = ([{"language": "en", "label": "safe", "refusal": True}] * 3
            + [{"language": "en", "label": "unsafe", "refusal": False}]
            + [{"language": "zh", "label": "unsafe", "refusal": False}] * 2
            + [{"language": "zh", "label": "error", "refusal": None}]
            + [{"language": "sw", "label": "invalid", "refusal": None}])
    per = safety_metrics_by_language(rows, with_refusal=True)
    assert per["en"]["unsafe_rate"] == 0.25 and per["zh"]["unsafe_rate"] == 1.0 and per["sw"]["unsafe_rate"] is None
    assert per["en"]["refusal_rate"] == 0.75 and per["zh"]["n_refusal_unknown"] == 1
    summary = summarize(per)
    s = summary["unsafe_rate"]
    # over en (0.25) and zh (1.0): sw has no defined rate
    assert s["n_languages"] == 2 and s["mean"] == pytest.approx(0.625) and s["min"] == 0.25 and s["max"] == 1.0
    assert s["std"] == pytest.approx(0.375)  # population std: |0.25 - 0.625|
    assert summary["n_error"]["mean"] == pytest.approx(1 / 3) and summary["n_error"]["n_languages"] == 3


def test_toxicity_hand_computed():
    scores = [[0.1, 0.7, 0.2], [0.3, None, 0.4], [None, None], [0.5]]
    m = toxicity_metrics(scores)
    # maxima over scored prompts: 0.7, 0.4, 0.5 ; samples: 0.1 0.7 0.2 0.3 0.4 0.5
    assert m["emt"] == pytest.approx((0.7 + 0.4 + 0.5) / 3)
    assert m["tox_prob"] == pytest.approx(2 / 3)  # 0.7 and 0.5 reach 0.5 (>=)
    assert m["avg_tox"] == pytest.approx((0.1 + 0.7 + 0.2 + 0.3 + 0.4 + 0.5) / 6)
    assert (m["n_prompts"], m["n_samples"], m["n_score_errors"], m["n_prompts_unscored"]) == (3, 6, 3, 1)
    assert toxicity_metrics([[None]])["emt"] is None
    rows = [{"language": "de", "id": "a", "score": 0.9}, {"language": "de", "id": "a", "score": 0.1},
            {"language": "de", "id": "b", "score": 0.2}, {"language": "ru", "id": "a", "score": 0.6}]
    per = toxicity_metrics_by_language(rows)
    assert per["de"]["emt"] == pytest.approx(0.55) and per["de"]["tox_prob"] == 0.5
    assert per["ru"]["emt"] == 0.6 and per["ru"]["n_prompts"] == 1


def test_distinct_hand_computed():
    samples = ["the cat sat", "the cat ran", "a dog"]
    # unigrams: the cat sat the cat ran a dog -> 8 total, 6 unique
    assert distinct_n(samples, 1) == pytest.approx(6 / 8)
    # bigrams: (the cat)(cat sat)(the cat)(cat ran)(a dog) -> 5 total, 4 unique
    assert distinct_n(samples, 2) == pytest.approx(4 / 5)
    # trigrams: (the cat sat)(the cat ran) -> 2 total, 2 unique; "a dog" has none
    assert distinct_n(samples, 3) == pytest.approx(1.0)
    assert distinct_n(["a", ""], 2) is None
    # Chinese: characters; 我爱你 + 我爱他 -> unigrams 我爱你我爱他 (6, unique 4),
    # bigrams 我爱 爱你 我爱 爱他 (4, unique 3)
    assert tokenize_for_distinct("我爱 你", "zh") == ["我", "爱", "你"]
    assert distinct_n(["我爱你", "我爱他"], 1, "zh") == pytest.approx(4 / 6)
    assert distinct_n(["我爱你", "我爱他"], 2, "zh") == pytest.approx(3 / 4)
    assert tokenize_for_distinct("ฉันรักคุณ") == list("ฉันรักคุณ")  # unknown language, Thai script -> characters
    m = distinct_metrics([samples, ["x y", "x y"], ["z"]], ns=(1, 2, 3))
    assert m["distinct_1"] == pytest.approx((6 / 8 + 2 / 4 + 1) / 3)
    assert m["distinct_2"] == pytest.approx((4 / 5 + 1 / 2) / 2)  # ["z"] has no bigram
    assert m["distinct_3"] == pytest.approx(1.0)
    assert (m["n_prompts"], m["n_prompts_no_2grams"], m["n_prompts_no_3grams"]) == (3, 1, 2)


def test_language_fidelity():
    responses = ["The weather is lovely today and we are going to the park.",
                 "Das Wetter ist heute schön und wir gehen in den Park.",
                 "", "The weather is lovely today and we are going to the park."]
    m = language_fidelity(responses, ["en", "en", "en", "ps"])
    assert (m["n_checked"], m["n_in_language"], m["n_undetected"], m["n_unsupported"]) == (2, 1, 1, 1)
    assert m["language_fidelity"] == 0.5 and m["detected"] == {"de": 1}
    zh = language_fidelity(["今天天气很好，我们去公园散步吧。"], ["zh-Hant"])
    assert zh["language_fidelity"] == 1.0


@pytest.fixture(scope="module")
def scorer_lm():
    tok = build_tiny_tokenizer()
    return build_tiny_model("llama", tok, seed=7), tok


def _nll(model, ids):
    """NLL of a whole sequence: -sum_{t>=1} log p(x_t | x_<t), float64."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())


def test_conditional_perplexity_matches_direct_float64(scorer_lm):
    model, tok = scorer_lm
    pairs = [("The cat", " sat on the mat."), ("你好", "，世界！今天很好。"), ("Hallo", ""), ("", "orphan"),
             ("A much longer prompt about the weather in the mountains", " and rain."), ("x", " y")]
    values = conditional_perplexity(model, tok, pairs, batch_size=2)
    assert values[2] is None and values[3] is None
    for (prompt, gen), value in zip(pairs, values):
        if value is None:
            continue
        p_ids = tok(prompt)["input_ids"]
        g_ids = tok(gen, add_special_tokens=False)["input_ids"]
        expected = math.exp((_nll(model, p_ids + g_ids) - _nll(model, p_ids)) / len(g_ids))
        assert value == pytest.approx(expected, rel=1e-5)
    single = conditional_perplexity(model, tok, pairs, batch_size=1)
    for a, b in zip(values, single):
        assert (a is None and b is None) or a == pytest.approx(b, rel=1e-5)
    g_ids = tok(pairs[4][1], add_special_tokens=False)["input_ids"]
    limit = len(g_ids) + 3  # keeps the last 3 prompt tokens
    truncated = conditional_perplexity(model, tok, [pairs[4]], max_length=limit)[0]
    p_ids = tok(pairs[4][0])["input_ids"][-3:]
    assert conditional_perplexity(model, tok, [pairs[4]], max_length=len(g_ids)) == [None]
    expected = math.exp((_nll(model, p_ids + g_ids) - _nll(model, p_ids)) / len(g_ids))
    assert truncated == pytest.approx(expected, rel=1e-5)


def test_median_perplexity_by_language():
    out = median_perplexity_by_language([3.0, 1.0, None, 10.0, 2.0, float("nan")], ["en", "en", "en", "de", "en", "de"])
    assert out["en"] == {"perplexity_median": 2.0, "n_perplexity": 3, "n_perplexity_missing": 1}
    assert out["de"] == {"perplexity_median": 10.0, "n_perplexity": 1, "n_perplexity_missing": 1}
