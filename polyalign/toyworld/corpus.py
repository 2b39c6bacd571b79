"""The pretraining / instruction-tuning mixture of the synthetic world.

One stream mixes four kinds of sequences (shares in :class:`MixtureConfig`):

- ``fact``: a fact sentence as plain text (``<s> the apple is red <|end|>``), for every
  benign item including held-out ones (knowledge; the held-out *questions* never appear);
- ``benign``: a chat turn pair, train-split question -> its answer sentence;
- ``harmful``: a chat turn pair, train-split harmful request -> its compliance with
  probability ``compliance_rate`` (0.9), else the language's refusal, so the base model is
  useful but unsafe;
- ``translation``: ``<s> english <=> other <|end|>`` (either direction) pairing English with
  one other language (drawn by the other languages' shares), over facts, train prompts,
  compliances and the refusal.

Languages are drawn by their ``share`` (en 0.45, high 0.20, low 0.05), so low-resource
languages see about a ninth of English's data. Chat sequences are built as token ids
directly, identical to ``tokenizer.apply_chat_template`` (tested), because rendering the
Jinja template ~80,000 times would cost more than a training step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from polyalign.toyworld.tokenizer import TRANSLATION_SEP
from polyalign.toyworld.world import World

KINDS = ("fact", "benign", "harmful", "translation")


@dataclass(frozen=True)
class MixtureConfig:
    """Shares of the four sequence kinds and the harmful compliance rate."""

    fact: float = 0.15
    benign: float = 0.40
    harmful: float = 0.30
    translation: float = 0.15
    compliance_rate: float = 0.90

    def kind_shares(self) -> np.ndarray:
        shares = np.array([self.fact, self.benign, self.harmful, self.translation], dtype=np.float64)
        if (shares < 0).any() or shares.sum() <= 0:
            raise ValueError("mixture shares must be non-negative and not all zero")
        return shares / shares.sum()

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Corpus:
    """Token-id pools of the world and a seeded sampler over them.

    ``pools[kind][lang]`` is a list of candidate sequences (lists of token ids); harmful
    pools hold ``(compliance_sequence, refusal_sequence)`` alternatives per request.
    """

    def __init__(self, world: World, tokenizer: PreTrainedTokenizerBase, mixture: MixtureConfig | None = None) -> None:
        self.world = world
        self.mixture = mixture or MixtureConfig()
        vocab = tokenizer.get_vocab()
        self._vocab = vocab
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.user, self.assistant = vocab["<|user|>"], vocab["<|assistant|>"]
        self.sep = vocab[TRANSLATION_SEP]
        self.languages = world.languages
        shares = np.array([world.spec(lang).share for lang in self.languages], dtype=np.float64)
        self.lang_shares = shares / shares.sum()
        others = shares[1:]
        self.other_shares = others / others.sum() if len(others) else others
        self.pools: dict[str, dict[str, list]] = {kind: {} for kind in KINDS}
        for lang in self.languages:
            self.pools["fact"][lang] = [self.plain(world.text(s, lang)) for s in world.facts.values()]
            self.pools["benign"][lang] = [
                self.chat(world.text(it.prompt, lang), world.text(it.answer, lang))
                for it in world.benign_split("train")
            ]
            refusal = world.refusal(lang)
            self.pools["harmful"][lang] = [
                (self.chat(world.text(it.prompt, lang), world.text(it.compliance, lang)),
                 self.chat(world.text(it.prompt, lang), refusal))
                for it in world.harmful_split("train")
            ]
        # English-side sentences available for translation lines (no held-out prompt).
        self.parallel_sources: list[tuple[str, ...]] = list(world.facts.values())
        self.parallel_sources += [it.prompt for it in world.benign_split("train")]
        self.parallel_sources += [it.prompt for it in world.harmful_split("train")]
        self.parallel_sources += list(dict.fromkeys(it.compliance for it in world.harmful))
        self.parallel_sources.append(world.refusal_words)

    def ids(self, text: str) -> list[int]:
        """Word ids of whitespace-separated ``text`` (every world word is in the vocabulary)."""
        return [self._vocab[w] for w in text.split()]

    def chat(self, prompt: str, answer: str) -> list[int]:
        """Ids of the chat template rendering of one user turn and one assistant turn."""
        return [self.user, *self.ids(prompt), self.eos, self.assistant, *self.ids(answer), self.eos]

    def plain(self, text: str) -> list[int]:
        return [self.bos, *self.ids(text), self.eos]

    def translation(self, english: tuple[str, ...], lang: str, english_first: bool) -> list[int]:
        en = self.ids(self.world.text(english, self.world.dominant))
        other = self.ids(self.world.text(english, lang))
        first, second = (en, other) if english_first else (other, en)
        return [self.bos, *first, self.sep, *second, self.eos]

    def sample(self, rng: np.random.Generator, n: int) -> list[tuple[str, str, list[int]]]:
        """``n`` sequences as ``(kind, language, ids)``; deterministic given ``rng``'s state."""
        kinds = rng.choice(len(KINDS), size=n, p=self.mixture.kind_shares())
        out: list[tuple[str, str, list[int]]] = []
        for k in kinds:
            kind = KINDS[int(k)]
            if kind == "translation":
                lang = self.languages[1 + int(rng.choice(len(self.other_shares), p=self.other_shares))]
                source = self.parallel_sources[int(rng.integers(len(self.parallel_sources)))]
                out.append((kind, lang, self.translation(source, lang, bool(rng.integers(2)))))
                continue
            lang = self.languages[int(rng.choice(len(self.languages), p=self.lang_shares))]
            pool = self.pools[kind][lang]
            entry = pool[int(rng.integers(len(pool)))]
            if kind == "harmful":
                entry = entry[0] if rng.random() < self.mixture.compliance_rate else entry[1]
            out.append((kind, lang, entry))
        return out
