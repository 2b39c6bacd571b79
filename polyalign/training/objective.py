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
MPO the dominant pair's rows have an all-zero response mask, so they are never projected
through the LM head (their hidden states feed the retention term only); they are appended to
the target pair's rows under a distributed wrapper and with MLC, and run as a second forward
at their own width for a plain model (see ``_mpo_forward``).

MLC (any method, ``mlc_weight > 0``): the term ``mlc`` (weight ``mlc_weight``) is
:func:`polyalign.training.mlc_term.mlc_term` on the prompt-variant rows, which are appended to the
method's rows (:func:`~polyalign.training.mlc_term.append_rows`) so the decoder still runs once;
they too have an all-zero response mask. It is computed when ``apply_mlc`` (the trainer passes
``should_apply(global_step, mlc_every)`` in training, True in evaluation); on other steps the
variant rows are not forwarded at all (saves their compute) and the extractor gets a zero
gradient (see :mod:`polyalign.training.mlc_policy`). Logged on the steps that compute it, as
means over those steps: ``mlc/loss`` (unweighted), ``mlc/rank1_share``, ``mlc/mean_cosine``,
``mlc/present_share``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from polyalign.losses import dpo_loss, mpo_loss, nll_loss, orpo_loss, retention_loss, simpo_loss
from polyalign.training.forward import SequenceScores, model_sequence_logps, runs_own_forward
from polyalign.training.mlc_term import MLCResult, append_rows, mlc_term
from polyalign.training.mlc_policy import unwrap_policy
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
    weights = {
        "dpo": {"dpo": 1.0, "nll": nll},
        "simpo": {"simpo": 1.0, "nll": nll},
        "orpo": {"orpo": 1.0, "nll": nll},
        "sft": {"nll": nll},
        "mpo": {"mpo_gap": 1.0, "retention": float(config.retain_alpha)},
    }[config.method]
    if getattr(config, "mlc_enabled", False):
        weights["mlc"] = float(config.mlc_weight)
    return weights


def policy_forward(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    *, chunk_size: int = 1024, hidden_layer: int = -1,
) -> SequenceScores:
    """:func:`~polyalign.training.forward.model_sequence_logps`, the FSDP2 units left gathered (the
    trainer reshards after the whole loss)."""
    return model_sequence_logps(model, input_ids, attention_mask, response_mask, chunk_size=chunk_size,
                                hidden_layer=hidden_layer, reshard=False)


def _with_variants(
    seq: list[torch.Tensor], batch: dict[str, Any], pad_token_id: int
) -> list[torch.Tensor]:
    """Append the variant rows to ``[input_ids, attention_mask, response_mask]`` (all-zero
    response mask: the LM head never projects them)."""
    ids, mask = append_rows(seq[0], seq[1], batch["variant_input_ids"].to(seq[0].device),
                            batch["variant_attention_mask"].to(seq[1].device), pad_token_id)
    response = torch.zeros_like(ids, dtype=seq[2].dtype)
    response[: seq[2].shape[0], : seq[2].shape[1]] = seq[2]
    return [ids, mask, response]


def _mlc_wanted(batch: dict[str, Any], extractor: Any, apply_mlc: bool) -> bool:
    return (extractor is not None and apply_mlc and "variant_input_ids" in batch
            and batch["variant_input_ids"].shape[0] > 0)


def _mlc(layer_hidden: torch.Tensor, mask: torch.Tensor, rows: int, batch: dict[str, Any], extractor: Any,
         config: Any) -> MLCResult:
    """The MLC term on the variant rows ``rows:`` of the joint forward."""
    return mlc_term(layer_hidden[rows:], mask[rows:], batch["variant_index"].to(layer_hidden.device), extractor,
                    tau=float(config.mlc_tau), scale=config.mlc_scale)


def _zero_extractor_grad(extractor: torch.nn.Module) -> torch.Tensor:
    """``0 * sum(params)``: a zero gradient for the extractor on steps without the MLC term, so
    every DDP process produces the same set of gradients."""
    return sum(p.sum() for p in extractor.parameters()) * 0.0


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


def compute_objective(model: torch.nn.Module, batch: dict[str, Any], config: Any, pad_token_id: int,
                      *, apply_mlc: bool = True) -> ObjectiveOutput:
    """Run the policy once on ``batch`` and combine the method's terms (see module docstring).

    ``model``: the policy, a :class:`~polyalign.training.mlc_policy.PolicyWithExtractor` (MLC)
    or a distributed wrapper of either. ``apply_mlc``: whether this step carries the MLC term.
    """
    weights = term_weights(config)
    chunk = config.logps_chunk_size
    ref_batch = batch["dominant"] if config.method == "mpo" else batch
    needed = {"dpo": ("ref_logps",), "mpo": ("ref_avg_logps", "ref_pooled")}.get(config.method, ())
    missing = [k for k in needed if k not in ref_batch]
    if missing:
        raise RuntimeError(f"{config.method} batches need cached reference values {missing}: attach them with "
                           "polyalign.training.reference_cache.prepare_reference (run.train does)")
    model, extractor = unwrap_policy(model)
    if extractor is None and "mlc" in weights:
        raise RuntimeError("mlc_weight > 0 needs the policy wrapped with its extractor "
                           "(polyalign.training.mlc_policy.wrap_policy; run.train does)")
    with_mlc = _mlc_wanted(batch, extractor, apply_mlc)
    if config.method == "mpo":
        return _mpo(model, batch, config, weights, pad_token_id, extractor, with_mlc)
    seq = [batch[k] for k in _SEQ_KEYS]
    rows = seq[0].shape[0]
    if with_mlc:
        seq = _with_variants(seq, batch, pad_token_id)
    total, avg, n_tokens, _, layer_hidden = policy_forward(
        model, *seq, chunk_size=chunk, hidden_layer=extractor.layer if with_mlc else -1)
    terms: dict[str, torch.Tensor] = {}
    if with_mlc:
        mlc = _mlc(layer_hidden, seq[1], rows, batch, extractor, config)
    total, avg, n_tokens = total[:rows], avg[:rows], n_tokens[:rows]
    langs = list(batch["languages"])
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
    return _finish(out, terms, weights, extractor, mlc if with_mlc else None)


def _combine(out: ObjectiveOutput, terms: dict[str, torch.Tensor], weights: dict[str, float]) -> ObjectiveOutput:
    loss = out.loss
    for name, value in terms.items():
        out.terms[name] = float(value.detach())
        if weights.get(name, 0.0) != 0.0:
            loss = loss + weights[name] * value
    out.loss = loss
    return out


def _finish(out: ObjectiveOutput, terms: dict[str, torch.Tensor], weights: dict[str, float], extractor: Any,
            mlc: MLCResult | None) -> ObjectiveOutput:
    """``_combine`` plus the MLC term: weighted into the loss when computed, its metrics stored as
    per-step means (``mlc/...``, counted only on the steps that compute them); otherwise a zero
    extractor gradient."""
    if mlc is not None:
        terms["mlc"] = mlc.loss
    out = _combine(out, terms, weights)
    if mlc is not None:
        del out.terms["mlc"]
        for key, value in mlc.metrics().items():
            if value == value:  # NaN: no example with two languages in this batch
                out.sums[key] += value
                out.counts[key] += 1
    elif extractor is not None:
        out.loss = out.loss + _zero_extractor_grad(extractor).to(out.loss.dtype)
    return out


def _mpo_forward(model: torch.nn.Module, batch: dict[str, Any], config: Any, pad_token_id: int, extractor: Any,
                 with_mlc: bool) -> tuple[torch.Tensor, torch.Tensor, MLCResult | None]:
    """``(avg_logps of the target rows [2B], last hidden states of the dominant rows [2B, T_d, H],
    MLC result or None)``.

    Dominant rows get no response tokens: the chunked scorer never projects them. A model that
    must run its own forward (DDP, DeepSpeed, FSDP2: one forward per backward) and any MLC step
    get one forward of target + dominant (+ variant) rows padded to a common width. A plain
    model runs the two pairs as two forwards at their own widths instead: the same values,
    without decoding the shorter pair's padding (target languages often tokenise 2-3x longer
    than the dominant one).
    """
    target, dominant = batch["target"], batch["dominant"]
    no_response = dict(dominant, response_mask=torch.zeros_like(dominant["response_mask"]))
    chunk = config.logps_chunk_size
    if not with_mlc and not runs_own_forward(model):
        avg = policy_forward(model, *(target[k] for k in _SEQ_KEYS), chunk_size=chunk)[1]
        hidden = policy_forward(model, *(no_response[k] for k in _SEQ_KEYS), chunk_size=chunk)[3]
        return avg, hidden, None
    width = max(target["input_ids"].shape[1], dominant["input_ids"].shape[1])
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "response_mask": 0}
    joined = [torch.cat([_pad_to(target[k], width, pads[k]), _pad_to(no_response[k], width, pads[k])])
              for k in _SEQ_KEYS]
    rows, pair_rows = target["input_ids"].shape[0], joined[0].shape[0]
    if with_mlc:  # target pair + dominant pair + variants: still one forward
        joined = _with_variants(joined, batch, pad_token_id)
    _, avg, _, hidden, layer_hidden = policy_forward(model, *joined, chunk_size=chunk,
                                                     hidden_layer=extractor.layer if with_mlc else -1)
    mlc = _mlc(layer_hidden, joined[1], pair_rows, batch, extractor, config) if with_mlc else None
    return avg[:rows], hidden[rows:pair_rows, : dominant["input_ids"].shape[1]], mlc


def _mpo(model: torch.nn.Module, batch: dict[str, Any], config: Any, weights: dict[str, float],
         pad_token_id: int, extractor: Any = None, with_mlc: bool = False) -> ObjectiveOutput:
    target, dominant = batch["target"], batch["dominant"]
    avg, dom_hidden, mlc = _mpo_forward(model, batch, config, pad_token_id, extractor, with_mlc)
    rows = target["input_ids"].shape[0]
    b = rows // 2
    langs = list(target["languages"])
    dc = dominant["ref_avg_logps"][:b].to(avg.device)
    dr = dominant["ref_avg_logps"][b:].to(avg.device)
    per_example = mpo_loss(avg[:b], avg[b:rows], dc, dr, beta=config.mpo_beta)
    pool_mask = retention_pool_mask({"attention_mask": dominant["attention_mask"].to(dom_hidden.device)},
                                    config.retain_pooling)
    retention = retention_loss(dom_hidden, dominant["ref_pooled"].to(dom_hidden.device), pool_mask, pooling="masked_mean")
    out = ObjectiveOutput(loss=torch.zeros((), device=avg.device))
    out.add("loss", per_example, langs, overall=False)
    gap_t = (avg[:b] - avg[b:rows]).detach()
    gap_d = dc - dr
    out.add("reward_gap/target", gap_t, langs)
    out.add("reward_gap/dominant", gap_d, langs)
    out.add("reward_gap/abs_diff", (config.mpo_beta * gap_t - gap_d).abs(), langs)
    out.add("rewards/accuracy", (gap_t > 0).float(), langs)
    return _finish(out, {"mpo_gap": per_example.mean(), "retention": retention}, weights, extractor, mlc)
