"""Running a causal LM for training: hidden states and response log-probs from one forward.

This is the one place that runs a model (plain, PEFT, DDP, DeepSpeed, FSDP2); the math on its
outputs is pure tensor code in :mod:`polyalign.losses` (:func:`~polyalign.losses.sequence_logps`,
the chunked LM head with a fused log-softmax).

Two ways to run a model, chosen by :func:`runs_own_forward`:

- a plain (or PEFT) model runs its decoder only (``model.get_decoder()``, else ``model.model``;
  LoRA layers live inside it): no logits at all; the LM head is applied afterwards to the
  response positions only;
- a model that runs its own forward is called through ``forward`` with ``logits_to_keep=1``
  (one position's logits, negligible) and ``output_hidden_states``. That is a distributed
  wrapper with a ``.module`` (DDP and the DeepSpeed engine prepare their gradient all-reduce in
  their forward) or an FSDP2-sharded module (``fully_shard``: its root unit, which holds the
  embeddings, final norm and LM head, is all-gathered only by the root's own forward hook;
  calling the decoder directly fails with "got mixed torch.Tensor and DTensor"). See
  docs/scaling.md for what each needed.

Rows are right-padded ``[N, T]`` tensors (docs/architecture.md, "Batches"): ``input_ids``,
``attention_mask`` and ``response_mask`` (True where a token's log-prob counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from polyalign.errors import UserError
from polyalign.losses import sequence_logps

if torch.distributed.is_available():  # not on every platform's torch build
    from torch.distributed.fsdp import FSDPModule
else:  # pragma: no cover
    FSDPModule = None


def _is_fsdp(module: Any) -> bool:
    """Whether ``module`` is FSDP2-sharded (``fully_shard`` mixes ``FSDPModule`` in)."""
    return FSDPModule is not None and isinstance(module, FSDPModule)


class SequenceScores(NamedTuple):
    """What one forward over ``N`` rows gives.

    ``sum_logps [N]``, ``avg_logps [N]`` (per response token; 0 without response tokens),
    ``n_tokens [N]`` (long), ``last_hidden [N, T, H]`` (after the final norm) and
    ``layer_hidden [N, T, H]`` = HF ``hidden_states[hidden_layer]`` (``last_hidden`` itself when
    ``hidden_layer`` is -1).
    """

    sum_logps: torch.Tensor
    avg_logps: torch.Tensor
    n_tokens: torch.Tensor
    last_hidden: torch.Tensor
    layer_hidden: torch.Tensor


@dataclass(frozen=True)
class Rows:
    """Token rows for one forward: ``input_ids``, ``attention_mask``, ``response_mask`` ``[N, T]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    @classmethod
    def of(cls, batch: dict[str, Any]) -> Rows:
        """The rows of a preference batch (docs/architecture.md, "Batches")."""
        return cls(batch["input_ids"], batch["attention_mask"], batch["response_mask"])

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device: torch.device) -> Rows:
        return Rows(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))

    def without_responses(self) -> Rows:
        """All-zero response mask: the LM head never projects these rows (hidden states only)."""
        return Rows(self.input_ids, self.attention_mask, torch.zeros_like(self.response_mask))

    def padded(self, width: int, pad_token_id: int) -> Rows:
        """Right-padded to at least ``width`` columns (padding changes no earlier position's output)."""
        extra = width - self.width
        if extra <= 0:
            return self
        return Rows(F.pad(self.input_ids, (0, extra), value=pad_token_id), F.pad(self.attention_mask, (0, extra)),
                    F.pad(self.response_mask, (0, extra)))

    def cat(self, other: Rows, pad_token_id: int) -> Rows:
        """``self`` rows then ``other`` rows, both padded to the wider one."""
        width = max(self.width, other.width)
        a, b = self.padded(width, pad_token_id), other.padded(width, pad_token_id)
        return Rows(torch.cat([a.input_ids, b.input_ids]), torch.cat([a.attention_mask, b.attention_mask]),
                    torch.cat([a.response_mask, b.response_mask]))


def _unsupported_logit_scaling(config: Any) -> str | None:
    """Name of a logit-scaling config field :func:`~polyalign.losses.sequence_logps` does not implement."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            return name
    return None


def runs_own_forward(model: nn.Module) -> bool:
    """Whether ``model``'s own forward must run rather than its decoder's (module docstring)."""
    inner = getattr(model, "module", None)
    if inner is not None and hasattr(inner, "get_output_embeddings"):
        return True
    return _is_fsdp(model)


def _gathered_units(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    """FSDP2 units whose parameters are used *after* ``model``'s forward: the root (an MLC
    extractor lives there) and the unit owning the LM head (the root, the head itself, or a
    group such as accelerate's ``[final norm, LM head]``)."""
    owner = None
    for module in model.modules():  # pre-order: the last unit containing the head is the innermost
        if _is_fsdp(module) and any(m is head for m in module.modules()):
            owner = module
    units = {id(u): u for u in (model, owner) if u is not None and _is_fsdp(u)}
    return list(units.values())


def reshard_after_scoring(model: nn.Module) -> None:
    """FSDP2: reshard what :func:`model_hidden_states` kept gathered; a no-op for other models.

    Call it after scoring *without* gradients once nothing needs the head (or an MLC extractor
    in the root unit) any more: without a backward nothing else reshards them, and a gathered
    root shows plain tensors instead of its sharded parameters to whatever reads the module
    next (an optimizer built then would hold the wrong tensors; a state-dict save). After a
    forward with gradients no call is needed: FSDP2 reshards in backward.
    """
    if _is_fsdp(model):
        for unit in _gathered_units(model, model.get_output_embeddings()):
            unit.reshard()


def _keep_gathered_after_forward(model: nn.Module, head: nn.Module) -> None:
    """FSDP2: keep the units of :func:`_gathered_units` gathered from the forward until backward.

    torch leaves the root unsharded after forward by default, but not when
    ``reshard_after_forward=True`` was passed for it explicitly; a head that is its own unit
    reshards after forward by default (accelerate puts it in a ``[norm, head]`` group that does
    not). They are set not to reshard after forward (torch's own choice for the root: backward
    needs these parameters right away, and reshards them). After a forward without gradients,
    see :func:`reshard_after_scoring`.
    """
    for unit in _gathered_units(model, head):
        unit.set_reshard_after_forward(False, recurse=False)


def model_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, all_layers: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, nn.Module | torch.Tensor, Any]:
    """One forward: ``(last_hidden [N, T, H], hidden_states or None, lm_head, text_config)``.

    ``last_hidden`` is after the final norm; ``hidden_states`` (HF indexing, ``[-1] ==
    last_hidden``) only when ``all_layers``. ``lm_head`` is what
    :func:`~polyalign.losses.sequence_logps` takes: the output-embedding module, or (FSDP2, head
    sharded as its own unit) its gathered weight. Models that rescale logits (``logit_scale``
    etc.) are refused rather than scored wrongly.
    """
    wrapped = runs_own_forward(model)
    inner = model.module if wrapped and hasattr(model, "module") else model
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    scaling = _unsupported_logit_scaling(config)
    if scaling is not None:
        raise UserError(f"models with a logit scaling ({scaling}) are not supported", field=scaling)
    head = inner.get_output_embeddings()
    if not wrapped:
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      output_hidden_states=all_layers)
        return out.last_hidden_state, (out.hidden_states if all_layers else None), head, config
    fsdp = inner is model
    if fsdp:
        _keep_gathered_after_forward(model, head)
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    if fsdp and _is_fsdp(head) and getattr(head, "bias", None) is None:
        # A head that is an FSDP unit (accelerate's [norm, head] group) must not be called as a
        # module again after the forward: its unit's backward bookkeeping then runs twice and
        # the backward crashed (SIGSEGV, torch 2.13, gloo). Its gathered weight is used instead.
        head = head.weight
    # hidden_states[-1] == last_hidden_state (after the final norm) in transformers 5
    return out.hidden_states[-1], (out.hidden_states if all_layers else None), head, config


def model_sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    chunk_size: int = 1024,
    hidden_layer: int = -1,
    reshard: bool = True,
) -> SequenceScores:
    """Run ``model`` once (:func:`model_hidden_states`) and score the response tokens with
    :func:`~polyalign.losses.sequence_logps` (LM head on response positions only).

    Works for any ``AutoModelForCausalLM`` whose decoder returns ``last_hidden_state`` after the
    final norm (Llama, Gemma-2/3, Qwen-2, ...), PEFT-wrapped or not, and for DDP / DeepSpeed /
    FSDP2. The LM head is ``get_output_embeddings()``; Gemma-2's ``final_logit_softcapping`` is
    read from the config. ``hidden_layer`` picks ``layer_hidden`` (HF ``hidden_states`` index).

    Without gradients the FSDP2 units kept gathered are resharded afterwards
    (:func:`reshard_after_scoring`) unless ``reshard`` is False: the training objective still
    uses the root unit (an MLC extractor) after the forward, and the trainer reshards after it.

    Shapes: ``input_ids``, ``attention_mask``, ``response_mask``: ``[N, T]``; see
    :class:`SequenceScores` for the result.
    """
    last_hidden, states, lm_head, config = model_hidden_states(model, input_ids, attention_mask,
                                                               all_layers=hidden_layer != -1)
    sum_logps, avg_logps, n_tokens = sequence_logps(
        last_hidden, lm_head, input_ids, response_mask, chunk_size=chunk_size,
        logit_softcap=getattr(config, "final_logit_softcapping", None),
    )
    if reshard and not torch.is_grad_enabled():  # e.g. reference values: nothing uses the head after this
        reshard_after_scoring(model)
    layer_hidden = last_hidden if states is None else states[hidden_layer]
    return SequenceScores(sum_logps, avg_logps, n_tokens, last_hidden, layer_hidden)

