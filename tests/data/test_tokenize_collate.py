"""Tokenisation (prompt masking, prefix check, truncation, counted skips) and collation."""

from __future__ import annotations

import pytest
import torch

from polyalign.data.collate import (
    Collator,
    LengthGroupedSampler,
    collate_mpo,
    collate_preference,
    collate_sft,
    collate_variants,
    pad_sequences,
)
from polyalign.data.records import Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.data.tokenize import (
    SKIP_EMPTY_RESPONSE,
    SKIP_PROMPT_TOO_LONG,
    TokenizeSettings,
    TokenizeStats,
    tokenize_pair,
    tokenize_parallel_pair,
    tokenize_variants,
)
from polyalign.errors import UserError
from polyalign.models import build_tiny_tokenizer

# A template whose generation prompt ends mid-word: "A: he" + "llo" re-tokenises differently.
MERGING_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}Q: {{ m.content }}\n{% else %}A: he{{ m.content }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}A: he{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def pair(pid="p1", user="Tell me how to stay safe online.", chosen="Use strong passwords.",
         rejected="Here is how to break in.", language="en") -> PreferencePair:
    return PreferencePair(id=pid, prompt=(Message("user", user),), chosen=chosen, rejected=rejected, language=language)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_prompt_masking_matches_the_rendered_template(tok):
    p = pair()
    stats = TokenizeStats()
    ex = tokenize_pair(p, tok, TokenizeSettings(max_length=512), stats)
    prompt_text = "<|user|>\n" + p.prompt[0].content + "<|end|>\n<|assistant|>\n"
    assert ex["prompt_input_ids"] == ids(tok, prompt_text)
    assert ex["chosen_input_ids"] == ids(tok, prompt_text + p.chosen + "<|end|>\n")[len(ex["prompt_input_ids"]):]
    batch = collate_preference([ex, tokenize_pair(pair("p2", user="Hi"), tok, TokenizeSettings(), stats)],
                               tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["ids"] == ["p1", "p2"]
    for row, resp in ((0, p.chosen), (2, p.rejected)):
        masked = batch["input_ids"][row][batch["response_mask"][row]].tolist()
        assert tok.decode(masked) == resp + "<|end|>\n"
        n_real = int(batch["attention_mask"][row].sum())
        # Padding never counts and the prompt never counts.
        assert not batch["response_mask"][row, n_real:].any()
        assert not batch["response_mask"][row, : len(ex["prompt_input_ids"])].any()
        assert (batch["input_ids"][row, n_real:] == tok.pad_token_id).all()
    assert stats.kept == 2 and not stats.skipped


def test_prefix_mismatch_error_names_the_example_and_fallback_concatenates(tok):
    merging = build_tiny_tokenizer()
    merging.chat_template = MERGING_TEMPLATE
    p = pair("ex-42", user="hi", chosen="llo there", rejected="llo world")
    with pytest.raises(UserError) as err:
        tokenize_pair(p, merging, TokenizeSettings(), TokenizeStats())
    assert "ex-42" in str(err.value) and "prefix" in str(err.value)
    stats = TokenizeStats()
    ex = tokenize_pair(p, merging, TokenizeSettings(prefix_mismatch="concatenate"), stats)
    assert ex["prompt_input_ids"] == ids(merging, "Q: hi\nA: he")
    assert ex["chosen_input_ids"] == ids(merging, "llo there")
    assert stats.prefix_fallbacks == 2


def test_plain_mode_without_template_appends_eos(tok):
    plain = TokenizeSettings(chat_template="plain")
    ex = tokenize_pair(pair(chosen="fine"), tok, plain, TokenizeStats())
    assert ex["prompt_input_ids"] == ids(tok, "Tell me how to stay safe online.")
    assert ex["chosen_input_ids"] == ids(tok, "fine") + [tok.eos_token_id]


def test_truncation_modes_keep_start_or_end_and_cut_the_response_last(tok):
    p = pair(user="one two three four five six seven eight nine ten", chosen="alpha beta gamma delta " * 5)
    full_prompt = tokenize_pair(p, tok, TokenizeSettings(), TokenizeStats())["prompt_input_ids"]
    full_chosen = tokenize_pair(p, tok, TokenizeSettings(), TokenizeStats())["chosen_input_ids"]
    stats = TokenizeStats()
    end = tokenize_pair(p, tok, TokenizeSettings(max_length=20, max_prompt_length=8, truncation_mode="keep_end"), stats)
    start = tokenize_pair(p, tok, TokenizeSettings(max_length=20, max_prompt_length=8, truncation_mode="keep_start"),
                          stats)
    assert end["prompt_input_ids"] == full_prompt[-8:]
    assert start["prompt_input_ids"] == full_prompt[:8]
    assert end["chosen_input_ids"] == full_chosen[:12]  # 20 - 8: the response keeps its start
    assert len(end["rejected_input_ids"]) <= 12
    assert stats.truncated_prompts == 2 and stats.truncated_responses >= 2


def test_overlong_prompts_and_emptied_responses_are_counted_skips_or_errors(tok):
    long_user = "word " * 60
    stats = TokenizeStats()
    settings = TokenizeSettings(max_length=32)
    assert tokenize_pair(pair("long-1", user=long_user), tok, settings, stats) is None
    assert tokenize_pair(pair("ok-1"), tok, settings, stats) is not None
    assert tokenize_pair(pair("long-2", user=long_user), tok, settings, stats) is None
    assert stats.skipped == {SKIP_PROMPT_TOO_LONG: 2}
    assert stats.skipped_ids[SKIP_PROMPT_TOO_LONG] == ["long-1", "long-2"]
    assert stats.kept == 1 and "skipped 2" in stats.summary() and "long-1" in stats.summary()
    with pytest.raises(UserError, match="long-1"):
        tokenize_pair(pair("long-1", user=long_user), tok, TokenizeSettings(max_length=32, on_overlong="error"),
                      TokenizeStats())
    # A plain-mode empty response has no tokens at all: counted as an emptied response.
    stats = TokenizeStats()
    assert tokenize_pair(pair("empty", chosen=""), tok, TokenizeSettings(chat_template="plain"), stats) is None
    assert stats.skipped == {SKIP_EMPTY_RESPONSE: 1}
    # MPO: a too-long dominant side skips the whole example, with the side named.
    stats = TokenizeStats()
    pp = ParallelPair("m1", dominant=pair("m1-en", user=long_user), target=pair("m1-zh", language="zh"))
    assert tokenize_parallel_pair(pp, tok, settings, stats) is None
    assert stats.skipped == {f"dominant {SKIP_PROMPT_TOO_LONG}": 1}


def test_mpo_and_sft_batches(tok):
    stats = TokenizeStats()
    s = TokenizeSettings()
    pp = [ParallelPair(f"m{i}", dominant=pair(f"m{i}-en", chosen="No." * (i + 1)),
                       target=pair(f"m{i}-zh", user="你好", language="zh")) for i in range(3)]
    examples = [tokenize_parallel_pair(p, tok, s, stats) for p in pp]
    batch = collate_mpo(examples, tok.pad_token_id)
    assert set(batch) == {"target", "dominant", "ids"} and batch["ids"] == ["m0", "m1", "m2"]
    assert batch["target"]["input_ids"].shape[0] == 6 and batch["target"]["languages"] == ["zh"] * 3
    assert batch["dominant"]["ids"] == ["m0-en", "m1-en", "m2-en"]
    examples[0]["dominant"].update(ref_chosen_avg_logps=-1.0, ref_rejected_avg_logps=-2.0,
                                   ref_chosen_pooled=torch.ones(4), ref_rejected_pooled=torch.zeros(4))
    for e in examples[1:]:
        e["dominant"].update(ref_chosen_avg_logps=-3.0, ref_rejected_avg_logps=-4.0,
                             ref_chosen_pooled=torch.ones(4) * 2, ref_rejected_pooled=torch.zeros(4))
    dom = Collator("mpo", tok.pad_token_id)(examples)["dominant"]
    assert dom["ref_avg_logps"].tolist() == [-1.0, -3.0, -3.0, -2.0, -4.0, -4.0]
    assert dom["ref_pooled"].shape == (6, 4) and dom["ref_pooled"][1, 0] == 2.0
    sft = collate_sft([e["target"] for e in examples], tok.pad_token_id)
    assert sft["input_ids"].shape[0] == 3 and torch.equal(sft["input_ids"],
                                                          batch["target"]["input_ids"][:3, : sft["input_ids"].shape[1]])


def test_variant_batch_indexes_missing_languages_with_minus_one(tok):
    s = TokenizeSettings()
    v1 = tokenize_variants(PromptVariants("a", {"en": (Message("user", "hello"),), "zh": (Message("user", "你好"),)}),
                           tok, s)
    v2 = tokenize_variants(PromptVariants("b", {"en": (Message("user", "bye now"),)}), tok, s)
    out = collate_variants([{"variant_input_ids": v1}, {"variant_input_ids": v2}], tok.pad_token_id,
                           padding_side="left")
    assert out["variant_languages"] == ["en", "zh"]
    assert out["variant_index"].tolist() == [[0, 1], [2, -1]]
    rows = out["variant_input_ids"]
    assert rows.shape[0] == 3
    # Left padding: the last token of every row is real.
    assert out["variant_attention_mask"][:, -1].all()
    assert rows[2][out["variant_attention_mask"][2].bool()].tolist() == v2["en"]


def test_pad_and_length_grouped_sampler():
    padded = pad_sequences([[1, 2, 3], [4]], 0, pad_to_multiple_of=4)
    assert padded.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    lengths = [5, 100, 7, 90, 6, 95, 8, 99]
    sampler = LengthGroupedSampler(lengths, batch_size=2, mega=2, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(8))
    for start in range(0, 8, 4):  # each mega-batch of 4 is sorted longest first
        chunk = [lengths[i] for i in order[start : start + 4]]
        assert chunk == sorted(chunk, reverse=True)
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(8))
