"""Languages of the synthetic world: scripts, word orders, resource levels and lexicons.

Every non-English language is a seeded word-for-word lexicon over the English vocabulary:
each English word gets an invented word built from syllables of the language's script, so
languages differ in surface form (and, through ``word_order``, in order) but are exactly
parallel, which lets the world check answers by exact matching.

Shared words: a seeded ``shared_fraction`` (default 25%) of the English vocabulary keeps its
English form in *every* language (the analogue of shared subwords, names and loanwords).
The feasibility run (``TOYWORLD-NOTES.md``) found that English-only preference tuning
transferred to other languages only when such shared words existed. Words listed as
``protected`` are never shared; words listed as ``forced`` always are (they count towards
the fraction).

Word orders: ``"svo"`` keeps English order; ``"reversed"`` reverses every sentence's words
(prompts, answers and translation lines alike) -- an explicit, easily checked order axis.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

WORD_ORDERS = ("svo", "reversed")
RESOURCE_LEVELS = ("dominant", "high", "low")


@dataclass(frozen=True)
class LanguageSpec:
    """One language of the world.

    ``share`` is its share of the pretraining mixture; ``script`` one of :data:`SCRIPTS`
    keys (``"english"`` for the dominant language, which uses real English words).
    """

    code: str
    name: str
    script: str
    word_order: str
    resource: str
    share: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# Consonant and vowel inventories per script; invented words are CV syllables.
SCRIPTS: dict[str, tuple[str, str]] = {
    "latin": ("bdfgklmnprstvz", "aeiou"),
    "cyrillic": ("бвгджзклмнпрстфх", "аеиоуыя"),
    "greek": ("βγδζθκλμνξπρστφχ", "αεηιουω"),
    # Devanagari: consonant letters, then dependent vowel signs ("" = inherent vowel).
    "devanagari": ("कखगजटडतदनपबमरलवसह", "\u093e\u093f\u0940\u0941\u0942\u0947\u094b"),
}

# Unicode blocks used to check that a language's invented words are in its script.
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x61, 0x7A),),
    "cyrillic": ((0x0400, 0x04FF),),
    "greek": ((0x0370, 0x03FF),),
    "hangul": ((0xAC00, 0xD7A3),),
    "devanagari": ((0x0900, 0x097F),),
}

DEFAULT_LANGUAGES: tuple[LanguageSpec, ...] = (
    LanguageSpec("en", "English", "english", "svo", "dominant", 0.45),
    LanguageSpec("xl", "Latinic", "latin", "svo", "high", 0.20),
    LanguageSpec("xc", "Cyrillic-Reversed", "cyrillic", "reversed", "high", 0.20),
    LanguageSpec("xg", "Hellenic", "greek", "svo", "low", 0.05),
    LanguageSpec("xk", "Hangulic-Reversed", "hangul", "reversed", "low", 0.05),
    LanguageSpec("xd", "Devanagaric", "devanagari", "svo", "low", 0.05),
)


def _syllable(script: str, rng: random.Random) -> str:
    if script == "hangul":
        # A precomposed Hangul syllable: lead (19) x vowel (21) x optional tail (28).
        lead, vowel = rng.randrange(19), rng.randrange(21)
        tail = rng.choice([0, 0, 0, rng.randrange(1, 28)])
        return chr(0xAC00 + (lead * 21 + vowel) * 28 + tail)
    consonants, vowels = SCRIPTS[script]
    if script == "devanagari":
        return rng.choice(consonants) + rng.choice(["", *vowels])
    return rng.choice(consonants) + rng.choice(vowels)


def invent_word(script: str, rng: random.Random) -> str:
    """A 2-3 syllable invented word in ``script`` (1-2 syllables for Hangul blocks)."""
    n = rng.choice([1, 2, 2]) if script == "hangul" else rng.choice([2, 2, 3])
    return "".join(_syllable(script, rng) for _ in range(n))


def word_in_script(word: str, script: str) -> bool:
    """True when every character of ``word`` lies in ``script``'s Unicode ranges."""
    ranges = SCRIPT_RANGES[script]
    return bool(word) and all(any(lo <= ord(ch) <= hi for lo, hi in ranges) for ch in word)


class Lexicon:
    """Word-for-word translation from English into every language of the world.

    ``table[lang][english_word]`` is the surface word; ``shared`` the English words that
    keep their form everywhere. Built deterministically from ``seed``.
    """

    def __init__(
        self,
        english_vocab: Sequence[str],
        languages: Sequence[LanguageSpec],
        *,
        shared_fraction: float,
        seed: int,
        protected: Iterable[str] = (),
        forced: Iterable[str] = (),
    ) -> None:
        if not 0.0 <= shared_fraction < 1.0:
            raise ValueError("shared_fraction must be in [0, 1)")
        self.languages = {spec.code: spec for spec in languages}
        vocab = list(dict.fromkeys(english_vocab))  # de-duplicated, order kept
        rng = random.Random(f"lexicon-{seed}")
        protected_set, forced_list = set(protected), [w for w in dict.fromkeys(forced) if w in vocab]
        if protected_set & set(forced_list):
            raise ValueError("a word cannot be both protected and forced to be shared")
        candidates = [w for w in vocab if w not in protected_set and w not in forced_list]
        # Forced words count towards the shared fraction (none when it is 0); the rest are random.
        n_total = round(shared_fraction * len(vocab))
        forced_list = forced_list[:n_total]
        n_random = n_total - len(forced_list)
        self.shared: frozenset[str] = frozenset(forced_list + rng.sample(candidates, min(n_random, len(candidates))))
        used: set[str] = set(vocab)  # invented words never collide with English or each other
        self.table: dict[str, dict[str, str]] = {}
        for spec in languages:
            if spec.script == "english":
                self.table[spec.code] = {w: w for w in vocab}
                continue
            lang_rng = random.Random(f"lexicon-{seed}-{spec.code}")
            entries: dict[str, str] = {}
            for word in vocab:
                if word in self.shared:
                    entries[word] = word
                    continue
                surface = invent_word(spec.script, lang_rng)
                while surface in used:
                    surface = invent_word(spec.script, lang_rng)
                used.add(surface)
                entries[word] = surface
            self.table[spec.code] = entries
        self.english_vocab: tuple[str, ...] = tuple(vocab)
        # surface word -> language code, for words that are not shared (unique by construction)
        self.owner: dict[str, str] = {}
        for code, entries in self.table.items():
            for en, surface in entries.items():
                if en not in self.shared:
                    self.owner[surface] = code

    def translate(self, english_words: Sequence[str], lang: str) -> list[str]:
        """The words of an English sentence in ``lang``, in that language's word order."""
        entries = self.table[lang]
        try:
            words = [entries[w] for w in english_words]
        except KeyError as exc:
            raise KeyError(f"word {exc.args[0]!r} is not in the world's English vocabulary") from None
        if self.languages[lang].word_order == "reversed":
            words.reverse()
        return words

    def render(self, english_words: Sequence[str], lang: str) -> str:
        """:meth:`translate` joined with single spaces."""
        return " ".join(self.translate(english_words, lang))

    def shared_fraction_of(self, lang: str) -> float:
        """Share of the vocabulary whose ``lang`` form equals the English form."""
        entries = self.table[lang]
        return sum(entries[w] == w for w in self.english_vocab) / len(self.english_vocab)

    def identify(self, words: Sequence[str]) -> str | None:
        """The language owning most of ``words`` that are not shared (``None`` if no such word).

        Ties go to the language listed first in the world.
        """
        counts: dict[str, int] = {}
        for word in words:
            code = self.owner.get(word)
            if code is not None:
                counts[code] = counts.get(code, 0) + 1
        if not counts:
            return None
        order = list(self.languages)
        return max(counts, key=lambda c: (counts[c], -order.index(c)))

    def surface_vocab(self) -> list[str]:
        """Every surface word of every language, de-duplicated, in a deterministic order."""
        words: dict[str, None] = {}
        for code in self.languages:
            for en in self.english_vocab:
                words[self.table[code][en]] = None
        return list(words)
