"""Pooled hidden states: batched + padded equals one-text-at-a-time, for both padding sides;
the decoder alone gives the whole model's hidden states, and no analysis calls the LM head."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from polyalign.analysis.hidden import encode_batch, pooled_hidden_states, prompt_last_token_states, resolve_layers
from polyalign.errors import UserError
from polyalign.models import build_tiny_model, build_tiny_tokenizer

TEXTS = ["Hello there, how are you?", "你好", "Привет! Как дела сегодня у тебя, друг?", "ok", "مرحبا بك",
         "A longer sentence, so that the sliding window of the tiny Gemma-3 is crossed well before its end."]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _gpt2(tok):
    # Absolute position embeddings: unlike RoPE (shift invariant), left padding changes the
    # result unless position ids are derived from the attention mask.
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, n_embd=64,
                     n_layer=2, n_head=4, n_positions=256)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gemma2", "gemma3", "qwen2", "gpt2"])
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
    convs = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好吗"}]]
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


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_decoder_only_states_equal_the_whole_models_hidden_states(tok, arch, padding_side):
    from polyalign.analysis.hidden import encode_batch, forward_hidden

    model = build_tiny_model(arch, tok, seed=4, num_layers=4)
    batch = encode_batch(tok, TEXTS, padding_side=padding_side)
    assert batch["input_ids"].shape[1] > 2 * 8  # longer than tiny Gemma-3's sliding window
    got = forward_hidden(model, batch)
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(**batch, position_ids=position_ids, output_hidden_states=True).hidden_states
    assert len(got) == len(ref) == 5
    mask = batch["attention_mask"].bool()
    for layer, (a, b) in enumerate(zip(got, ref)):
        # Same decoder, same inputs: equal up to float rounding at the real tokens, every layer.
        assert torch.allclose(a[mask], b[mask], atol=1e-6, rtol=0), (layer, (a[mask] - b[mask]).abs().max())


class HeadCounter:
    """Counts LM-head calls and the rows each one projected."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: self.rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("arch", ["llama", "gemma3", "peft-gemma3"])
def test_no_analysis_calls_the_lm_head(tok, arch):
    from polyalign.analysis.collinearity import collinearity
    from polyalign.analysis.neurons import neuron_activations
    from polyalign.analysis.probe import train_toxicity_probe
    from polyalign.analysis.retrieval import bilingual_retrieval
    from polyalign.analysis.reward_gap import average_response_logps
    from polyalign.data.records import Message, PromptVariants

    model = build_tiny_model(arch.removeprefix("peft-"), tok, seed=1)
    if arch.startswith("peft-"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with HeadCounter(model) as counter:
        pooled_hidden_states(model, tok, TEXTS, batch_size=2)
        prompt_last_token_states(model, tok, [[{"role": "user", "content": t}] for t in TEXTS])
        bilingual_retrieval(model, tok, {"en": TEXTS[:3], "xx": TEXTS[3:6]}, pivot="en", batch_size=2)
        variants = [PromptVariants(id=f"p{i}", prompts={"en": (Message("user", a),), "ru": (Message("user", b),)})
                    for i, (a, b) in enumerate([(TEXTS[0], TEXTS[2]), (TEXTS[5], TEXTS[1])])]
        collinearity(model, tok, variants)
        neuron_activations(model, tok, TEXTS, [(0, 1), (1, 5)], batch_size=4)
        train_toxicity_probe(model, tok, TEXTS, [1, 0, 1, 0, 1, 0])
        assert counter.rows == []
        # Reward gap needs log-probs, but only of the response tokens: the head sees those rows only.
        prompts = [[{"role": "user", "content": t}] for t in TEXTS[:3]]
        answers = ["Sure.", "No, sorry, I cannot do that today.", "ok"]
        average_response_logps(model, tok, prompts, answers, batch_size=8)
    n_response = sum(len(tok(tok.apply_chat_template(p + [{"role": "assistant", "content": a}],
                                                     tokenize=False))["input_ids"])
                     - len(tok(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True))["input_ids"])
                     for p, a in zip(prompts, answers))
    assert counter.rows == [n_response]


def test_length_sorted_batches_and_a_progress_bar_on_stderr(tok, capsys):
    from polyalign.analysis.hidden import length_sorted_batches, progress_bar

    assert length_sorted_batches([3, 9, 1, 9, 4], 2) == [[1, 3], [4, 0], [2]]
    with pytest.raises(UserError, match="at least 1"):
        length_sorted_batches([1], 0)
    with progress_bar(4, "encoding") as bar:
        bar.delay = 0  # shown at once (normally after ~3 s)
        bar.update(4)
    captured = capsys.readouterr()
    assert captured.out == "" and "encoding" in captured.err and "4/4" in captured.err
