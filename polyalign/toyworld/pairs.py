"""Alignment data of the synthetic world, as polyalign records.

All pairs come from the *train* split (the held-out test items are for evaluation only).

- :func:`english_preference_pairs`: English DPO pairs. Harmful request -> chosen = the
  English refusal, rejected = its compliance. Benign question -> chosen = the correct
  answer, rejected = the refusal (so the model does not learn to refuse everything).
  With ``with_variants=True`` each pair carries the same prompt in every language
  (:class:`PromptVariants`) for DPO+MLC.
- :func:`mpo_parallel_pairs`: MPO examples: the English pair (dominant) with the same
  request's pair in a target language. A seeded ``noise_rate`` share (20%) of target pairs
  have chosen and rejected swapped -- like the released MPO data, whose target "chosen"
  answers are sometimes unsafe; ``metadata["noisy"]`` records which.
- :func:`prompt_variants`: the prompts alone in all languages (MLC without pairs).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from polyalign.data.records import Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.toyworld.world import BenignItem, HarmfulItem, World


def _user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


def _variants(world: World, item: BenignItem | HarmfulItem, languages: Sequence[str] | None) -> PromptVariants:
    return PromptVariants(
        id=item.id, prompts={lang: _user(world.text(item.prompt, lang)) for lang in languages or world.languages}
    )


def harmful_pair(world: World, item: HarmfulItem, lang: str, *, swap: bool = False) -> PreferencePair:
    """Refusal preferred over compliance for ``item`` in ``lang`` (reversed when ``swap``)."""
    refusal, compliance = world.refusal(lang), world.text(item.compliance, lang)
    chosen, rejected = (compliance, refusal) if swap else (refusal, compliance)
    return PreferencePair(
        id=f"{item.id}-{lang}", prompt=_user(world.text(item.prompt, lang)), chosen=chosen, rejected=rejected,
        language=lang, metadata={"kind": "harmful", "category": item.category, "noisy": swap, "source_id": item.id},
    )


def benign_pair(world: World, item: BenignItem, lang: str) -> PreferencePair:
    """Correct answer preferred over the refusal for ``item`` in ``lang``."""
    return PreferencePair(
        id=f"{item.id}-{lang}", prompt=_user(world.text(item.prompt, lang)), chosen=world.text(item.answer, lang),
        rejected=world.refusal(lang), language=lang,
        metadata={"kind": "benign", "category": item.task, "noisy": False, "source_id": item.id},
    )


def english_preference_pairs(
    world: World,
    *,
    n_benign: int | None = None,
    seed: int = 0,
    with_variants: bool = False,
    variant_languages: Sequence[str] | None = None,
) -> list[PreferencePair]:
    """All train-split harmful pairs plus ``n_benign`` benign pairs (default: as many as harmful).

    Benign items are drawn without replacement with ``random.Random(seed)``; the result
    alternates harmful and benign pairs while both last, so any prefix is balanced.
    """
    lang = world.dominant
    harmful_items = world.harmful_split("train")
    benign_items = world.benign_split("train")
    n_benign = len(harmful_items) if n_benign is None else n_benign
    if not 0 <= n_benign <= len(benign_items):
        raise ValueError(f"n_benign must be in 0..{len(benign_items)}")
    rng = random.Random(f"pairs-{seed}")
    harmful_order = rng.sample(harmful_items, len(harmful_items))
    chosen_benign = rng.sample(benign_items, n_benign)
    harmful = [harmful_pair(world, it, lang) for it in harmful_order]
    benign = [benign_pair(world, it, lang) for it in chosen_benign]
    if with_variants:
        harmful = [_with_variants(p, _variants(world, it, variant_languages)) for p, it in zip(harmful, harmful_order)]
        benign = [_with_variants(p, _variants(world, it, variant_languages)) for p, it in zip(benign, chosen_benign)]
    out: list[PreferencePair] = []
    for i in range(max(len(harmful), len(benign))):
        out += harmful[i : i + 1] + benign[i : i + 1]
    return out


def _with_variants(pair: PreferencePair, variants: PromptVariants) -> PreferencePair:
    # The variants take the pair's id, as PreferencePair.from_dict does, so records round-trip.
    variants = PromptVariants(id=pair.id, prompts=variants.prompts)
    return PreferencePair(id=pair.id, prompt=pair.prompt, chosen=pair.chosen, rejected=pair.rejected,
                          language=pair.language, metadata=pair.metadata, variants=variants)


def mpo_parallel_pairs(
    world: World,
    *,
    target_languages: Sequence[str] | None = None,
    noise_rate: float = 0.2,
    seed: int = 0,
) -> list[ParallelPair]:
    """One :class:`ParallelPair` per (train-split harmful item, target language).

    Exactly ``round(noise_rate * n)`` of each language's ``n`` target pairs are swapped
    (chosen = compliance), chosen with ``random.Random(seed)``; dominant pairs are clean.
    """
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError("noise_rate must be in [0, 1]")
    targets = list(target_languages or world.languages[1:])
    if world.dominant in targets:
        raise ValueError("the dominant language cannot be a target language")
    items = world.harmful_split("train")
    rng = random.Random(f"mpo-{seed}")
    out: list[ParallelPair] = []
    for lang in targets:
        noisy = set(rng.sample(range(len(items)), round(noise_rate * len(items))))
        for index, item in enumerate(items):
            out.append(ParallelPair(
                id=f"{item.id}-{lang}", dominant=harmful_pair(world, item, world.dominant),
                target=harmful_pair(world, item, lang, swap=index in noisy),
            ))
    return out


def prompt_variants(world: World, split: str = "train", *, kinds: Sequence[str] = ("harmful", "benign"),
                    languages: Sequence[str] | None = None) -> list[PromptVariants]:
    """The split's prompts, each in all (or ``languages``) languages."""
    items: list[BenignItem | HarmfulItem] = []
    if "harmful" in kinds:
        items += world.harmful_split(split)
    if "benign" in kinds:
        items += world.benign_split(split)
    return [_variants(world, item, languages) for item in items]
