"""Tests for polyalign.models: the offline tiny tokenizer, tiny models, and loading."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyalign.errors import UserError
from polyalign.models import (
    ARCHITECTURES,
    build_tiny_model,
    build_tiny_tokenizer,
    load_model_and_tokenizer,
    save_tiny_checkpoint,
)

# One sample per script the shared data sets use (self-written, benign).
SCRIPT_SAMPLES = {
    "latin": "The quick brown fox — déjà vu, Größe, niño, Tiếng Việt, żółć, Şişli!",
    "han": "今天我们去图书馆读书。",
    "kana": "ひらがなとカタカナのテストです。",
    "hangul": "한국어 문장을 시험합니다.",
    "arabic": "هذه جملة عربية للاختبار.",
    "urdu_pashto": "یہ ایک جملہ ہے۔ دا یوه جمله ده.",
    "bengali": "এটি একটি পরীক্ষার বাক্য।",
    "devanagari": "यह एक परीक्षण वाक्य है।",
    "thai": "นี่คือประโยคทดสอบ",
    "cyrillic": "Это тестовое предложение. Це речення.",
    "rare": "emoji 🙂🚀 and math ∑∫ and a tab\tand\nnewline 𝔘",
}


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("script", sorted(SCRIPT_SAMPLES))
def test_every_script_round_trips_without_unk(tok, script):
    text = SCRIPT_SAMPLES[script]
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # No special token is added automatically (documented convention).
    assert ids == tok(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_compresses_trained_scripts(tok):
    # BPE merges were learnt for each script: fewer tokens than UTF-8 bytes.
    for script in ("latin", "han", "hangul", "arabic", "devanagari", "cyrillic"):
        text = SCRIPT_SAMPLES[script]
        assert len(tok(text)["input_ids"]) < len(text.encode("utf-8")), script


def test_special_tokens_and_size(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "<|end|>", "<unk>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert 400 <= len(tok) <= 1000
    # The role markers are single tokens.
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tok(marker)["input_ids"]) == 1


def test_tokenizer_is_deterministic_and_cached():
    from polyalign.models import _train_backend

    a, b = _train_backend(700), _train_backend(700)  # two real trainings, no cache
    assert a.to_str() == b.to_str()
    t1, t2 = build_tiny_tokenizer(700), build_tiny_tokenizer(700)
    assert t1 is not t2 and t1.get_vocab() == t2.get_vocab()
    t1.padding_side = "left"  # a fresh object each call: no shared state
    assert t2.padding_side == "right"


MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "¿Cómo se hace el pan? 面包怎么做？"},
]


def test_chat_template_text_and_prefix(tok):
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|system|>\nYou are helpful.<|end|>\n<|user|>\n¿Cómo se hace el pan? 面包怎么做？<|end|>\n<|assistant|>\n"
    )
    full = tok.apply_chat_template(
        MESSAGES + [{"role": "assistant", "content": "Mezcla harina y agua."}], tokenize=False
    )
    assert full.startswith(prompt) and full.endswith("Mezcla harina y agua.<|end|>\n")
    no_gen = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=False)
    assert prompt == no_gen + "<|assistant|>\n"
    # Token-level prefix too (responses starting with letters, spaces, digits, CJK).
    p_ids = tok(prompt)["input_ids"]
    for response in ("Sure.", " leading space", "42 is the answer", "好的", "Sorry, I can't help."):
        f_ids = tok(prompt + response + "<|end|>\n")["input_ids"]
        assert f_ids[: len(p_ids)] == p_ids, response


def test_chat_template_rejects_unknown_role(tok):
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_arch_builds_and_runs(tok, arch):
    model = build_tiny_model(arch, tok)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 1_000_000, n_params
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    batch = tok(["hello there", "你好"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    seq = batch["input_ids"].shape[1]
    assert out.logits.shape == (2, seq, len(tok))
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, seq, 64)
    assert torch.isfinite(out.logits).all()


def test_seed_determinism(tok):
    state = torch.get_rng_state()
    a, b = build_tiny_model("llama", tok, seed=3), build_tiny_model("llama", tok, seed=3)
    c = build_tiny_model("llama", tok, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.down_proj.weight"], sc["model.layers.0.mlp.down_proj.weight"])


def test_dimensions_are_configurable(tok):
    model = build_tiny_model("qwen2", tok, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=48,
                             vocab_size=1200)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (32, 3, 1200)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (32, 48)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_tiny_model("gpt5", tok)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_reload_offline_identical(tmp_path, tok, arch):
    out = save_tiny_checkpoint(tmp_path / arch, arch=arch, seed=7)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    reference = build_tiny_model(arch, tok, seed=7)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True, trust_remote_code=False)
    reloaded_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    assert reloaded_tok.chat_template == tok.chat_template
    assert reloaded_tok.pad_token == "<pad>" and reloaded_tok.eos_token == "<|end|>"
    for text in SCRIPT_SAMPLES.values():
        assert reloaded_tok(text)["input_ids"] == tok(text)["input_ids"]
    prompt = reloaded_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)

    loaded, loaded_tok = load_model_and_tokenizer(out)
    assert not loaded.training and loaded_tok.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


def test_load_sets_pad_from_eos_and_dtype(tmp_path, tok):
    out = save_tiny_checkpoint(tmp_path / "m", arch="llama")
    # Simulate a tokenizer saved without a pad token (common for base models).
    tok_nopad = build_tiny_tokenizer()
    tok_nopad.pad_token = None
    tok_nopad.save_pretrained(out)
    model, loaded_tok = load_model_and_tokenizer(out, dtype="bfloat16")
    assert loaded_tok.pad_token == "<|end|>" and loaded_tok.pad_token_id == tok.eos_token_id
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_model_and_tokenizer(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="cannot load model"):
        load_model_and_tokenizer(empty)
    with pytest.raises(UserError, match="unknown dtype"):
        out = save_tiny_checkpoint(tmp_path / "m", arch="llama")
        load_model_and_tokenizer(out, dtype="float7")


def test_pickle_weights_are_refused(tmp_path):
    out = save_tiny_checkpoint(tmp_path / "m", arch="llama")
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    (out / "model.safetensors").unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")  # a pickle checkpoint only
    with pytest.raises(UserError, match="cannot load model"):
        load_model_and_tokenizer(out)


def test_gemma3_hybrid_layers_tied_head_and_gated_gelu(tok):
    from polyalign.models import GEMMA3_SLIDING_WINDOW as window

    model = build_tiny_model("gemma3", tok, num_layers=4)
    cfg = model.config
    assert cfg.model_type == "gemma3_text" and cfg.num_key_value_heads == 1
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    # The sliding window is really short: changing token 0 of a 3*window-token text changes
    # block 1's output (a sliding layer) at positions 0..window-1 only, but the global
    # block 2's output everywhere (it sees token 0 from every position).
    ids = torch.randint(10, len(tok), (1, 3 * window), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, 0] = 7 if int(ids[0, 0]) != 7 else 8
    with torch.no_grad():
        a = model(ids, output_hidden_states=True).hidden_states
        b = model(other, output_hidden_states=True).hidden_states
    moved = (a[1][0] - b[1][0]).abs().amax(-1)
    assert (moved[:window] > 1e-6).all() and torch.equal(a[1][0, window:], b[1][0, window:])
    assert ((a[2][0] - b[2][0]).abs().amax(-1) > 1e-6).all()
    # Gated-GELU MLP (tanh approximation), written out from its weights.
    mlp = model.model.layers[0].mlp
    x = torch.randn(5, cfg.hidden_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g, u, d = (m.weight.double() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    expected = (torch.nn.functional.gelu(x @ g.T, approximate="tanh") * (x @ u.T)) @ d.T
    assert cfg.hidden_activation == "gelu_pytorch_tanh"
    assert torch.allclose(mlp.double()(x), expected, atol=1e-10)
