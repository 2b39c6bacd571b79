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


#: The released MPO workflow pads every batch with LLaMA-Factory's collator
#: (``PairwiseDataCollatorWithPadding(pad_to_multiple_of=8)``): widths are multiples of 8.
RELEASED_PAD_MULTIPLE = 8


def _pair_widths(attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Positions pooled per row ``[2B]`` under ``unmasked_mean`` (see :func:`retention_pool_mask`)."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; expected one of {list(POOLINGS)}", field="retain_pooling")
    lengths = attention_mask.sum(dim=1)
    if lengths.shape[0] % 2:
        raise ValueError(f"unmasked_mean pools chosen/rejected pairs: expected [2B, T] rows, got {lengths.shape[0]}")
    half = lengths.shape[0] // 2
    longer = torch.maximum(lengths[:half], lengths[half:])
    width = (longer + RELEASED_PAD_MULTIPLE - 1) // RELEASED_PAD_MULTIPLE * RELEASED_PAD_MULTIPLE
    return width.repeat(2)


def retention_width(attention_mask: torch.Tensor, pooling: str) -> int:
    """Columns the hidden states of a dominant pair batch ``[2B, T]`` must cover before pooling.

    ``masked_mean``: the rows' own width ``T``. ``unmasked_mean``: the widest pair's released
    width (a multiple of 8, :func:`retention_pool_mask`); pad the rows to it before the forward
    (padding on the right changes no earlier position's hidden state under causal attention).
    """
    if pooling == "masked_mean":
        return attention_mask.shape[1]
    widths = _pair_widths(attention_mask, pooling)
    return int(widths.max()) if widths.numel() else 0


def retention_pool_mask(attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Positions the retention term averages, for a dominant pair batch: ``[2B, T] -> [2B, T]`` (0/1).

    Rows ``0..B-1`` are the chosen, ``B..2B-1`` the rejected sequences, right-padded.

    - ``masked_mean``: the attention mask (real tokens only). The project default.
    - ``unmasked_mean``: the released MPO code, ``hidden_states[-1].mean(dim=1)`` over its
      per-device batch of one pair padded by LLaMA-Factory's collator: every position
      ``t < W_b``, padding included, with ``W_b = ceil(max(len_chosen_b, len_rejected_b) / 8) * 8``
      for both rows of pair ``b``. Defined per pair, so the reference vectors cached before
      training and the policy's agree whatever the batching (right padding + causal attention:
      padding after position ``t`` does not change hidden state ``t``). It equals the released
      code at its per-device batch of 1; a released batch of several pairs averages over the
      whole batch's padded width instead, which depends on which pairs share a batch and so
      cannot be cached: training refuses ``unmasked_mean`` above batch size 1
      (:class:`~polyalign.training.config.PolyalignConfig`).

    The hidden states must cover ``W_b`` columns (:func:`retention_width`); a ``ValueError`` otherwise.
    """
    if pooling == "masked_mean":
        return attention_mask
    widths = _pair_widths(attention_mask, pooling)
    if widths.numel() and int(widths.max()) > attention_mask.shape[1]:
        raise ValueError(f"unmasked_mean pools {int(widths.max())} positions but the rows have "
                         f"{attention_mask.shape[1]}: pad them to retention_width() first")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions.unsqueeze(0) < widths.unsqueeze(1)).to(attention_mask.dtype)


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "masked_mean") -> torch.Tensor:
    """Average hidden states over the positions of :func:`retention_pool_mask`: ``[2B, T, H] -> [2B, H]``.

    ``pooled[b] = sum_t m[b,t] h[b,t] / max(1, sum_t m[b,t])`` with ``m = retention_pool_mask(
    attention_mask, pooling)``, in float32 at least.
    """
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; expected one of {list(POOLINGS)}", field="retain_pooling")
    if hidden.dim() != 3:
        raise ValueError(f"pool_hidden expects hidden states [B, T, H], got shape {tuple(hidden.shape)}")
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    m = retention_pool_mask(attention_mask, pooling).to(dtype).unsqueeze(-1)  # [2B, T, 1]
    return (hidden.to(dtype) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def retention_loss(
    policy_hidden: torch.Tensor,
    ref: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    pooling: str = "masked_mean",
) -> torch.Tensor:
    """Retention of dominant-language representations: ``MSE(pool(h_pi), pool(h_ref))``.

    ``h`` is the last hidden state (after the final norm) on the dominant-language
    sequences. ``loss = mean_{b,j} (pool(h_pi)[b,j] - pool(h_ref)[b,j])^2`` (a scalar, mean
    over the 2B rows and hidden size H; ``pool`` = :func:`pool_hidden`). Intuition: training on
    target languages must not move the dominant language's representations, which are already
    well aligned.

    Args:
        policy_hidden: ``[2B, T, H]`` policy last hidden states of a dominant pair batch
            (differentiable).
        ref: either ``[2B, T, H]`` reference hidden states (pooled here the same way) or
            ``[2B, H]`` already-pooled reference vectors (e.g. from the reference cache,
            made with :func:`pool_hidden`); treated as a constant.
        attention_mask: ``[2B, T]``.
        pooling: ``masked_mean`` (default) or ``unmasked_mean`` (the released code, see
            :func:`retention_pool_mask`).
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
