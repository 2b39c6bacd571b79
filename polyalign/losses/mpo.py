"""MPO losses (Zhao et al., ACL 2025): reward-gap matching and dominant-language retention.

See ``docs/methods.md`` (MPO section). Both reference-side quantities (the dominant-language
reward gap and the pooled reference hidden states) are constants of training: the trainer
computes them once and caches them, so these functions take them as plain tensors.
"""

from __future__ import annotations

import torch

from polyalign.errors import UserError

POOLINGS = ("masked_mean", "unmasked_mean")


def mpo_loss(
    target_chosen_avg_logps: torch.Tensor,
    target_rejected_avg_logps: torch.Tensor,
    dominant_ref_chosen_avg_logps: torch.Tensor,
    dominant_ref_rejected_avg_logps: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Reward-gap matching: ``loss = (beta * (tc - tr) - (dc - dr))^2`` per example.

    ``tc``, ``tr``: the policy's *average* per-token log-probs of the chosen / rejected
    response in the target language; ``dc``, ``dr``: the frozen reference's average log-probs
    of the dominant-language (usually English) chosen / rejected response for the same
    prompt. Intuition: the dominant language's reward gap ``RG_d = dc - dr`` already
    separates safe from unsafe answers well; pull the target language's gap
    ``RG_t = tc - tr`` (scaled by ``beta``) onto it. Length-normalised (SimPO-style)
    because refusals are short and unsafe answers long. The batch loss is ``losses.mean()``.

    Shapes: all inputs ``[B]``; returns ``losses [B]``. The dominant-side inputs are
    treated as constants (detached), as in the released code where they come from the
    frozen reference model.
    """
    target_gap = target_chosen_avg_logps - target_rejected_avg_logps
    dominant_gap = (dominant_ref_chosen_avg_logps - dominant_ref_rejected_avg_logps).detach()
    return (beta * target_gap - dominant_gap) ** 2


def pool_hidden(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str = "masked_mean"
) -> torch.Tensor:
    """Average hidden states over positions: ``[B, T, H] -> [B, H]`` (float32 at least).

    - ``masked_mean``: ``sum_t m[b,t] h[b,t] / max(1, sum_t m[b,t])`` over non-padding
      positions (``attention_mask`` ``[B, T]``, 1/True = real token). The project default.
    - ``unmasked_mean``: ``mean_t h[b,t]`` over *all* T positions, padding included
      (``attention_mask`` ignored), exactly the released MPO code's ``mean(dim=1)``. Its
      value depends on how much padding the batch has, so a cached reference vector
      matches the policy's only when both were pooled from identically padded batches.
    """
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; expected one of {list(POOLINGS)}", field="retain_pooling")
    if hidden.dim() != 3:
        raise ValueError(f"pool_hidden expects hidden states [B, T, H], got shape {tuple(hidden.shape)}")
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    h = hidden.to(dtype)
    if pooling == "unmasked_mean":
        return h.mean(dim=1)
    if attention_mask is None:
        raise ValueError("masked_mean pooling needs an attention_mask [B, T]")
    m = attention_mask.to(dtype).unsqueeze(-1)  # [B, T, 1]
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def retention_loss(
    policy_hidden: torch.Tensor,
    ref: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    pooling: str = "masked_mean",
) -> torch.Tensor:
    """Retention of dominant-language representations: ``MSE(pool(h_pi), pool(h_ref))``.

    ``h`` is the last hidden state (after the final norm) on the dominant-language
    sequences. ``loss = mean_{b,j} (pool(h_pi)[b,j] - pool(h_ref)[b,j])^2`` (a scalar,
    mean over the batch B and hidden size H). Intuition: training on target languages must
    not move the dominant language's representations, which are already well aligned.

    Args:
        policy_hidden: ``[B, T, H]`` policy last hidden states (differentiable).
        ref: either ``[B, T, H]`` reference hidden states (pooled here the same way) or
            ``[B, H]`` already-pooled reference vectors (e.g. from the reference cache,
            made with :func:`pool_hidden`); treated as a constant.
        attention_mask: ``[B, T]`` (ignored by ``unmasked_mean``).
        pooling: ``masked_mean`` (default) or ``unmasked_mean`` (the released code).
    """
    pooled_policy = pool_hidden(policy_hidden, attention_mask, pooling)
    if ref.dim() == 3:
        pooled_ref = pool_hidden(ref, attention_mask, pooling)
    elif ref.dim() == 2:
        pooled_ref = ref.to(pooled_policy.dtype)
    else:
        raise ValueError(f"retention_loss: ref must be [B, T, H] or [B, H], got shape {tuple(ref.shape)}")
    if pooled_ref.shape != pooled_policy.shape:
        raise ValueError(
            f"retention_loss: pooled policy {tuple(pooled_policy.shape)} and reference "
            f"{tuple(pooled_ref.shape)} shapes differ"
        )
    return ((pooled_policy - pooled_ref.detach()) ** 2).mean()
