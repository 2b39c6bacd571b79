"""Rank-1 share and pairwise cosine: closed forms, numpy SVD, and the model run."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from polyalign.analysis.collinearity import collinearity, mean_pairwise_cosine, rank1_share
from polyalign.analysis.hidden import prompt_last_token_states
from polyalign.data.records import Message, PromptVariants
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer


def test_closed_forms():
    v = torch.tensor([1.0, 2.0, -0.5, 3.0])
    collinear = torch.stack([v, -2 * v, 0.1 * v])  # sign and scale do not matter
    assert rank1_share(collinear) == pytest.approx(1.0, abs=1e-12)
    assert rank1_share(torch.eye(4)[:3]) == pytest.approx(1 / 3, abs=1e-12)
    assert mean_pairwise_cosine(torch.eye(4)[:3]) == pytest.approx(0.0, abs=1e-12)
    # Two unit rows at angle a: singular values^2 are 1 +- cos a, so share = (1 + |cos a|) / 2.
    a = 0.7
    two = torch.tensor([[1.0, 0.0], [np.cos(a), np.sin(a)]])
    assert rank1_share(two) == pytest.approx((1 + np.cos(a)) / 2, abs=1e-12)
    assert mean_pairwise_cosine(two) == pytest.approx(np.cos(a), abs=1e-12)


def test_random_against_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 16))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = np.linalg.svd(zn, compute_uv=False)
    assert rank1_share(torch.tensor(z, dtype=torch.float32)) == pytest.approx(s[0] ** 2 / (s**2).sum(), abs=1e-6)
    pairs = [float(zn[i] @ zn[j]) for i, j in itertools.combinations(range(6), 2)]
    assert mean_pairwise_cosine(torch.tensor(z)) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    with pytest.raises(ValueError):
        rank1_share(torch.ones(1, 4))


def _pv(pid, texts):
    return PromptVariants(id=pid, prompts={lang: (Message("user", t),) for lang, t in texts.items()})


PROMPTS = [
    _pv("p0", {"en": "How do plants grow?", "de": "Wie wachsen Pflanzen?", "zh": "植物是怎么生长的？"}),
    _pv("p1", {"en": "Tell me a story.", "de": "Erzähl mir eine Geschichte.", "zh": "给我讲个故事。"}),
    _pv("p2", {"en": "What time is it?", "de": "Wie spät ist es?"}),  # no zh
]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def model(tok, request):
    return build_tiny_model(request.param, tok, seed=3)


def test_model_run_matches_manual(model, tok):
    result = collinearity(model, tok, PROMPTS, subsets={"all": ["en", "de", "zh"], "en-de": ["en", "de"]},
                          layers=[1, -1], batch_size=2)
    assert result.layers == [1, 2]
    assert result.n_prompts == {"all": 2, "en-de": 3} and result.n_skipped == {"all": 1, "en-de": 0}
    for name, langs, usable in (("all", ["en", "de", "zh"], [0, 1]), ("en-de", ["en", "de"], [0, 1, 2])):
        for k, layer in enumerate([1, 2]):
            shares, cosines = [], []
            for i in usable:
                _, st = prompt_last_token_states(model, tok, [PROMPTS[i].prompts[lang] for lang in langs],
                                                 layers=[layer])
                z = st[0].double().numpy()
                zn = z / np.linalg.norm(z, axis=1, keepdims=True)
                s = np.linalg.svd(zn, compute_uv=False)
                shares.append(s[0] ** 2 / (s**2).sum())
                cosines.append(np.mean([zn[a] @ zn[b] for a, b in itertools.combinations(range(len(langs)), 2)]))
            assert result.rank1_share[name][k] == pytest.approx(np.mean(shares), abs=1e-5)
            assert result.mean_pairwise_cosine[name][k] == pytest.approx(np.mean(cosines), abs=1e-5)
    out = json.loads(json.dumps(result.to_dict()))
    assert out["subsets"]["all"]["n_skipped"] == 1
    assert 1 / 3 <= out["subsets"]["all"]["rank1_share_layer_mean"] <= 1


def test_identical_prompts_are_collinear_and_default_subset(model, tok):
    same = [_pv("s", {"en": "Hello!", "xx": "Hello!", "yy": "Hello!"})]
    result = collinearity(model, tok, same)
    assert result.subsets == {"all": ["en", "xx", "yy"]} and result.layers == [2]
    assert result.rank1_share["all"][0] == pytest.approx(1.0, abs=1e-6)
    assert result.mean_pairwise_cosine["all"][0] == pytest.approx(1.0, abs=1e-6)


def test_errors_and_empty_subset(model, tok):
    with pytest.raises(UserError, match="at least two"):
        collinearity(model, tok, PROMPTS, subsets={"one": ["en"]})
    with pytest.raises(UserError):
        collinearity(model, tok, [])
    result = collinearity(model, tok, PROMPTS, subsets={"zh-ko": ["zh", "ko"]})
    assert result.n_prompts["zh-ko"] == 0 and result.rank1_share["zh-ko"] == [None]
    assert result.to_dict()["subsets"]["zh-ko"]["rank1_share_layer_mean"] is None
