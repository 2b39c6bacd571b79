"""Linear toxicity probe on the mean last-layer residual (Li et al. 2024, after Lee et al. 2024).

Features: ``x_n`` = mean over non-padding tokens of ``hidden_states[layer]`` (default the
last, HF index -1) of text ``n``; labels ``y_n`` = 1 toxic, 0 not. Two methods:

- ``"logistic"`` (default): L2-regularised logistic regression, fitted in float64 with
  L-BFGS on the full batch, minimising
  ``mean_n softplus(-(2y_n-1)(w.x_n + b)) + (l2 / 2) ||w||^2``;
- ``"mean_diff"``: ``w = mean(x | toxic) - mean(x | non-toxic)``, ``b = -w.(m_1 + m_0)/2``.

The probe direction is ``w / ||w||`` (the space value vectors write to).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polyalign.analysis.hidden import pooled_hidden_states
from polyalign.errors import UserError

METHODS = ("logistic", "mean_diff")


@dataclass
class LinearProbe:
    weight: torch.Tensor  # [H] float64
    bias: float
    method: str
    layer: int
    train_accuracy: float

    @property
    def direction(self) -> torch.Tensor:
        """Unit-norm ``w`` (float64)."""
        return self.weight / self.weight.norm()

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``w.x + b`` (the logit of "toxic") for ``[N, H]`` features."""
        return features.double() @ self.weight + self.bias

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "layer": self.layer, "bias": self.bias,
                "train_accuracy": self.train_accuracy, "weight_norm": float(self.weight.norm())}


def fit_probe(
    features: torch.Tensor, labels: Sequence[int] | torch.Tensor, *, method: str = "logistic",
    l2: float = 1e-3, layer: int = -1, max_iter: int = 500,
) -> LinearProbe:
    """Fit a linear probe on ``[N, H]`` features and 0/1 labels (both classes required)."""
    if method not in METHODS:
        raise UserError(f"unknown probe method {method!r}; choose one of {', '.join(METHODS)}", field="method")
    x = features.double()
    y = torch.as_tensor(labels, dtype=torch.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError("features must be [N, H] and labels [N]")
    if not ((y == 0) | (y == 1)).all():
        raise UserError("probe labels must be 0 or 1", field="label")
    if y.sum() == 0 or y.sum() == len(y):
        raise UserError("the probe needs texts of both classes (toxic and non-toxic)", field="label")
    if method == "mean_diff":
        m1, m0 = x[y == 1].mean(0), x[y == 0].mean(0)
        w = m1 - m0
        b = float(-(w @ (m1 + m0)) / 2)
    else:
        w, b = _logistic(x, y, l2=l2, max_iter=max_iter)
    acc = float(((x @ w + b > 0).double() == y).double().mean())
    return LinearProbe(weight=w, bias=b, method=method, layer=layer, train_accuracy=acc)


def _logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float, max_iter: int) -> tuple[torch.Tensor, float]:
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    sign = 2 * y - 1
    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        w, b = params[:-1], params[-1]
        loss = torch.nn.functional.softplus(-sign * (x @ w + b)).mean() + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    final = params.detach()
    return final[:-1].clone(), float(final[-1])


def train_toxicity_probe(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
    method: str = "logistic", layer: int = -1, batch_size: int = 16, l2: float = 1e-3,
    max_length: int | None = None,
) -> LinearProbe:
    """Encode ``texts`` (plain text, mean-pooled layer ``layer``) and fit a probe."""
    if len(texts) != len(labels):
        raise UserError(f"{len(texts)} texts but {len(labels)} labels", field="label")
    chosen, states = pooled_hidden_states(
        model, tokenizer, list(texts), pooling="mean", layers=[layer], batch_size=batch_size, max_length=max_length
    )
    return fit_probe(states[0], labels, method=method, l2=l2, layer=chosen[0])
