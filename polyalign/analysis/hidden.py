"""Run a causal LM over texts and collect per-layer hidden states, padding masked.

Shared by every analysis. Layer indices follow HF ``output_hidden_states``: index 0 is the
embedding output, index ``i`` (1..L) the output of block ``i``, the last index (``-1``) the last
block's output after the final norm. Negative indices count from the end.

Padding is done here (not by the tokenizer) so the tokenizer object is never mutated and
left and right padding give the same states: explicit ``position_ids`` (``cumsum(mask) - 1``)
are passed to models that accept them, so a left-padded row sees the same positions as an
unpadded one.

Only the decoder runs (``model.get_decoder()``: the transformer without its LM head, also
inside a PEFT wrapper), as in training's scoring path
(:func:`polyalign.training.forward.model_hidden_states`): the full-vocabulary logits of every
position would cost more than the decoder itself at a large vocabulary (Gemma-3: 262k tokens,
~60 % of a whole-model forward) and no analysis here uses them. Texts are encoded in batches
of similar length (sorted by token count), so little compute goes to padding; a progress bar
(stderr) appears for encodings that take more than a few seconds.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

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


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool = True, max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each text. Truncation (``max_length``) keeps the first tokens. A text
    encoding to no token at all is a :class:`UserError` (a mean over zero tokens is undefined)."""
    rows = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    if max_length is not None:
        rows = [r[:max_length] for r in rows]
    for i, row in enumerate(rows):
        if not row:
            raise UserError(f"text {i} encodes to no tokens (empty text?)", field="text")
    return [list(r) for r in rows]


def pad_rows(tokenizer: Any, rows: Sequence[Sequence[int]], *, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad token id rows -> ``input_ids``, ``attention_mask`` ``[B, T]`` (long)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
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


def encode_batch(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise and pad ``texts`` -> ``input_ids``, ``attention_mask`` ``[B, T]`` (long)
    (see :func:`tokenize_texts` and :func:`pad_rows`)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = tokenize_texts(tokenizer, texts, add_special_tokens=add_special_tokens, max_length=max_length)
    return pad_rows(tokenizer, rows, padding_side=padding_side)


def decoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's decoder (the transformer without its LM head), or None if it has none.

    ``get_decoder()`` reaches through a PEFT wrapper to the base model's decoder, whose LoRA
    layers stay in place. A model whose ``get_decoder()`` is the model itself while it has an
    LM head has no separate decoder: None.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if decoder is None or decoder is model or not isinstance(decoder, torch.nn.Module):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return None if decoder is base else decoder


def _accepts(module: torch.nn.Module, name: str) -> bool:
    # A PEFT wrapper's forward takes **kwargs and hands them to the base model: ask that one.
    target = module.get_base_model() if hasattr(module, "get_base_model") else module
    return name in inspect.signature(target.forward).parameters


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout) and restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def forward_hidden(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, output_hidden_states: bool = True,
) -> tuple[torch.Tensor, ...] | None:
    """One no-grad decoder forward; returns HF ``hidden_states`` (``num_layers + 1`` tensors ``[B, T, H]``).

    The decoder runs alone (no LM head, no logits). A model without a separate decoder runs
    whole, with ``logits_to_keep=1`` where it takes it. ``output_hidden_states=False`` (e.g.
    when only forward hooks matter) returns None.
    """
    device = model_device(model)
    inputs = {k: v.to(device) for k, v in batch.items()}
    decoder = decoder_of(model)
    target = decoder if decoder is not None else model
    if _accepts(target, "position_ids"):
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    if decoder is None and _accepts(model, "logits_to_keep"):
        inputs["logits_to_keep"] = 1
    with torch.no_grad(), eval_mode(model):
        out = target(**inputs, output_hidden_states=output_hidden_states, use_cache=False)
    return out.hidden_states if output_hidden_states else None


def progress_bar(total: int, desc: str, *, enabled: bool = True) -> tqdm:
    """A progress bar on stderr that shows up only once the work has taken ~3 s."""
    return tqdm(total=total, desc=desc, unit="text", file=sys.stderr, delay=3.0, disable=not enabled,
                dynamic_ncols=True)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices cut into batches of ``batch_size`` after sorting by length (longest first).

    Neighbours in length share a batch, so padding is small; ties keep input order.
    """
    if batch_size < 1:
        raise UserError(f"must be at least 1, got {batch_size}", field="batch_size")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
            raise UserError(f"layer {layer} out of range: the model has hidden states 0..{n_states - 1}",
                            field="layers")
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
    progress: tqdm | bool = True,
) -> tuple[list[int], torch.Tensor]:
    """Pool each text's hidden states per layer.

    Returns ``(layer_indices, states)`` with ``states`` float32 on CPU, shape
    ``[len(layer_indices), len(texts), hidden]`` in the order of ``texts`` (they are run in
    length-sorted batches). ``pooling="mean"`` averages over the non-padding tokens;
    ``"last"`` takes the last non-padding token. ``progress``: a bar of the caller's to
    advance by one per text, True for one of this call's own (shown after ~3 s), or False.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not texts:
        raise UserError("no texts to encode", field="text")
    pool = masked_mean if pooling == "mean" else last_token
    rows = tokenize_texts(tokenizer, texts, add_special_tokens=add_special_tokens, max_length=max_length)
    bar = progress if isinstance(progress, tqdm) else progress_bar(len(rows), "hidden states", enabled=bool(progress))
    chosen: list[int] | None = None
    out: torch.Tensor | None = None
    try:
        for group in length_sorted_batches([len(r) for r in rows], batch_size):
            batch = pad_rows(tokenizer, [rows[i] for i in group], padding_side=padding_side)
            states = forward_hidden(model, batch)
            if chosen is None:
                chosen = resolve_layers(layers, len(states))
                out = torch.empty((len(chosen), len(rows), states[0].shape[-1]), dtype=torch.float32)
            mask = batch["attention_mask"]
            out[:, group] = torch.stack([pool(states[i], mask).cpu() for i in chosen])
            bar.update(len(group))
    finally:
        if bar is not progress:
            bar.close()
    assert chosen is not None and out is not None
    return chosen, out


def prompt_last_token_states(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[Sequence[Any]],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: str = "left",
    progress: tqdm | bool = True,
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
        batch_size=batch_size, padding_side=padding_side, add_special_tokens=specials.pop(), progress=progress,
    )
