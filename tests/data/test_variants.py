"""Prompt variants for MLC: joining, masking and reporting missing languages, tokenisation
(chat template + generation prompt) and the prompt-variant batch."""

from __future__ import annotations

import pytest
import torch

from polyalign.data.collate import collate_variants
from polyalign.data.readers import load_preference_pairs, load_prompt_variants
from polyalign.data.records import Message, PreferencePair, PromptVariants
from polyalign.data.variants import (
    attach_variants,
    tokenize_variant,
    tokenize_variants,
    variant_batch,
    variant_languages,
)
from polyalign.errors import UserError
from polyalign.models import build_tiny_tokenizer

FILES = {
    "en": ["Where is the station?", "I like tea.", "The sky is blue."],
    "de": ["Wo ist der Bahnhof?", "Ich mag Tee.", "Der Himmel ist blau."],
    "fr": ["Où est la gare ?", "J'aime le thé.", "Le ciel est bleu."],
}


def _pair(pid: str, text: str = "Where is the station?", language: str = "en", variants=None) -> PreferencePair:
    return PreferencePair(id=pid, prompt=(Message("user", text),), chosen="Over there.", rejected="No.",
                          language=language, variants=variants)


def _user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_join_parallel_files_by_id_and_report_gaps(tmp_path):
    for lang, lines in FILES.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    variants = load_prompt_variants(tmp_path, detect_language=False)
    assert [v.id for v in variants] == ["0", "1", "2"]
    # the record of id "1" loses its French prompt; pair "7" has no record; record "2" no pair
    variants[1] = PromptVariants("1", {k: v for k, v in variants[1].prompts.items() if k != "fr"})
    pairs = [_pair("0"), _pair("1", "I like tea."), _pair("7", "Hallo", language="de")]
    out, report = attach_variants(pairs, variants, languages=["en", "de", "fr", "es"])
    assert [p.id for p in out] == ["0", "1", "7"]  # nothing dropped, order kept
    assert list(out[0].variants.prompts) == ["en", "de", "fr"]
    assert out[0].variants.prompts["de"] == _user("Wo ist der Bahnhof?")
    assert list(out[1].variants.prompts) == ["en", "de"]
    # pair 7 has no record, but its own prompt is its German variant
    assert out[2].variants.prompts == {"de": _user("Hallo")}
    assert report.missing == {"en": 1, "de": 0, "fr": 2, "es": 3}
    assert (report.n_examples, report.complete, report.too_few, report.no_variants) == (3, 0, 1, 0)
    assert report.unmatched_variants == ["2"] and report.from_pair_prompt == 1
    assert "fr 2" in report.summary() and "1 variant records match no pair id" in report.summary()

    _, report = attach_variants(pairs, variants, languages=["en", "de", "fr"], use_pair_prompt=False)
    assert report.missing == {"en": 1, "de": 1, "fr": 2} and report.no_variants == 1


def test_restrict_pairs_own_variants():
    pairs = [
        _pair("a", variants=PromptVariants("a", {"en": _user("x"), "zh": _user("y"), "ja": _user("z")})),
        _pair("b", variants=PromptVariants("b", {"en": _user("x"), "ja": _user("z"), "ko": _user("w")})),
        _pair("c"),
    ]
    assert variant_languages(pairs) == ["en", "zh", "ja", "ko"]
    out, report = attach_variants(pairs, languages=["ja", "en", "zh"])
    assert list(out[0].variants.prompts) == ["ja", "en", "zh"]  # configured order
    assert report.missing == {"ja": 1, "en": 0, "zh": 2}
    assert report.extra_languages == {"ko": 1}
    assert out[2].variants.prompts == {"en": _user("Where is the station?")}  # own prompt only
    assert report.too_few == 1 and report.complete == 1
    out, report = attach_variants(pairs)  # default: every language seen
    assert report.languages == ["en", "zh", "ja", "ko"]


def test_bad_inputs_are_user_errors():
    pairs = [_pair("0")]
    with pytest.raises(UserError, match="two prompt-variant records"):
        attach_variants(pairs, [PromptVariants("0", {"en": _user("a")}), PromptVariants("0", {"de": _user("b")})])
    with pytest.raises(UserError, match="listed twice"):
        attach_variants(pairs, [], languages=["en", "EN"])
    with pytest.raises(UserError, match="not a language code"):
        attach_variants(pairs, [], languages=["en", "not a code!"])


def test_tokenize_variant_is_the_generation_prompt(tok):
    turns = [{"role": "user", "content": "Wo ist der Bahnhof?"}]
    ids = tokenize_variant(tok, turns)
    rendered = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|assistant|>\n")
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == rendered
    # a prefix of the prompt followed by an answer: no response tokens in the variant
    full = tok.apply_chat_template(turns + [{"role": "assistant", "content": "Dort."}], tokenize=True,
                                   return_dict=True)["input_ids"]
    assert full[: len(ids)] == ids and len(full) > len(ids)
    assert tokenize_variant(tok, _user("Wo ist der Bahnhof?")) == ids  # Message tuples too
    assert tokenize_variant(tok, "plain text") == tok("plain text")["input_ids"]
    truncated = tokenize_variant(tok, turns, max_length=4)
    assert truncated == ids[-4:]  # the end (generation prompt) is kept
    with pytest.raises(UserError):
        tokenize_variant(tok, [])


def test_shared_collation_layout_is_what_the_mlc_term_expects():
    """The shared ``polyalign.data.collate.collate_variants`` (reused here) against a brute force."""
    tokens = [{"en": [5, 6, 7], "fr": [8]}, {}, {"de": [9, 10], "fr": [11, 12, 13, 14]}]
    langs = ["en", "de", "fr"]
    for side in ("right", "left"):
        batch = collate_variants([{"variant_input_ids": t} for t in tokens], 0, languages=langs, padding_side=side)
        assert batch["variant_languages"] == langs
        expected_index, rows = [], []
        for example in tokens:
            line = []
            for lang in langs:
                if lang in example:
                    line.append(len(rows))
                    rows.append(example[lang])
                else:
                    line.append(-1)
            expected_index.append(line)
        assert batch["variant_index"].tolist() == expected_index
        width = max(len(r) for r in rows)
        assert batch["variant_input_ids"].shape == (len(rows), width)
        for n, row in enumerate(rows):
            pad = [0] * (width - len(row))
            assert batch["variant_input_ids"][n].tolist() == (row + pad if side == "right" else pad + row)
            assert batch["variant_attention_mask"][n].sum().item() == len(row)
    empty = collate_variants([{"variant_input_ids": {}}] * 2, 0, languages=langs)
    assert empty["variant_input_ids"].shape[0] == 0 and (empty["variant_index"] == -1).all()


def test_variant_batch_accepts_records_mappings_and_lists(tok):
    langs = ["en", "de", "fr"]
    record = PromptVariants("x", {"en": _user("Hi"), "fr": _user("Salut")})
    mapping = {"EN": [{"role": "user", "content": "Hi"}], "fr": [{"role": "user", "content": "Salut"}], "de": None}
    aligned = [[{"role": "user", "content": "Hi"}], None, [{"role": "user", "content": "Salut"}]]
    batches = [variant_batch(tok, [example], langs) for example in (record, mapping, aligned)]
    for batch in batches[1:]:
        for key in ("variant_input_ids", "variant_attention_mask", "variant_index"):
            assert torch.equal(batch[key], batches[0][key])
    assert batches[0]["variant_index"].tolist() == [[0, -1, 1]]
    assert tokenize_variants(tok, [None], langs) == [{}]
    with pytest.raises(UserError, match="2 prompt variants for 3"):
        variant_batch(tok, [aligned[:2]], langs)


@pytest.mark.shared_data
def test_released_mlc_file(shared_data, tok):
    pairs = load_preference_pairs(shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl", detect_language=False)
    langs = ["en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku"]
    out, report = attach_variants(pairs, languages=langs)
    assert len(out) == len(pairs) >= 170
    assert report.missing == {lang: 0 for lang in langs} and report.complete == len(pairs)
    batch = variant_batch(tok, [p.variants for p in out[:4]], langs)
    assert batch["variant_index"].tolist() == [list(range(10 * b, 10 * b + 10)) for b in range(4)]
    assert batch["variant_input_ids"].shape[0] == 40
    # each row ends with the generation prompt (right padding: last real token)
    last = batch["variant_attention_mask"].sum(1) - 1
    marker = tok.convert_tokens_to_ids("<|assistant|>")
    ends = batch["variant_input_ids"][torch.arange(40), last - 1]
    assert (ends == marker).all()
