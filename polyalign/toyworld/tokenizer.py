"""A word-level tokenizer for the synthetic world.

Why not the project's byte-level BPE (:func:`polyalign.models.build_tiny_tokenizer`)? Its
910 tokens are trained on real-language text: the world's invented Hangul, Devanagari,
Greek and Cyrillic words would split into 3-10 byte tokens each, making sequences 3-5x
longer (and pretraining 3-5x slower, which the 10-minute demo budget cannot afford), and a
word's shared / language-specific identity would blur into byte pieces. A word-level
vocabulary keeps one token per world word (~2,000 tokens), so the shared-word fraction is
exactly the shared-token fraction.

Conventions are the project's (same special tokens with the same ids 0..6, same chat
template, eos = ``<|end|>``, nothing added automatically), so every polyalign layer -- chat
rendering, collation, generation, saving and reloading -- treats it like any other tokenizer.
Text is split on whitespace; decoding joins words with single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from polyalign.models import SPECIAL_TOKENS, UNK, wrap_tokenizer

# Separates the two sides of a translation line in the pretraining corpus.
TRANSLATION_SEP = "<=>"


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (order kept; special tokens take ids 0..6).

    Unknown words map to ``<unk>``. ``padding_side`` is ``"right"`` like the project's
    tokenizer; callers switch to left padding for generation.
    """
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in [TRANSLATION_SEP, *words]:
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"not a single word: {word!r}")
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap_tokenizer(backend, clean_up_tokenization_spaces=False)
