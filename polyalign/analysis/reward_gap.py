"""Per-language reward gap of a model on preference pairs (MPO, docs/methods.md section 1).

``RG(x, y_w, y_l) = avg_logp(y_w|x) - avg_logp(y_l|x)`` with
``avg_logp(y|x) = (1/|y|) sum_{t in y} log p(y_t | x, y_<t)`` over the response tokens only.
The prompt is rendered with the chat template and the generation prompt; the response text
is what the template adds after it for an assistant turn (so an end-of-turn marker the
template writes counts as a response token, as in TRL). Prompt and response are tokenised
separately and concatenated, so the response's tokens never merge with the prompt's.

Scoring is training's: :func:`polyalign.training.forward.model_sequence_logps` runs the decoder
once per batch (right padded) and projects only the response positions through the LM head
(float32 log-softmax; Gemma-2's final soft-capping applied), so no ``[B, T, V]`` logits exist.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from polyalign.analysis.hidden import eval_mode, length_sorted_batches, model_device, progress_bar, render_prompt
from polyalign.analysis.stats import correlate
from polyalign.data.records import Message, ParallelPair, PreferencePair
from polyalign.errors import UserError
from polyalign.training.forward import model_sequence_logps


def prompt_and_response_ids(
    tokenizer: Any, prompt: Sequence[Message | dict], response: str
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt (with generation prompt) and of the response part."""
    prompt_text, specials = render_prompt(tokenizer, prompt, add_generation_prompt=True)
    if specials:  # no chat template: the response simply follows the prompt text
        response_text = response
    else:
        msgs = [m if isinstance(m, dict) else m.to_dict() for m in prompt]
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt_text):
            raise UserError("the chat template's prompt rendering is not a prefix of prompt + answer",
                            field="chat_template")
        response_text = full[len(prompt_text):]
    p_ids = tokenizer(prompt_text, add_special_tokens=specials)["input_ids"]
    r_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    return p_ids, r_ids


def truncate_pair(p_ids: list[int], r_ids: list[int], max_length: int | None) -> tuple[list[int], list[int], bool]:
    """Fit prompt + response into ``max_length`` tokens: ``(prompt, response, truncated)``.

    The response keeps its start, at least ``max_length // 2`` tokens of it (or all of it
    when shorter); the prompt keeps its end (the part next to the answer), like TRL.
    """
    if max_length is None or len(p_ids) + len(r_ids) <= max_length:
        return p_ids, r_ids, False
    if max_length < 2:
        raise UserError("max_length must be at least 2 (a prompt token and a response token)", field="max_length")
    keep_r = min(len(r_ids), max(max_length - len(p_ids), max_length // 2))
    r_ids = r_ids[:keep_r]
    return p_ids[len(p_ids) - (max_length - keep_r):], r_ids, True


def _score(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Sequence[Message | dict]], responses: Sequence[str],
    batch_size: int, max_length: int | None,
) -> tuple[list[float], list[bool]]:
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    device = model_device(model)
    rows, n_prompt, truncated = [], [], []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        p_ids, r_ids = prompt_and_response_ids(tokenizer, prompt, response)
        p_ids, r_ids, cut = truncate_pair(p_ids, r_ids, max_length)
        if not r_ids or not p_ids:
            # The first token has no prediction: a response needs a prompt token before it.
            raise UserError(f"pair {i}: nothing to score ({'empty answer' if not r_ids else 'empty prompt'})")
        rows.append(p_ids + r_ids)
        n_prompt.append(len(p_ids))
        truncated.append(cut)
    out = [0.0] * len(rows)
    with progress_bar(len(rows), "reward gap: scoring") as bar:
        for group in length_sorted_batches([len(r) for r in rows], batch_size):
            width = max(len(rows[i]) for i in group)
            ids_t = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            response = torch.zeros((len(group), width), dtype=torch.bool)
            for b, i in enumerate(group):
                ids_t[b, : len(rows[i])] = torch.tensor(rows[i])
                mask[b, : len(rows[i])] = 1
                response[b, n_prompt[i] : len(rows[i])] = True
            with torch.no_grad(), eval_mode(model):
                # The decoder, then the LM head on the response positions only (no [B, T, V] logits).
                avg = model_sequence_logps(model, ids_t.to(device), mask.to(device), response.to(device)).avg_logps
            for b, i in enumerate(group):
                out[i] = float(avg[b])
            bar.update(len(group))
    return out, truncated


def average_response_logps(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message | dict]],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """``avg_logp(response | prompt)`` for each pair, as Python floats (float64 sums).

    ``max_length`` caps prompt + response (see :func:`truncate_pair`); only the response
    tokens kept count. An empty response is a :class:`UserError`.
    """
    return _score(model, tokenizer, prompts, responses, batch_size, max_length)[0]


@dataclass
class RewardGapResult:
    """Per pair gaps and per-language summaries."""

    ids: list[str]
    languages: list[str]
    chosen_avg_logp: list[float]
    rejected_avg_logp: list[float]
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def gaps(self) -> list[float]:
        return [c - r for c, r in zip(self.chosen_avg_logp, self.rejected_avg_logp)]

    def gap_by_language(self) -> dict[str, float]:
        return {lang: v["mean_gap"] for lang, v in self.per_language.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_language": self.per_language,
            "pairs": [
                {"id": i, "language": lang, "chosen_avg_logp": c, "rejected_avg_logp": r, "gap": c - r}
                for i, lang, c, r in zip(self.ids, self.languages, self.chosen_avg_logp, self.rejected_avg_logp)
            ],
        }


def reward_gap(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> RewardGapResult:
    """Length-normalised reward gap of each pair; per language: n, mean/std/min/max of the gap,
    share of pairs with a positive gap, the mean chosen / rejected ``avg_logp``, and how
    many pairs ``max_length`` truncated."""
    if not pairs:
        raise UserError("no preference pairs", field="pairs")
    prompts = [p.prompt for p in pairs]
    chosen, cut_c = _score(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size, max_length)
    rejected, cut_r = _score(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size, max_length)
    result = RewardGapResult(
        ids=[p.id for p in pairs], languages=[p.language for p in pairs],
        chosen_avg_logp=chosen, rejected_avg_logp=rejected,
    )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[p.language].append(i)
    gaps = result.gaps
    for lang, idx in groups.items():
        g = torch.tensor([gaps[i] for i in idx], dtype=torch.float64)
        result.per_language[lang] = {
            "n": len(idx),
            "mean_gap": float(g.mean()),
            "std_gap": float(g.std(unbiased=True)) if len(idx) > 1 else 0.0,
            "min_gap": float(g.min()),
            "max_gap": float(g.max()),
            "positive_share": float((g > 0).double().mean()),
            "mean_chosen_avg_logp": sum(chosen[i] for i in idx) / len(idx),
            "mean_rejected_avg_logp": sum(rejected[i] for i in idx) / len(idx),
            # Pairs where max_length cut the prompt or a response (reported, not hidden).
            "n_truncated": sum(cut_c[i] or cut_r[i] for i in idx),
        }
    return result


def pairs_from_records(records: Sequence[Any]) -> list[PreferencePair]:
    """Preference pairs to score from reader records.

    :class:`PreferencePair` records are kept; an MPO :class:`ParallelPair` gives its target
    pair and its dominant pair, the latter once only (MPO repeats the same dominant pair
    for every target language). Anything else is a :class:`UserError`.
    """
    pairs: list[PreferencePair] = []
    seen: set[tuple[Any, ...]] = set()
    for record in records:
        if isinstance(record, PreferencePair):
            pairs.append(record)
        elif isinstance(record, ParallelPair):
            d = record.dominant
            key = (d.language, d.prompt, d.chosen, d.rejected)
            if key not in seen:
                seen.add(key)
                pairs.append(d)
            pairs.append(record.target)
        else:
            raise UserError(f"expected preference pairs, found a {type(record).__name__} record")
    return pairs


def correlate_gap_with_metric(result: RewardGapResult, metric: Mapping[str, float]) -> dict[str, Any]:
    """Pearson / Spearman between each language's mean gap and a per-language metric
    (e.g. attack success rate from ``results.json``); see :func:`polyalign.analysis.stats.correlate`."""
    return correlate(result.gap_by_language(), metric)


def per_language_metric(results: Mapping[str, Any], metric: str, *, file: str | None = None) -> dict[str, float]:
    """``results["metrics"]["per_language"][lang][metric]`` for every language that has it."""
    try:
        per_language = results["metrics"]["per_language"]
    except (KeyError, TypeError):
        raise UserError("not an evaluation results file (no metrics.per_language)", file=file) from None
    values = {lang: v[metric] for lang, v in per_language.items() if isinstance(v, dict) and v.get(metric) is not None}
    if not values:
        available = sorted({k for v in per_language.values() if isinstance(v, dict) for k in v})
        raise UserError(f"no language has metric {metric!r} (available: {', '.join(available)})", file=file,
                        field="metric")
    return values
