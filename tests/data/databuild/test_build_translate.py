"""Translators: language-code mapping, real tiny seq2seq models (M2M100 / NLLB layout /
Marian per pair) with forced BOS, truncation flags, the persistent cache, and the
OpenAI-compatible translator against a real local HTTP server."""

from __future__ import annotations

import json

import pytest
import torch

from build_fixtures import BuildServer, fake_translation, save_tiny_seq2seq
from polyalign.data.build.cache import TranslationCache, cache_key
from polyalign.data.build.translate import build_translator
from polyalign.data.build.translate_hf import HFSeq2SeqTranslator, language_token
from polyalign.data.build.translate_openai import OpenAITranslator
from polyalign.errors import UserError
from polyalign.http_client import RetryPolicy

TEXTS = ["How do I bake bread at home?", "Where is the nearest train station, please?", "Good morning."]


@pytest.fixture(scope="module")
def m2m(tmp_path_factory):
    return save_tiny_seq2seq(tmp_path_factory.mktemp("m2m") / "model", "m2m100", seed=0)


def test_language_codes_per_family():
    assert [language_token("nllb", c) for c in ("en", "zh", "sw", "bn", "zh-Hant", "ZH_cn")] == [
        "eng_Latn", "zho_Hans", "swh_Latn", "ben_Beng", "zho_Hant", "zho_Hans"]
    assert [language_token("m2m100", c) for c in ("en", "zh", "zh-Hant",
                                                  "sw")] == ["__en__", "__zh__", "__zh__", "__sw__"]
    assert language_token("marian", "zh") is None
    assert language_token("m2m100", "te", {"te": "__te__"}) == "__te__"
    with pytest.raises(UserError, match="M2M100 does not cover"):
        language_token("m2m100", "ku")
    with pytest.raises(UserError, match="no NLLB code"):
        language_token("nllb", "xq")
    with pytest.raises(UserError, match="unknown translator family"):
        HFSeq2SeqTranslator("x", "t5")


def test_m2m100_encoding_forced_bos_and_batching(m2m):
    translator = HFSeq2SeqTranslator(m2m, "m2m100", batch_size=2, max_new_tokens=8)
    model, tokenizer = translator.load(str(m2m))
    ids, cut = translator.encode(tokenizer, TEXTS[0], "en", str(m2m))
    body = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids("__en__"), *body, tokenizer.eos_token_id] and not cut
    zh = translator.translate(TEXTS, "en", "zh")
    sw = translator.translate(TEXTS, "en", "sw")
    assert translator.stats["forced_bos_missing"] == 0 and translator.stats["generate_calls"] == 4
    assert [t.text for t in zh] != [t.text for t in sw]  # the forced target code steers the decoder
    # Reference: one text at a time, the decoder forced by hand: [</s>, __zh__] then greedy.
    forced = tokenizer.convert_tokens_to_ids("__zh__")
    for text, got in zip(TEXTS, zh):
        enc, _ = translator.encode(tokenizer, text, "en", str(m2m))
        decoder = [model.config.decoder_start_token_id, forced]
        with torch.no_grad():
            while len(decoder) < 2 + 8 - 1 and decoder[-1] != tokenizer.eos_token_id:
                logits = model(input_ids=torch.tensor([enc]), decoder_input_ids=torch.tensor([decoder])).logits
                decoder.append(int(logits[0, -1].argmax()))
        new = decoder[2:]
        finished = tokenizer.eos_token_id in new
        new = new[: new.index(tokenizer.eos_token_id)] if finished else new
        assert got.text == tokenizer.decode(new, skip_special_tokens=True).strip()
        assert got.truncated == (not finished)


def test_truncation_flags(m2m):
    translator = HFSeq2SeqTranslator(m2m, "m2m100", max_new_tokens=1, max_source_tokens=6)
    out = translator.translate(["a b c d e f g h i j k l", "hi"], "en", "zh")
    assert all(t.truncated for t in out)  # one new token: never room for </s> after it
    assert translator.stats["source_truncated"] == 1 and translator.stats["output_truncated"] == 2
    model, tokenizer = translator.load(str(m2m))
    assert len(translator.encode(tokenizer, "a b c d e f g h i j k l", "en", str(m2m))[0]) == 6


def test_nllb_layout_and_marian_model_per_pair(tmp_path):
    nllb = save_tiny_seq2seq(tmp_path / "nllb", "nllb", seed=1)
    translator = HFSeq2SeqTranslator(nllb, "nllb", max_new_tokens=4)
    _, tokenizer = translator.load(str(nllb))
    ids, _ = translator.encode(tokenizer, "Hello", "en", str(nllb))
    assert ids[0] == tokenizer.convert_tokens_to_ids("eng_Latn") and ids[-1] == tokenizer.eos_token_id
    translator.translate(["Hello"], "en", "bn")
    assert translator.stats["forced_bos_missing"] == 0
    with pytest.raises(UserError, match="no language token 'zho_Hant'"):
        translator.translate(["Hello"], "en", "zh-Hant")  # mapped, but not in this tokenizer
    # Marian: one model per pair through a {src}/{tgt} template; no language codes.
    for seed, tgt in ((2, "zh"), (3, "sw")):
        save_tiny_seq2seq(tmp_path / f"opus-en-{tgt}", "marian", seed=seed)
    marian = HFSeq2SeqTranslator(str(tmp_path / "opus-{src}-{tgt}"), "marian", max_new_tokens=6)
    assert marian.path_for("en", "sw") == str(tmp_path / "opus-en-sw")
    both = {tgt: [t.text for t in marian.translate(TEXTS, "en", tgt)] for tgt in ("zh", "sw")}
    for tgt in ("zh", "sw"):
        alone = HFSeq2SeqTranslator(tmp_path / f"opus-en-{tgt}", "marian", max_new_tokens=6)
        assert [t.text for t in alone.translate(TEXTS, "en", tgt)] == both[tgt]
    assert sorted(marian._loaded) == [str(tmp_path / "opus-en-sw"), str(tmp_path / "opus-en-zh")]
    with pytest.raises(UserError, match="no such translation model folder"):
        HFSeq2SeqTranslator(str(tmp_path / "opus-{src}-{tgt}"), "marian").translate(["x"], "en", "ko")


def test_cache_translates_nothing_twice(m2m, tmp_path):
    translator = HFSeq2SeqTranslator(m2m, "m2m100", batch_size=2, max_new_tokens=6)
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[2]]
    with TranslationCache(tmp_path / "cache.jsonl") as cache:
        first = cache.translate(translator, texts, "en", "zh")
        assert dict(cache.stats) == {"deduplicated": 1, "translated": 3}
    assert translator.stats["generate_calls"] == 2  # 3 unique texts in batches of 2
    assert first[0] == first[2]
    with TranslationCache(tmp_path / "cache.jsonl") as cache:  # a new process would see the same file
        again = cache.translate(translator, texts, "en", "zh")
        assert again == first and cache.stats["hits"] == 3 and cache.stats["translated"] == 0
        cache.translate(translator, TEXTS[:1], "en", "sw")  # another target: a miss
        other = HFSeq2SeqTranslator(m2m, "m2m100", max_new_tokens=5)  # other settings: other fingerprint
        cache.translate(other, TEXTS[:1], "en", "zh")
        assert cache.stats["translated"] == 2 and len(cache) == 5
        row = cache.get(TEXTS[1], "en", "zh", translator.fingerprint())
        assert row["key"] == cache_key(TEXTS[1], "en", "zh", translator.fingerprint())
        assert row["translation"] == first[1].text
    assert translator.stats["generate_calls"] == 3  # only the new sw text: nothing translated twice
    lines = (tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["_store"] == "translation_cache" and len(lines) == 1 + 5


def test_openai_translator_against_local_server(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_TEST_KEY", "sk-secret-123")
    fast = RetryPolicy(timeout_s=5, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02, jitter_s=0, concurrency=4)
    with BuildServer() as server:
        translator = OpenAITranslator(f"{server.url}/v1", "mt-model", api_key_env="BUILD_TEST_KEY", retry=fast)
        texts = ["Hello world", "Line one\nline two", "flaky [[fail500:1]]", "broken [[fail400]]", "long text [[cut]]"]
        out = translator.translate(texts, "en", "ja")
        assert [t.text for t in out[:2]] == [fake_translation(t, "Japanese") for t in texts[:2]]
        assert out[2].text == "EN: flaky [[fail500:1]]" and out[2].error is None  # retried once, then answered
        assert out[3].text is None and "HTTP 400" in out[3].error
        assert out[4].truncated and out[4].text == fake_translation(texts[4], "Japanese")[:10]
        assert translator.stats.as_dict()["retries"] == 1
        assert all(r["headers"]["authorization"] == "Bearer sk-secret-123" for r in server.requests)
        body = json.loads(server.requests[0]["body"])
        assert body["model"] == "mt-model" and body["temperature"] == 0.0
        assert "sk-secret" not in json.dumps(translator.settings()) + repr(translator)
        # Through the cache: the failed text is not stored and is retried next time.
        with TranslationCache(tmp_path / "c.jsonl") as cache:
            cache.translate(translator, texts[:2] + texts[3:4], "en", "ja")
            assert cache.stats["translated"] == 2 and cache.stats["errors"] == 1
            before = len(server.requests)
            again = cache.translate(translator, texts[:2] + texts[3:4], "en", "ja")
            assert len(server.requests) == before + 1 and cache.stats["hits"] == 2
            assert again[2].error and "HTTP 400" in again[2].error
    with pytest.raises(UserError, match="BUILD_TEST_MISSING"):
        build_translator({"type": "openai", "base_url": "http://127.0.0.1:9", "model": "m",
                          "api_key_env": "BUILD_TEST_MISSING"})
    with pytest.raises(UserError, match="unknown translator type"):
        build_translator({"type": "deepl"})
