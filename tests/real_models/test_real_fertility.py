"""Tokenizer fertility of the real models on MultiJail (real-model tier, tokenizers only: cheap).

Counts are checked against the ``tokenizers`` library run directly on the model folder's
``tokenizer.json`` (no transformers wrapper) and ``len`` / ``str.split`` by hand. The bounds
on the token premium are the measured values with a margin (2026-12-03, MultiJail 315 x 10):
SmolLM2-135M pays 8.43x English tokens for Bengali and 7.63x for Thai; Gemma-3-270M's
256k vocabulary stays within 1.54x for every language.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_model

LANGUAGES = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


def test_multijail_fertility_matches_raw_tokenizer(real_model, shared_data):
    from tokenizers import Tokenizer

    from polyalign.data.fertility import fertility, load_tokenizer, record_texts
    from polyalign.data.readers import read_records
    from polyalign.models import resolve_model_source

    result = read_records(shared_data / "multijail" / "MultiJail.csv")
    texts = record_texts(result.records)
    assert sorted(texts) == sorted(LANGUAGES) and all(len(v) == 315 for v in texts.values())
    table = fertility(load_tokenizer(real_model), texts, max_length=64)
    raw = Tokenizer.from_file(str(resolve_model_source(real_model) + "/tokenizer.json"))
    for lang, items in texts.items():
        lengths = [len(e.ids) for e in raw.encode_batch(items, add_special_tokens=False)]
        row = table[lang]
        assert row["n_tokens"] == sum(lengths) and row["max_tokens"] == max(lengths)
        assert row["n_over_max_length"] == sum(n > 64 for n in lengths)
        assert row["n_chars"] == sum(len(t) for t in items) and row["n_words"] == sum(len(t.split()) for t in items)
    premium = {lang: table[lang]["relative_tokens"] for lang in LANGUAGES}
    assert premium["en"] == 1.0
    if real_model == "smollm2-135m-instruct":
        assert premium["bn"] > 6.0 and premium["th"] > 6.0 and table["bn"]["n_over_max_length"] > 200
    else:
        assert max(premium.values()) < 2.0
