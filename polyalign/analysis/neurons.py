"""Toxic MLP neurons: find them, read them, measure them, steer them (docs/methods.md section 3).

Pipeline (Lee et al. 2024; Li, Yong & Bach 2024):

1. a linear toxicity probe ``w`` (:mod:`polyalign.analysis.probe`);
2. :func:`rank_value_vectors`: every MLP value vector ``v_{l,i}`` ranked by ``cos(v_{l,i}, w)``;
3. :func:`find_toxic_neurons`: the top ``k`` (100) kept where the neuron's mean activation
   on toxic prompts is positive (mean over the prompts of the mean over their non-padding
   tokens of the down projection's input coordinate ``i``);
4. :func:`top_tokens`: ``W_U v`` (the unembedding applied to the raw value vector) -> the
   tokens it promotes most;
5. :func:`activations_by_language`: the neurons' mean activation per language for a model
   before and after alignment;
6. :func:`neuron_offset`: a context manager adding ``offset`` to the chosen neurons'
   activations at every position (forward pre-hooks on the down projections), e.g. during
   ``model.generate``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polyalign.analysis.hidden import forward_hidden, length_sorted_batches, pad_rows, progress_bar, tokenize_texts
from polyalign.analysis.mlp_access import mlp_access
from polyalign.errors import UserError


@dataclass(frozen=True)
class Neuron:
    layer: int
    index: int
    cosine: float  # cos(value vector, probe direction)
    mean_activation: float | None = None  # on the toxic prompts, when measured

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "index": self.index, "cosine": self.cosine,
                "mean_activation": self.mean_activation}


def rank_value_vectors(model: torch.nn.Module, direction: torch.Tensor, top_k: int = 100) -> list[Neuron]:
    """The ``top_k`` neurons over all layers with the largest ``cos(v_{l,i}, direction)``."""
    access = mlp_access(model)
    d = torch.nn.functional.normalize(direction.detach().double().cpu(), dim=0)
    scored: list[tuple[float, int, int]] = []
    for layer in range(access.num_layers):
        v = access.value_vectors(layer).detach().double().cpu()  # [I, H]
        cos = torch.nn.functional.normalize(v, dim=1, eps=1e-30) @ d
        values, idx = cos.topk(min(top_k, cos.numel()))
        scored.extend((float(c), layer, int(i)) for c, i in zip(values, idx))
    # Highest cosine first; ties broken by (layer, index) so the order is reproducible.
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [Neuron(layer=layer_index, index=i, cosine=c) for c, layer_index, i in scored[:top_k]]


def neuron_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    neurons: Sequence[Neuron | tuple[int, int]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """``[len(texts), len(neurons)]`` float64: each text's mean activation (non-padding tokens).

    Forward pre-hooks on the down projections read the activations during a decoder-only
    forward (no LM head), texts in length-sorted batches.
    """
    access = mlp_access(model)
    wanted: dict[int, list[tuple[int, int]]] = defaultdict(list)  # layer -> [(column, neuron index)]
    for col, n in enumerate(neurons):
        layer, index = (n.layer, n.index) if isinstance(n, Neuron) else n
        if not (0 <= layer < access.num_layers and 0 <= index < access.num_neurons):
            raise UserError(f"neuron ({layer}, {index}) does not exist in this model", field="neurons")
        wanted[layer].append((col, index))
    out = torch.zeros((len(texts), len(neurons)), dtype=torch.float64)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        cols = torch.tensor([i for _, i in wanted[layer]])

        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured[layer] = args[0][..., cols.to(args[0].device)].detach()

        return hook

    rows = (tokenize_texts(tokenizer, texts, add_special_tokens=add_special_tokens, max_length=max_length)
            if texts else [])
    handles = [access.down_projections[layer].register_forward_pre_hook(make_hook(layer)) for layer in wanted]
    bar = progress_bar(len(rows), "neuron activations")
    try:
        for group in length_sorted_batches([len(r) for r in rows], batch_size):
            batch = pad_rows(tokenizer, [rows[i] for i in group])
            captured.clear()
            forward_hidden(model, batch, output_hidden_states=False)  # the hooks are all we need
            mask = batch["attention_mask"].bool().unsqueeze(-1)  # [B, T, 1]
            for layer, pairs in wanted.items():
                acts = captured[layer].double().cpu()  # [B, T, k]
                mean = torch.where(mask, acts, 0.0).sum(1) / mask.sum(1)
                out[torch.tensor(group)[:, None], torch.tensor([c for c, _ in pairs])[None, :]] = mean
            bar.update(len(group))
    finally:
        bar.close()
        for h in handles:
            h.remove()
    return out


def find_toxic_neurons(
    model: torch.nn.Module,
    tokenizer: Any,
    toxic_texts: Sequence[str],
    direction: torch.Tensor,
    *,
    top_k: int = 100,
    batch_size: int = 16,
    max_length: int | None = None,
) -> tuple[list[Neuron], list[Neuron]]:
    """``(kept, ranked)``: the ``top_k`` ranked neurons, and those whose mean activation over
    ``toxic_texts`` is > 0 (every ranked neuron carries its ``mean_activation``)."""
    ranked = rank_value_vectors(model, direction, top_k)
    acts = neuron_activations(model, tokenizer, toxic_texts, ranked, batch_size=batch_size, max_length=max_length)
    means = acts.mean(0)
    ranked = [Neuron(n.layer, n.index, n.cosine, float(m)) for n, m in zip(ranked, means)]
    return [n for n in ranked if n.mean_activation > 0], ranked


def top_tokens(model: torch.nn.Module, tokenizer: Any, vector: torch.Tensor, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` tokens with the largest ``(W_U v)_t`` (decoded text, score)."""
    unembed = model.get_output_embeddings().weight.detach().double().cpu()  # [V, H]
    scores = unembed @ vector.detach().double().cpu()
    values, idx = scores.topk(min(k, scores.numel()))
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, idx)]


def neuron_top_tokens(model: torch.nn.Module, tokenizer: Any, neuron: Neuron | tuple[int, int],
                      k: int = 10) -> list[tuple[str, float]]:
    layer, index = (neuron.layer, neuron.index) if isinstance(neuron, Neuron) else neuron
    return top_tokens(model, tokenizer, mlp_access(model).value_vectors(layer)[index], k)


def activations_by_language(
    before: torch.nn.Module,
    after: torch.nn.Module | None,
    tokenizer: Any,
    texts_by_language: Mapping[str, Sequence[str]],
    neurons: Sequence[Neuron | tuple[int, int]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per language: the neurons' activation (mean over texts and neurons) in each model.

    ``{lang: {"before", "after", "change", "n_texts"}}`` (only ``before`` and ``n_texts``
    when ``after`` is None). Both models must share the architecture (the same
    ``(layer, index)`` names the same neuron, as after fine-tuning).
    """
    if not neurons:
        raise UserError("no neurons to measure", field="neurons")
    out: dict[str, dict[str, float]] = {}
    for lang, texts in texts_by_language.items():
        if not texts:
            raise UserError(f"no texts for language {lang}", field=lang)
        a = float(neuron_activations(before, tokenizer, texts, neurons, batch_size=batch_size,
                                     max_length=max_length).mean())
        out[lang] = {"before": a, "n_texts": len(texts)}
        if after is not None:
            b = float(neuron_activations(after, tokenizer, texts, neurons, batch_size=batch_size,
                                         max_length=max_length).mean())
            out[lang].update(after=b, change=b - a)
    return out


@contextlib.contextmanager
def neuron_offset(model: torch.nn.Module, neurons: Sequence[Neuron | tuple[int, int]], offset: float) -> Iterator[None]:
    """Within the block, add ``offset`` to each chosen neuron's activation at every position.

    Implemented as forward pre-hooks on the down projections (removed on exit, also on
    error), so it applies to plain forwards and to ``generate`` alike.
    """
    access = mlp_access(model)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for n in neurons:
        layer, index = (n.layer, n.index) if isinstance(n, Neuron) else n
        if not (0 <= layer < access.num_layers and 0 <= index < access.num_neurons):
            raise UserError(f"neuron ({layer}, {index}) does not exist in this model", field="neurons")
        by_layer[layer].append(index)

    def make_hook(indices: list[int]):
        idx = torch.tensor(sorted(set(indices)))

        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0].clone()  # never write into a tensor autograd or the caller still holds
            x[..., idx.to(x.device)] += offset
            return (x, *args[1:])

        return hook

    handles = [access.down_projections[layer].register_forward_pre_hook(make_hook(ix))
               for layer, ix in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
