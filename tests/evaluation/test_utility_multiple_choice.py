"""Log-likelihood multiple choice: native evaluator vs a float64 reference written out here."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from polyalign.evaluation.utility.multiple_choice import (
    Request,
    encode_pair,
    evaluate_multiple_choice,
    predictions,
    score_requests,
)
from polyalign.evaluation.utility.tasks import load_items, resolve_task
from polyalign.models import build_tiny_model, build_tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "utility"
TEMPLATE = "Question: {question}\nAnswer:"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _reference(model, tokenizer, items, template: str, delimiter: str = " "):
    """Per-language acc / acc_norm / acc_bytes from float64 log-softmax, one sequence at a time."""
    model64 = copy.deepcopy(model).double()
    per_lang: dict[str, list[dict[str, float]]] = {}
    all_lls = []
    for item in items:
        context = template.format(question=item.question)
        ctx = tokenizer.encode(context)
        lls = []
        for choice in item.choices:
            whole = tokenizer.encode(context + delimiter + choice)
            assert whole[: len(ctx)] == ctx  # the context tokens are a prefix here
            with torch.no_grad():
                logits = model64(input_ids=torch.tensor([whole])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            total = 0.0
            for t in range(len(ctx), len(whole)):  # token t is predicted at position t - 1
                total += float(logp[t - 1, whole[t]])
            lls.append(total)
        all_lls.append(lls)
        best = max(range(len(lls)), key=lambda k: (lls[k], -k))
        best_norm = max(range(len(lls)), key=lambda k: (lls[k] / len(item.choices[k]), -k))
        best_bytes = max(range(len(lls)), key=lambda k: (lls[k] / len(item.choices[k].encode("utf-8")), -k))
        # the comparison below is only meaningful without near-ties
        ranked = sorted(lls, reverse=True)
        assert ranked[0] - ranked[1] > 1e-4
        per_lang.setdefault(item.language, []).append({
            "acc": float(best == item.answer), "acc_norm": float(best_norm == item.answer),
            "acc_bytes": float(best_bytes == item.answer)})
    summary = {lang: {m: sum(r[m] for r in rows) / len(rows) for m in ("acc", "acc_norm", "acc_bytes")}
               for lang, rows in per_lang.items()}
    return summary, all_lls


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_native_accuracies_equal_float64_reference(tokenizer, arch):
    model = build_tiny_model(arch, tokenizer, seed=3)
    task = resolve_task(FIXTURES / "mc_multilingual.jsonl", template=TEMPLATE)
    items = load_items(task)
    result = evaluate_multiple_choice(model, tokenizer, task, items, batch_size=7)
    expected, ref_lls = _reference(model, tokenizer, items, TEMPLATE)
    assert set(result["per_language"]) == {"en", "zh", "sw", "bn", "ar"}
    for lang, metrics in expected.items():
        got = result["per_language"][lang]
        assert {m: got[m] for m in metrics} == metrics, lang
        assert got["n"] == 6 and got["chance"] == pytest.approx(0.25) and got["n_truncated"] == 0
    for row, lls in zip(result["items"], ref_lls):
        assert row["logliks"] == pytest.approx(lls, abs=2e-4)


def test_batch_size_does_not_change_scores(tokenizer):
    model = build_tiny_model("qwen2", tokenizer, seed=1)
    task = resolve_task(FIXTURES / "mc_multilingual.jsonl")
    items = load_items(task, languages=["zh", "ar"])
    one = evaluate_multiple_choice(model, tokenizer, task, items, batch_size=1)
    many = evaluate_multiple_choice(model, tokenizer, task, items, batch_size=16)
    assert one["per_language"] == many["per_language"]
    for a, b in zip(one["items"], many["items"]):
        assert a["logliks"] == pytest.approx(b["logliks"], abs=1e-5)


def test_prediction_rules_match_lm_eval_definitions():
    # acc: raw sum; acc_norm: per character of the choice; acc_bytes: per UTF-8 byte.
    assert predictions([-2.0, -4.0], ["a", "bbbb"]) == {"pred": 0, "pred_norm": 1, "pred_bytes": 1}
    # "北京": 2 characters, 6 bytes; "abc": 3 characters, 3 bytes.
    # per char: -1.5 vs -0.833 -> 1; per byte: -0.5 vs -0.833 -> 0; raw: -3 < -2.5 -> 1
    assert predictions([-3.0, -2.5], ["北京", "abc"]) == {"pred": 1, "pred_norm": 1, "pred_bytes": 0}
    assert predictions([-3.0, -4.0], ["北京", "abcd"]) == {"pred": 0, "pred_norm": 1, "pred_bytes": 0}
    # ties: the first maximum wins, as numpy.argmax
    assert predictions([-1.0, -1.0, -1.0], ["x", "y", "z"]) == {"pred": 0, "pred_norm": 0, "pred_bytes": 0}


def test_encode_pair_moves_trailing_space_and_handles_bos():
    tok = build_tiny_tokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", "Paris")
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer: Paris")
    # empty context: conditioned on the BOS token
    ctx, cont = encode_pair(tok, "", " Paris")
    assert ctx == [tok.bos_token_id] and cont == tok.encode(" Paris")
    # a tokenizer that prepends BOS (Llama style): once, and not again before a "<s>" string
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok.encode("hi")[0] == tok.bos_token_id
    ctx, cont = encode_pair(tok, "Q: hi\nA:", " yes")
    assert ctx[0] == tok.bos_token_id and ctx.count(tok.bos_token_id) == 1 and tok.bos_token_id not in cont
    ctx2, cont2 = encode_pair(tok, "<s>Q: hi\nA:", " yes")
    assert (ctx2, cont2) == (ctx, cont)


def test_left_truncation_is_counted_and_scores_the_kept_window(tokenizer):
    model = build_tiny_model("llama", tokenizer, seed=0)
    context = tokenizer.encode("A rather long context that will not fit into the window at all.")
    cont = tokenizer.encode(" yes")
    limit = 6
    (ll,), cut = score_requests(model, [Request(0, 0, tuple(context), tuple(cont))], max_length=limit)
    assert cut == 1
    seq = (context + cont)[-limit:]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].double(), -1)
    expected = sum(float(logp[t - 1, seq[t]]) for t in range(limit - len(cont), limit))
    assert ll == pytest.approx(expected, abs=1e-4)
    # per language, evaluate_multiple_choice counts the (item, choice) pairs that were cut
    task = resolve_task(FIXTURES / "mc_multilingual.jsonl", template=TEMPLATE)
    items = load_items(task, languages=["en", "bn"])
    window = 1 + max(len(encode_pair(tokenizer, TEMPLATE.format(question=i.question), " " + c)[1])
                     for i in items for c in i.choices)  # every continuation fits, most contexts do not
    result = evaluate_multiple_choice(model, tokenizer, task, items, max_length=window)
    for lang in ("en", "bn"):
        long = sum(len(tokenizer.encode(TEMPLATE.format(question=i.question) + " " + c)) > window
                   for i in items if i.language == lang for c in i.choices)
        assert 0 < result["per_language"][lang]["n_truncated"] == long
    assert result["n_truncated"] == sum(m["n_truncated"] for m in result["per_language"].values())


def test_chat_template_contexts(tokenizer):
    model = build_tiny_model("llama", tokenizer, seed=0)
    task = resolve_task(FIXTURES / "mc_multilingual.jsonl", chat_template=True)
    items = load_items(task, languages=["bn"])
    result = evaluate_multiple_choice(model, tokenizer, task, items)
    row = result["items"][0]
    # reference for the first item's gold choice, lm-eval's chat rule: rendered user turn +
    # generation prompt, no delimiter, the prompt's trailing newline scored with the answer
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": items[0].question}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.endswith("<|assistant|>\n")
    ctx = tokenizer.encode(rendered[:-1])
    whole = tokenizer.encode(rendered + items[0].choices[items[0].answer])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
    expected = sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
    assert row["logliks"][items[0].answer] == pytest.approx(expected, abs=1e-4)
