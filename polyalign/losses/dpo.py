"""Preference losses on sequence log-probabilities: DPO (and variants), SimPO, ORPO, NLL.

Every function is pure: it takes per-sequence log-probabilities (``[B]`` tensors, one
entry per preference pair, computed e.g. by :func:`polyalign.losses.logprobs.sequence_logps`)
and returns *per-example* losses ``[B]``; the caller reduces (usually ``.mean()``). The
"rewards" returned beside the losses are detached and only meant for logging.

Conventions follow TRL 1.16 (``trl/trainer/dpo_trainer.py`` and
``trl/experimental/{cpo,orpo}``) so that a run here and a run with TRL optimise the same
number; the one deliberate difference is documented in :func:`dpo_loss` (conservative DPO).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from polyalign.errors import UserError

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")

_LN_HALF = -math.log(2.0)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_n_tokens: torch.Tensor | None = None,
    rejected_n_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimisation loss (Rafailov et al., 2023) and variants.

    With the implicit reward ``r(y) = beta * (logp_pi(y|x) - logp_ref(y|x))`` and the margin
    ``delta = (pc - rc) - (pr - rr)`` (policy/ref, chosen/rejected summed log-probs):

    - ``sigmoid`` (DPO): ``-log sigmoid(beta * delta)``. Intuition: a Bradley-Terry model of
      the preference whose logit is the reward margin. With ``label_smoothing = eps > 0``
      this becomes *conservative DPO* (cDPO, Mitchell 2023):
      ``-(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)`` (the label is
      assumed flipped with probability eps). NOTE: TRL 1.16 ignores ``label_smoothing``
      for ``sigmoid`` (earlier TRL versions applied cDPO); the two agree at ``eps = 0``,
      TRL's default.
    - ``hinge`` (SLiC): ``relu(1 - beta * delta)``.
    - ``ipo`` (Azar et al., 2023, eq. 17): ``(delta_avg - 1 / (2 beta))^2`` where, as in
      TRL 1.16, each log-ratio is divided by its completion's token count
      (``delta_avg = (pc - rc) / |y_w| - (pr - rr) / |y_l|``, counts clamped to >= 1).
      Pass ``chosen_n_tokens`` / ``rejected_n_tokens`` to get that normalisation; without
      them the inputs are used as given (so passing already length-averaged log-probs
      gives the same value). ``beta`` plays the role of the paper's tau.
    - ``robust`` (rDPO, Chowdhury et al., 2024), eps = ``label_smoothing`` in [0, 0.5) the
      label-flip rate: ``(-(1-eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)) / (1 - 2 eps)``
      (an unbiased estimate of the clean loss under flipped labels; exactly TRL 1.16).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` summed response log-probs
            under the policy (differentiable).
        ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the frozen reference.
        beta: inverse temperature of the implicit reward (IPO: regulariser tau).
        loss_type: one of :data:`DPO_LOSS_TYPES`.
        label_smoothing: eps for ``sigmoid`` (cDPO) and ``robust``.
        chosen_n_tokens, rejected_n_tokens: ``[B]`` response token counts, used by ``ipo``.

    Returns:
        ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; rewards are
        ``beta * (policy - ref)`` detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise UserError(
            f"unknown DPO loss type {loss_type!r}; expected one of {list(DPO_LOSS_TYPES)}", field="loss_type"
        )
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise UserError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}", field="label_smoothing")
    if loss_type == "sigmoid" and not 0.0 <= label_smoothing <= 0.5:
        raise UserError(f"cDPO needs label_smoothing in [0, 0.5], got {label_smoothing}", field="label_smoothing")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios

    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
        if label_smoothing > 0.0:
            losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * delta)
    elif loss_type == "ipo":
        c, r = chosen_logratios, rejected_logratios
        if chosen_n_tokens is not None:
            c = c / chosen_n_tokens.to(c.dtype).clamp(min=1.0)
        if rejected_n_tokens is not None:
            r = r / rejected_n_tokens.to(r.dtype).clamp(min=1.0)
        losses = (c - r - 1.0 / (2.0 * beta)) ** 2
    else:  # robust
        clean = -(1.0 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1.0 - 2.0 * label_smoothing)

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    *,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al., 2024): reference-free, length-normalised DPO with a margin.

    ``loss = -log sigmoid(beta * (c - r) - gamma)`` with ``c``, ``r`` the *average*
    per-token log-probs of the chosen / rejected responses. Intuition: the reward is the
    length-normalised likelihood itself (what generation optimises), and the chosen reward
    must beat the rejected one by at least the margin ``gamma``.

    Conventions: ``gamma`` here is the absolute margin of the SimPO paper, the same number
    as TRL's ``CPOConfig.simpo_gamma`` (TRL computes ``beta * ((c - r) - simpo_gamma / beta)``).
    The SimPO authors' own code takes ``gamma_beta_ratio`` instead:
    ``gamma = gamma_beta_ratio * beta``.

    Shapes: inputs ``[B]``; returns ``(losses [B], beta * c detached, beta * r detached)``.
    """
    logits = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    losses = -F.logsigmoid(logits)
    return losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-ln 2`` (Maechler 2012)."""
    return torch.where(x < _LN_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The odds-ratio term of ORPO (Hong et al., 2024), as in TRL's ``ORPOTrainer``.

    With ``c``, ``r`` the average per-token log-probs (``P = exp(c)`` the geometric-mean
    token probability), ``odds(P) = P / (1 - P)`` and
    ``log_odds = (c - r) - (log(1 - exp(c)) - log(1 - exp(r)))``:
    ``loss = -beta * log sigmoid(log_odds)``. Intuition: raise the odds of generating the
    chosen response relative to the rejected one, no reference model needed.

    The full ORPO objective is ``NLL(chosen) + orpo_loss(...)[0].mean()``: the trainer adds
    the SFT/NLL term on the chosen responses separately (:func:`nll_loss`; TRL computes
    ``loss = policy_nll_loss - (beta * logsigmoid(log_odds)).mean()`` with a token-weighted
    NLL, see :func:`nll_loss`). Computed in float32
    at least, inputs must be < 0 (a log-probability of exactly 0 gives infinite odds).

    Shapes: inputs ``[B]``; returns ``(losses [B], beta * c detached, beta * r detached)``.
    """
    dtype = torch.promote_types(chosen_avg_logps.dtype, torch.float32)
    c = chosen_avg_logps.to(dtype)
    r = rejected_avg_logps.to(dtype)
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    losses = -beta * F.logsigmoid(log_odds)
    return losses, beta * c.detach(), beta * r.detach()


def nll_loss(avg_logps: torch.Tensor) -> torch.Tensor:
    """SFT / NLL term: ``loss = -avg_logp(y|x)`` per sequence (``[B]`` -> ``[B]``).

    Each sequence counts once whatever its length (``losses.mean()`` averages sequences).
    TRL's ORPO/CPO NLL term is token-weighted instead (one cross-entropy over every chosen
    token of the batch): ``-(sum_logps.sum() / n_tokens.sum())`` with the outputs of
    :func:`~polyalign.losses.logprobs.sequence_logps`; the two agree when all responses
    have the same length.
    """
    return -avg_logps
