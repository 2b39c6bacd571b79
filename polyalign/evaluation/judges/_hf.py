"""Shared transformers plumbing for generative guard models (Llama Guard, PolyGuard).

Greedy generation on left-padded batches, returning the decoded continuations and the raw
logits of the first generated position (before any logits processor), so a judge can turn
them into a probability with a float64 softmax over the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from polyalign.errors import UserError


def resolve_model(
    model: str | Path | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """``(model, tokenizer, name)`` from a folder / hub id (loaded offline) or objects."""
    if isinstance(model, (str, Path)):
        from polyalign.models import load_model_and_tokenizer

        loaded, loaded_tok = load_model_and_tokenizer(model, dtype=dtype, device=device)
        return loaded, tokenizer or loaded_tok, str(model)
    if tokenizer is None:
        raise UserError("a tokenizer is needed with a model object", field="tokenizer")
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer, str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


# Private-use code points: a template passes them through, no text to judge contains them.
_SLOTS = ("\ue000polyalign-untrusted-0\ue001", "\ue000polyalign-untrusted-1\ue001")


def added_token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The literal strings the tokenizer turns into added (special or control) token ids."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return [t.content for t in decoder.values() if getattr(t, "content", "")]


def encode_untrusted_prompt(tokenizer: PreTrainedTokenizerBase, render: Callable[[str, str], str],
                            prompt: str, response: str) -> list[int]:
    """Token ids of ``render(prompt, response)`` where the two untrusted texts can never
    produce a special/control token id (a response writing ``<|eot_id|>`` must not end the
    guard's turn).

    The template's own text is tokenized as usual; when an untrusted text contains the
    literal of an added token, the prompt is encoded in pieces and the untrusted pieces with
    ``split_special_tokens=True``, so that literal becomes plain-text tokens. Texts without
    such literals keep the whole-string encoding exactly (no boundary changes).
    """
    real = render(prompt, response)
    literals = added_token_strings(tokenizer)
    if not any(lit in text for lit in literals for text in (prompt, response)):
        return tokenizer(real, add_special_tokens=False)["input_ids"]
    marked = render(*_SLOTS)
    if any(marked.count(slot) != 1 for slot in _SLOTS) or marked.index(_SLOTS[0]) > marked.index(_SLOTS[1]):
        raise UserError("the guard's prompt template does not place the prompt and the response once each, in order",
                        field="tokenizer")
    for p_text, r_text in ((prompt, response), (prompt.strip(), response.strip())):
        if marked.replace(_SLOTS[0], p_text).replace(_SLOTS[1], r_text) == real:
            break
    else:
        raise UserError("the guard's prompt template changes the texts it embeds; cannot keep them apart from "
                        "its control tokens", field="tokenizer")
    head, rest = marked.split(_SLOTS[0])
    middle, tail = rest.split(_SLOTS[1])

    def plain(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def untrusted(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    return plain(head) + untrusted(p_text) + plain(middle) + untrusted(r_text) + plain(tail)


def judge_fitting_inputs(
    encoded: Sequence[list[int]],
    max_input_tokens: int | None,
    judge_name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int,
    batch_size: int,
) -> tuple[list[Any], list[tuple[int, str, torch.Tensor]]]:
    """Greedy-generate for the inputs that fit ``max_input_tokens``; the rest fail as errors.

    Returns ``(results, generated)``: ``results[i]`` is a failed :class:`Judgment` for an
    input that is too long and ``None`` otherwise; ``generated`` holds ``(i, text,
    first_logits)`` for every input that ran, so the judge fills in its ``None`` slots.
    """
    from polyalign.evaluation.judges.base import Judgment

    results: list[Any] = [None] * len(encoded)
    run = []
    for i, ids in enumerate(encoded):
        if max_input_tokens is not None and len(ids) > max_input_tokens:
            results[i] = Judgment.failed(judge_name, f"input too long ({len(ids)} > {max_input_tokens} tokens)")
        else:
            run.append(i)
    texts, firsts = generate_greedy(model, tokenizer, [encoded[i] for i in run],
                                    max_new_tokens=max_new_tokens, batch_size=batch_size)
    return results, list(zip(run, texts, firsts))


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id (eos when the tokenizer has no pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("tokenizer has neither a pad nor an eos token", field="tokenizer")
    return int(pad)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [B, T]`` and ``attention_mask [B, T]``, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
) -> tuple[list[str], list[torch.Tensor]]:
    """Greedy continuations of token-id prompts: ``(texts, first_logits)``.

    ``first_logits[i]`` is the float32 vector ``[V]`` of raw logits at the first generated
    position of prompt ``i``. Prompts are sorted by length into batches (less padding) and
    results returned in input order. Decoding skips special tokens.
    """
    pad = pad_token_id(tokenizer)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
                              output_logits=True, return_dict_in_generate=True)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    firsts: list[Any] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in chunk], pad)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        new = out.sequences[:, ids.shape[1]:]
        first = out.logits[0].float().cpu()
        for row, i in enumerate(chunk):
            texts[i] = tokenizer.decode(new[row], skip_special_tokens=True)
            firsts[i] = first[row]
    return texts, firsts
