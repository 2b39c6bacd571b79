"""Run a causal LM over texts and collect per-layer hidden states, padding masked.

Shared by every analysis. Layer indices follow HF ``output_hidden_states``: index 0 is the
embedding output, index ``i`` (1..L) the output of block ``i``, the last index (``-1``) the last
block's output after the final norm. Negative indices count from the end.

Padding is done here (not by the tokenizer) so the tokenizer object is never mutated and
left and right padding give the same states: explicit ``position_ids`` (``cumsum(mask) - 1``)
are passed to models that accept them, so a left-padded row sees the same positions as an
unpadded one.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from polyalign.errors import UserError

POOLINGS = ("mean", "last")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def render_prompt(tokenizer: Any, messages: Sequence[Any], *, add_generation_prompt: bool = True) -> tuple[str, bool]:
    """Render chat turns to text. Returns ``(text, add_special_tokens)``.

    With a chat template the template writes every special token itself, so the text must
    be encoded with ``add_special_tokens=False``. A tokenizer without a chat template (a
    base model such as mGPT) gets the turns' contents joined by newlines, encoded with the
    tokenizer's usual special tokens. ``messages`` are dicts or :class:`Message` objects.
    """
    dicts = [m if isinstance(m, dict) else m.to_dict() for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=add_generation_prompt)
        return text, False
    return "\n".join(m["content"] for m in dicts), True


def encode_batch(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise and pad ``texts`` -> ``input_ids``, ``attention_mask`` ``[B, T]`` (long).

    Truncation (``max_length``) keeps the first tokens. A text encoding to no token at all
    is a :class:`UserError` (a mean over zero tokens is undefined).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    if max_length is not None:
        rows = [r[:max_length] for r in rows]
    for i, row in enumerate(rows):
        if not row:
            raise UserError(f"text {i} encodes to no tokens (empty text?)", field="text")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _accepts_position_ids(model: torch.nn.Module) -> bool:
    # A PEFT wrapper's forward takes **kwargs and hands them to the base model: ask that one.
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "position_ids" in inspect.signature(target.forward).parameters


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout) and restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def forward_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One no-grad forward; returns HF ``hidden_states`` (``num_layers + 1`` tensors ``[B, T, H]``)."""
    device = model_device(model)
    inputs = {k: v.to(device) for k, v in batch.items()}
    if _accepts_position_ids(model):
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), eval_mode(model):
        out = model(**inputs, output_hidden_states=True, use_cache=False)
    return out.hidden_states


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t mask[b,t] h[b,t] / sum_t mask[b,t]`` in float32: ``[B, T, H] -> [B, H]``."""
    m = mask.to(hidden.device).bool().unsqueeze(-1)
    # where(), not multiply: a padded position's state may be non-finite under some kernels.
    summed = torch.where(m, hidden.float(), torch.zeros((), device=hidden.device)).sum(1)
    return summed / m.sum(1).float()


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State at each row's last non-padding position (left or right padding): ``[B, H]``."""
    t = mask.shape[1]
    # Position of the last 1 in the mask: T-1 minus the first 1 in the flipped mask.
    last = (t - 1) - mask.flip(-1).argmax(-1)
    return hidden.float()[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


def resolve_layers(layers: Sequence[int] | None, n_states: int) -> list[int]:
    """Map layer indices (negative allowed) to ``0..n_states-1``; ``None`` -> all of them."""
    if layers is None:
        return list(range(n_states))
    out = []
    for layer in layers:
        idx = layer + n_states if layer < 0 else layer
        if not 0 <= idx < n_states:
            raise UserError(f"layer {layer} out of range: the model has hidden states 0..{n_states - 1}", field="layers")
        out.append(idx)
    return out


def pooled_hidden_states(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Pool each text's hidden states per layer.

    Returns ``(layer_indices, states)`` with ``states`` float32 on CPU, shape
    ``[len(layer_indices), len(texts), hidden]``. ``pooling="mean"`` averages over the
    non-padding tokens; ``"last"`` takes the last non-padding token.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not texts:
        raise UserError("no texts to encode", field="text")
    pool = masked_mean if pooling == "mean" else last_token
    chosen: list[int] | None = None
    chunks: list[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        batch = encode_batch(
            tokenizer, texts[start : start + batch_size], padding_side=padding_side,
            add_special_tokens=add_special_tokens, max_length=max_length,
        )
        states = forward_hidden(model, batch)
        if chosen is None:
            chosen = resolve_layers(layers, len(states))
        mask = batch["attention_mask"]
        chunks.append(torch.stack([pool(states[i], mask).cpu() for i in chosen]))
    assert chosen is not None
    return chosen, torch.cat(chunks, dim=1)


def prompt_last_token_states(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[Sequence[Any]],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: str = "left",
) -> tuple[list[int], torch.Tensor]:
    """Last-token states of chat prompts rendered with the generation prompt (MLC's ``h_l``).

    ``[len(layers), len(conversations), hidden]``, float32 CPU.
    """
    if not conversations:
        raise UserError("no prompts to encode", field="prompt")
    rendered = [render_prompt(tokenizer, conv, add_generation_prompt=True) for conv in conversations]
    specials = {flag for _, flag in rendered}
    assert len(specials) == 1  # one tokenizer -> one rendering mode
    return pooled_hidden_states(
        model, tokenizer, [text for text, _ in rendered], pooling="last", layers=layers,
        batch_size=batch_size, padding_side=padding_side, add_special_tokens=specials.pop(),
    )
