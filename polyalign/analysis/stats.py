"""Correlation between per-language scores (e.g. retrieval vs. toxicity reduction).

Pearson ``r = sum (x-mx)(y-my) / sqrt(sum (x-mx)^2 sum (y-my)^2)``; Spearman = Pearson of
the average ranks (ties share the mean rank). Two-sided p-value from Student's t with
``n-2`` degrees of freedom, ``t = r sqrt((n-2)/(1-r^2))`` (what ``scipy.stats.pearsonr``
and ``spearmanr`` report for these statistics). All in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; ``None`` when ``n < 2`` or either side is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("x and y must be 1-D and of equal length")
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    if denom == 0.0:
        return None
    return max(-1.0, min(1.0, float((da * db).sum()) / denom))


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values get the mean of the ranks they span."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _p_value(r: float | None, n: int) -> float | None:
    if r is None or n < 3:
        return None
    if abs(r) >= 1.0:
        return 0.0
    t = r * math.sqrt((n - 2) / (1.0 - r * r))
    return float(2.0 * _scipy_stats.t.sf(abs(t), n - 2))


def correlate(scores: Mapping[str, float], transfer: Mapping[str, float]) -> dict[str, Any]:
    """Correlate two per-language dicts over the languages both have (finite values only).

    Returns ``{"n", "languages", "pearson", "pearson_p", "spearman", "spearman_p",
    "missing"}``; ``missing`` lists languages present in only one dict or with a
    non-finite value (reported, never silently dropped). Statistics are ``None`` when
    undefined (fewer than 2 languages or a constant side; p-values need 3).
    """
    common = [k for k in scores if k in transfer and _finite(scores[k]) and _finite(transfer[k])]
    missing = sorted((set(scores) | set(transfer)) - set(common))
    x = [float(scores[k]) for k in common]
    y = [float(transfer[k]) for k in common]
    n = len(common)
    r = pearson_r(x, y) if n >= 2 else None
    rho = pearson_r(average_ranks(x), average_ranks(y)) if n >= 2 else None
    return {
        "n": n,
        "languages": common,
        "pearson": r,
        "pearson_p": _p_value(r, n),
        "spearman": rho,
        "spearman_p": _p_value(rho, n),
        "missing": missing,
    }


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
