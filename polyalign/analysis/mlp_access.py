"""Per-architecture access to MLP neurons: the down projection and its value vectors.

A "neuron" ``(layer, i)`` is coordinate ``i`` of the input of a block's MLP down projection
(its activation, after the nonlinearity and, for gated MLPs, the gate product). Its *value
vector* is what one unit of that activation adds to the residual stream:

| architecture | down projection | value vector ``i`` |
|---|---|---|
| Llama, Gemma-2/3, Qwen-2, Mistral | ``model.layers[l].mlp.down_proj`` (``nn.Linear``, ``[H, I]``) | ``weight[:, i]`` |
| GPT-2 (and mGPT) | ``transformer.h[l].mlp.c_proj`` (``Conv1D``, weight ``[I, H]``) | ``weight[i, :]`` |
| BLOOM | ``transformer.h[l].mlp.dense_4h_to_h`` (``nn.Linear``, ``[H, I]``) | ``weight[:, i]`` |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polyalign.errors import UserError


@dataclass(frozen=True)
class MLPAccess:
    """How to reach a model family's down projections."""

    family: str
    down_projections: list[nn.Module]
    rows_are_neurons: bool  # True: weight[i, :] is neuron i's value vector (GPT-2 Conv1D)

    @property
    def num_layers(self) -> int:
        return len(self.down_projections)

    @property
    def num_neurons(self) -> int:
        w = self.down_projections[0].weight
        return w.shape[0] if self.rows_are_neurons else w.shape[1]

    def value_vectors(self, layer: int) -> torch.Tensor:
        """``[I, H]``: row ``i`` is neuron ``i``'s value vector (a view, no copy)."""
        w = self.down_projections[layer].weight
        return w if self.rows_are_neurons else w.T


_GATED = {"llama", "gemma", "gemma2", "gemma3_text", "qwen2", "qwen3", "mistral", "phi3"}


def mlp_access(model: nn.Module) -> MLPAccess:
    """Find the down projections of ``model``; unknown families are a :class:`UserError`.

    A PEFT-wrapped model is looked into (its ``model`` attribute is PEFT's tuner, not the
    decoder); a LoRA-adapted down projection is reached as the adapter layer, so hooks see
    the activation that enters base and adapter alike.
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family in _GATED:
        layers = model.model.layers
        return MLPAccess(family, [blk.mlp.down_proj for blk in layers], rows_are_neurons=False)
    if family == "gpt2":
        return MLPAccess(family, [blk.mlp.c_proj for blk in model.transformer.h], rows_are_neurons=True)
    if family == "bloom":
        if model.config.pretraining_tp > 1 and model.config.slow_but_exact:
            # That path multiplies weight slices directly and never calls the module, so
            # hooks would silently see nothing.
            raise UserError("BLOOM with slow_but_exact=True and pretraining_tp > 1 is not supported", field="model")
        return MLPAccess(family, [blk.mlp.dense_4h_to_h for blk in model.transformer.h], rows_are_neurons=False)
    raise UserError(
        f"neuron analysis does not know the MLP layout of model type {family!r} "
        "(supported: llama, gemma, gemma2, gemma3_text, qwen2, qwen3, mistral, phi3, gpt2, bloom)",
        field="model",
    )
