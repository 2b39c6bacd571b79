"""The training objective: a weighted sum of named loss terms, plus metrics per language.

``loss = sum_i weight_i * term_i`` with, per method (METHODS.md):

=========  =====================================================================
``dpo``    ``dpo`` (:func:`~polyalign.losses.dpo_loss`, summed log-probs vs cached
           reference) + ``nll_weight * nll`` (length-normalised NLL of the chosen answer)
``simpo``  ``simpo`` + ``nll_weight * nll``
``orpo``   ``nll`` (weight 1 by default) + ``orpo`` (the odds-ratio term, weight 1)
``sft``    ``nll`` on prompt+chosen
``mpo``    ``mpo_gap`` (``mean (mpo_beta * RG_t - RG_d)^2``) + ``retain_alpha * retention``
=========  =====================================================================

Each term is reported unweighted under its name; the metrics are means over the batch's
examples and, with a ``<lang>/`` prefix, over its examples of each language:
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracy`` (and for
MPO ``reward_gap/target``, ``reward_gap/dominant``, ``reward_gap/abs_diff`` =
``|mpo_beta * RG_t - RG_d|``), and ``<lang>/loss`` (the method's main per-example term; the overall ``loss`` is the Trainer's).

One policy forward per step: chosen and rejected rows are already one ``[2B, T]`` batch; for
MPO the dominant pair's rows are appended to the target pair's rows and have an all-zero
response mask, so they are never projected through the LM head (their hidden states feed the
retention term only).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from polyalign.losses import (
    dpo_loss,
    model_sequence_logps,
    mpo_loss,
    nll_loss,
    orpo_loss,
    retention_loss,
    sequence_logps,
    simpo_loss,
)
from polyalign.training.reference_cache import retention_pool_mask

_SEQ_KEYS = ("input_ids", "attention_mask", "response_mask")


@dataclass
class ObjectiveOutput:
    """``loss`` (scalar, differentiable), unweighted ``terms`` and per-example metric sums."""

    loss: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, name: str, values: torch.Tensor, languages: list[str], *, overall: bool = True) -> None:
        """Record per-example ``values [B]`` under ``<lang>/name`` and (``overall``) ``name``."""
        values = values.detach().float().cpu().tolist()
        for value, lang in zip(values, languages):
            for key in (name if overall else None, f"{lang}/{name}" if lang else None):
                if key:
                    self.sums[key] += value
                    self.counts[key] += 1


def term_weights(config: Any) -> dict[str, float]:
    """Named terms of the method and their weights (terms with weight 0 are still logged)."""
    nll = config.resolved_nll_weight
    return {
        "dpo": {"dpo": 1.0, "nll": nll},
        "simpo": {"simpo": 1.0, "nll": nll},
        "orpo": {"orpo": 1.0, "nll": nll},
        "sft": {"nll": nll},
        "mpo": {"mpo_gap": 1.0, "retention": float(config.retain_alpha)},
    }[config.method]


def policy_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    *, chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum_logps, avg_logps, n_tokens, last_hidden)`` of the policy, one decoder forward.

    A plain (or PEFT) model goes through :func:`~polyalign.losses.model_sequence_logps`. A
    distributed wrapper (DDP, DeepSpeed engine) must see the forward call itself, otherwise it
    never prepares its gradient all-reduce: the model is then called through the wrapper with
    ``logits_to_keep=1`` (one position's logits, negligible) and ``output_hidden_states`` and the
    response tokens are scored from the last hidden state with the unwrapped LM head.
    """
    inner = getattr(model, "module", None)
    if inner is None or not hasattr(inner, "get_output_embeddings"):
        return model_sequence_logps(model, input_ids, attention_mask, response_mask, chunk_size=chunk_size)
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    hidden = out.hidden_states[-1]  # == last_hidden_state (after the final norm) in transformers 5
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    total, avg, n = sequence_logps(hidden, inner.get_output_embeddings(), input_ids, response_mask,
                                   chunk_size=chunk_size,
                                   logit_softcap=getattr(config, "final_logit_softcapping", None))
    return total, avg, n, hidden


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def _reward_metrics(out: ObjectiveOutput, chosen: torch.Tensor, rejected: torch.Tensor, langs: list[str]) -> None:
    out.add("rewards/chosen", chosen, langs)
    out.add("rewards/rejected", rejected, langs)
    out.add("rewards/margins", chosen - rejected, langs)
    out.add("rewards/accuracy", (chosen > rejected).float(), langs)


def compute_objective(model: torch.nn.Module, batch: dict[str, Any], config: Any, pad_token_id: int) -> ObjectiveOutput:
    """Run the policy once on ``batch`` and combine the method's terms (see module docstring)."""
    weights = term_weights(config)
    chunk = config.logps_chunk_size
    ref_batch = batch["dominant"] if config.method == "mpo" else batch
    needed = {"dpo": ("ref_logps",), "mpo": ("ref_avg_logps", "ref_pooled")}.get(config.method, ())
    missing = [k for k in needed if k not in ref_batch]
    if missing:
        raise RuntimeError(f"{config.method} batches need cached reference values {missing}: attach them with "
                           "polyalign.training.reference_cache.prepare_reference (run.train does)")
    if config.method == "mpo":
        return _mpo(model, batch, config, weights, pad_token_id)
    total, avg, n_tokens, _ = policy_logps(model, *(batch[k] for k in _SEQ_KEYS), chunk_size=chunk)
    langs = list(batch["languages"])
    terms: dict[str, torch.Tensor] = {}
    if config.method == "sft":
        per_example = nll_loss(avg)
        terms["nll"] = per_example.mean()
        out = ObjectiveOutput(loss=torch.zeros((), device=avg.device))
        out.add("loss", per_example, langs, overall=False)
    else:
        b = len(langs)
        if config.method == "dpo":
            ref = batch["ref_logps"].to(total.device)
            per_example, chosen_r, rejected_r = dpo_loss(
                total[:b], total[b:], ref[:b], ref[b:], beta=config.beta, loss_type=config.loss_type,
                label_smoothing=config.label_smoothing, chosen_n_tokens=n_tokens[:b], rejected_n_tokens=n_tokens[b:])
        elif config.method == "simpo":
            per_example, chosen_r, rejected_r = simpo_loss(avg[:b], avg[b:], beta=config.beta, gamma=config.simpo_gamma)
        else:
            per_example, chosen_r, rejected_r = orpo_loss(avg[:b], avg[b:], beta=config.beta)
        terms[config.method] = per_example.mean()
        terms["nll"] = nll_loss(avg[:b]).mean()
        out = ObjectiveOutput(loss=torch.zeros((), device=avg.device))
        out.add("loss", per_example, langs, overall=False)
        _reward_metrics(out, chosen_r, rejected_r, langs)
    return _combine(out, terms, weights)


def _combine(out: ObjectiveOutput, terms: dict[str, torch.Tensor], weights: dict[str, float]) -> ObjectiveOutput:
    loss = out.loss
    for name, value in terms.items():
        out.terms[name] = float(value.detach())
        if weights.get(name, 0.0) != 0.0:
            loss = loss + weights[name] * value
    out.loss = loss
    return out


def _mpo(model: torch.nn.Module, batch: dict[str, Any], config: Any, weights: dict[str, float],
         pad_token_id: int) -> ObjectiveOutput:
    target, dominant = batch["target"], batch["dominant"]
    width = max(target["input_ids"].shape[1], dominant["input_ids"].shape[1])
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "response_mask": 0}
    # Dominant rows get no response tokens: the chunked scorer never projects them.
    joined = [
        torch.cat([_pad_to(target[k], width, pads[k]),
                   _pad_to(torch.zeros_like(dominant[k]) if k == "response_mask" else dominant[k], width, pads[k])])
        for k in _SEQ_KEYS
    ]
    _, avg, _, hidden = policy_logps(model, *joined, chunk_size=config.logps_chunk_size)
    rows = target["input_ids"].shape[0]
    b = rows // 2
    langs = list(target["languages"])
    dc = dominant["ref_avg_logps"][:b].to(avg.device)
    dr = dominant["ref_avg_logps"][b:].to(avg.device)
    per_example = mpo_loss(avg[:b], avg[b:rows], dc, dr, beta=config.mpo_beta)
    dom_hidden = hidden[rows:, : dominant["input_ids"].shape[1]]
    pool_mask = retention_pool_mask({"attention_mask": dominant["attention_mask"].to(hidden.device)},
                                    config.retain_pooling)
    retention = retention_loss(dom_hidden, dominant["ref_pooled"].to(hidden.device), pool_mask, pooling="masked_mean")
    out = ObjectiveOutput(loss=torch.zeros((), device=avg.device))
    out.add("loss", per_example, langs, overall=False)
    gap_t = (avg[:b] - avg[b:rows]).detach()
    gap_d = dc - dr
    out.add("reward_gap/target", gap_t, langs)
    out.add("reward_gap/dominant", gap_d, langs)
    out.add("reward_gap/abs_diff", (config.mpo_beta * gap_t - gap_d).abs(), langs)
    out.add("rewards/accuracy", (gap_t > 0).float(), langs)
    return _combine(out, {"mpo_gap": per_example.mean(), "retention": retention}, weights)
