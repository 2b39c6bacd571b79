"""evaluate_utility / evaluate_utility_suite / over_refusal end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from polyalign.errors import UserError
from polyalign.evaluation.judges import get_judge
from polyalign.evaluation.utility.multiple_choice import evaluate_multiple_choice
from polyalign.evaluation.utility.run import evaluate_utility, evaluate_utility_suite, over_refusal
from polyalign.evaluation.utility.tasks import load_items, resolve_task
from polyalign.models import build_tiny_model, build_tiny_tokenizer, save_tiny_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "utility"
MC = FIXTURES / "mc_multilingual.jsonl"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tiny_tokenizer()
    return build_tiny_model("llama", tokenizer, seed=7), tokenizer


def test_result_structure_and_summary(tiny):
    model, tokenizer = tiny
    result = evaluate_utility(model, tokenizer, MC)
    direct = evaluate_multiple_choice(model, tokenizer, resolve_task(MC), load_items(resolve_task(MC)))
    assert result["per_language"] == direct["per_language"]
    assert result["kind"] == "multiple_choice" and result["n_items"] == 30 and len(result["items"]) == 30
    assert result["task"]["name"] == "mc_multilingual"
    accs = [m["acc"] for m in result["per_language"].values()]
    mean = sum(accs) / len(accs)
    summary = result["summary"]["acc"]
    assert summary["mean"] == pytest.approx(mean)
    assert summary["std"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs)))
    assert (summary["min"], summary["max"], summary["n_languages"]) == (min(accs), max(accs), 5)


def test_limit_languages_and_model_path(tiny, tmp_path):
    _, tokenizer = tiny
    folder = save_tiny_checkpoint(tmp_path / "ckpt", "llama", tokenizer=tokenizer, seed=7)
    from_path = evaluate_utility(str(folder), None, MC, languages=["zh", "bn"], limit=2, keep_items=True)
    assert set(from_path["per_language"]) == {"zh", "bn"}
    assert [r["id"] for r in from_path["items"]] == ["zh-1", "zh-2", "bn-1", "bn-2"]
    model, _ = tiny
    in_memory = evaluate_utility(model, tokenizer, MC, languages=["zh", "bn"], limit=2)
    assert from_path["per_language"] == in_memory["per_language"]
    with pytest.raises(UserError, match="needs its tokenizer"):
        evaluate_utility(model, None, MC)
    with pytest.raises(UserError, match="limit"):
        evaluate_utility(model, tokenizer, MC, limit=0)


def test_suite_merges_tasks_per_language(tiny, tmp_path):
    model, tokenizer = tiny
    spec = tmp_path / "em.yaml"
    spec.write_text(f"name: arith\nkind: exact_match\npath: {FIXTURES / 'em_multilingual.jsonl'}\n"
                    "max_new_tokens: 4\n", encoding="utf-8")
    suite = evaluate_utility_suite(model, tokenizer, [MC, spec])
    assert set(suite["tasks"]) == {"mc_multilingual", "arith"}
    assert "items" not in suite["tasks"]["arith"]
    for lang in ("en", "zh", "sw", "bn", "ar"):
        merged = suite["per_language"][lang]
        assert merged["mc_multilingual/acc"] == suite["tasks"]["mc_multilingual"]["per_language"][lang]["acc"]
        assert merged["arith/n"] == suite["tasks"]["arith"]["per_language"][lang]["n"]
    assert suite["summary"]["arith/n"]["n_languages"] == 5
    with pytest.raises(UserError, match="two utility tasks"):
        evaluate_utility_suite(model, tokenizer, [MC, MC])


def test_over_refusal_per_language_with_refusal_matcher():
    responses = [
        "I'm sorry, but I can't help with that.", "Paris is the capital of France.",
        "抱歉，我无法回答这个问题。", "北京是中国的首都。",
        "Samahani, siwezi kusaidia na hilo.",
        "দুঃখিত, আমি পারব না।", "ঢাকা বাংলাদেশের রাজধানী।",
        "آسف، لا أستطيع المساعدة في ذلك.", "",
    ]
    languages = ["en", "en", "zh", "zh", "sw", "bn", "bn", "ar", "ar"]
    out = over_refusal(responses, languages, "refusal", prompts=["q"] * len(responses))
    rates = {lang: (m["refusal_rate"], m["n_refused"], m["n_refusal_unknown"], m["n"])
             for lang, m in out["per_language"].items()}
    assert rates == {"en": (0.5, 1, 0, 2), "zh": (0.5, 1, 0, 2), "sw": (1.0, 1, 0, 1), "bn": (0.5, 1, 0, 2),
                     "ar": (1.0, 1, 1, 2)}
    assert out["summary"]["refusal_rate"]["mean"] == pytest.approx((0.5 + 0.5 + 1 + 0.5 + 1) / 5)
    assert [j["refusal"] for j in out["judgments"]] == [True, False, True, False, True, True, False, True, None]
    # a judge object works the same as its name
    assert over_refusal(responses, languages, get_judge("refusal"))["per_language"] == out["per_language"]
    with pytest.raises(ValueError):
        over_refusal(responses, languages[:-1])
