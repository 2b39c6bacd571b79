"""Tokenizer fertility and truncation per language against brute-force counts.

The byte-level tiny tokenizer with no merges (vocabulary = 256 bytes + special tokens) turns
every UTF-8 byte into one token, so token counts have an independent closed form:
``len(text.encode("utf-8"))``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from polyalign.cli import main
from polyalign.data.fertility import count_tokens, fertility, prompt_length_stats, record_texts, words_meaningful
from polyalign.data.records import Message, ParallelPair, PreferencePair
from polyalign.models import SPECIAL_TOKENS, build_tiny_tokenizer

PARALLEL = {
    "en": ["How do I make a cake?", "Tell me about the weather today."],
    "de": ["Wie backe ich einen Kuchen?", "Erzähl mir vom Wetter heute."],
    "ru": ["Как испечь торт?", "Расскажи мне о погоде сегодня."],
    "zh": ["我怎么做蛋糕？", "告诉我今天的天气。"],
    "th": ["ฉันจะทำเค้กได้อย่างไร", "บอกฉันเกี่ยวกับสภาพอากาศวันนี้"],
}


@pytest.fixture(scope="module")
def byte_tok():
    return build_tiny_tokenizer(256 + len(SPECIAL_TOKENS))


def test_byte_tokenizer_counts_match_utf8_bytes(byte_tok):
    table = fertility(byte_tok, PARALLEL, max_length=40)
    en_bytes = sum(len(t.encode("utf-8")) for t in PARALLEL["en"])
    for lang, texts in PARALLEL.items():
        row = table[lang]
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        chars = sum(sum(1 for _ in t) for t in texts)
        words = sum(len([w for w in t.replace("\t", " ").split(" ") if w]) for t in texts)
        assert row["n_tokens"] == n_bytes and row["n_chars"] == chars and row["n_words"] == words
        assert row["tokens_per_char"] == pytest.approx(n_bytes / chars)
        assert row["tokens_per_word"] == pytest.approx(n_bytes / words)
        assert row["relative_tokens"] == pytest.approx(n_bytes / en_bytes)  # same number of texts
        assert row["n_over_max_length"] == sum(len(t.encode("utf-8")) > 40 for t in texts)
        assert row["max_tokens"] == max(len(t.encode("utf-8")) for t in texts)
    # ASCII English: one token per character; Thai (3-byte script): three
    assert table["en"]["tokens_per_char"] == 1.0 and table["th"]["tokens_per_char"] == 3.0
    assert [lang for lang in PARALLEL if not table[lang]["words_meaningful"]] == ["zh", "th"]


def test_merged_tokenizer_batched_equals_one_by_one():
    tok = build_tiny_tokenizer()
    texts = [t for items in PARALLEL.values() for t in items]
    assert count_tokens(tok, texts, batch_size=3) == [len(tok.encode(t, add_special_tokens=False)) for t in texts]
    assert sum(count_tokens(tok, PARALLEL["en"])) < sum(len(t.encode()) for t in PARALLEL["en"])  # merges happened


def test_words_meaningful_and_prompt_lengths():
    assert not words_meaningful("zh-Hant") and not words_meaningful("ja") and words_meaningful("ko")
    stats = prompt_length_stats(["en", "sw", "en", "sw"], [5, 50, 7, 9], max_prompt_tokens=8)
    assert stats == {"en": {"prompt_tokens_mean": 6.0, "prompt_tokens_max": 7, "max_prompt_tokens": 8,
                            "n_prompts_over_context": 0},
                     "sw": {"prompt_tokens_mean": 29.5, "prompt_tokens_max": 50, "max_prompt_tokens": 8,
                            "n_prompts_over_context": 2}}
    assert prompt_length_stats(["en"], [3], max_prompt_tokens=None)["en"]["n_prompts_over_context"] is None


def _pair(i, lang, prompt, chosen="ok", rejected="no"):
    return PreferencePair(id=f"{lang}{i}", prompt=(Message("user", prompt),), chosen=chosen, rejected=rejected,
                          language=lang)


def test_record_texts_groups_by_language():
    en, de = _pair(1, "en", "Hi?", "Yes", "No"), _pair(1, "de", "Hallo?", "Ja", "Nein")
    texts = record_texts([en, ParallelPair(id="p", dominant=en, target=de), _pair(2, "de", "Wie?")])
    # the standalone en pair, then the parallel pair's dominant (en) and target (de) sides, then the de pair
    assert texts == {"en": ["Hi?", "Yes", "No"] * 2, "de": ["Hallo?", "Ja", "Nein", "Wie?", "ok", "no"]}
    assert record_texts([en], responses=False) == {"en": ["Hi?"]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_training_truncation_counted_per_language(byte_tok, tmp_path):
    from polyalign.training.datasets import load_training_data

    # plain rendering: prompt = its text (+ the tokenizer's own special tokens), response = bytes + EOS
    specials = len(byte_tok("x", add_special_tokens=True)["input_ids"]) - 1
    rows, texts = [], {"en": ("Short q?", "Fine."), "de": ("Kurze Frage?", "Antwort " * 8),
                       "sw": ("Swali " * 9, "Sawa.")}
    for lang, (prompt, chosen) in texts.items():
        for i in range(3):
            rows.append({"id": f"{lang}{i}", "prompt": [{"role": "user", "content": prompt + str(i)}], "chosen": chosen,
                         "rejected": "No.", "language": lang})
    path = _write(tmp_path / "pairs.jsonl", rows)
    config = SimpleNamespace(method="dpo", data_language=None, detect_language=False, max_length=40,
                             max_prompt_length=None,
                             truncation_mode="keep_end", on_overlong="skip", prefix_mismatch="error",
                             chat_template="plain",
                             mlc_enabled=False, dominant_language="en")
    _, report = load_training_data(config, byte_tok, str(path))
    expected = {}
    for lang, (prompt, chosen) in texts.items():
        n_prompt = len((prompt + "0").encode()) + specials
        skipped = n_prompt >= 40
        room = 40 - n_prompt
        cut = 0 if skipped else sum(len(r.encode()) + 1 > room for r in (chosen, "No."))
        expected[lang] = {"records": 3, "kept": 0 if skipped else 3, "skipped": 3 if skipped else 0,
                          "truncated_prompts": 0, "truncated_responses": 3 * cut}
    assert report.per_language == expected
    assert expected["sw"]["skipped"] == 3 and expected["de"]["truncated_responses"] == 3 and expected["en"] == {
        "records": 3, "kept": 3, "skipped": 0, "truncated_prompts": 0, "truncated_responses": 0}
    assert report.to_dict()["per_language"] == expected
    assert "sw 3/0/0 of 3" in report.summary()


def test_data_inspect_model_prints_fertility(byte_tok, tmp_path, capsys):
    from polyalign.models import save_tiny_checkpoint

    model_dir = save_tiny_checkpoint(tmp_path / "m", tokenizer=byte_tok)
    rows = [{"id": f"{lang}{i}", "prompt": [{"role": "user", "content": text}], "chosen": "ok", "rejected": "no",
             "language": lang} for lang in ("en", "zh") for i, text in enumerate(PARALLEL[lang])]
    path = _write(tmp_path / "pairs.jsonl", rows)
    args = ["data", "inspect", str(path), "--no-detect", "--json", "--model", str(model_dir), "--max-length", "20"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    zh = summary["fertility"]["zh"]
    zh_texts = PARALLEL["zh"] + ["ok", "no"] * 2
    assert zh["n_tokens"] == sum(len(t.encode()) for t in zh_texts) and zh["n_texts"] == 6
    assert zh["n_over_max_length"] == sum(len(t.encode()) > 20 for t in zh_texts) and zh["words_meaningful"] is False
    assert main(["data", "inspect", str(path), "--no-detect", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "tokenizer fertility" in out and "not meaningful" in out
    assert main(["data", "inspect", str(path), "--max-length", "5"]) == 2  # without --model: a one-line error
    assert "field '--max-length': needs --model" in capsys.readouterr().err
