"""Collinearity of a prompt's representations across languages (MLC, docs/methods.md section 2).

For one prompt in ``L`` languages, ``h_l`` is the layer's hidden state at the last token of
the chat-templated prompt with the generation prompt. Rows are L2-normalised into
``Z [L, H]`` with singular values ``s_1 >= s_2 >= ...`` (float64) and

- ``rank1_share(Z) = s_1^2 / sum_j s_j^2`` (1 when all rows are collinear, ``1/L`` when
  they are orthonormal; ``sum_j s_j^2 = ||Z||_F^2 = L`` for unit rows);
- ``mean_pairwise_cosine(Z) = mean_{i<j} <z_i, z_j>``.

Both are averaged over prompts, per layer, for each language subset. This is the quantity
the MLC loss pushes up (computed here on the raw states, without the trained extractor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from polyalign.analysis.hidden import prompt_last_token_states
from polyalign.data.records import PromptVariants
from polyalign.errors import UserError


def _unit_rows(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(z.double(), dim=-1, eps=1e-30)


def rank1_share(z: torch.Tensor) -> float:
    """``s_1^2 / sum_j s_j^2`` of the row-normalised ``[L, H]`` matrix (float64 SVD)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError("need an [L, H] matrix with L >= 2")
    s = torch.linalg.svdvals(_unit_rows(z))
    total = float((s * s).sum())
    return float(s[0] * s[0]) / total if total > 0 else float("nan")


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Mean cosine over the ``L(L-1)/2`` unordered row pairs of ``[L, H]``."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError("need an [L, H] matrix with L >= 2")
    u = _unit_rows(z)
    gram = u @ u.T
    i, j = torch.triu_indices(u.shape[0], u.shape[0], offset=1)
    return float(gram[i, j].mean())


@dataclass
class CollinearityResult:
    """Per subset name: per-layer means over the prompts that have all its languages."""

    layers: list[int]
    subsets: dict[str, list[str]]
    rank1_share: dict[str, list[float | None]] = field(default_factory=dict)
    mean_pairwise_cosine: dict[str, list[float | None]] = field(default_factory=dict)
    n_prompts: dict[str, int] = field(default_factory=dict)
    n_skipped: dict[str, int] = field(default_factory=dict)  # prompts lacking a language

    def to_dict(self) -> dict[str, Any]:
        def avg(values: list[float | None]) -> float | None:
            if not values or any(v is None for v in values):
                return None
            return sum(values) / len(values)  # type: ignore[arg-type]

        return {
            "layers": list(self.layers),
            "subsets": {
                name: {
                    "languages": langs,
                    "n_prompts": self.n_prompts[name],
                    "n_skipped": self.n_skipped[name],
                    "rank1_share": self.rank1_share[name],
                    "mean_pairwise_cosine": self.mean_pairwise_cosine[name],
                    "rank1_share_layer_mean": avg(self.rank1_share[name]),
                    "mean_pairwise_cosine_layer_mean": avg(self.mean_pairwise_cosine[name]),
                }
                for name, langs in self.subsets.items()
            },
        }


def collinearity(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptVariants],
    *,
    subsets: Mapping[str, Sequence[str]] | None = None,
    layers: Sequence[int] | None = (-1,),
    batch_size: int = 16,
) -> CollinearityResult:
    """Rank-1 share and mean pairwise cosine of parallel prompts, per layer and subset.

    ``subsets`` maps a name to a list of languages (default: ``{"all": every language
    seen}``); a prompt missing one of a subset's languages is skipped for that subset and
    counted in ``n_skipped``. ``layers`` are HF hidden-state indices (default: the last).
    """
    if not prompts:
        raise UserError("no prompts", field="prompts")
    all_langs = sorted({lang for p in prompts for lang in p.prompts})
    subsets = {"all": all_langs} if subsets is None else {k: list(v) for k, v in subsets.items()}
    for name, langs in subsets.items():
        if len(set(langs)) < 2:
            raise UserError(f"subset {name!r} needs at least two languages", field="languages")

    # One forward per (prompt, language) used by any subset.
    needed = sorted({lang for langs in subsets.values() for lang in langs})
    keys = [(i, lang) for i, p in enumerate(prompts) for lang in needed if lang in p.prompts]
    if not keys:
        raise UserError(f"no prompt has any of the languages {', '.join(needed)}", field="languages")
    chosen, states = prompt_last_token_states(
        model, tokenizer, [prompts[i].prompts[lang] for i, lang in keys], layers=layers, batch_size=batch_size
    )
    row = {key: r for r, key in enumerate(keys)}

    result = CollinearityResult(layers=chosen, subsets={k: list(v) for k, v in subsets.items()})
    for name, langs in subsets.items():
        usable = [i for i in range(len(prompts)) if all((i, lang) in row for lang in langs)]
        result.n_prompts[name] = len(usable)
        result.n_skipped[name] = len(prompts) - len(usable)
        shares, cosines = [], []
        for k in range(len(chosen)):
            per_prompt = [states[k, [row[(i, lang)] for lang in langs]] for i in usable]
            shares.append(_mean([rank1_share(z) for z in per_prompt]))
            cosines.append(_mean([mean_pairwise_cosine(z) for z in per_prompt]))
        result.rank1_share[name] = shares
        result.mean_pairwise_cosine[name] = cosines
    return result


def _mean(values: list[float]) -> float | None:
    # None (JSON null), not NaN, when a subset has no usable prompt.
    return sum(values) / len(values) if values else None
