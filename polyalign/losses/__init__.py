"""Pure loss functions and efficient sequence log-probabilities: tensors in, tensors out.

Losses return per-example tensors ``[B]`` (the caller reduces) except
:func:`retention_loss`, which is a scalar MSE. Formulas, intuitions and shapes are in each
function's docstring.
"""

from polyalign.losses.dpo import DPO_LOSS_TYPES, dpo_loss, nll_loss, orpo_loss, simpo_loss
from polyalign.losses.logprobs import sequence_logps
from polyalign.losses.mlc_loss import MLC_SCALES, mean_pairwise_cosine, mlc_loss, rank1_share
from polyalign.losses.mpo import (
    POOLINGS,
    mpo_loss,
    pool_hidden,
    retention_loss,
    retention_pool_mask,
    retention_width,
)

__all__ = [
    "DPO_LOSS_TYPES",
    "MLC_SCALES",
    "POOLINGS",
    "dpo_loss",
    "mean_pairwise_cosine",
    "mlc_loss",
    "mpo_loss",
    "nll_loss",
    "orpo_loss",
    "pool_hidden",
    "rank1_share",
    "retention_loss",
    "retention_pool_mask",
    "retention_width",
    "sequence_logps",
    "simpo_loss",
]
