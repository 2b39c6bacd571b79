"""The training objective: one step function per method, and the weighted sum of its terms.

``loss = sum_i weight_i * term_i`` with, per method (docs/methods.md):

=========  =====================================================================
``dpo``    ``dpo`` (:func:`~polyalign.losses.dpo_loss`, summed log-probs vs cached
           reference) + ``nll_weight * nll`` (length-normalised NLL of the chosen answer)
``simpo``  ``simpo`` + ``nll_weight * nll``
``orpo``   ``nll`` (weight 1 by default) + ``orpo`` (the odds-ratio term, weight 1)
``sft``    ``nll`` on prompt+chosen
``mpo``    ``mpo_gap`` (``mean (mpo_beta * RG_t - RG_d)^2``) + ``retain_alpha * retention``
=========  =====================================================================

Each method is one function below (``dpo_step`` ... ``mpo_step``: the forward, the loss, the
metrics), picked once from :data:`METHODS` by :class:`Objective`. Each term is reported
unweighted under its name; the metrics are means over the batch's examples and, with a
``<lang>/`` prefix, over its examples of each language: ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracy`` (and for MPO
``reward_gap/target``, ``reward_gap/dominant``, ``reward_gap/abs_diff`` =
``|mpo_beta * RG_t - RG_d|``), and ``<lang>/loss`` (the method's main per-example term; the
overall ``loss`` is the Trainer's).

One policy forward per step: chosen and rejected rows are already one ``[2B, T]`` batch; for
MPO the dominant pair's rows have an all-zero response mask, so they are never projected
through the LM head (their hidden states feed the retention term only); they are appended to
the target pair's rows for a model that runs its own forward (one forward per backward,
:func:`~polyalign.training.forward.runs_own_forward`) and with MLC, and run as a second
forward at their own width for a plain model (target languages often tokenise 2-3x longer
than the dominant one: no compute on the shorter pair's padding).

MLC (any method, ``mlc_weight > 0``): the term ``mlc`` (weight ``mlc_weight``) is
:func:`polyalign.training.mlc_term.mlc_term` on the prompt-variant rows, which
:meth:`Policy.score` appends to the method's rows (:func:`~polyalign.training.mlc_term.append_rows`)
so the decoder still runs once; they too have an all-zero response mask. It is computed when
``apply_mlc`` (the trainer passes ``should_apply(global_step, mlc_every)`` in training, True in
evaluation); on other steps the variant rows are not forwarded at all and the extractor gets a
zero gradient (see :mod:`polyalign.training.mlc_policy`). Logged on the steps that compute it,
as means over those steps: ``mlc/loss`` (unweighted), ``mlc/rank1_share``,
``mlc/mean_cosine``, ``mlc/present_share``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from polyalign.errors import UserError
from polyalign.losses import dpo_loss, mpo_loss, nll_loss, orpo_loss, retention_loss, retention_width, simpo_loss
from polyalign.training.config import PolyalignConfig
from polyalign.training.extractor import MLCExtractor
from polyalign.training.forward import Rows, SequenceScores, model_sequence_logps, runs_own_forward
from polyalign.training.mlc_policy import unwrap_policy
from polyalign.training.mlc_term import MLCResult, append_rows, mlc_term


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


@dataclass(frozen=True)
class PairLogps:
    """The policy's log-probs of a preference batch's B pairs (rows ``0..B-1`` chosen, ``B..2B-1``
    rejected), each ``[B]``: summed, per response token, and the response token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_avg: torch.Tensor
    rejected_avg: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @classmethod
    def of(cls, scores: SequenceScores, pairs: int) -> PairLogps:
        s, a, n = scores.sum_logps, scores.avg_logps, scores.n_tokens
        return cls(s[:pairs], s[pairs:], a[:pairs], a[pairs:], n[:pairs], n[pairs:])


@dataclass
class StepResult:
    """One method step: unweighted scalar ``terms``, the per-example main loss ``per_example [B]``
    (logged as ``<lang>/loss``), per-example ``metrics`` (name -> ``[B]``) and the MLC term if computed."""

    terms: dict[str, torch.Tensor]
    per_example: torch.Tensor
    metrics: dict[str, torch.Tensor]
    mlc: MLCResult | None = None


@dataclass
class Policy:
    """The model a step scores (the policy or its distributed wrapper) and this step's MLC setting."""

    model: torch.nn.Module
    config: PolyalignConfig
    pad_token_id: int
    extractor: MLCExtractor | None
    variants: dict[str, Any] | None  # the batch, when this step carries the MLC term

    @property
    def joins_forwards(self) -> bool:
        """Whether several row groups must share one forward: a model that runs its own forward
        (one forward per backward) or an MLC step (the variants ride along)."""
        return self.variants is not None or runs_own_forward(self.model)

    def score(self, rows: Rows) -> tuple[SequenceScores, MLCResult | None]:
        """One forward of ``rows``; on an MLC step the variant rows are appended (all-zero response
        mask) and their MLC term returned (a step scores once when it carries the variants). The
        scores are those of ``rows`` only."""
        n = len(rows)
        batch = self.variants
        if batch is not None:
            ids, mask = append_rows(rows.input_ids, rows.attention_mask,
                                    batch["variant_input_ids"].to(rows.input_ids.device),
                                    batch["variant_attention_mask"].to(rows.attention_mask.device), self.pad_token_id)
            response = torch.zeros_like(ids, dtype=rows.response_mask.dtype)
            response[:n, : rows.width] = rows.response_mask
            rows = Rows(ids, mask, response)
        layer = self.extractor.layer if batch is not None else -1
        scores = model_sequence_logps(self.model, rows.input_ids, rows.attention_mask, rows.response_mask,
                                      chunk_size=self.config.logps_chunk_size, hidden_layer=layer, reshard=False)
        mlc = None
        if batch is not None:
            mlc = mlc_term(scores.layer_hidden[n:], rows.attention_mask[n:],
                           batch["variant_index"].to(scores.layer_hidden.device), self.extractor,
                           tau=float(self.config.mlc_tau), scale=self.config.mlc_scale)
        return SequenceScores(*(t[:n] for t in scores)), mlc


def cached(batch: dict[str, Any], key: str, device: torch.device) -> torch.Tensor:
    """A cached reference value the batch must carry (``run.train`` attaches them)."""
    if key not in batch:
        raise RuntimeError(f"this batch needs the cached reference value {key!r}: attach it with "
                           "polyalign.training.reference_cache.prepare_reference (run.train does)")
    return batch[key].to(device)


def _rewards(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
            "rewards/accuracy": (chosen > rejected).float()}


# -- one function per method -------------------------------------------------------------------


def dpo_step(policy: Policy, batch: dict[str, Any]) -> StepResult:
    """DPO on summed log-probs against the cached reference's, plus the chosen answer's NLL."""
    c = policy.config
    scores, mlc = policy.score(Rows.of(batch))
    p = PairLogps.of(scores, len(batch["languages"]))
    ref = cached(batch, "ref_logps", p.chosen.device)
    b = len(p.chosen)
    losses, chosen_r, rejected_r = dpo_loss(p.chosen, p.rejected, ref[:b], ref[b:], beta=c.beta, loss_type=c.loss_type,
                                            label_smoothing=c.label_smoothing, chosen_n_tokens=p.chosen_tokens,
                                            rejected_n_tokens=p.rejected_tokens)
    return StepResult({"dpo": losses.mean(), "nll": nll_loss(p.chosen_avg).mean()}, losses,
                      _rewards(chosen_r, rejected_r), mlc)


def simpo_step(policy: Policy, batch: dict[str, Any]) -> StepResult:
    """SimPO on per-token log-probs (reference-free), plus the chosen answer's NLL."""
    c = policy.config
    scores, mlc = policy.score(Rows.of(batch))
    p = PairLogps.of(scores, len(batch["languages"]))
    losses, chosen_r, rejected_r = simpo_loss(p.chosen_avg, p.rejected_avg, beta=c.beta, gamma=c.simpo_gamma)
    return StepResult({"simpo": losses.mean(), "nll": nll_loss(p.chosen_avg).mean()}, losses,
                      _rewards(chosen_r, rejected_r), mlc)


def orpo_step(policy: Policy, batch: dict[str, Any]) -> StepResult:
    """ORPO: the chosen answer's NLL plus the odds-ratio term (reference-free)."""
    scores, mlc = policy.score(Rows.of(batch))
    p = PairLogps.of(scores, len(batch["languages"]))
    losses, chosen_r, rejected_r = orpo_loss(p.chosen_avg, p.rejected_avg, beta=policy.config.beta)
    return StepResult({"orpo": losses.mean(), "nll": nll_loss(p.chosen_avg).mean()}, losses,
                      _rewards(chosen_r, rejected_r), mlc)


def sft_step(policy: Policy, batch: dict[str, Any]) -> StepResult:
    """SFT: the length-normalised NLL of each prompt+chosen row."""
    scores, mlc = policy.score(Rows.of(batch))
    losses = nll_loss(scores.avg_logps)
    return StepResult({"nll": losses.mean()}, losses, {}, mlc)


def mpo_step(policy: Policy, batch: dict[str, Any]) -> StepResult:
    """MPO: the target pair's reward gap pulled onto the cached dominant one, plus retention of
    the dominant pair's pooled last hidden states (docs/methods.md section 1)."""
    c, dom = policy.config, batch["dominant"]
    target = Rows.of(batch["target"])
    width = retention_width(dom["attention_mask"], c.retain_pooling)
    dominant = Rows.of(dom).without_responses().padded(width, policy.pad_token_id)
    if policy.joins_forwards:  # target + dominant (+ variants) rows in one forward
        scores, mlc = policy.score(target.cat(dominant, policy.pad_token_id))
        target_avg = scores.avg_logps[: len(target)]
        dom_hidden = scores.last_hidden[len(target):, : dominant.width]
    else:  # a plain model: each pair at its own width
        target_avg, mlc = policy.score(target)[0].avg_logps, None
        dom_hidden = policy.score(dominant)[0].last_hidden
    b = len(target) // 2
    tc, tr = target_avg[:b], target_avg[b:]
    ref_avg = cached(dom, "ref_avg_logps", tc.device)
    dc, dr = ref_avg[:b], ref_avg[b:]
    gap = mpo_loss(tc, tr, dc, dr, beta=c.mpo_beta)
    retention = retention_loss(dom_hidden, cached(dom, "ref_pooled", dom_hidden.device),
                               dominant.attention_mask.to(dom_hidden.device), pooling=c.retain_pooling)
    gap_t, gap_d = (tc - tr).detach(), dc - dr
    metrics = {"reward_gap/target": gap_t, "reward_gap/dominant": gap_d,
               "reward_gap/abs_diff": (c.mpo_beta * gap_t - gap_d).abs(), "rewards/accuracy": (gap_t > 0).float()}
    return StepResult({"mpo_gap": gap.mean(), "retention": retention}, gap, metrics, mlc)


@dataclass(frozen=True)
class Method:
    """A method's step and the weights of its terms."""

    step: Callable[[Policy, dict[str, Any]], StepResult]
    weights: Callable[[PolyalignConfig], dict[str, float]]


METHODS: dict[str, Method] = {
    "dpo": Method(dpo_step, lambda c: {"dpo": 1.0, "nll": c.resolved_nll_weight}),
    "simpo": Method(simpo_step, lambda c: {"simpo": 1.0, "nll": c.resolved_nll_weight}),
    "orpo": Method(orpo_step, lambda c: {"orpo": 1.0, "nll": c.resolved_nll_weight}),
    "sft": Method(sft_step, lambda c: {"nll": c.resolved_nll_weight}),
    "mpo": Method(mpo_step, lambda c: {"mpo_gap": 1.0, "retention": float(c.retain_alpha)}),
}


def _method(config: PolyalignConfig) -> Method:
    if config.method not in METHODS:
        raise UserError(f"unknown method {config.method!r}; expected one of {list(METHODS)}", field="method")
    return METHODS[config.method]


def term_weights(config: PolyalignConfig) -> dict[str, float]:
    """Named terms of the method and their weights (terms with weight 0 are still logged)."""
    weights = _method(config).weights(config)
    if config.mlc_enabled:
        weights["mlc"] = float(config.mlc_weight)
    return weights


class Objective:
    """The method's step, chosen once from :data:`METHODS`; calling it runs one batch."""

    def __init__(self, config: PolyalignConfig, pad_token_id: int) -> None:
        self.config, self.pad_token_id = config, pad_token_id
        self.step = _method(config).step
        self.weights = term_weights(config)

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], *, apply_mlc: bool = True) -> ObjectiveOutput:
        """``model``: the policy, a :class:`~polyalign.training.mlc_policy.PolicyWithExtractor`
        (MLC) or a distributed wrapper of either. ``apply_mlc``: whether this step carries the MLC term."""
        model, extractor = unwrap_policy(model)
        if extractor is None and "mlc" in self.weights:
            raise RuntimeError("mlc_weight > 0 needs the policy wrapped with its extractor "
                               "(polyalign.training.mlc_policy.wrap_policy; run.train does)")
        with_mlc = (extractor is not None and apply_mlc and "variant_input_ids" in batch
                    and batch["variant_input_ids"].shape[0] > 0)
        result = self.step(Policy(model, self.config, self.pad_token_id, extractor, batch if with_mlc else None),
                           batch)
        languages = list((batch["target"] if "target" in batch else batch)["languages"])
        out = ObjectiveOutput(loss=torch.zeros((), device=result.per_example.device))
        out.add("loss", result.per_example, languages, overall=False)
        for name, values in result.metrics.items():
            out.add(name, values, languages)
        loss = out.loss
        for name, value in result.terms.items():
            out.terms[name] = float(value.detach())
            if self.weights.get(name, 0.0) != 0.0:
                loss = loss + self.weights[name] * value
        if result.mlc is not None:  # weighted into the loss; its metrics are per-step means
            if self.weights["mlc"] != 0.0:
                loss = loss + self.weights["mlc"] * result.mlc.loss
            for key, value in result.mlc.metrics().items():
                if value == value:  # NaN: no example with two languages in this batch
                    out.sums[key] += value
                    out.counts[key] += 1
        elif extractor is not None:
            # 0 * sum(params): a zero gradient for the extractor on steps without the MLC term,
            # so every DDP process produces the same set of gradients.
            loss = loss + (sum(p.sum() for p in extractor.parameters()) * 0.0).to(loss.dtype)
        out.loss = loss
        return out


def compute_objective(model: torch.nn.Module, batch: dict[str, Any], config: PolyalignConfig, pad_token_id: int,
                      *, apply_mlc: bool = True) -> ObjectiveOutput:
    """Run the policy once on ``batch`` and combine the method's terms (:class:`Objective`)."""
    return Objective(config, pad_token_id)(model, batch, apply_mlc=apply_mlc)
