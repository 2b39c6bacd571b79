"""The MLC training term, independent of any trainer (docs/methods.md section 2).

Given the hidden states of a forward pass over the prompt-variant rows of a batch (the
prompt-variant batch of docs/architecture.md: ``variant_input_ids [N, T]``,
``variant_attention_mask [N, T]``, ``variant_index [B, L]``), this module

1. takes layer ``k`` (the extractor's ``layer``, HF ``hidden_states`` indexing, -1 = last),
2. reads each variant row at its last non-padding token (right *or* left padding),
3. applies the :class:`~polyalign.training.extractor.MLCExtractor` (``z = W h + b``),
4. scatters the N rows into ``z [B, L, D]`` with ``mask [B, L] = variant_index >= 0``,
5. returns :func:`polyalign.losses.mlc_loss` and, for logging, the rank-1 share and the
   mean pairwise cosine of the same ``z``.

The caller runs the forward: a trainer appends the variant rows to its preference rows
(one forward, as in the released code; see :func:`append_rows`) or runs them alone
(:func:`encode_variants`). ``L = L_align + weight * L_MLC`` is applied only on optimiser
steps where :func:`should_apply` is true (released: every 2nd step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from polyalign.losses.mlc_loss import mean_pairwise_cosine, mlc_loss, rank1_share
from polyalign.training.extractor import MLCExtractor

HiddenStates = torch.Tensor | Sequence[torch.Tensor]


def should_apply(step: int, every: int) -> bool:
    """True when the MLC term is added at optimiser step ``step`` (0-based, completed steps).

    Released code: ``global_step % aux_every == 0``, so with ``every = 2`` steps 0, 2, 4, ...
    carry the term. All micro-batches of one optimiser step (gradient accumulation) see the
    same ``step`` and therefore agree. ``every`` must be >= 1.
    """
    if every < 1:
        raise ValueError(f"MLC 'every' must be >= 1, got {every}")
    return step % every == 0


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token of each row: ``[N, T] -> [N]`` (long).

    ``max{t : mask[n, t] = 1}``, computed as ``T - 1 - argmax(flip(mask))`` so that right
    padding, left padding and no padding all work. A row without any token is an error.
    """
    mask = attention_mask.to(torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [N, T], got {tuple(mask.shape)}")
    if mask.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=mask.device)
    if mask.shape[0] and not bool(mask.any(dim=1).all()):
        raise ValueError("a prompt-variant row has no tokens (attention_mask all zero)")
    flipped_first = mask.flip(dims=[1]).to(torch.uint8).argmax(dim=1)
    return (mask.shape[1] - 1 - flipped_first).long()


def select_layer(hidden_states: HiddenStates, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` from an HF ``hidden_states`` tuple; a lone ``[N, T, H]`` tensor
    is taken as the already selected layer (e.g. ``last_hidden_state`` for ``layer = -1``)."""
    if isinstance(hidden_states, torch.Tensor):
        return hidden_states
    n = len(hidden_states)
    if not -n <= layer < n:
        raise ValueError(f"MLC layer {layer} out of range for {n} hidden states (embeddings + {n - 1} layers)")
    return hidden_states[layer]


def gather_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``h[n] = hidden[n, last_token_positions(mask)[n]]``: ``[N, T, H], [N, T] -> [N, H]``."""
    if hidden.shape[:2] != attention_mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and attention_mask {tuple(attention_mask.shape)} disagree")
    positions = last_token_positions(attention_mask).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]


def scatter_variants(rows: torch.Tensor, variant_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Place variant rows into examples: ``rows [N, D], variant_index [B, L] -> (z [B, L, D], mask [B, L])``.

    ``z[b, l] = rows[variant_index[b, l]]`` where the index is >= 0; missing languages
    (index -1) get a zero row and ``mask = False``. Differentiable w.r.t. ``rows``.
    """
    if variant_index.dim() != 2:
        raise ValueError(f"variant_index must be [B, L], got {tuple(variant_index.shape)}")
    index = variant_index.to(device=rows.device, dtype=torch.long)
    if index.numel() and int(index.max()) >= rows.shape[0]:
        raise ValueError(f"variant_index refers to row {int(index.max())} but there are {rows.shape[0]} variant rows")
    if index.numel() and int(index.min()) < -1:
        raise ValueError("variant_index entries must be >= -1 (-1 = missing language)")
    mask = index >= 0
    if rows.shape[0] == 0:
        # No variant at all: an all-zero z that stays attached to the graph.
        return rows.new_zeros((*index.shape, rows.shape[-1])) + rows.sum() * 0, mask
    picked = rows[index.clamp(min=0)]  # [B, L, D]; the clamped -1 entries are zeroed next
    z = picked * mask.unsqueeze(-1).to(picked.dtype)
    return z, mask


@dataclass
class MLCResult:
    """One batch's MLC term.

    ``loss``: scalar, mean of ``losses`` over examples with >= 2 present languages (0, still
    attached to the graph, when there is none); ``losses [B]`` (0 where < 2 languages);
    ``z [B, L, D]`` extractor outputs (zero rows where missing); ``mask [B, L]``;
    ``rank1_share [B]`` and ``mean_cosine [B]`` (detached; NaN where undefined).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    z: torch.Tensor
    mask: torch.Tensor
    rank1_share: torch.Tensor
    mean_cosine: torch.Tensor

    @property
    def n_examples(self) -> int:
        """Examples that count (>= 2 present languages)."""
        return int((self.mask.sum(dim=-1) >= 2).sum())

    def metrics(self, prefix: str = "mlc/") -> dict[str, float]:
        """``{prefix+"loss", prefix+"rank1_share", prefix+"mean_cosine", prefix+"present_share"}``:
        the loss and the means over counted examples (NaN when none counts), and the share of
        (example, language) slots present."""
        counted = self.mask.sum(dim=-1) >= 2
        present = float(self.mask.float().mean()) if self.mask.numel() else float("nan")
        if not bool(counted.any()):
            nan = float("nan")
            return {f"{prefix}loss": float(self.loss.detach()), f"{prefix}rank1_share": nan,
                    f"{prefix}mean_cosine": nan, f"{prefix}present_share": present}
        return {
            f"{prefix}loss": float(self.loss.detach()),
            f"{prefix}rank1_share": float(self.rank1_share[counted].mean()),
            f"{prefix}mean_cosine": float(self.mean_cosine[counted].mean()),
            f"{prefix}present_share": present,
        }


def mlc_term(
    hidden_states: HiddenStates,
    variant_attention_mask: torch.Tensor,
    variant_index: torch.Tensor,
    extractor: MLCExtractor,
    *,
    tau: float = 0.2,
    scale: str = "released",
) -> MLCResult:
    """The MLC loss of a batch from the variant rows' hidden states.

    Args:
        hidden_states: an HF ``hidden_states`` tuple of ``[N, T, H]`` tensors (the extractor's
            ``layer`` is picked from it) or the selected layer's ``[N, T, H]`` tensor. Only
            the N variant rows: slice the preference rows off before calling.
        variant_attention_mask: ``[N, T]``; left or right padding.
        variant_index: ``[B, L]`` row of each (example, language), -1 where missing.
        extractor: the trainable head; ``z = extractor(h_last)``.
        tau, scale: see :func:`polyalign.losses.mlc_loss`.

    ``loss = mean_{b : K_b >= 2} mlc_loss(z, mask)[b]`` with ``K_b`` the present languages of
    example ``b``: examples with fewer than two languages neither count nor dilute the mean.
    """
    hidden = select_layer(hidden_states, extractor.layer)
    h_last = gather_last_token(hidden, variant_attention_mask)  # [N, H]
    rows = extractor(h_last)  # [N, D] float32
    z, mask = scatter_variants(rows, variant_index)
    losses = mlc_loss(z, tau=tau, scale=scale, mask=mask)
    counted = (mask.sum(dim=-1) >= 2).to(losses.dtype)
    # sum / max(1, count): 0 when nothing counts, and the graph stays connected either way.
    loss = (losses * counted).sum() / counted.sum().clamp(min=1.0)
    with torch.no_grad():
        share = rank1_share(z.detach(), mask)
        cosine = mean_pairwise_cosine(z.detach(), mask)
    return MLCResult(loss=loss, losses=losses, z=z, mask=mask, rank1_share=share, mean_cosine=cosine)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: positions 0, 1, ... of the real tokens of each row,
    so a left-padded row gets the same rotary positions as the same row right-padded."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def encode_variants(
    model: nn.Module,
    variant_input_ids: torch.Tensor,
    variant_attention_mask: torch.Tensor,
    layer: int = -1,
) -> torch.Tensor:
    """Run a causal LM's decoder on variant rows alone; return layer ``layer`` at each row's
    last non-padding token: ``[N, T] -> [N, H]``.

    Uses the decoder (``model.get_decoder()``), so no ``[N, T, V]`` logits are computed, and
    passes position ids derived from the attention mask, so left and right padding give the
    same result. Differentiable when grad is enabled. For measurement (e.g. the rank-1
    share of held-out prompts) and for trainers that cannot append the rows to their own
    forward pass.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    outputs = decoder(
        input_ids=variant_input_ids,
        attention_mask=variant_attention_mask,
        position_ids=position_ids_from_mask(variant_attention_mask),
        output_hidden_states=layer != -1,
        use_cache=False,
    )
    hidden = outputs.last_hidden_state if layer == -1 else select_layer(outputs.hidden_states, layer)
    return gather_last_token(hidden, variant_attention_mask)


def to_right_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's tokens to the left (right padding), keeping their order: ``[N, T]``.

    A stable sort of ``~mask`` puts the real tokens first; pads get ``pad_token_id``.
    """
    mask = attention_mask.to(torch.bool)
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    ids = input_ids.gather(1, order)
    new_mask = mask.gather(1, order)
    ids = ids.masked_fill(~new_mask, pad_token_id)
    return ids, new_mask.to(attention_mask.dtype)


def append_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    extra_input_ids: torch.Tensor,
    extra_attention_mask: torch.Tensor,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack right-padded rows ``[M, T1]`` and extra rows ``[N, T2]`` (any padding) into one
    right-padded batch ``[M + N, max(T1, T2)]`` for a single forward pass.

    The extra rows are re-padded on the right, so no position ids are needed (every row's
    real tokens sit at positions 0..len-1). With causal attention and masked padding, the
    first ``M`` rows' outputs at positions ``< T1`` are those of a forward on them alone
    (up to floating-point summation order); slice ``[:M, :T1]`` to recover them.
    """
    extra_ids, extra_mask = to_right_padding(extra_input_ids, extra_attention_mask, pad_token_id)
    width = max(input_ids.shape[1], extra_ids.shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    ids = torch.cat([pad(input_ids, pad_token_id), pad(extra_ids.to(input_ids.device), pad_token_id)])
    mask = torch.cat([pad(attention_mask, 0), pad(extra_mask.to(attention_mask.device, attention_mask.dtype), 0)])
    return ids, mask
