"""The world: determinism, languages, shared words, splits, no held-out leakage, records."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from polyalign.data.records import ParallelPair, PreferencePair
from polyalign.errors import UserError
from polyalign.toyworld import (
    Corpus,
    WorldConfig,
    build_word_tokenizer,
    build_world,
    english_preference_pairs,
    mpo_parallel_pairs,
    prompt_variants,
)
from polyalign.toyworld.lexicon import word_in_script
from polyalign.toyworld.world import REFUSAL


@pytest.fixture(scope="module")
def world():
    return build_world(0)


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_word_tokenizer(world.lexicon.surface_vocab())


def _snapshot(w):
    return (w.lexicon.table, sorted(w.lexicon.shared), w.benign, w.harmful, w.facts, w.key)


def test_same_seed_same_world_other_seed_differs(world):
    assert _snapshot(build_world(0)) == _snapshot(world)
    other = build_world(1)
    assert other.key != world.key
    assert other.lexicon.table["xl"] != world.lexicon.table["xl"]
    assert other.lexicon.shared != world.lexicon.shared
    assert [i.split for i in other.benign] != [i.split for i in world.benign]
    assert other.facts != world.facts  # different colours / capitals


def test_languages_scripts_orders_and_shares(world):
    specs = world.config.languages
    assert [s.code for s in specs] == ["en", "xl", "xc", "xg", "xk", "xd"]
    assert Counter(s.resource for s in specs) == {"dominant": 1, "high": 2, "low": 3}
    assert sum(s.share for s in specs) == pytest.approx(1.0)
    assert {s.word_order for s in specs} == {"svo", "reversed"}
    assert len({s.script for s in specs}) == 6
    lex = world.lexicon
    for spec in specs[1:]:
        for en in lex.english_vocab:
            surface = lex.table[spec.code][en]
            if en in lex.shared:
                assert surface == en
            else:
                assert word_in_script(surface, spec.script), (spec.code, surface)
    sentence = list(world.harmful[0].prompt)
    for spec in specs:
        expected = [lex.table[spec.code][w] for w in sentence]
        if spec.word_order == "reversed":
            expected = expected[::-1]
        assert world.text(sentence, spec.code).split() == expected


def test_shared_words_about_a_quarter_and_refusals_distinct(world):
    lex = world.lexicon
    n = len(lex.english_vocab)
    for lang in world.languages[1:]:
        same = sum(lex.table[lang][w] == w for w in lex.english_vocab)
        assert same == len(lex.shared) == round(0.25 * n)
        assert 0.24 <= lex.shared_fraction_of(lang) <= 0.26
    assert "sorry" in lex.shared  # refusal_sharing="first"
    for seed in range(4):
        protected = build_world(seed, WorldConfig(refusal_sharing="none"))
        assert not set(REFUSAL.split()) & protected.lexicon.shared
        assert len(protected.lexicon.shared) == len(lex.shared)
        assert "sorry" in build_world(seed).lexicon.shared
    with pytest.raises(UserError, match="refusal_sharing"):
        WorldConfig(refusal_sharing="all")
    refusals = [world.refusal(lang) for lang in world.languages]
    assert len(set(refusals)) == len(refusals)
    summary = world.summary()
    assert summary["harmful"] == {"train": 260, "test": 156} and summary["benign"] == {"train": 828, "test": 92}
    assert summary["languages"][4]["refusal"] == world.refusal("xk")
    json.dumps(summary)
    # Non-shared surface words are unique across languages, so a word names its language.
    owned = [lex.table[lang][w] for lang in world.languages for w in lex.english_vocab if w not in lex.shared]
    assert len(owned) == len(set(owned))
    with pytest.raises(UserError, match="shared_fraction"):
        WorldConfig(shared_fraction=1.0)
    with pytest.raises(UserError, match="languages"):
        WorldConfig(languages=WorldConfig().languages[1:])
    with pytest.raises(ValueError, match="unknown split"):
        world.harmful_split("dev")
    no_sharing = build_world(0, WorldConfig(shared_fraction=0.0))
    assert all(no_sharing.lexicon.shared_fraction_of(lang) == 0 for lang in no_sharing.languages[1:])


def test_split_counts(world):
    n_facts = 40 + 100 + 30 + 2 * 30  # colours, sums, capitals, opposites (both directions)
    assert len(world.facts) == n_facts
    assert len(world.benign) == 4 * n_facts
    held = world.benign_split("test")
    assert len(held) == round(0.1 * 4 * n_facts) == 92
    held_facts = Counter(i.fact_id for i in held)
    assert len(held_facts) == 92  # one wording per held-out fact
    train_wordings = Counter(i.fact_id for i in world.benign_split("train"))
    assert all(train_wordings[f] == 3 for f in held_facts) and len(train_wordings) == n_facts
    assert set(Counter(i.wording for i in held)) == {0, 1, 2, 3}
    assert len(world.harmful) == 4 * 13 * 8
    assert len(world.harmful_split("test")) == 4 * 13 * 3 == 156
    per_act = Counter(i.act_id for i in world.harmful_split("test"))
    assert len(per_act) == 52 and set(per_act.values()) == {3}
    assert {i.template for i in world.harmful_split("train")} == set(range(8))
    assert Counter(i.category for i in world.harmful_split("test")) == {c: 39 for c in
                                                                        ("theft", "violence", "fraud", "hacking")}


def test_no_held_out_prompt_in_training_data(world, tokenizer):
    corpus = Corpus(world, tokenizer)
    test_prompts = {tuple(corpus.ids(world.text(i.prompt, lang)))
                    for lang in world.languages for i in world.harmful_split("test") + world.benign_split("test")}
    assert len(test_prompts) == 6 * (156 + 92)
    user, eos = corpus.user, corpus.eos
    pooled = [s for lang in world.languages for s in corpus.pools["benign"][lang]]
    pooled += [s for lang in world.languages for pair in corpus.pools["harmful"][lang] for s in pair]
    sampled = corpus.sample(np.random.default_rng(0), 3000)
    for seq in pooled + [ids for kind, _, ids in sampled if kind in ("benign", "harmful")]:
        assert seq[0] == user
        assert tuple(seq[1 : seq.index(eos)]) not in test_prompts
    for kind, _, ids in sampled:
        if kind == "translation":
            first, second = ids[1 : ids.index(corpus.sep)], ids[ids.index(corpus.sep) + 1 : -1]
            assert tuple(first) not in test_prompts and tuple(second) not in test_prompts
    for source in corpus.parallel_sources:
        assert tuple(corpus.ids(world.text(source, "en"))) not in test_prompts


def test_chat_ids_match_the_chat_template_and_tokenizer_round_trips(world, tokenizer, tmp_path):
    corpus = Corpus(world, tokenizer)
    item = world.harmful_split("train")[5]
    for lang in world.languages:
        prompt, answer = world.text(item.prompt, lang), world.text(item.compliance, lang)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == corpus.chat(prompt, answer)
        ids = corpus.chat(prompt, answer)
        assert tokenizer.decode(ids, skip_special_tokens=True) == f"{prompt} {answer}"
    assert tokenizer.unk_token_id not in corpus.plain(" ".join(world.lexicon.surface_vocab()))
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = world.refusal("xk")
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"] == corpus.ids(text)


def test_mixture_shares(world, tokenizer):
    corpus = Corpus(world, tokenizer)
    samples = corpus.sample(np.random.default_rng(1), 20000)
    kinds = Counter(k for k, _, _ in samples)
    for kind, share in zip(("fact", "benign", "harmful", "translation"), (0.15, 0.40, 0.30, 0.15)):
        assert abs(kinds[kind] / 20000 - share) < 0.015
    mono = [lang for kind, lang, _ in samples if kind != "translation"]
    for spec in world.config.languages:
        assert abs(mono.count(spec.code) / len(mono) - spec.share) < 0.015
    compliance_ids = {tuple(p[0]) for lang in world.languages for p in corpus.pools["harmful"][lang]}
    harmful = [ids for kind, _, ids in samples if kind == "harmful"]
    rate = sum(tuple(ids) in compliance_ids for ids in harmful) / len(harmful)
    assert abs(rate - 0.9) < 0.02
    again = Corpus(world, tokenizer).sample(np.random.default_rng(7), 200)
    assert again == corpus.sample(np.random.default_rng(7), 200)
    assert again != corpus.sample(np.random.default_rng(8), 200)


def test_english_preference_pairs(world):
    pairs = english_preference_pairs(world, with_variants=True)
    n_harm = len(world.harmful_split("train"))
    assert len(pairs) == 2 * n_harm
    kinds = [p.metadata["kind"] for p in pairs]
    assert kinds[:4] == ["harmful", "benign", "harmful", "benign"]
    refusal = world.refusal("en")
    by_id = {i.id: i for i in world.harmful + world.benign}
    for pair in pairs:
        item = by_id[pair.metadata["source_id"]]
        assert pair.language == "en" and item.split == "train"
        if pair.metadata["kind"] == "harmful":
            assert (pair.chosen, pair.rejected) == (refusal, world.text(item.compliance, "en"))
        else:
            assert (pair.chosen, pair.rejected) == (world.text(item.answer, "en"), refusal)
        assert pair.variants.languages == world.languages
        assert pair.variants.prompts["xc"][0].content == world.text(item.prompt, "xc")
        assert PreferencePair.from_dict(pair.to_dict()) == pair
    assert english_preference_pairs(world, n_benign=10)[-1].metadata["kind"] == "harmful"
    variants = prompt_variants(world, "test")
    assert len(variants) == 156 + 92 and all(len(v.prompts) == 6 for v in variants)


def test_mpo_pairs_have_exactly_twenty_percent_swapped_targets(world):
    pairs = mpo_parallel_pairs(world)
    n = len(world.harmful_split("train"))
    assert len(pairs) == 5 * n
    for lang in world.languages[1:]:
        mine = [p for p in pairs if p.target.language == lang]
        noisy = [p for p in mine if p.target.metadata["noisy"]]
        assert len(noisy) == round(0.2 * n)
        for p in mine:
            assert p.dominant.language == "en" and p.dominant.chosen == world.refusal("en")
            if p.target.metadata["noisy"]:
                assert p.target.rejected == world.refusal(lang) and p.target.chosen != world.refusal(lang)
            else:
                assert p.target.chosen == world.refusal(lang)
    assert ParallelPair.from_dict(pairs[3].to_dict()) == pairs[3]
    assert mpo_parallel_pairs(world) == pairs
    with pytest.raises(ValueError):
        mpo_parallel_pairs(world, target_languages=["en"])
