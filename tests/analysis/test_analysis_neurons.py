"""Probe, value vectors, toxic-neuron search, top tokens, activations and offsets."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from scipy import optimize
from transformers import BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel

from polyalign.analysis.mlp_access import mlp_access
from polyalign.analysis.neurons import (
    Neuron,
    activations_by_language,
    find_toxic_neurons,
    neuron_activations,
    neuron_offset,
    neuron_top_tokens,
    rank_value_vectors,
)
from polyalign.analysis.probe import fit_probe, train_toxicity_probe
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _gpt2(tok):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, n_embd=32,
                     n_layer=2, n_head=2, n_positions=128)
    return GPT2LMHeadModel(cfg).eval()


def _bloom(tok):
    torch.manual_seed(0)
    cfg = BloomConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, hidden_size=32, n_layer=2, n_head=2)
    return BloomForCausalLM(cfg).eval()


def _all_models(tok):
    return {
        "llama": build_tiny_model("llama", tok), "gemma2": build_tiny_model("gemma2", tok),
        "gemma3": build_tiny_model("gemma3", tok), "qwen2": build_tiny_model("qwen2", tok), "gpt2": _gpt2(tok),
        "bloom": _bloom(tok),
    }


def _manual_mlp_activation(family, mlp, x):
    """The neuron activations written out from the MLP's own sub-modules."""
    if family == "gpt2":
        return mlp.act(mlp.c_fc(x))
    if family == "bloom":
        return mlp.gelu_impl(mlp.dense_h_to_4h(x))
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def test_accessors_value_vectors_and_activations(tok):
    texts = ["Hello there friend", "你好，世界", "ok"]
    for family, model in _all_models(tok).items():
        access = mlp_access(model)
        down = access.down_projections[1]
        vv = access.value_vectors(1)
        assert vv.shape == (access.num_neurons, model.config.hidden_size), family
        # One unit of activation i adds exactly value vector i (beyond the bias).
        with torch.no_grad():
            e3 = torch.zeros(1, access.num_neurons)
            e3[0, 3] = 1.0
            added = down(e3) - down(torch.zeros(1, access.num_neurons))
        assert torch.allclose(added[0], vv[3], atol=1e-6), family

        # Activations via the pre-hook equal the MLP formula applied to the MLP's input.
        mlp = access.down_projections[1]
        block_mlp = (model.model.layers[1].mlp if family in ("llama", "gemma2", "gemma3", "qwen2")
                     else model.transformer.h[1].mlp)
        seen = []

        def record(module: torch.nn.Module, args: tuple, seen: list = seen) -> None:  # this family's list (B023)
            seen.append(args[0])

        handle = (block_mlp.dense_h_to_4h if family == "bloom" else block_mlp).register_forward_pre_hook(record)
        acts = neuron_activations(model, tok, texts, [(1, 0), (1, 5), (1, 5)], batch_size=1)
        handle.remove()
        for n, x in enumerate(seen):
            with torch.no_grad():
                full = _manual_mlp_activation(family, block_mlp, x)[0].double()
            assert acts[n].tolist() == pytest.approx(full[:, [0, 5, 5]].mean(0).tolist(), abs=1e-6), family
        assert mlp is down


def test_unknown_family_is_user_error(tok):
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(UserError, match="mamba"):
        mlp_access(Fake())


def test_logistic_probe_matches_scipy_and_mean_diff_formula():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.5, 1.0, (30, 5)), rng.normal(-0.5, 1.0, (30, 5))])
    y = np.array([1] * 30 + [0] * 30)
    probe = fit_probe(torch.tensor(x), y.tolist(), method="logistic", l2=0.01)

    def objective(params):
        w, b = params[:-1], params[-1]
        z = (2 * y - 1) * (x @ w + b)
        return np.mean(np.logaddexp(0.0, -z)) + 0.005 * (w @ w)

    ref = optimize.minimize(objective, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    assert probe.weight.numpy() == pytest.approx(ref[:-1], abs=1e-5)
    assert probe.bias == pytest.approx(ref[-1], abs=1e-5)
    assert probe.train_accuracy == pytest.approx(np.mean(((x @ ref[:-1] + ref[-1]) > 0) == y))
    md = fit_probe(torch.tensor(x), y.tolist(), method="mean_diff")
    m1, m0 = x[:30].mean(0), x[30:].mean(0)
    assert md.weight.numpy() == pytest.approx(m1 - m0, abs=1e-12)
    assert md.bias == pytest.approx(-(m1 - m0) @ (m1 + m0) / 2, abs=1e-12)
    assert float(md.direction.norm()) == pytest.approx(1.0)
    with pytest.raises(UserError, match="both classes"):
        fit_probe(torch.tensor(x), [1] * 60)
    with pytest.raises(UserError, match="unknown probe method"):
        fit_probe(torch.tensor(x), y.tolist(), method="svm")


MARK, TARGET, LAYER, IDX = " plant", "Sorry", 1, 37


@pytest.fixture(scope="module")
def planted(tok):
    """A tiny Llama with one planted "toxic" neuron: it fires on the marker token and
    writes the unembedding direction of the target token into the residual stream.
    (Llama only: Gemma-3's normalised MLP input and output keep this construction from
    dominating the residual stream; Gemma-3's neurons are checked in the accessor test.)"""
    model = build_tiny_model("llama", tok, seed=1)
    mark_id, target_id = tok.convert_tokens_to_ids("Ġplant"), tok.convert_tokens_to_ids(TARGET)
    assert tok(MARK)["input_ids"] == [mark_id] and tok(TARGET)["input_ids"] == [target_id]
    mlp = model.model.layers[LAYER].mlp
    with torch.no_grad():
        u = model.lm_head.weight[target_id]
        e = model.model.embed_tokens.weight[mark_id]
        mlp.down_proj.weight[:, IDX] = 4.0 * u / u.norm()
        # gate row == up row gives silu(z) * z >= 0: the neuron's activation is never negative.
        mlp.gate_proj.weight[IDX] = 4.0 * e / e.norm()
        mlp.up_proj.weight[IDX] = 4.0 * e / e.norm()
    rng = random.Random(0)
    words = "the a water rice park train today fine walk weather nice simple".split()

    def sent():
        return " ".join(rng.choice(words) for _ in range(rng.randint(4, 9)))

    toxic = [sent() + " plant plant " + sent() + " plant" for _ in range(32)]
    clean = [sent() for _ in range(32)]
    return model, target_id, toxic, clean


@pytest.mark.parametrize("method", ["logistic", "mean_diff"])
def test_pipeline_finds_planted_neuron(tok, planted, method):
    model, target_id, toxic, clean = planted
    probe = train_toxicity_probe(model, tok, toxic + clean, [1] * 32 + [0] * 32, method=method, l2=0.1)
    ranked = rank_value_vectors(model, probe.direction, top_k=10)
    assert (ranked[0].layer, ranked[0].index) == (LAYER, IDX)
    # The ranking is the cosine written out, over every neuron of every layer.
    d = probe.direction
    all_cos = []
    for layer in range(2):
        w = model.model.layers[layer].mlp.down_proj.weight.detach().double()
        all_cos += [(float(w[:, i] @ d / w[:, i].norm()), layer, i) for i in range(w.shape[1])]
    all_cos.sort(key=lambda t: (-t[0], t[1], t[2]))
    assert [(n.layer, n.index) for n in ranked] == [(layer, i) for _, layer, i in all_cos[:10]]
    assert [n.cosine for n in ranked] == pytest.approx([c for c, _, _ in all_cos[:10]], abs=1e-12)

    kept, ranked_act = find_toxic_neurons(model, tok, toxic, probe.direction, top_k=10)
    assert kept[0].layer == LAYER and kept[0].index == IDX and kept[0].mean_activation > 1.0
    assert all(n.mean_activation > 0 for n in kept)
    assert {(n.layer, n.index) for n in ranked_act if n.mean_activation <= 0}.isdisjoint(
        {(n.layer, n.index) for n in kept})
    assert neuron_top_tokens(model, tok, kept[0], k=3)[0][0] == TARGET


def test_offset_shifts_next_token_distribution(tok):
    # Only the value vector is planted (the neuron fires weakly on its own), and the
    # unembedding is scaled up so that logits span a useful range after the final norm.
    model = build_tiny_model("llama", tok, seed=1)
    target_id = tok.convert_tokens_to_ids(TARGET)
    with torch.no_grad():
        model.lm_head.weight *= 30.0
        u = model.lm_head.weight[target_id]
        model.model.layers[LAYER].mlp.down_proj.weight[:, IDX] = u / u.norm()
    ids = torch.tensor([tok("the weather is nice")["input_ids"]])

    def p_target():
        with torch.no_grad():
            return float(torch.softmax(model(ids).logits[0, -1].double(), -1)[target_id])

    base = p_target()
    with neuron_offset(model, [Neuron(LAYER, IDX, 1.0)], 0.5):
        up = p_target()
    with neuron_offset(model, [(LAYER, IDX)], -0.5):
        down = p_target()
    assert base < 0.01 and up > 2 * base and down < base / 2
    assert p_target() == pytest.approx(base, rel=1e-12)  # hooks removed
    plain = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert target_id not in plain[0, ids.shape[1]:].tolist()
    with neuron_offset(model, [(LAYER, IDX)], 50.0):
        gen = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen[0, ids.shape[1]:].tolist() == [target_id] * 3
    with pytest.raises(UserError, match="does not exist"):
        with neuron_offset(model, [(5, 0)], 1.0):
            pass


def test_activations_before_and_after(tok, planted):
    model, _, toxic, _ = planted
    after = copy.deepcopy(model)
    with torch.no_grad():  # "alignment" halves the neuron's input weights
        after.model.layers[LAYER].mlp.gate_proj.weight[IDX] *= 0.5
        after.model.layers[LAYER].mlp.up_proj.weight[IDX] *= 0.5
    texts = {"en": toxic[:4], "xx": [t.replace("the", "ze") for t in toxic[4:8]]}
    neurons = [(LAYER, IDX), (0, 3)]
    out = activations_by_language(model, after, tok, texts, neurons, batch_size=3)
    for lang, group in texts.items():
        before = float(neuron_activations(model, tok, group, neurons).mean())
        after_v = float(neuron_activations(after, tok, group, neurons).mean())
        assert out[lang]["before"] == pytest.approx(before, abs=1e-9)
        assert out[lang]["after"] == pytest.approx(after_v, abs=1e-9)
        assert out[lang]["change"] < 0 and out[lang]["n_texts"] == 4
