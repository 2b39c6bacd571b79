"""Fluency: conditional perplexity of continuations under a scorer LM.

``ppl(gen | prompt) = exp((NLL(prompt + gen) - NLL(prompt)) / |gen|)`` where NLL sums the
token negative log-likelihoods of a sequence and ``|gen|`` counts the continuation's
tokens. The prompt is tokenised with the tokenizer's special tokens (a BOS where the
tokenizer adds one) and the continuation without, and the ids are concatenated: the
difference of the two NLLs is then exactly the NLL of the continuation tokens given the
prompt, ``-sum_t log p(g_t | prompt, g_<t)`` (tokenising the joined string instead could
merge tokens across the boundary and make ``|gen|`` ill-defined).

Log-probabilities are taken with a float64 log-softmax of the model's logits at the
continuation positions only (memory stays ``|gen| x V`` per row). Batches are right-padded,
which leaves a causal LM's logits at real positions unchanged. ``None`` (counted by the
caller) for an empty continuation, an empty prompt (nothing to condition the first token
on), or a continuation longer than ``max_length``; a prompt that does not fit is cut from
the left.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"] if continuation else []
    return list(prompt_ids), list(cont_ids)


@torch.no_grad()
def conditional_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float | None]:
    """Conditional perplexity of each ``(prompt, continuation)``; ``None`` where undefined."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    results: list[float | None] = [None] * len(pairs)
    rows: list[tuple[int, list[int], int]] = []  # (index, ids, prompt_len)
    for i, (prompt, continuation) in enumerate(pairs):
        prompt_ids, cont_ids = _encode(tokenizer, prompt, continuation)
        if not cont_ids or not prompt_ids:
            continue
        if max_length is not None:
            if len(cont_ids) >= max_length:
                continue
            prompt_ids = prompt_ids[-(max_length - len(cont_ids)):]
        rows.append((i, prompt_ids + cont_ids, len(prompt_ids)))
    rows.sort(key=lambda r: len(r[1]))  # similar lengths together: less padding
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (_, ids, _) in enumerate(chunk):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            mask[b, :len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        for b, (i, ids, p) in enumerate(chunk):
            # token t is predicted from position t-1: continuation tokens p..len-1
            step = logits[b, p - 1:len(ids) - 1].to(torch.float64)
            targets = torch.tensor(ids[p:], device=step.device)
            nll = -torch.log_softmax(step, dim=-1).gather(1, targets[:, None]).sum()
            results[i] = math.exp(float(nll) / len(targets))
    return results


def median_perplexity_by_language(values: Sequence[float | None],
                                  languages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{lang: {"perplexity_median", "n_perplexity", "n_perplexity_missing"}}``."""
    if len(values) != len(languages):
        raise ValueError(f"{len(values)} values but {len(languages)} languages")
    grouped: dict[str, list[float | None]] = {}
    for value, lang in zip(values, languages):
        grouped.setdefault(lang, []).append(value)
    out = {}
    for lang, vals in grouped.items():
        good = [v for v in vals if v is not None and math.isfinite(v)]
        out[lang] = {"perplexity_median": statistics.median(good) if good else None, "n_perplexity": len(good),
                     "n_perplexity_missing": len(vals) - len(good)}
    return out
