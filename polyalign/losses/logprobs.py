"""Sequence log-probabilities without full-vocabulary logits for every position.

A causal LM's log-prob of a response is ``sum_t log softmax(W h_{t-1})[y_t]`` over the
response tokens. The obvious route (``model(...).logits.log_softmax(-1)``) materialises a
``[N, T, V]`` float32 tensor: with V = 256k (Gemma-2) and T = 1024 that is 1 GiB per
sequence, plus as much again for its gradient. Here only the positions whose next token is
a response token are projected through the LM head, in chunks of ``chunk_size`` rows; each
chunk's log-softmax is a float32 logsumexp, and when there are several chunks each runs
under activation checkpointing when gradients are needed, so backward keeps one
``[chunk_size, V]`` block alive at a time instead of one per chunk. The projection itself
runs in the LM head's dtype (bf16 under bf16 training, like TRL's default); softcap,
softmax and sums in float32.

Mask convention (docs/architecture.md, "Batches"): ``response_mask[b, t]`` is True when
token ``t`` of row ``b`` is a response token whose log-prob counts; it is predicted from the
hidden state at ``t - 1``; ``t = 0`` never counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from polyalign.errors import UserError


class _TargetLogSoftmax(torch.autograd.Function):
    """``out[m] = z[m, y_m] - logsumexp(z[m])`` in float32 (float64 for float64 ``z``).

    Same values and gradient (``dz = g * (onehot(y) - softmax(z))``) as ``z.float()`` +
    ``gather`` + ``logsumexp`` under autograd, in fewer passes over the ``[M, V]`` block: that
    route makes a float32 copy of ``z``, keeps it for backward and builds three more float32
    ``[M, V]`` tensors there (softmax, the scattered one-hot, their sum) before casting back.
    Here ``z`` is kept in its own dtype (half the memory under bf16), converted a few rows at
    a time, and backward writes the gradient straight into ``z``'s dtype. Under bf16 the
    log-sum-exp pair was ~15 % of a DPO step on CPU.
    """

    @staticmethod
    def _block_rows(logits: torch.Tensor) -> int:
        # ~4 MiB of float32 per block: converted rows stay in cache between the passes.
        return max(1, (1 << 20) // max(1, logits.shape[1]))

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        step = _TargetLogSoftmax._block_rows(logits)
        wide = torch.promote_types(logits.dtype, torch.float32)
        lse = torch.empty(logits.shape[0], dtype=wide, device=logits.device)
        for start in range(0, logits.shape[0], step):
            lse[start : start + step] = torch.logsumexp(logits[start : start + step].to(wide), dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(wide) - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        step = _TargetLogSoftmax._block_rows(logits)
        grad_logits = torch.empty_like(logits)
        grad = grad.to(lse.dtype)
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            block = (logits[rows].to(lse.dtype) - lse[rows, None]).exp_().mul_(-grad[rows, None])
            block.scatter_add_(-1, targets[rows, None], grad[rows, None])
            grad_logits[rows] = block
        return grad_logits, None


def _chunk_token_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    logit_softcap: float | None,
    temperature: float,
) -> torch.Tensor:
    """``log softmax(transform(lm_head(hidden)))[targets]`` for one chunk: [M, H] -> [M]."""
    logits = lm_head(hidden) if isinstance(lm_head, nn.Module) else F.linear(hidden, lm_head)
    if logit_softcap is not None or temperature != 1.0:
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logit_softcap is not None:
        # Gemma-2's final soft-capping, applied by the model before any sampling transform.
        logits = logit_softcap * torch.tanh(logits / logit_softcap)
    if temperature != 1.0:
        logits = logits / temperature
    return _TargetLogSoftmax.apply(logits, targets)


def _needs_grad(hidden: torch.Tensor, lm_head: nn.Module | torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    if hidden.requires_grad:
        return True
    if isinstance(lm_head, torch.Tensor):
        return lm_head.requires_grad
    return any(p.requires_grad for p in lm_head.parameters())


def sequence_logps(
    hidden_states: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    chunk_size: int = 1024,
    logit_softcap: float | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed and averaged response log-probs from final hidden states, chunked.

    ``sum_logps[n] = sum_{t : response_mask[n, t]} log p(input_ids[n, t] | hidden_states[n, t-1])``
    where ``log p = log_softmax(z / temperature)`` and ``z = cap * tanh(W h / cap)`` if
    ``logit_softcap`` (Gemma-2's ``final_logit_softcapping``) else ``z = W h`` (+ bias).
    ``avg_logps = sum_logps / max(1, n_tokens)`` (0 for a row without response tokens).

    Args:
        hidden_states: ``[N, T, H]`` final hidden states (after the final norm).
        lm_head: the output embedding module (called on ``[M, H]`` rows, so biases,
            adapters and tied weights work) or a ``[V, H]`` weight tensor.
        input_ids: ``[N, T]`` token ids.
        response_mask: ``[N, T]`` bool/int, see the module docstring.
        chunk_size: rows of the ``[rows, V]`` logit block computed at once.
        logit_softcap: soft-capping value or None.
        temperature: logits are divided by it (after soft-capping), as TRL does.

    Returns:
        ``(sum_logps [N], avg_logps [N], n_tokens [N] long)``; the log-probs are float32
        (float64 if the hidden states are) and differentiable w.r.t. the hidden states and
        the LM head's parameters.
    """
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be [N, T, H], got {tuple(hidden_states.shape)}")
    if input_ids.shape != hidden_states.shape[:2] or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"shape mismatch: hidden_states {tuple(hidden_states.shape)}, input_ids {tuple(input_ids.shape)}, "
            f"response_mask {tuple(response_mask.shape)}"
        )
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}", field="chunk_size")
    n_rows = hidden_states.shape[0]
    # Token t (t >= 1) is predicted from position t - 1: shift once, then gather.
    mask = response_mask[:, 1:].to(torch.bool)
    rows = mask.nonzero(as_tuple=True)[0]  # [M] row of each counted token
    selected_hidden = hidden_states[:, :-1][mask]  # [M, H]
    targets = input_ids[:, 1:][mask]  # [M]
    n_tokens = mask.sum(dim=1)

    # Checkpointing only pays with several chunks (without it every chunk's [chunk, V] block
    # would stay alive until backward). With one chunk, backward needs that block anyway at
    # the same point, so recomputing it (one more [M, H] x [H, V] matmul and log-sum-exp)
    # saves no memory; skipping it made forward+backward ~20% faster at M ~ 300, V = 32k.
    use_checkpoint = _needs_grad(hidden_states, lm_head) and selected_hidden.shape[0] > chunk_size
    pieces = []
    for start in range(0, selected_hidden.shape[0], chunk_size):
        h = selected_hidden[start : start + chunk_size]
        y = targets[start : start + chunk_size]
        if use_checkpoint:
            # Recompute the [chunk, V] logits in backward instead of keeping every chunk's.
            piece = checkpoint(
                _chunk_token_logps, h, y, lm_head, logit_softcap, temperature, use_reentrant=False
            )
        else:
            piece = _chunk_token_logps(h, y, lm_head, logit_softcap, temperature)
        pieces.append(piece)
    out_dtype = torch.promote_types(hidden_states.dtype, torch.float32)
    if pieces:
        token_logps = torch.cat(pieces).to(out_dtype)
    else:
        # No response token anywhere: an empty slice keeps the result attached to the graph,
        # so a caller's backward() still works (and gives zero gradients).
        token_logps = selected_hidden.sum(dim=-1).to(out_dtype)
    sum_logps = torch.zeros(n_rows, dtype=out_dtype, device=hidden_states.device).index_add(0, rows, token_logps)
    avg_logps = sum_logps / n_tokens.clamp(min=1).to(out_dtype)
    return sum_logps, avg_logps, n_tokens


def _unsupported_logit_scaling(config) -> str | None:
    """Name of a logit-scaling config field this module does not implement, if set."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            return name
    return None


def _fsdp_module_type() -> type | None:
    """``torch.distributed.fsdp.FSDPModule`` (the class FSDP2's ``fully_shard`` mixes in), if present."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def _is_fsdp(model: nn.Module) -> bool:
    fsdp = _fsdp_module_type()
    return fsdp is not None and isinstance(model, fsdp)


def runs_own_forward(model: nn.Module) -> bool:
    """Whether ``model``'s own forward must run (rather than its decoder submodule's).

    True for a distributed wrapper with a ``.module`` (DDP, DeepSpeed engine: they prepare the
    gradient all-reduce in their forward) and for an FSDP2-sharded module (``fully_shard``: its
    root unit, which holds the embeddings, final norm and LM head, is only all-gathered by the
    root's own forward hook; calling the decoder directly fails with "got mixed torch.Tensor and
    DTensor").
    """
    inner = getattr(model, "module", None)
    if inner is not None and hasattr(inner, "get_output_embeddings"):
        return True
    return _is_fsdp(model)


def _gathered_units(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    """FSDP2 units whose parameters are used *after* ``model``'s forward: the root (an MLC
    extractor lives there) and the unit owning the LM head (the root, the head itself, or a
    group such as accelerate's ``[final norm, LM head]``)."""
    fsdp = _fsdp_module_type()
    owner = None
    for module in model.modules():  # pre-order: the last unit containing the head is the innermost
        if isinstance(module, fsdp) and any(m is head for m in module.modules()):
            owner = module
    units = {id(u): u for u in (model, owner) if u is not None and isinstance(u, fsdp)}
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
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, nn.Module | torch.Tensor, object]:
    """One decoder forward: ``(last_hidden [N, T, H], hidden_states or None, lm_head, text_config)``.

    ``last_hidden`` is after the final norm; ``hidden_states`` (HF indexing, ``[-1] ==
    last_hidden``) only when ``all_layers``. A plain (or PEFT) model runs its decoder only
    (``model.get_decoder()``, else ``model.model``): no logits at all. A model that must run
    its own forward (:func:`runs_own_forward`: DDP, DeepSpeed, FSDP2) is called with
    ``logits_to_keep=1`` (one position's logits, negligible) and ``output_hidden_states``.
    ``lm_head`` is what :func:`sequence_logps` takes: the output-embedding module, or (FSDP2,
    head sharded as its own unit) its gathered weight. Models that rescale logits
    (``logit_scale`` etc.) are refused rather than scored wrongly.
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
    if fsdp and isinstance(head, _fsdp_module_type()) and getattr(head, "bias", None) is None:
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a causal LM's decoder once and score the response tokens with :func:`sequence_logps`.

    Works for any ``AutoModelForCausalLM`` whose decoder (``model.get_decoder()``, else
    ``model.model``) returns ``last_hidden_state`` after the final norm (Llama, Gemma-2,
    Qwen-2, ...), including PEFT-wrapped ones (LoRA layers live inside the decoder), and for
    DDP / DeepSpeed / FSDP2-sharded models (through their own forward, see
    :func:`model_hidden_states`). The LM head is ``get_output_embeddings()``; Gemma-2's
    ``final_logit_softcapping`` is read from the config.

    Shapes: ``input_ids``, ``attention_mask``, ``response_mask``: ``[N, T]``.
    Returns ``(sum_logps [N], avg_logps [N], n_tokens [N], last_hidden [N, T, H])``.
    """
    last_hidden, _, lm_head, config = model_hidden_states(model, input_ids, attention_mask)
    sum_logps, avg_logps, n_tokens = sequence_logps(
        last_hidden,
        lm_head,
        input_ids,
        response_mask,
        chunk_size=chunk_size,
        logit_softcap=getattr(config, "final_logit_softcapping", None),
    )
    if not torch.is_grad_enabled():  # e.g. reference values: nothing uses the head after this
        reshard_after_scoring(model)
    return sum_logps, avg_logps, n_tokens, last_hidden
