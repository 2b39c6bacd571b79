"""Bilingual sentence retrieval: the pure scorer on constructed embeddings, and the model run."""

from __future__ import annotations

import json

import pytest
import torch

from polyalign.analysis.hidden import pooled_hidden_states
from polyalign.analysis.retrieval import bilingual_retrieval, retrieval_scores, sentences_from_variants
from polyalign.data.records import Message, PromptVariants
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer


def _brute_force(p: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """Loops over pairs with a hand-written cosine (float64)."""
    n = p.shape[0]

    def cos(a, b):
        a, b = a.double(), b.double()
        return float((a @ b) / (a.norm() * b.norm()))

    sim = [[cos(p[i], x[j]) for j in range(n)] for i in range(n)]
    p2x = sum(all(sim[i][i] > sim[i][j] for j in range(n) if j != i) for i in range(n)) / n
    x2p = sum(all(sim[j][j] > sim[i][j] for i in range(n) if i != j) for j in range(n)) / n
    return p2x, x2p, sum(sim[i][i] for i in range(n)) / n


def test_known_neighbours():
    eye = torch.eye(5)
    other = eye[[0, 1, 2, 4, 3]]  # rows 3 and 4 swapped: their nearest neighbours are wrong
    assert retrieval_scores(eye, other) == (pytest.approx(0.6), pytest.approx(0.6), pytest.approx(0.6))
    # Asymmetric: every p_i's nearest x is x_i, but x_1 is nearer p_0 than p_1.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    x = torch.tensor([[1.0, 0.1], [1.0, 0.9], [-1.0, 0.1]])
    got = retrieval_scores(p, x)
    assert got == pytest.approx(_brute_force(p, x), abs=1e-12)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(2 / 3)


def test_random_against_brute_force_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(20, 8, generator=g)
    x = p + 0.9 * torch.randn(20, 8, generator=g)
    got = retrieval_scores(p, x)
    assert got == pytest.approx(_brute_force(p, x), abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    assert retrieval_scores(3 * p, 0.5 * x) == pytest.approx(got, abs=1e-6)  # float32 inputs


def test_ties_are_misses_and_shapes_checked():
    same = torch.ones(3, 4)
    p2x, x2p, cos = retrieval_scores(same, same)
    assert (p2x, x2p) == (0.0, 0.0) and cos == pytest.approx(1.0)
    with pytest.raises(ValueError):
        retrieval_scores(torch.ones(3, 4), torch.ones(2, 4))


SENTENCES = {
    "en": ["The weather is nice today.", "I like reading books.", "Where is the train station?", "Please help me.",
           "Thank you very much!"],
    "de": ["Das Wetter ist heute schön.", "Ich lese gerne Bücher.", "Wo ist der Bahnhof?", "Bitte hilf mir.",
           "Vielen Dank!"],
    "zh": ["今天天气很好。", "我喜欢读书。", "火车站在哪里？", "请帮帮我。", "非常感谢！"],
}


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module", params=["qwen2", "gemma3"])
def model(tok, request):
    return build_tiny_model(request.param, tok, seed=5)


def test_model_run_matches_manual_pipeline(model, tok):
    data = dict(SENTENCES, xx=list(SENTENCES["en"]))  # a copy of English: perfect retrieval
    result = bilingual_retrieval(model, tok, data, pivot="en", batch_size=2)
    assert result.layers == [0, 1, 2] and result.n_sentences == 5
    assert set(result.per_layer) == {"de", "zh", "xx"}
    for layer_values in result.per_layer["xx"].values():
        assert layer_values == pytest.approx([1.0, 1.0, 1.0])
    _, en = pooled_hidden_states(model, tok, SENTENCES["en"], batch_size=5)
    for lang in ("de", "zh"):
        _, other = pooled_hidden_states(model, tok, SENTENCES[lang], batch_size=1)
        expected = [_brute_force(en[k], other[k]) for k in range(3)]
        got = result.per_layer[lang]
        assert got["acc_pivot_to_x"] == pytest.approx([e[0] for e in expected], abs=1e-9)
        assert got["acc_x_to_pivot"] == pytest.approx([e[1] for e in expected], abs=1e-9)
        assert got["mean_aligned_cosine"] == pytest.approx([e[2] for e in expected], abs=1e-5)
        avg = result.averages[lang]["mean_aligned_cosine"]
        assert avg == pytest.approx(sum(e[2] for e in expected) / 3, abs=1e-5)
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["averages"]["xx"]["acc_pivot_to_x"] == pytest.approx(1.0)


def test_layer_subset(model, tok):
    result = bilingual_retrieval(model, tok, SENTENCES, layers=[-1])
    full = bilingual_retrieval(model, tok, SENTENCES)
    assert result.layers == [2]
    assert result.per_layer["de"]["mean_aligned_cosine"][0] == pytest.approx(
        full.per_layer["de"]["mean_aligned_cosine"][2], abs=1e-6)


def test_input_errors(model, tok):
    with pytest.raises(UserError, match="not parallel"):
        bilingual_retrieval(model, tok, {"en": ["a", "b"], "de": ["a"]})
    with pytest.raises(UserError, match="pivot"):
        bilingual_retrieval(model, tok, {"de": ["a"], "fr": ["b"]})
    with pytest.raises(UserError, match="besides the pivot"):
        bilingual_retrieval(model, tok, {"en": ["a"]})


def test_sentences_from_variants():
    variants = [
        PromptVariants(id=str(i), prompts={lang: (Message("user", texts[i]),) for lang, texts in SENTENCES.items()})
        for i in range(5)
    ]
    variants.append(PromptVariants(id="5", prompts={"en": (Message("user", "extra"),)}))
    got, skipped = sentences_from_variants(variants)
    assert got == {"en": SENTENCES["en"], "de": SENTENCES["de"], "zh": SENTENCES["zh"]} and skipped == 1
    only, skipped = sentences_from_variants(variants, ["en"])
    assert only == {"en": SENTENCES["en"] + ["extra"]} and skipped == 0
    with pytest.raises(UserError, match="no prompt has all"):
        sentences_from_variants(variants, ["en", "ko"])


@pytest.mark.shared_data
def test_released_detox_parallel_through_readers(shared_data):
    from polyalign.data.readers import load_prompt_variants

    variants = load_prompt_variants(shared_data / "detox_parallel", detect_language=False)
    got, skipped = sentences_from_variants(variants)
    assert len(got) == 17 and "en" in got and "zh" in got and skipped == 0
    assert {len(v) for v in got.values()} == {200}
