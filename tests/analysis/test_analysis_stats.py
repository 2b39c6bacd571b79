"""correlate() against scipy.stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from polyalign.analysis.stats import average_ranks, correlate, pearson_r


def test_matches_scipy_with_ties_and_missing():
    rng = np.random.default_rng(0)
    langs = [f"l{i}" for i in range(12)]
    x = rng.normal(size=12)
    y = 0.6 * x + rng.normal(size=12)
    x[3] = x[5]  # a tie for Spearman
    scores = dict(zip(langs, x.tolist()))
    transfer = dict(zip(langs, y.tolist()))
    scores["only_here"] = 1.0
    transfer["nan_lang"] = float("nan")
    scores["nan_lang"] = 0.5
    out = correlate(scores, transfer)
    assert out["n"] == 12 and out["languages"] == langs
    assert out["missing"] == ["nan_lang", "only_here"]
    r, p = stats.pearsonr(x, y)
    rho, p_s = stats.spearmanr(x, y)
    assert out["pearson"] == pytest.approx(r, abs=1e-12) and out["pearson_p"] == pytest.approx(p, rel=1e-9)
    assert out["spearman"] == pytest.approx(rho, abs=1e-12) and out["spearman_p"] == pytest.approx(p_s, rel=1e-9)


def test_formula_by_hand_and_degenerate_cases():
    x, y = [1.0, 2.0, 4.0], [1.0, 3.0, 2.0]
    mx, my = sum(x) / 3, sum(y) / 3
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    den = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert pearson_r(x, y) == pytest.approx(num / den, abs=1e-15)
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    two = correlate({"a": 1.0, "b": 2.0}, {"a": 5.0, "b": 3.0})
    assert two["pearson"] == pytest.approx(-1.0) and two["pearson_p"] is None
    const = correlate({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0})
    assert const["pearson"] is None and const["spearman"] is None and const["n"] == 3
    empty = correlate({}, {"a": 1.0})
    assert empty["n"] == 0 and empty["pearson"] is None and empty["missing"] == ["a"]
