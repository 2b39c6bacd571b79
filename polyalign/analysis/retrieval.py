"""Bilingual sentence retrieval per layer (Li, Yong & Bach 2024, docs/methods.md section 3).

For ``N`` multiway-parallel sentences, each layer's sentence embedding is the mean of the
hidden states over non-padding tokens. With ``S[i, j] = cos(e_pivot_i, e_x_j)`` (float64):

- ``acc_pivot_to_x = mean_i [S[i, i] > max_{j != i} S[i, j]]`` (top-1 accuracy; a tie with
  a wrong sentence counts as a miss, so the score never depends on index order);
- ``acc_x_to_pivot = mean_j [S[j, j] > max_{i != j} S[i, j]]``;
- ``mean_aligned_cosine = mean_i S[i, i]`` (what the released code reports).

Layers are HF hidden-state indices; the default is all of them, embedding output included,
as in the released code. Per-language scores are then averaged over the layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from polyalign.analysis.hidden import pooled_hidden_states, progress_bar
from polyalign.data.records import PromptVariants
from polyalign.errors import UserError

METRICS = ("acc_pivot_to_x", "acc_x_to_pivot", "mean_aligned_cosine")


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N, H] x [M, H] -> [N, M]`` cosine similarities in float64 (zero rows give 0)."""
    a64 = torch.nn.functional.normalize(a.double(), dim=-1, eps=1e-30)
    b64 = torch.nn.functional.normalize(b.double(), dim=-1, eps=1e-30)
    return a64 @ b64.T


def retrieval_scores(pivot_emb: torch.Tensor, other_emb: torch.Tensor) -> tuple[float, float, float]:
    """``(acc_pivot_to_x, acc_x_to_pivot, mean_aligned_cosine)`` for aligned ``[N, H]`` rows."""
    if pivot_emb.shape != other_emb.shape or pivot_emb.ndim != 2:
        raise ValueError(f"expected two [N, H] tensors of equal shape, got {tuple(pivot_emb.shape)} "
                         f"and {tuple(other_emb.shape)}")
    n = pivot_emb.shape[0]
    sim = cosine_matrix(pivot_emb, other_emb)
    diag = sim.diagonal()
    if n == 1:
        return 1.0, 1.0, float(diag[0])
    off = sim.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    p2x = (diag > off.max(dim=1).values).double().mean()
    x2p = (diag > off.max(dim=0).values).double().mean()
    return float(p2x), float(x2p), float(diag.mean())


@dataclass
class RetrievalResult:
    """Per language (not the pivot), per metric: one value per layer in ``layers`` order."""

    pivot: str
    layers: list[int]
    n_sentences: int
    per_layer: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def averages(self) -> dict[str, dict[str, float]]:
        """Per language, per metric: mean over the layers."""
        return {
            lang: {m: sum(vals) / len(vals) for m, vals in metrics.items()}
            for lang, metrics in self.per_layer.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "pivot": self.pivot,
            "layers": list(self.layers),
            "n_sentences": self.n_sentences,
            "per_layer": self.per_layer,
            "averages": self.averages,
        }


def bilingual_retrieval(
    model: torch.nn.Module,
    tokenizer: Any,
    sentences: Mapping[str, Sequence[str]],
    *,
    pivot: str = "en",
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> RetrievalResult:
    """Retrieval between ``sentences[pivot]`` and every other language, per layer.

    ``sentences`` maps language -> N sentences, line ``i`` the same sentence everywhere.
    Texts are encoded as plain text with the tokenizer's usual special tokens, right padded,
    by the decoder alone; one progress bar (stderr, after ~3 s) counts every language's texts.
    """
    if pivot not in sentences:
        raise UserError(f"pivot language {pivot!r} not in the data (have: {', '.join(sorted(sentences))})",
                        field="pivot")
    n = len(sentences[pivot])
    for lang, texts in sentences.items():
        if len(texts) != n:
            raise UserError(f"{lang} has {len(texts)} sentences but {pivot} has {n}: not parallel", field=lang)
    others = [lang for lang in sentences if lang != pivot]
    if not others:
        raise UserError("need at least one language besides the pivot", field="languages")

    bar = progress_bar(n * len(sentences), "retrieval: encoding", enabled=progress)

    def embed(texts: Sequence[str]) -> tuple[list[int], torch.Tensor]:
        return pooled_hidden_states(
            model, tokenizer, list(texts), pooling="mean", layers=layers,
            batch_size=batch_size, max_length=max_length, progress=bar,
        )

    with bar:
        chosen, pivot_states = embed(sentences[pivot])
        result = RetrievalResult(pivot=pivot, layers=chosen, n_sentences=n)
        for lang in others:
            _, states = embed(sentences[lang])
            per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
            for k in range(len(chosen)):
                for name, value in zip(METRICS, retrieval_scores(pivot_states[k], states[k])):
                    per_metric[name].append(value)
            result.per_layer[lang] = per_metric
    return result


def sentences_from_variants(
    variants: Sequence[PromptVariants], languages: Sequence[str] | None = None
) -> tuple[dict[str, list[str]], int]:
    """Turn multiway-parallel prompts (e.g. ``polyalign.data.readers.load_prompt_variants``
    on the detox_parallel folder) into ``{lang: [sentence, ...]}`` for :func:`bilingual_retrieval`.

    A sentence is the text of the variant's last turn. Only prompts that have every wanted
    language are used (default: every language seen); returns the sentences and
    the number of prompts skipped for lacking one.
    """
    if not variants:
        raise UserError("no parallel sentences", field="data")
    if languages is None:
        languages = list(dict.fromkeys(lang for v in variants for lang in v.prompts))
    usable = [v for v in variants if all(lang in v.prompts for lang in languages)]
    if not usable:
        raise UserError(f"no prompt has all of the languages {', '.join(languages)}", field="languages")
    sentences = {lang: [v.prompts[lang][-1].content for v in usable] for lang in languages}
    return sentences, len(variants) - len(usable)
