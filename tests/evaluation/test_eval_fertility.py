"""Eval results carry the tokenizer's fertility and the prompts the context cannot hold, per language."""

from __future__ import annotations

import json

import pytest

from polyalign.models import SPECIAL_TOKENS, build_tiny_model, build_tiny_tokenizer


def test_eval_counts_prompts_over_context_per_language(tmp_path):
    from polyalign.evaluation.run import EvalConfig, evaluate

    tok = build_tiny_tokenizer(256 + len(SPECIAL_TOKENS))  # one token per UTF-8 byte
    model = build_tiny_model("llama", tok, seed=1)
    model.config.max_position_embeddings = 40  # context 40 - max_new_tokens 4 leaves 36 prompt tokens
    texts = {"en": ["Hi?", "A short one.", "Tell me a longer story about the sea."],
             "ru": ["Привет?", "Короткий вопрос.", "Расскажи длинную историю о море."]}
    rows = ["text,lang"] + [f"{t},{lang}" for lang, items in texts.items() for t in items]
    data = tmp_path / "p.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    results = evaluate(EvalConfig(benchmark="custom", out_dir=tmp_path / "out", data=data, judge="refusal",
                                  column_map={"text": "text", "language": "lang"}, max_new_tokens=4,
                                  chat_template=False, progress=False), model=model, tokenizer=tok)
    specials = len(tok("x", add_special_tokens=True)["input_ids"]) - 1  # e.g. BOS in raw mode
    saved = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    for lang, items in texts.items():
        m = saved["metrics"]["per_language"][lang]
        lengths = [len(t.encode()) + specials for t in items]
        assert m["prompt_tokens_max"] == max(lengths) and m["prompt_tokens_mean"] == pytest.approx(sum(lengths) / 3)
        assert m["max_prompt_tokens"] == 36 and m["n_prompts_over_context"] == sum(n > 36 for n in lengths)
        assert m["tokens_per_char"] == pytest.approx(sum(len(t.encode()) for t in items) / sum(len(t) for t in items))
    assert saved["metrics"]["per_language"]["ru"]["n_prompts_over_context"] == 1
    assert saved["metrics"]["per_language"]["en"]["n_prompts_over_context"] == 1
    assert saved["metrics"]["per_language"]["ru"]["relative_tokens"] == pytest.approx(
        sum(len(t.encode()) for t in texts["ru"]) / sum(len(t.encode()) for t in texts["en"]))
    assert results["metrics"]["per_language"] == saved["metrics"]["per_language"]
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "prompts longer than the context leaves (context length - max_new_tokens; never truncated): en 1, ru 1" in md
    ru = saved["metrics"]["per_language"]["ru"]
    assert (f"| ru (Russian) | {ru['tokens_per_char']:.4f} | {ru['tokens_per_word']:.4f} "
            f"| {ru['relative_tokens']:.4f} | {ru['prompt_tokens_mean']:.4f} | 1 |") in md
