"""Pooled hidden states: batched + padded equals one-text-at-a-time, for both padding sides."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from polyalign.analysis.hidden import encode_batch, pooled_hidden_states, prompt_last_token_states, resolve_layers
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer

TEXTS = ["Hello there, how are you?", "你好", "Привет! Как дела сегодня у тебя, друг?", "ok", "مرحبا بك"]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _gpt2(tok):
    # Absolute position embeddings: unlike RoPE (shift invariant), left padding changes the
    # result unless position ids are derived from the attention mask.
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gemma2", "qwen2", "gpt2"])
def model(request, tok):
    return _gpt2(tok) if request.param == "gpt2" else build_tiny_model(request.param, tok, seed=2)


def _single_states(model, tok, text):
    """Reference: one unpadded forward, hidden states [L+1, T, H] in float64."""
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states]).double()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_mean_and_last_pooling_match_unpadded_forwards(model, tok, padding_side):
    refs = [_single_states(model, tok, t) for t in TEXTS]
    layers, mean = pooled_hidden_states(model, tok, TEXTS, pooling="mean", batch_size=3, padding_side=padding_side)
    assert layers == [0, 1, 2] and mean.shape == (3, len(TEXTS), 64) and mean.dtype == torch.float32
    _, last = pooled_hidden_states(model, tok, TEXTS, pooling="last", batch_size=3, padding_side=padding_side)
    for n, ref in enumerate(refs):
        for layer in range(3):
            expected_mean = sum(ref[layer, t] for t in range(ref.shape[1])) / ref.shape[1]
            assert torch.allclose(mean[layer, n].double(), expected_mean, atol=2e-5), (n, layer)
            assert torch.allclose(last[layer, n].double(), ref[layer, -1], atol=2e-5), (n, layer)


def test_layer_selection_and_truncation(model, tok):
    layers, sel = pooled_hidden_states(model, tok, TEXTS, layers=[-1, 0])
    _, full = pooled_hidden_states(model, tok, TEXTS)
    assert layers == [2, 0]
    assert torch.equal(sel[0], full[2]) and torch.equal(sel[1], full[0])
    _, trunc = pooled_hidden_states(model, tok, TEXTS, pooling="last", max_length=2)
    ref = _single_states(model, tok, TEXTS[2])
    # Causal model: truncating to 2 tokens gives the state of token 1 of the full text.
    assert torch.allclose(trunc[-1, 2].double(), ref[-1, 1], atol=2e-5)


def test_resolve_layers_and_errors(tok):
    assert resolve_layers(None, 3) == [0, 1, 2]
    assert resolve_layers([-1, 1], 3) == [2, 1]
    with pytest.raises(UserError, match="out of range"):
        resolve_layers([3], 3)
    with pytest.raises(UserError, match="no tokens"):
        encode_batch(tok, ["fine", ""])
    with pytest.raises(ValueError):
        encode_batch(tok, ["x"], padding_side="middle")


def test_encode_batch_padding_layout(tok):
    batch = encode_batch(tok, ["a", "hello world"], padding_side="left")
    n0 = len(tok("a")["input_ids"])
    width = batch["input_ids"].shape[1]
    assert batch["attention_mask"][0].tolist() == [0] * (width - n0) + [1] * n0
    assert batch["input_ids"][0, : width - n0].eq(tok.pad_token_id).all()
    assert tok.padding_side == "right"  # the tokenizer is never mutated


def test_prompt_last_token_states_use_chat_template(model, tok):
    convs = [[{"role": "user", "content": "Hi"}], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好吗"}]]
    layers, states = prompt_last_token_states(model, tok, convs, layers=[-1])
    for n, conv in enumerate(convs):
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|assistant|>\n")
        ref = _single_states(model, tok, text)
        assert torch.allclose(states[0, n].double(), ref[-1, -1], atol=2e-5)


def test_train_mode_model_is_run_in_eval_and_restored(tok):
    model = build_tiny_model("llama", tok, seed=2)
    _, ref = pooled_hidden_states(model, tok, TEXTS)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5  # would randomise states in train mode
    model.train()
    _, got = pooled_hidden_states(model, tok, TEXTS)
    assert model.training
    assert torch.equal(got, ref)


def test_peft_wrapped_model_left_padding(tok):
    from peft import LoraConfig, get_peft_model

    base = _gpt2(tok)
    _, ref = pooled_hidden_states(base, tok, TEXTS, pooling="last", padding_side="right")
    wrapped = get_peft_model(_gpt2(tok), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    _, got = pooled_hidden_states(wrapped, tok, TEXTS, pooling="last", padding_side="left", batch_size=5)
    # LoRA's B starts at zero, so the wrapped model computes the base function; with left
    # padding this only holds if position ids reach the base model.
    assert torch.allclose(got, ref, atol=2e-5)
