"""Exact match: answer extraction edge cases, and greedy generation end to end on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polyalign.errors import UserError
from polyalign.evaluation.utility.exact_match import (
    evaluate_exact_match,
    extract_number,
    extract_text,
    generate_greedy,
    gold_answer,
    per_language_exact_match,
    score_outputs,
)
from polyalign.evaluation.utility.tasks import EMItem, UtilityTask, load_items, render_context, resolve_task
from polyalign.models import build_tiny_model, build_tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "utility"


@pytest.mark.parametrize(
    ("output", "expected", "how"),
    [
        ("The answer is 42.", "42", "marker"),
        ("So 3 + 4 = 7", "7", "last"),
        ("She has 1,234,567 apples", "1234567", "last"),
        ("Total: 1.234.567 Euro", "1234567", "last"),
        ("Preis: €1.234,50", "1234.5", "last"),
        ("It weighs 3,5 kg", "3.5", "last"),
        ("12,34,567 rupees", "1234567", "last"),  # Indian lakh grouping
        ("1 234 567 people", "1234567", "last"),
        ("1\u202f234 people", "1234", "last"),  # narrow no-break space
        ("1'234 Franken", "1234", "last"),
        ("$1,250.00 in total", "1250", "last"),
        ("3.50", "3.5", "last"),
        ("1.234", "1.234", "last"),  # a lone dot is a decimal point
        ("1,234", "1234", "last"),  # a lone comma before 3 digits groups thousands
        ("1234,567", "1234.567", "last"),  # ... but not after 4 digits
        ("50%", "50", "last"),
        ("The answer is -5", "-5", "marker"),
        ("x = \u22127", "-7", "last"),  # Unicode minus sign
        ("5-3", "3", "last"),  # a hyphen after a digit is not a sign
        ("1,2,3", "3", "last"),  # a list, not one number
        ("version 3.10.2", "2", "last"),
        ("উত্তর: ১২৩", "123", "marker"),  # Bengali digits
        ("الإجابة هي ٤٢", "42", "marker"),  # Arabic-Indic digits
        ("٣٬٤٥٦ كتاب", "3456", "last"),  # Arabic thousands separator
        ("٣٫٥", "3.5", "last"),  # Arabic decimal separator
        ("۱۲ سیب", "12", "last"),  # Persian digits
        ("उत्तर है १०", "10", "marker"),  # Devanagari digits
        ("答案是１２３。", "123", "marker"),  # full-width digits
        ("有5个苹果，吃了2个", "2", "last"),  # digits glued to CJK text
        ("Jibu ni 6. Kisha 8", "6", "marker"),
        ("Answer: 18\nThen he has 20 more", "18", "marker"),
        ("First 3, then the answer is 12 and 13", "12", "marker"),  # first number after the LAST marker
        ("The answer is unclear, maybe 9", "9", "marker"),
        ("The answer is: none. Total 40", "40", "marker"),
        ("The answer is below. 41", "41", "marker"),
        ("\\boxed{12} and later 13", "12", "boxed"),
        ("#### 72", "72", "marker"),
        ("৭.০", "7", "last"),
        ("7.000 and 8.0", "8", "last"),
        ("no number here", None, "none"),
        ("", None, "none"),
        ("STRASSE: answer: 3", "3", "marker"),
        ("Die Antwort lautet 1.000.000", "1000000", "marker"),
    ],
)
def test_extract_number(output, expected, how):
    assert extract_number(output) == (expected, how)


def test_gold_answers_are_parsed_the_same_way():
    assert gold_answer("1,300", "number") == "1300"
    assert gold_answer("১০", "number") == "10"
    assert gold_answer("٦", "number") == "6"
    assert gold_answer("Paris.", "text") == "paris"
    with pytest.raises(UserError, match="not one number"):
        gold_answer("3 or 4", "number")
    with pytest.raises(UserError, match="not one number"):
        gold_answer("seven", "number")


def test_text_answers():
    assert extract_text("The answer is Nairobi.\nBecause ...") == ("nairobi", "marker")
    assert extract_text("\n  PARIS!  \nmore") == ("paris", "last")
    assert extract_text("   ") == (None, "none")


def test_scoring_counts_per_language():
    items = [EMItem("a", "en", "q", "7"), EMItem("b", "en", "q", "1,000"), EMItem("c", "bn", "q", "১০"),
             EMItem("d", "bn", "q", "3"), EMItem("e", "ar", "q", "٦")]
    outputs = ["The answer is 7.", "It is 1000", "উত্তর: ১০", "I don't know", "الجواب: ٥"]
    rows = score_outputs(items, outputs)
    assert [r["exact_match"] for r in rows] == [1.0, 1.0, 1.0, 0.0, 0.0]
    per = per_language_exact_match(rows)
    assert per == {
        "en": {"exact_match": 1.0, "n": 2, "n_no_answer": 0, "n_marker": 1},
        "bn": {"exact_match": 0.5, "n": 2, "n_no_answer": 1, "n_marker": 1},
        "ar": {"exact_match": 0.0, "n": 1, "n_no_answer": 0, "n_marker": 1},
    }


def _greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding written out: full forward pass per step, no cache, no padding."""
    ids = tokenizer.encode(prompt)
    new = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
        token = int(torch.argmax(logits))
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_end_to_end_on_tiny_model():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("llama", tokenizer, seed=5)
    task = resolve_task(FIXTURES / "em_multilingual.jsonl", max_new_tokens=6)
    items = load_items(task)
    result = evaluate_exact_match(model, tokenizer, task, items, batch_size=4)
    assert {lang: m["n"] for lang, m in result["per_language"].items()} == {"en": 3, "zh": 2, "sw": 2, "bn": 2,
                                                                             "ar": 1}
    rows = result["items"]
    assert [r["id"] for r in rows] == [i.id for i in items]
    for item, row in zip(items, rows):  # outputs equal a written-out greedy loop (left padding is right)
        prompt = render_context(tokenizer, task, item.question)
        assert prompt.startswith("<|user|>\n") and prompt.endswith("<|assistant|>\n")
        assert row["output"] == _greedy_reference(model, tokenizer, prompt, 6)
        assert (row["prediction"], row["extracted_by"]) == extract_number(row["output"])
        assert row["exact_match"] == float(row["prediction"] == row["gold"])
    for lang, metrics in result["per_language"].items():
        mine = [r for r in rows if r["language"] == lang]
        assert metrics["exact_match"] == sum(r["exact_match"] for r in mine) / len(mine)
        assert metrics["n_no_answer"] == sum(r["prediction"] is None for r in mine)


def test_generation_restores_padding_side_and_batches_consistently():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("qwen2", tokenizer, seed=2)
    prompts = ["Hello there, how", "中国的首都", "Mji mkuu wa Kenya ni upi? Jibu"]
    one = [generate_greedy(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=5, batch_size=3) == one
    assert tokenizer.padding_side == "right"


def test_bad_gold_answer_is_reported_before_generation(tmp_path):
    path = tmp_path / "em.jsonl"
    path.write_text('{"id": "q1", "question": "?", "answer": "many", "language": "en"}\n', encoding="utf-8")
    task = UtilityTask(name="em", kind="exact_match", path=str(path))
    with pytest.raises(UserError, match="item 'q1'"):
        evaluate_exact_match(None, None, task, load_items(task))
