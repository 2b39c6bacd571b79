"""MLC: the Multi-Lingual Consistency loss (Bu et al., ICLR 2026) and collinearity metrics.

See ``docs/methods.md`` (MLC section). For each example, the L language variants of the
same prompt give L representation vectors ``z_1..z_L`` (rows of an ``L x D`` matrix Z).
Perfectly consistent representations are collinear: Z has rank one, all of its (squared)
singular mass in ``s_1``. The loss pushes towards that.

Missing languages (``mask``) and numerical corner cases:

- masked rows are zeroed before the SVD. A zero row adds no singular mass: the nonzero
  singular values are exactly those of the matrix of present rows. The trailing
  ``L - K`` singular values (K present rows), which are structural zeros, are left out
  of the softmax, so an example's loss equals the loss on its K present rows alone;
- an example with fewer than 2 present rows has loss 0 (there is nothing to align);
- a present row that is exactly zero keeps its place in the formula (it contributes a
  zero singular value, as in the released code) but gets a zero gradient: the gradient
  of ``z / (||z|| + 1e-12)`` at ``z = 0`` is ``1e12`` times an arbitrary direction;
- repeated singular values (identical rows, L = 1, zero rows) are safe: the gradient of
  singular values alone is ``U diag(dL/ds) V^T`` (no ``1 / (s_i - s_j)`` terms, unlike
  the gradient of the singular vectors), and rows tied in value get tied coefficients, so
  the result does not depend on the arbitrary basis of the repeated subspace. Tests
  check forward and backward are finite on all these inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyalign.errors import UserError

MLC_SCALES = ("released", "paper")
_EPS = 1e-12


def _normalised_rows(z: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalise ``z`` [B, L, D] as ``z / (||z|| + 1e-12)`` (float32 at least), zero
    masked rows; returns ``(zn [B, L, D], present [B, L] bool)``."""
    if z.dim() != 3:
        raise ValueError(f"expected z of shape [B, L, D], got {tuple(z.shape)}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    z = z.to(dtype)
    present = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    if mask is not None:
        if mask.shape != z.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match z rows {tuple(z.shape[:2])}")
        present = mask.to(device=z.device, dtype=torch.bool)
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    # Multiplying by the 0/1 factor (rather than indexing) keeps shapes static and gives
    # masked rows, and exactly-zero rows, a zero gradient; the forward value is unchanged
    # for zero rows since 0 / (0 + eps) = 0.
    keep = (present.unsqueeze(-1) & (norm > 0)).to(dtype)
    zn = z / (norm + _EPS) * keep
    return zn, present


def mlc_loss(
    z: torch.Tensor,
    *,
    tau: float = 0.2,
    scale: str = "released",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-lingual consistency loss: cross-entropy of the singular-value softmax to index 0.

    For each example, with rows ``z_l <- z_l / (||z_l|| + 1e-12)`` and ``s_1 >= ... >= s_r``
    the singular values of the ``L x D`` matrix (computed in float32 or wider):

    - ``scale="released"`` (the authors' code, default): ``logits = s / (stopgrad(s_1) * tau)``;
    - ``scale="paper"`` (the paper's formula): ``logits = s / tau``;

    ``loss = -log softmax(logits)[0] = -s_1' + log sum_j exp(s_j')``. Intuition: maximise the
    share of the first singular value, i.e. make the language variants' representations
    collinear (rank one). With unit rows ``sum_j s_j^2 = L``, so the scale is bounded.

    Args:
        z: ``[B, L, D]`` representations of L language variants per example.
        tau: softmax temperature.
        scale: ``"released"`` or ``"paper"``.
        mask: optional ``[B, L]`` bool, True where the language is present. See the
            module docstring for how missing rows are handled.

    Returns:
        ``losses [B]`` (0 for examples with fewer than 2 present rows); average for the batch.
    """
    if scale not in MLC_SCALES:
        raise UserError(f"unknown MLC scale {scale!r}; expected one of {list(MLC_SCALES)}", field="mlc_scale")
    if tau <= 0:
        raise UserError(f"MLC temperature tau must be > 0, got {tau}", field="mlc_tau")
    zn, present = _normalised_rows(z, mask)
    s = torch.linalg.svdvals(zn)  # [B, min(L, D)], descending
    n_present = present.sum(dim=-1)  # [B]
    if scale == "released":
        # clamp: an all-zero matrix has s_1 = 0; its loss is zeroed below or is log(K).
        logits = s / (s[:, :1].detach().clamp(min=_EPS) * tau)
    else:
        logits = s / tau
    # Drop the structural zeros of missing rows (always keep index 0, the target).
    index = torch.arange(s.shape[-1], device=s.device)
    in_softmax = index.unsqueeze(0) < n_present.clamp(min=1).unsqueeze(-1)
    logits = logits.masked_fill(~in_softmax, float("-inf"))
    target = torch.zeros(s.shape[0], dtype=torch.long, device=s.device)
    losses = F.cross_entropy(logits, target, reduction="none")
    return torch.where(n_present >= 2, losses, torch.zeros_like(losses))


def rank1_share(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of the first singular value: ``s_1^2 / sum_j s_j^2`` after row normalisation.

    ``[B, L, D] -> [B]``, in ``[1/K, 1]`` for K present non-zero rows (1 = collinear).
    Masked rows are dropped (zeroed). NaN where no present row is non-zero (undefined).
    """
    zn, _ = _normalised_rows(z, mask)
    s = torch.linalg.svdvals(zn)
    return s[:, 0] ** 2 / (s**2).sum(dim=-1)


def mean_pairwise_cosine(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine similarity over the pairs ``i < j`` of present rows: ``[B, L, D] -> [B]``.

    ``cos(z_i, z_j) = <z_i, z_j> / ((||z_i|| + 1e-12)(||z_j|| + 1e-12))`` (0 for a zero row).
    NaN for examples with fewer than 2 present rows (no pair to average).
    """
    zn, present = _normalised_rows(z, mask)
    gram = zn @ zn.transpose(-1, -2)  # [B, L, L]
    pair = present.unsqueeze(-1) & present.unsqueeze(-2)
    pair = torch.triu(pair, diagonal=1)
    n_pairs = pair.sum(dim=(-1, -2)).to(gram.dtype)
    total = (gram * pair.to(gram.dtype)).sum(dim=(-1, -2))
    return total / n_pairs  # 0/0 = NaN where fewer than 2 rows are present
