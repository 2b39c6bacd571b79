"""The synthetic multilingual world of polyalign's offline demo.

A seeded world of six languages (English dominant, two high-resource, three low-resource;
different invented lexicons, scripts and word orders, ~25% shared words) with benign tasks
whose answers are checkable and harmful requests with a compliance and a refusal in every
language; a word-level tokenizer; a pretraining mixture; a cached tiny-Llama base model;
exact-match per-language scoring; and the alignment records (English DPO pairs, MPO
parallel pairs, MLC prompt variants) the demo trains on.

Public API::

    world = build_world(seed, WorldConfig())
    folder = pretrain_base_model(world, out_dir, PretrainConfig())   # cached by config hash
    model, tokenizer, meta = load_base_model(folder)
    metrics = evaluate_world(model, tokenizer, world, "test")        # {lang: {metric: value}}
"""

from polyalign.toyworld.corpus import Corpus, MixtureConfig
from polyalign.toyworld.evaluate import evaluate_world, evaluate_world_rows, generate_responses
from polyalign.toyworld.lexicon import DEFAULT_LANGUAGES, LanguageSpec, Lexicon
from polyalign.toyworld.pairs import english_preference_pairs, mpo_parallel_pairs, prompt_variants
from polyalign.toyworld.pretrain import PretrainConfig, load_base_model, pretrain_base_model
from polyalign.toyworld.scoring import METRICS, aggregate, score_response
from polyalign.toyworld.tokenizer import build_word_tokenizer
from polyalign.toyworld.world import World, WorldConfig, build_world

__all__ = [
    "Corpus", "DEFAULT_LANGUAGES", "LanguageSpec", "Lexicon", "METRICS", "MixtureConfig", "PretrainConfig",
    "World", "WorldConfig", "aggregate", "build_word_tokenizer", "build_world", "english_preference_pairs",
    "evaluate_world", "evaluate_world_rows", "generate_responses", "load_base_model", "mpo_parallel_pairs",
    "pretrain_base_model", "prompt_variants", "score_response",
]
