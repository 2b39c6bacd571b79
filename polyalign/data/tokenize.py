"""Tokenisation of preference pairs, MPO pairs and prompt variants for training.

Rendering
    With a chat template (``chat_template="auto"`` and the tokenizer has one, or ``"chat"``)
    the prompt is rendered with ``add_generation_prompt=True`` and the full conversation with
    the response as a final assistant turn; both texts are tokenised with
    ``add_special_tokens=False`` because templates already write their BOS. Without a template
    (``"plain"``, e.g. mGPT) the prompt is the turns' contents joined by a blank line, tokenised
    with the tokenizer's own special tokens, and the response is its text tokenised without
    special tokens plus EOS (so the model learns to stop).

Prefix check
    The response tokens are ``full_ids[len(prompt_ids):]``, which is only meaningful when the
    tokenised prompt is a prefix of the tokenised prompt+response. Templates that strip or add
    whitespace around turns break this. ``prefix_mismatch="error"`` (the default) raises a
    :class:`~polyalign.errors.UserError` naming the example id; ``"concatenate"`` falls back to
    ``prompt_ids + tokenize(full_text[len(prompt_text):])`` when the prompt *text* is still a
    prefix of the full text (counted in :attr:`TokenizeStats.prefix_fallbacks`). The fallback is
    also what a generation sees: prompt ids fixed, response tokens generated after them.

Truncation
    1. A prompt longer than ``max_prompt_length`` keeps its start (``keep_start``) or its end
       (``keep_end``, default: the question and the generation header are at the end).
    2. The response is then cut to ``max_length - len(prompt)`` tokens (its start is kept).
    3. When that leaves no response token (the prompt alone fills ``max_length``), or the
       response was empty to begin with, the example is skipped and counted under a reason
       (:data:`SKIP_PROMPT_TOO_LONG`, :data:`SKIP_EMPTY_RESPONSE`) or, with
       ``on_overlong="error"``, raises a UserError naming the example.

Output of :func:`tokenize_pair` (lists of ints, collated by :mod:`polyalign.data.collate`)::

    {"id", "language", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}

where ``*_input_ids`` of chosen/rejected are the response tokens only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from polyalign.data.records import Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.errors import UserError

TRUNCATION_MODES = ("keep_start", "keep_end")
OVERLONG_POLICIES = ("skip", "error")
PREFIX_POLICIES = ("error", "concatenate")
TEMPLATE_MODES = ("auto", "chat", "plain")
SKIP_PROMPT_TOO_LONG = "prompt longer than max_length"
SKIP_EMPTY_RESPONSE = "response empty (after truncation)"


@dataclass(frozen=True)
class TokenizeSettings:
    """Tokenisation settings (part of the reference-cache key)."""

    max_length: int = 1024
    max_prompt_length: int | None = None
    truncation_mode: str = "keep_end"
    on_overlong: str = "skip"
    prefix_mismatch: str = "error"
    chat_template: str = "auto"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("truncation_mode", self.truncation_mode, TRUNCATION_MODES),
            ("on_overlong", self.on_overlong, OVERLONG_POLICIES),
            ("prefix_mismatch", self.prefix_mismatch, PREFIX_POLICIES),
            ("chat_template", self.chat_template, TEMPLATE_MODES),
        ):
            if value not in allowed:
                raise UserError(f"must be one of {list(allowed)}, got {value!r}", field=name)
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise UserError(f"must be an integer >= 2, got {self.max_length!r}", field="max_length")
        if self.max_prompt_length is not None and (
            not isinstance(self.max_prompt_length, int) or self.max_prompt_length < 1
        ):
            raise UserError(f"must be a positive integer, got {self.max_prompt_length!r}", field="max_prompt_length")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenizeStats:
    """What tokenisation did: kept examples, skips by reason (with example ids), truncations."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)
    truncated_prompts: int = 0
    truncated_responses: int = 0
    prefix_fallbacks: int = 0

    def skip(self, reason: str, example_id: str) -> None:
        self.skipped[reason] += 1
        self.skipped_ids.setdefault(reason, []).append(example_id)

    def summary(self) -> str:
        """One line, e.g. ``kept 22, skipped 2 (prompt longer than max_length: 2 [ids 3, 7])``."""
        text = f"kept {self.kept}"
        if self.skipped:
            parts = []
            for reason, n in self.skipped.items():
                ids = self.skipped_ids.get(reason, [])
                shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                parts.append(f"{reason}: {n} [ids {shown}]")
            text += f", skipped {sum(self.skipped.values())} ({'; '.join(parts)})"
        if self.truncated_prompts or self.truncated_responses:
            text += f", truncated prompts {self.truncated_prompts}, responses {self.truncated_responses}"
        if self.prefix_fallbacks:
            text += f", prefix fallbacks {self.prefix_fallbacks}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "skipped_ids": {k: list(v) for k, v in self.skipped_ids.items()},
            "truncated_prompts": self.truncated_prompts,
            "truncated_responses": self.truncated_responses,
            "prefix_fallbacks": self.prefix_fallbacks,
        }


class _Skip(Exception):
    """Internal: this example is skipped for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def uses_chat_template(tokenizer: Any, settings: TokenizeSettings) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template."""
    if settings.chat_template == "plain":
        return False
    has = bool(getattr(tokenizer, "chat_template", None))
    if settings.chat_template == "chat" and not has:
        raise UserError("chat_template is 'chat' but the tokenizer has no chat template", field="chat_template")
    return has


def _dicts(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def render_prompt_ids(tokenizer: Any, prompt: tuple[Message, ...], settings: TokenizeSettings) -> tuple[str, list[int]]:
    """Prompt text (generation prompt added) and its token ids, before truncation."""
    if uses_chat_template(tokenizer, settings):
        text = tokenizer.apply_chat_template(_dicts(prompt), tokenize=False, add_generation_prompt=True)
        return text, _encode(tokenizer, text, False)
    text = "\n\n".join(m.content for m in prompt)
    return text, _encode(tokenizer, text, True)


def response_ids(
    tokenizer: Any,
    prompt: tuple[Message, ...],
    prompt_text: str,
    prompt_ids: list[int],
    response: str,
    settings: TokenizeSettings,
    example_id: str,
    stats: TokenizeStats,
) -> list[int]:
    """Token ids of ``response`` following the (untruncated) prompt; see the prefix check."""
    if not uses_chat_template(tokenizer, settings):
        ids = _encode(tokenizer, response, False)
        return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None and ids else [])
    messages = _dicts(prompt) + [{"role": "assistant", "content": response}]
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    full_ids = _encode(tokenizer, full_text, False)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids):]
    text_prefix = full_text.startswith(prompt_text)
    if settings.prefix_mismatch == "concatenate" and text_prefix:
        stats.prefix_fallbacks += 1
        return _encode(tokenizer, full_text[len(prompt_text):], False)
    hint = (
        "set prefix_mismatch: concatenate to tokenise prompt and response separately"
        if text_prefix
        else "even the rendered prompt text is not a prefix of the rendered conversation; fix the chat template"
    )
    raise UserError(
        f"example {example_id}: the tokenised prompt is not a prefix of the tokenised prompt+response "
        f"(the chat template changes the prompt when a response follows); {hint}",
        field="prefix_mismatch",
    )


def truncate_prompt(ids: list[int], settings: TokenizeSettings) -> list[int]:
    """Cut a prompt to ``max_prompt_length`` keeping its start or end."""
    limit = settings.max_prompt_length
    if limit is None or len(ids) <= limit:
        return ids
    return ids[:limit] if settings.truncation_mode == "keep_start" else ids[len(ids) - limit:]


def _fit(prompt: list[int], responses: list[list[int]], settings: TokenizeSettings, stats: TokenizeStats,
         prompt_was_cut: bool = False) -> list[list[int]]:
    """Cut each response to ``max_length - len(prompt)``; raise _Skip when one ends up empty.

    A prompt that still fills ``max_length`` after its own truncation empties the response
    (``max_prompt_length >= max_length``); one that was never cut is simply too long.
    """
    if len(prompt) >= settings.max_length:
        raise _Skip(SKIP_EMPTY_RESPONSE if prompt_was_cut else SKIP_PROMPT_TOO_LONG)
    room = settings.max_length - len(prompt)
    out = []
    for ids in responses:
        if not ids:
            raise _Skip(SKIP_EMPTY_RESPONSE)
        if len(ids) > room:
            stats.truncated_responses += 1
        out.append(ids[:room])
    return out


def _skip_or_raise(exc: _Skip, example_id: str, settings: TokenizeSettings, stats: TokenizeStats) -> None:
    if settings.on_overlong == "error":
        raise UserError(
            f"example {example_id}: {exc.reason} (max_length {settings.max_length}, max_prompt_length "
            f"{settings.max_prompt_length}); set on_overlong: skip to skip such examples",
            field="max_length",
        )
    stats.skip(exc.reason, example_id)


def _tokenize_pair(pair: PreferencePair, tokenizer: Any, settings: TokenizeSettings,
                   stats: TokenizeStats) -> dict[str, Any]:
    prompt_text, prompt_ids = render_prompt_ids(tokenizer, pair.prompt, settings)
    responses = [
        response_ids(tokenizer, pair.prompt, prompt_text, prompt_ids, text, settings, pair.id, stats)
        for text in (pair.chosen, pair.rejected)
    ]
    cut = truncate_prompt(prompt_ids, settings)
    if len(cut) < len(prompt_ids):
        stats.truncated_prompts += 1
    chosen, rejected = _fit(cut, responses, settings, stats, len(cut) < len(prompt_ids))
    return {"id": pair.id, "language": pair.language, "prompt_input_ids": cut,
            "chosen_input_ids": chosen, "rejected_input_ids": rejected}


def tokenize_pair(
    pair: PreferencePair, tokenizer: Any, settings: TokenizeSettings, stats: TokenizeStats
) -> dict[str, Any] | None:
    """Tokenise one preference pair; None when skipped (counted in ``stats``)."""
    try:
        out = _tokenize_pair(pair, tokenizer, settings, stats)
    except _Skip as exc:
        _skip_or_raise(exc, pair.id, settings, stats)
        return None
    stats.kept += 1
    return out


def tokenize_parallel_pair(
    pair: ParallelPair, tokenizer: Any, settings: TokenizeSettings, stats: TokenizeStats
) -> dict[str, Any] | None:
    """Tokenise an MPO example: ``{"id", "language", "target": {...}, "dominant": {...}}``.

    Both sides must fit; if either is skipped the whole example is (counted once, under the
    side's reason prefixed with ``target``/``dominant``).
    """
    sides = {}
    for side in ("target", "dominant"):
        try:
            sides[side] = _tokenize_pair(getattr(pair, side), tokenizer, settings, stats)
        except _Skip as exc:
            _skip_or_raise(_Skip(f"{side} {exc.reason}"), pair.id, settings, stats)
            return None
    stats.kept += 1
    return {"id": pair.id, "language": pair.target.language, **sides}


def tokenize_variants(
    variants: PromptVariants, tokenizer: Any, settings: TokenizeSettings
) -> dict[str, list[int]]:
    """Prompt-only variants ``{language: ids}`` (generation prompt added, prompt truncation applied)."""
    return {lang: truncate_prompt(render_prompt_ids(tokenizer, prompt, settings)[1], settings)
            for lang, prompt in variants.prompts.items()}
