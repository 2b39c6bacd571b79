"""Multiple choice by log-likelihood, as lm-evaluation-harness scores it.

For an item with context ``c`` and choices ``a_1..a_K`` the continuation of choice ``k`` is
``x_k = target_delimiter + a_k`` and its score is

    ll_k = sum_{t in continuation tokens} log p(token_t | tokens_<t)

(natural log, full-vocabulary softmax). Predictions (ties: the first maximum, like
``numpy.argmax``):

- ``acc``:       ``argmax_k ll_k``
- ``acc_norm``:  ``argmax_k ll_k / len(a_k)``            -- len in *characters* of the choice
- ``acc_bytes``: ``argmax_k ll_k / len(a_k.encode())``   -- len in UTF-8 bytes

This is lm-eval 0.4.13's definition (``ConfigurableTask.process_results``: ``completion_len
= len(choice)``, ``byte_length = len(choice.encode("utf-8"))``; the delimiter is not counted).
lm-eval's docs call ``acc_norm`` "byte-length normalised", but the code divides by the
number of characters; for Chinese, Bengali or Arabic the two differ, so both are reported.

Tokenisation follows lm-eval's ``_encode_pair``: trailing whitespace of the context moves to
the continuation; ``whole = encode(context + continuation)``, ``ctx = encode(context)`` and
the continuation tokens are ``whole[len(ctx):]``; an empty context is replaced by the BOS
(else EOS) token; a string that already starts with the BOS text gets no special tokens.
So with the same template and delimiter the native scores equal lm-eval's. With the chat
template the delimiter is empty, as in lm-eval's ``apply_chat_template`` mode.

Per language: ``acc``, ``acc_norm``, ``acc_bytes`` (means over items), ``chance`` (mean of
``1/K``: the expected accuracy of random guessing), ``n``, ``n_truncated`` ((item, choice)
pairs whose context lost tokens on the left to fit the model's window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from polyalign.errors import UserError
from polyalign.evaluation.utility.tasks import MCItem, UtilityTask, render_context


@dataclass(frozen=True)
class Request:
    """One (context, continuation) pair as token ids; ``item`` and ``choice`` index back."""

    item: int
    choice: int
    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]


def _encode(tokenizer: Any, text: str, prefix_text: str | None) -> list[int]:
    # lm-eval: no special tokens when the string already starts with the BOS text.
    if prefix_text and text.startswith(prefix_text):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def _prefix_token_id(tokenizer: Any) -> int:
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise UserError("tokenizer has neither a BOS nor an EOS token to condition an empty context on",
                        field="tokenizer")
    return int(token_id)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` exactly as lm-eval's HFLM builds them (see module doc)."""
    if not continuation:
        raise UserError("empty continuation (empty choice and no target delimiter)", field="choices")
    prefix_id = _prefix_token_id(tokenizer)
    prefix_text = tokenizer.decode([prefix_id])
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        return ([prefix_id], cont) if cont[0] != prefix_id else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation, prefix_text)
    ctx = _encode(tokenizer, context, prefix_text)
    return ctx, whole[len(ctx):]


def build_requests(tokenizer: Any, task: UtilityTask, items: Sequence[MCItem]) -> list[Request]:
    """One request per (item, choice), in item order then choice order."""
    # lm-eval with apply_chat_template: the delimiter is empty (the answer follows the
    # assistant header directly); the header's trailing newline still moves to the continuation.
    delimiter = "" if task.use_chat_template else task.target_delimiter
    requests = []
    for i, item in enumerate(items):
        context = render_context(tokenizer, task, item.question)
        for k, choice in enumerate(item.choices):
            ctx, cont = encode_pair(tokenizer, context, delimiter + choice)
            if not cont:
                raise UserError(f"choice {k} of item {item.id!r} encodes to no tokens", field="choices")
            requests.append(Request(i, k, tuple(ctx), tuple(cont)))
    return requests


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _window(model: Any, max_length: int | None) -> int:
    """Longest sequence scored without truncation: ``max_length`` or the model's positions."""
    return max_length or getattr(model.config, "max_position_embeddings", None) or 10**9


def _length(request: Request) -> int:
    return len(request.context_ids) + len(request.continuation_ids)


def _sequence_scorer() -> Any:
    try:
        from polyalign.training.forward import model_sequence_logps
    except ImportError:  # pragma: no cover - the losses package is part of polyalign
        model_sequence_logps = None
    return model_sequence_logps


@torch.no_grad()
def score_requests(model: Any, requests: Sequence[Request], *, batch_size: int = 8,
                   max_length: int | None = None, pad_token_id: int = 0) -> tuple[list[float], int]:
    """Summed continuation log-probs, one per request, and how many contexts were truncated.

    Sequences are ``context + continuation`` (longest first, right-padded, ``batch_size`` at
    a time); a sequence longer than ``max_length`` (default: the model's
    ``max_position_embeddings``) loses context tokens from the left, as lm-eval does. The
    log-probs are computed by :func:`polyalign.training.forward.model_sequence_logps`
    (response-only, chunked LM head, float32 softmax).
    """
    if batch_size < 1:
        raise UserError("batch_size must be >= 1", field="batch_size")
    limit = _window(model, max_length)
    scorer = _sequence_scorer()
    device = _model_device(model)
    order = sorted(range(len(requests)), key=lambda j: -_length(requests[j]))
    out = [0.0] * len(requests)
    truncated = 0
    for start in range(0, len(order), batch_size):
        batch = [requests[j] for j in order[start:start + batch_size]]
        seqs, n_cont = [], []
        for req in batch:
            if len(req.continuation_ids) >= limit:
                raise UserError(f"a continuation of {len(req.continuation_ids)} tokens does not fit the model's "
                                f"{limit}-token window", field="choices")
            seq = list(req.context_ids) + list(req.continuation_ids)
            if len(seq) > limit:
                truncated += 1
                seq = seq[-limit:]
            seqs.append(seq)
            n_cont.append(len(req.continuation_ids))
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        response = torch.zeros((len(seqs), width), dtype=torch.bool)
        for r, (seq, n) in enumerate(zip(seqs, n_cont)):
            input_ids[r, :len(seq)] = torch.tensor(seq)
            attention[r, :len(seq)] = 1
            response[r, len(seq) - n:len(seq)] = True
        input_ids, attention, response = input_ids.to(device), attention.to(device), response.to(device)
        if scorer is not None:
            sums = scorer(model, input_ids, attention, response)[0]
        else:  # pragma: no cover - straightforward fallback: full logits, float32 log-softmax
            logps = model(input_ids=input_ids, attention_mask=attention).logits.float().log_softmax(-1)
            tok = logps[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            sums = (tok * response[:, 1:]).sum(-1)
        for j, value in zip(order[start:start + batch_size], sums.tolist()):
            out[j] = float(value)
    return out, truncated


def predictions(logliks: Sequence[float], choices: Sequence[str]) -> dict[str, int]:
    """``pred``, ``pred_norm`` (per character), ``pred_bytes`` (per UTF-8 byte); first max wins."""
    lls = np.asarray(logliks, dtype=np.float64)
    chars = np.array([float(len(c)) for c in choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    return {"pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(lls / chars)),
            "pred_bytes": int(np.argmax(lls / nbytes))}


def item_results(items: Sequence[MCItem], requests: Sequence[Request],
                 logliks: Sequence[float]) -> list[dict[str, Any]]:
    """One row per item: log-likelihoods per choice, the three predictions and 0/1 scores."""
    per_item: list[list[float]] = [[0.0] * len(item.choices) for item in items]
    for req, ll in zip(requests, logliks):
        per_item[req.item][req.choice] = ll
    rows = []
    for item, lls in zip(items, per_item):
        pred = predictions(lls, item.choices)
        rows.append({
            "id": item.id, "language": item.language, "gold": item.answer, "logliks": lls, **pred,
            "acc": float(pred["pred"] == item.answer), "acc_norm": float(pred["pred_norm"] == item.answer),
            "acc_bytes": float(pred["pred_bytes"] == item.answer), "chance": 1.0 / len(item.choices),
        })
    return rows


def per_language_accuracy(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """``{language: {acc, acc_norm, acc_bytes, chance, n}}`` (means over that language's items)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["language"], []).append(row)
    return {lang: {**{m: sum(r[m] for r in g) / len(g) for m in ("acc", "acc_norm", "acc_bytes", "chance")},
                   "n": len(g)} for lang, g in groups.items()}


def evaluate_multiple_choice(model: Any, tokenizer: Any, task: UtilityTask, items: Sequence[MCItem], *,
                             batch_size: int = 8, max_length: int | None = None) -> dict[str, Any]:
    """Score ``items``: ``{"per_language": {lang: metrics}, "items": [row, ...], "n_truncated": int}``.

    ``n_truncated`` (total) is also reported per language, so a metric computed on cut
    contexts is visible.
    """
    if task.kind != "multiple_choice":
        raise UserError(f"task {task.name!r} is {task.kind}, not multiple_choice", field="kind")
    requests = build_requests(tokenizer, task, items)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logliks, _ = score_requests(model, requests, batch_size=batch_size, max_length=max_length, pad_token_id=pad)
    rows = item_results(items, requests, logliks)
    limit = _window(model, max_length)
    per_language = per_language_accuracy(rows)
    for metrics in per_language.values():
        metrics["n_truncated"] = 0
    for req in requests:  # counted per (item, choice) request whose context lost tokens
        if _length(req) > limit:
            per_language[items[req.item].language]["n_truncated"] += 1
    total = sum(m["n_truncated"] for m in per_language.values())
    return {"per_language": per_language, "items": rows, "n_truncated": total}
