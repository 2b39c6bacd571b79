"""Form preference pairs from judged self-generations and translations.

Response pairs (self-generation): among one prompt's samples that passed the text filters,
``chosen`` = the first (lowest sample index) judged ``safe``, ``rejected`` = the first
judged ``unsafe``; ``invalid`` / ``error`` verdicts are never used. A prompt without a safe
(or unsafe) usable sample yields no pair: counted as ``no_safe_response`` /
``no_unsafe_response`` for its language.

Outputs (all canonical records, :mod:`polyalign.data.records`):

* **MPO** (:func:`mpo_pairs`): one :class:`ParallelPair` per (source pair, target
  language), id ``"<id>-<lang>"``. Dominant side: the source prompt, ``chosen`` = the
  model's own safe answer (strategy ``dominant_chosen: model``) or the data set's chosen
  answer (``dataset``), ``rejected`` = the data set's unsafe answer. Target side: the
  translation of the dominant side (``target: translate``) or the translated prompt with
  the model's own judged samples (``target: selfgen``).
* **MLC** (:func:`mlc_pairs`): the source pair with ``variants`` = the prompt in the
  dominant language plus every target language whose translation passed the filters.
* **DPO** (:func:`dpo_pairs`): one :class:`PreferencePair` per (source pair, target
  language) in the target language (translated answers or self-generated ones).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from polyalign.data.build.filters import FilterConfig, pair_reasons
from polyalign.data.formats.preference import prompt_text
from polyalign.data.records import Message, ParallelPair, PreferencePair, PromptVariants

# A side of a pair: (prompt turns, chosen, rejected), or the reason it could not be made.
Side = tuple[tuple[Message, ...], str, str]


def response_pair(samples: Sequence[dict[str, Any]], *,
                  need_rejected: bool = True) -> tuple[str | None, str | None, str | None]:
    """``(chosen, rejected, failure_reason)`` from one prompt's samples.

    Each sample: ``{"sample": int, "text": str, "label": str | None, "filter": reason | None}``.
    ``failure_reason`` is ``None`` when the needed answers exist.
    """
    usable = sorted((s for s in samples if s.get("filter") is None), key=lambda s: s["sample"])
    chosen = next((s["text"] for s in usable if s.get("label") == "safe"), None)
    rejected = next((s["text"] for s in usable if s.get("label") == "unsafe"), None)
    if chosen is None:
        return None, rejected, "no_safe_response"
    if need_rejected and rejected is None:
        return chosen, None, "no_unsafe_response"
    return chosen, rejected, None


def _meta(source: PreferencePair, **extra: Any) -> dict[str, Any]:
    return {"source_id": source.id, **{k: v for k, v in extra.items() if v is not None}}


def mpo_pairs(
    sources: Sequence[PreferencePair],
    languages: Sequence[str],
    dominant_chosen: dict[str, str | tuple[str, str]],
    target_sides: dict[tuple[str, str], Side | str],
    *,
    metadata: dict[str, Any] | None = None,
) -> tuple[list[ParallelPair], Counter]:
    """MPO records and ``Counter[(language, reason)]`` of what could not be built.

    ``dominant_chosen[id]``: the chosen dominant answer, or ``("drop", reason)``;
    ``target_sides[(id, lang)]``: a :data:`Side` or a reason string.
    """
    out, dropped = [], Counter()
    for source in sources:
        chosen = dominant_chosen[source.id]
        for lang in languages:
            if isinstance(chosen, tuple):
                dropped[(lang, "dominant:" + chosen[1])] += 1
                continue
            side = target_sides[(source.id, lang)]
            if isinstance(side, str):
                dropped[(lang, side)] += 1
                continue
            pid = f"{source.id}-{lang}"
            meta = _meta(source, **(metadata or {}))
            dominant = PreferencePair(pid, source.prompt, chosen, source.rejected, source.language, dict(meta))
            target = PreferencePair(pid, side[0], side[1], side[2], lang, dict(meta))
            out.append(ParallelPair(pid, dominant, target))
    return out, dropped


def dpo_pairs(
    sources: Sequence[PreferencePair],
    languages: Sequence[str],
    target_sides: dict[tuple[str, str], Side | str],
    *,
    include_dominant: bool = False,
    metadata: dict[str, Any] | None = None,
) -> tuple[list[PreferencePair], Counter]:
    """Per-language DPO pairs (target languages, plus the sources when ``include_dominant``)."""
    out, dropped = [], Counter()
    for source in sources:
        if include_dominant:
            out.append(PreferencePair(source.id, source.prompt, source.chosen, source.rejected, source.language,
                                      _meta(source, **(metadata or {}))))
        for lang in languages:
            side = target_sides[(source.id, lang)]
            if isinstance(side, str):
                dropped[(lang, side)] += 1
                continue
            out.append(PreferencePair(f"{source.id}-{lang}", side[0], side[1], side[2], lang,
                                      _meta(source, **(metadata or {}))))
    return out, dropped


def mlc_pairs(
    sources: Sequence[PreferencePair],
    languages: Sequence[str],
    prompts: dict[tuple[str, str], tuple[Message, ...] | str],
    *,
    metadata: dict[str, Any] | None = None,
) -> tuple[list[PreferencePair], Counter]:
    """Source pairs carrying their prompt in every language whose translation survived.

    A missing language is counted as ``(lang, reason)``; a pair left with no target
    language at all is dropped (``(dominant, "no_variants")``).
    """
    out, dropped = [], Counter()
    for source in sources:
        variants = {source.language: source.prompt}
        for lang in languages:
            prompt = prompts[(source.id, lang)]
            if isinstance(prompt, str):
                dropped[(lang, prompt)] += 1
            else:
                variants[lang] = prompt
        if len(variants) == 1:
            dropped[(source.language, "no_variants")] += 1
            continue
        meta = _meta(source, **(metadata or {}))
        out.append(PreferencePair(source.id, source.prompt, source.chosen, source.rejected, source.language, meta,
                                  PromptVariants(source.id, variants)))
    return out, dropped


def filter_pairs(records: Sequence[Any], config: FilterConfig) -> tuple[list[Any], Counter]:
    """Drop degenerate and duplicate pairs; ``Counter[(language, reason)]`` of the dropped.

    A parallel pair is judged by its target side (its dominant side repeats by design).
    """
    halves = [r.target if isinstance(r, ParallelPair) else r for r in records]
    reasons = pair_reasons([(h.language, prompt_text(h.prompt), h.chosen, h.rejected) for h in halves], config)
    kept, dropped = [], Counter()
    for record, half, reason in zip(records, halves, reasons, strict=True):
        if reason is None:
            kept.append(record)
        else:
            dropped[(half.language, reason)] += 1
    return kept, dropped


def translated_prompt(source: PreferencePair, lang: str,
                      table: dict[tuple[str, str, str], dict[str, Any]]) -> tuple[Message, ...] | str:
    """The source prompt's turns in ``lang`` from the translation rows
    (``table[(id, lang, "prompt.<i>")]``), or why there is none: ``dominant_dropped`` (never
    translated) or ``prompt_<filter reason>``."""
    turns = []
    for i, message in enumerate(source.prompt):
        row = table.get((source.id, lang, f"prompt.{i}"))
        if row is None:
            return "dominant_dropped"
        if row["filter"]:
            return f"prompt_{row['filter']}"
        turns.append(Message(message.role, row["text"]))
    return tuple(turns)


def translated_sides(
    sources: Sequence[PreferencePair],
    languages: Sequence[str],
    table: dict[tuple[str, str, str], dict[str, Any]],
    prompts: dict[tuple[str, str], tuple[Message, ...] | str],
) -> dict[tuple[str, str], Side | str]:
    """Target sides from translated answers (``target: translate``): the translated prompt
    with the translated ``chosen`` / ``rejected``, or the first failing part's reason
    (``prompt_*``, ``chosen_<filter reason>``, ``rejected_<filter reason>``)."""
    sides: dict[tuple[str, str], Side | str] = {}
    for source in sources:
        for lang in languages:
            turns = prompts[(source.id, lang)]
            if isinstance(turns, str):
                sides[(source.id, lang)] = turns
                continue
            answers = {name: table[(source.id, lang, name)] for name in ("chosen", "rejected")}
            bad = next((f"{name}_{row['filter']}" for name, row in answers.items() if row["filter"]), None)
            sides[(source.id, lang)] = bad or (turns, answers["chosen"]["text"], answers["rejected"]["text"])
    return sides
