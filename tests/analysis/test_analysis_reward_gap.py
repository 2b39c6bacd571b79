"""Reward gap: average response log-probs against a per-token float64 loop."""

from __future__ import annotations

import json

import pytest
import torch

from polyalign.analysis.reward_gap import (
    average_response_logps,
    correlate_gap_with_metric,
    pairs_from_records,
    per_language_metric,
    prompt_and_response_ids,
    reward_gap,
    truncate_pair,
)
from polyalign.analysis.stats import correlate
from polyalign.data.records import Message, PreferencePair
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(tok, request):
    return build_tiny_model(request.param, tok, seed=11)


def _pair(pid, lang, prompt, chosen, rejected, system=None):
    turns = ((Message("system", system),) if system else ()) + (Message("user", prompt),)
    return PreferencePair(id=pid, prompt=turns, chosen=chosen, rejected=rejected, language=lang)


PAIRS = [
    _pair("1", "en", "How do I bake bread?", "Mix flour and water, then bake.", "No."),
    _pair("2", "en", "Tell me a joke", "Why did the chicken cross the road?", "I cannot help with that request at all.",
          system="Be kind."),
    _pair("3", "zh", "怎么做面包？", "把面粉和水混合，然后烤。", "不。"),
    _pair("4", "zh", "讲个笑话", "好的！", "对不起，我不能帮助你做这件事。"),
    _pair("5", "ar", "كيف أخبز الخبز؟", "اخلط الدقيق والماء.", "لا."),
]


def _reference_avg_logp(model, tok, pair_prompt, response):
    """Independent path: render full conversation as text, find the response tokens by
    length, one unpadded forward, float64 log-softmax, explicit loop over tokens."""
    msgs = [m.to_dict() for m in pair_prompt]
    prompt_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    p_ids = tok(prompt_text)["input_ids"]
    f_ids = tok(full_text)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids  # the tiny tokenizer's prefix property
    with torch.no_grad():
        logits = model(torch.tensor([f_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for t in range(len(p_ids), len(f_ids)):
        total += float(logp[t - 1, f_ids[t]])
    return total / (len(f_ids) - len(p_ids))


def test_response_ids_include_end_of_turn(tok):
    p_ids, r_ids = prompt_and_response_ids(tok, PAIRS[0].prompt, "Yes.")
    assert tok.decode(r_ids) == "Yes.<|end|>\n"
    assert tok.decode(p_ids).endswith("<|assistant|>\n")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_average_logps_match_reference(model, tok, batch_size):
    got = average_response_logps(model, tok, [p.prompt for p in PAIRS], [p.chosen for p in PAIRS],
                                 batch_size=batch_size)
    for value, pair in zip(got, PAIRS):
        assert value == pytest.approx(_reference_avg_logp(model, tok, pair.prompt, pair.chosen), abs=1e-5)


def test_reward_gap_per_language(model, tok):
    result = reward_gap(model, tok, PAIRS, batch_size=2)
    gaps = [
        _reference_avg_logp(model, tok, p.prompt, p.chosen) - _reference_avg_logp(model, tok, p.prompt, p.rejected)
        for p in PAIRS
    ]
    assert result.gaps == pytest.approx(gaps, abs=2e-5)
    en = result.per_language["en"]
    assert en["n"] == 2 and en["mean_gap"] == pytest.approx((gaps[0] + gaps[1]) / 2, abs=2e-5)
    assert en["std_gap"] == pytest.approx(abs(gaps[0] - gaps[1]) / 2**0.5, abs=2e-5)
    assert en["positive_share"] == sum(g > 0 for g in gaps[:2]) / 2
    assert result.per_language["ar"]["n"] == 1 and result.per_language["ar"]["std_gap"] == 0.0
    dumped = json.loads(json.dumps(result.to_dict()))
    assert [row["id"] for row in dumped["pairs"]] == ["1", "2", "3", "4", "5"]

    metric = {"en": 0.1, "zh": 0.4, "ar": 0.3, "ko": 0.9}
    corr = correlate_gap_with_metric(result, metric)
    assert corr == correlate(result.gap_by_language(), metric)
    assert corr["n"] == 3 and corr["missing"] == ["ko"]


def test_results_json_metric_and_errors(model, tok):
    results = {"metrics": {"per_language": {"en": {"asr": 0.1, "n": 3}, "zh": {"asr": 0.5}, "ar": {"n": 2}}}}
    assert per_language_metric(results, "asr") == {"en": 0.1, "zh": 0.5}
    with pytest.raises(UserError, match="available: asr, n"):
        per_language_metric(results, "toxicity", file="r.json")
    with pytest.raises(UserError, match="not an evaluation results"):
        per_language_metric({"x": 1}, "asr")
    with pytest.raises(UserError, match="at least 2"):
        average_response_logps(model, tok, [PAIRS[0].prompt], ["fine"], max_length=1)
    # Without a chat template an empty answer has no token at all (with one, the
    # end-of-turn marker is still scored).
    plain = build_tiny_tokenizer()
    plain.chat_template = None
    with pytest.raises(UserError, match="empty answer"):
        average_response_logps(model, plain, [[{"role": "user", "content": "hi"}]], [""])
    with pytest.raises(UserError):
        reward_gap(model, tok, [])


def test_pairs_from_mpo_records_dedupe_dominant():
    from polyalign.data.records import EvalPrompt, ParallelPair

    dom = _pair("0-en", "en", "Q?", "safe", "unsafe")
    records = [
        ParallelPair(id="0", dominant=dom, target=_pair("0-zh", "zh", "问？", "安全", "不安全")),
        ParallelPair(id="1", dominant=dom, target=_pair("0-ja", "ja", "質問？", "安全", "危険")),
        PAIRS[4],
    ]
    got = pairs_from_records(records)
    assert [p.id for p in got] == ["0-en", "0-zh", "0-ja", "5"]
    with pytest.raises(UserError, match="EvalPrompt"):
        pairs_from_records([EvalPrompt(id="x", language="en", text="t", benchmark="b")])


def test_truncation_policy_and_scores(model, tok):
    p, r, cut = truncate_pair(list(range(10)), list(range(100, 108)), 12)
    assert cut and r == list(range(100, 106)) and p == list(range(4, 10))  # response keeps >= 12 // 2
    p, r, cut = truncate_pair(list(range(10)), [100, 101], 8)
    assert cut and r == [100, 101] and p == list(range(4, 10))
    assert truncate_pair([1, 2], [3], 3) == ([1, 2], [3], False)

    pair = PAIRS[1]
    p_ids, r_ids = prompt_and_response_ids(tok, pair.prompt, pair.rejected)
    limit = len(p_ids) // 2 + 4
    tp, tr, cut = truncate_pair(p_ids, r_ids, limit)
    assert cut and len(tp) + len(tr) == limit
    ids = tp + tr
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    expected = sum(float(logp[t - 1, ids[t]]) for t in range(len(tp), len(ids))) / len(tr)
    got = average_response_logps(model, tok, [pair.prompt], [pair.rejected], max_length=limit)
    assert got[0] == pytest.approx(expected, abs=1e-5)
    result = reward_gap(model, tok, PAIRS, max_length=limit)
    assert result.per_language["en"]["n_truncated"] >= 1
    assert reward_gap(model, tok, PAIRS).per_language["en"]["n_truncated"] == 0
