"""Prompt variants for MLC: build them, report what is missing, tokenise and collate them.

Sources:

- MLC JSONL (``load_preference_pairs``): every :class:`PreferencePair` already carries
  ``variants``; :func:`attach_variants` with ``variants=None`` restricts them to the
  configured languages and reports the gaps;
- multiway-parallel prompt files (``load_prompt_variants``): :func:`attach_variants` joins
  them to the pairs by ``id``.

An example lacking a language is kept: the language is masked (``variant_index = -1``) and
counted per language in the :class:`VariantReport`, so the data never shrinks silently.

Tokenisation (:func:`tokenize_variant`, used by the TRL route): the chat template with the
generation prompt and no response, exactly as TRL tokenises a conversational prompt
(``apply_chat_template(..., add_generation_prompt=True)``); a plain-string prompt is tokenised
as text. (Our own trainer tokenises variants with :func:`polyalign.data.tokenize.tokenize_variants`
under its ``TokenizeSettings``.) Collation is the shared
:func:`polyalign.data.collate.collate_variants`, giving the prompt-variant batch of
docs/architecture.md: ``variant_input_ids [N, T]``, ``variant_attention_mask [N, T]``,
``variant_index [B, L]`` (-1 = missing), ``variant_languages`` (the L columns).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from polyalign.data.collate import collate_variants
from polyalign.data.languages import canonical_language
from polyalign.data.records import Message, PreferencePair, PromptVariants
from polyalign.errors import UserError

log = logging.getLogger("polyalign.data")

Prompt = tuple[Message, ...] | list[Message] | list[dict[str, str]] | str


@dataclass
class VariantReport:
    """What :func:`attach_variants` found.

    ``missing[lang]``: examples lacking ``lang``; ``complete``: examples with every language;
    ``too_few``: examples with fewer than 2 languages (they give no MLC signal but are kept
    for the alignment loss); ``no_variants``: examples with no variant at all;
    ``unmatched_variants``: ids of variant records that match no pair (join only; their
    count is ``len``); ``extra_languages[lang]``: examples having a language that is not
    configured (ignored); ``from_pair_prompt``: variants taken from the pair's own prompt.
    """

    languages: list[str]
    n_examples: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    complete: int = 0
    too_few: int = 0
    no_variants: int = 0
    unmatched_variants: list[str] = field(default_factory=list)
    extra_languages: dict[str, int] = field(default_factory=dict)
    from_pair_prompt: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One human-readable line, e.g. for a log or the CLI."""
        gaps = ", ".join(f"{lang} {n}" for lang, n in self.missing.items() if n) or "none"
        parts = [
            f"{self.n_examples} examples x {len(self.languages)} languages ({', '.join(self.languages)})",
            f"{self.complete} complete",
            f"missing per language: {gaps}",
            f"{self.too_few} with < 2 languages (no MLC signal)",
        ]
        if self.unmatched_variants:
            parts.append(f"{len(self.unmatched_variants)} variant records match no pair id")
        if self.extra_languages:
            parts.append("ignored languages: " + ", ".join(f"{k} {v}" for k, v in self.extra_languages.items()))
        if self.from_pair_prompt:
            parts.append(f"{self.from_pair_prompt} variants taken from the pair's own prompt")
        return "; ".join(parts)


def variant_languages(pairs: Sequence[PreferencePair]) -> list[str]:
    """Languages appearing in the pairs' variants, in order of first appearance."""
    seen: dict[str, None] = {}
    for pair in pairs:
        if pair.variants is not None:
            for lang in pair.variants.prompts:
                seen.setdefault(lang, None)
    return list(seen)


def _canonical_languages(languages: Sequence[str]) -> list[str]:
    out: list[str] = []
    for code in languages:
        try:
            lang = canonical_language(code)
        except ValueError as exc:
            raise UserError(str(exc), field="mlc_languages") from None
        if lang in out:
            raise UserError(f"language {lang!r} listed twice", field="mlc_languages")
        out.append(lang)
    return out


def attach_variants(
    pairs: Sequence[PreferencePair],
    variants: Sequence[PromptVariants] | None = None,
    languages: Sequence[str] | None = None,
    *,
    use_pair_prompt: bool = True,
) -> tuple[list[PreferencePair], VariantReport]:
    """Give each pair its prompt variants in ``languages`` (in that order) and report gaps.

    Args:
        pairs: preference pairs (all kept, in order).
        variants: variant records joined to pairs by ``id``; ``None`` uses each pair's own
            ``variants`` (MLC JSONL). Duplicate variant ids are a UserError.
        languages: the L languages (any spelling; canonicalised); default: every language
            seen, in order of first appearance (see :func:`variant_languages`).
        use_pair_prompt: when a pair lacks a variant in its own ``language``, use its prompt.

    Returns:
        ``(pairs with .variants restricted to the present configured languages, report)``.
        A pair with no present language gets ``variants=None``.
    """
    if variants is not None:
        by_id: dict[str, PromptVariants] = {}
        for record in variants:
            if record.id in by_id:
                raise UserError(f"two prompt-variant records have the id {record.id!r}", field="id")
            by_id[record.id] = record
        pair_ids = {p.id for p in pairs}
        unmatched = [vid for vid in by_id if vid not in pair_ids]
        source = [by_id.get(p.id) for p in pairs]
    else:
        unmatched = []
        source = [p.variants for p in pairs]
    if languages is None:
        seen: dict[str, None] = {}
        for record in source:
            for lang in record.prompts if record is not None else ():
                seen.setdefault(lang, None)
        languages = list(seen)
    langs = _canonical_languages(languages)
    if not langs:
        raise UserError("no languages for MLC: none configured and no example has variants", field="mlc_languages")
    report = VariantReport(languages=langs, n_examples=len(pairs), missing={lang: 0 for lang in langs},
                           unmatched_variants=unmatched)
    extra: Counter = Counter()
    out = []
    for pair, record in zip(pairs, source):
        prompts = dict(record.prompts) if record is not None else {}
        extra.update(lang for lang in prompts if lang not in langs)
        if use_pair_prompt and pair.language in langs and pair.language not in prompts:
            prompts[pair.language] = tuple(pair.prompt)
            report.from_pair_prompt += 1
        kept = {lang: tuple(prompts[lang]) for lang in langs if lang in prompts}
        for lang in langs:
            if lang not in kept:
                report.missing[lang] += 1
        report.complete += len(kept) == len(langs)
        report.too_few += len(kept) < 2
        report.no_variants += not kept
        new_variants = PromptVariants(id=pair.id, prompts=kept) if kept else None
        out.append(dataclasses.replace(pair, variants=new_variants))
    report.extra_languages = dict(extra)
    if unmatched:
        log.warning("%d prompt-variant records match no preference pair id (first: %r)", len(unmatched), unmatched[0])
    if any(report.missing.values()):
        log.info("MLC variants: %s", report.summary())
    return out, report


def _canonical_key(code: str) -> str:
    try:
        return canonical_language(code)
    except ValueError as exc:
        raise UserError(str(exc), field="prompt_variants") from None


def _as_message_dicts(prompt: Prompt) -> list[dict[str, str]] | str:
    if isinstance(prompt, str):
        return prompt
    out = []
    for turn in prompt:
        if isinstance(turn, Message):
            out.append(turn.to_dict())
        elif isinstance(turn, Mapping) and "role" in turn and "content" in turn:
            out.append({"role": turn["role"], "content": turn["content"]})
        else:
            raise UserError(f"a prompt turn must be a message with 'role' and 'content', got {turn!r:.80}",
                            field="prompt_variants")
    if not out:
        raise UserError("empty prompt variant (no turns)", field="prompt_variants")
    return out


def tokenize_variant(tokenizer: Any, prompt: Prompt, *, max_length: int | None = None) -> list[int]:
    """Token ids of one prompt variant: chat template + generation prompt, no response.

    ``prompt`` is chat turns (``Message`` or ``{"role", "content"}`` dicts), or a plain string
    (tokenised as text, like TRL's non-conversational prompts). With ``max_length`` the *end*
    is kept: the last token, which MLC reads, stays the generation prompt's.
    """
    rendered = _as_message_dicts(prompt)
    if isinstance(rendered, str):
        ids = tokenizer(text=rendered)["input_ids"]
    else:
        ids = tokenizer.apply_chat_template(rendered, tokenize=True, return_dict=True,
                                            add_generation_prompt=True)["input_ids"]
    ids = list(ids)
    if not ids:
        raise UserError("a prompt variant tokenises to nothing", field="prompt_variants")
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    return ids


def tokenize_variants(
    tokenizer: Any,
    examples: Sequence[PromptVariants | Mapping[str, Prompt | None] | Sequence[Prompt | None] | None],
    languages: Sequence[str],
    *,
    max_length: int | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenise each example's variants: ``-> [{lang: ids}]`` (absent languages left out).

    An example is a :class:`PromptVariants`, a mapping ``lang -> prompt`` (None = missing),
    a list aligned with ``languages`` (None = missing), or None (all missing). Languages not
    in ``languages`` are ignored.
    """
    langs = list(languages)
    out = []
    for example in examples:
        if example is None:
            prompts: Mapping[str, Any] = {}
        elif isinstance(example, PromptVariants):
            prompts = example.prompts
        elif isinstance(example, Mapping):
            prompts = {_canonical_key(k): v for k, v in example.items()}
        else:
            items = list(example)
            if len(items) != len(langs):
                raise UserError(f"{len(items)} prompt variants for {len(langs)} configured languages "
                                f"({', '.join(langs)})", field="prompt_variants")
            prompts = dict(zip(langs, items))
        out.append({lang: tokenize_variant(tokenizer, prompts[lang], max_length=max_length)
                    for lang in langs if prompts.get(lang) is not None})
    return out


def variant_batch(
    tokenizer: Any,
    examples: Sequence[PromptVariants | Mapping[str, Prompt | None] | Sequence[Prompt | None] | None],
    languages: Sequence[str],
    *,
    max_length: int | None = None,
    padding_side: str = "right",
) -> dict[str, Any]:
    """The prompt-variant batch: :func:`tokenize_variants`, then the shared collation
    :func:`polyalign.data.collate.collate_variants` (with the tokenizer's pad id).

    Rows are example-major (example ``b``'s present languages in ``languages`` order);
    ``variant_input_ids`` / ``variant_attention_mask`` ``[N, T]`` (long), ``variant_index [B, L]``
    (-1 where missing), ``variant_languages`` = ``languages``.
    """
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has no pad token", field="pad_token")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    tokens = tokenize_variants(tokenizer, examples, languages, max_length=max_length)
    return collate_variants([{"variant_input_ids": t} for t in tokens], tokenizer.pad_token_id,
                            languages=list(languages), padding_side=padding_side)
