"""Chunked sequence log-probs against a naive float64 full-logits computation on real tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from polyalign.losses import sequence_logps
from polyalign.training.forward import model_sequence_logps

VOCAB = 97


def _tiny(arch: str, softcap: float | None = 2.0):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        config, cls = LlamaConfig(**common, head_dim=8), LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif arch == "gemma3":
        # sliding window 5 < the 9-token rows, so the sliding layer really differs from the global one.
        # Not 4: the padded positions of row 2 would then see only padding in their window, which in
        # float64 (eager, transformers 5.23) gives NaN that reaches the real positions in the next layer.
        config = Gemma3TextConfig(**common, head_dim=8, query_pre_attn_scalar=8, sliding_window=5,
                                  layer_types=["sliding_attention", "full_attention"])
        cls = Gemma3ForCausalLM
    else:
        # a small cap so that soft-capping visibly changes the log-probs of this tiny model
        config = Gemma2Config(
            **common, head_dim=8, query_pre_attn_scalar=8, sliding_window=16, final_logit_softcapping=softcap
        )
        cls = Gemma2ForCausalLM
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config)
        # larger output weights than the init so logits reach the soft-capping range
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def _batch():
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (3, 9), generator=gen)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 7:] = 0  # right padding
    attention_mask[2, 5:] = 0
    input_ids[attention_mask == 0] = 0
    response_mask = torch.zeros(3, 9, dtype=torch.bool)
    response_mask[0, 4:9] = True
    response_mask[1, 3:7] = True
    response_mask[2, 0:5] = True  # t = 0 must be ignored: it has no predecessor
    return input_ids, attention_mask, response_mask


def _naive(model, input_ids, attention_mask, response_mask):
    """Full [N, T, V] logits from the model's own forward (soft-capping included), in float64."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = response_mask[:, 1:].double()
    total = (logp * mask).sum(1)
    return total, total / mask.sum(1).clamp(min=1)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "qwen2"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])  # 12 response tokens: smaller, not a divisor, larger
def test_model_sequence_logps_matches_naive_float64(arch, chunk_size):
    model = _tiny(arch).double()
    input_ids, attention_mask, response_mask = _batch()
    ref_sum, ref_avg = _naive(model, input_ids, attention_mask, response_mask)
    total, avg, n, last_hidden, _ = model_sequence_logps(
        model, input_ids, attention_mask, response_mask, chunk_size=chunk_size
    )
    assert n.tolist() == [5, 4, 4]
    assert last_hidden.shape == (3, 9, 32)
    assert torch.allclose(total, ref_sum, atol=1e-9, rtol=0)
    assert torch.allclose(avg, ref_avg, atol=1e-9, rtol=0)


def test_float32_model_close_to_float64_naive():
    model = _tiny("gemma2")
    input_ids, attention_mask, response_mask = _batch()
    total, _, _, _, _ = model_sequence_logps(model, input_ids, attention_mask, response_mask, chunk_size=4)
    assert total.dtype == torch.float32
    ref_sum, _ = _naive(model.double(), input_ids, attention_mask, response_mask)
    assert torch.allclose(total.double(), ref_sum, atol=1e-4, rtol=1e-6)


def test_gemma2_softcap_is_applied():
    model = _tiny("gemma2").double()
    input_ids, attention_mask, response_mask = _batch()
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    head = model.get_output_embeddings()
    with_cap, _, _ = sequence_logps(hidden, head, input_ids, response_mask, logit_softcap=2.0)
    without, _, _ = sequence_logps(hidden, head, input_ids, response_mask, logit_softcap=None)
    ref_sum, _ = _naive(model, input_ids, attention_mask, response_mask)
    assert torch.allclose(with_cap, ref_sum, atol=1e-9)
    assert (without - ref_sum).abs().max().item() > 1e-2  # the cap matters for this model


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])  # gemma2: tied + softcap; gemma3: tied + sliding
def test_gradients_match_naive(arch):
    model = _tiny(arch).double()
    input_ids, attention_mask, response_mask = _batch()
    weights = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)  # a generic direction

    model.zero_grad()
    ref_sum, ref_avg = _naive(model, input_ids, attention_mask, response_mask)
    ((ref_sum * weights).sum() + ref_avg.sum()).backward()
    naive_grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    model.zero_grad()
    total, avg, _, _, _ = model_sequence_logps(model, input_ids, attention_mask, response_mask, chunk_size=5)
    ((total * weights).sum() + avg.sum()).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, naive_grads[name], atol=1e-9, rtol=1e-7), name
    assert naive_grads["lm_head.weight" if arch == "llama" else "model.embed_tokens.weight"].abs().sum() > 0
    if arch == "gemma3":  # tied: one tensor, input and output embedding gradients summed into it
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_weight_tensor_bias_temperature_and_hidden_grad():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=True).double()
    input_ids = torch.randint(0, 11, (2, 6), generator=gen)
    response_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    temperature, cap = 0.7, 3.0

    def naive(h):
        z = head(h)
        z = cap * torch.tanh(z / cap) / temperature
        lp = z[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return (lp * response_mask[:, 1:]).sum(1)

    expected = naive(hidden)
    (g_expected,) = torch.autograd.grad(expected.sum(), hidden)
    total, avg, n = sequence_logps(
        hidden, head, input_ids, response_mask, chunk_size=2, logit_softcap=cap, temperature=temperature
    )
    assert torch.allclose(total, expected, atol=1e-12)
    assert torch.allclose(avg, expected / torch.tensor([4.0, 3.0], dtype=torch.float64), atol=1e-12)
    (g,) = torch.autograd.grad(total.sum(), hidden)
    assert torch.allclose(g, g_expected, atol=1e-12)
    # row 1 counts tokens 1, 2, 4: hidden states 0, 1, 3 get gradient, 2 and 5 none
    assert [g[1, t].abs().sum().item() > 0 for t in range(6)] == [True, True, False, True, False, False]
    # a bare [V, H] weight tensor (no bias) is accepted too
    plain, _, _ = sequence_logps(hidden.detach(), head.weight.detach(), input_ids, response_mask)
    z = hidden.detach() @ head.weight.detach().T
    lp = z[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(plain, (lp * response_mask[:, 1:]).sum(1), atol=1e-12)


def test_no_response_tokens_is_zero_and_backward_works():
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    response_mask = torch.zeros(2, 4, dtype=torch.bool)
    response_mask[1, 0] = True  # position 0 never counts
    total, avg, n = sequence_logps(hidden, head, torch.zeros(2, 4, dtype=torch.long), response_mask)
    assert total.tolist() == [0.0, 0.0] and avg.tolist() == [0.0, 0.0] and n.tolist() == [0, 0]
    total.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum().item() == 0.0


def test_no_grad_path_equals_grad_path():
    model = _tiny("qwen2")
    input_ids, attention_mask, response_mask = _batch()
    with torch.no_grad():
        a, _, _, _, _ = model_sequence_logps(model, input_ids, attention_mask, response_mask, chunk_size=2)
    b, _, _, _, _ = model_sequence_logps(model, input_ids, attention_mask, response_mask, chunk_size=2)
    assert b.requires_grad and not a.requires_grad
    assert torch.allclose(a, b.detach(), atol=0, rtol=0)


def test_backward_keeps_no_full_logits():
    """Tensors saved for backward outside the checkpointed chunks stay far below [M, V]."""
    gen = torch.Generator().manual_seed(3)
    n_rows, t, h, v, chunk = 2, 50, 8, 512, 16
    hidden = torch.randn(n_rows, t, h, generator=gen, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    input_ids = torch.randint(0, v, (n_rows, t), generator=gen)
    response_mask = torch.ones(n_rows, t, dtype=torch.bool)
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        total, _, _ = sequence_logps(hidden, head, input_ids, response_mask, chunk_size=chunk)
    m = n_rows * (t - 1)
    assert max(saved) < chunk * v  # not even one chunk of logits is kept
    assert sum(saved) < m * v / 4
    total.sum().backward()  # the chunks are recomputed in backward
    assert head.weight.grad.abs().sum() > 0


def test_peft_lora_model():
    peft = pytest.importorskip("peft")
    model = _tiny("llama")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    lora = lora.double()
    input_ids, attention_mask, response_mask = _batch()
    total, _, _, _, _ = model_sequence_logps(lora, input_ids, attention_mask, response_mask)
    ref_sum, _ = _naive(lora, input_ids, attention_mask, response_mask)
    with lora.disable_adapter():
        base_sum, _ = _naive(lora, input_ids, attention_mask, response_mask)
    assert torch.allclose(total, ref_sum, atol=1e-9)
    assert (base_sum - ref_sum).abs().max() > 1e-3  # the adapter is really in the path


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_target_log_softmax_matches_autograd_across_row_blocks(dtype):
    """The fused log-softmax-at-target (rows processed in blocks of 2**20 // V) against the plain
    float64 autograd route on the same logits: values and gradients, several blocks (V = 2**17:
    8 rows per block, 19 rows), float32 output and a gradient in the logits' own dtype."""
    from polyalign.losses.logprobs import _TargetLogSoftmax

    gen = torch.Generator().manual_seed(5)
    m, v = 19, 2**17
    logits = (torch.randn(m, v, generator=gen, dtype=torch.float64) * 3).to(dtype).requires_grad_(True)
    targets = torch.randint(0, v, (m,), generator=gen)
    weights = torch.randn(m, generator=gen, dtype=torch.float64)

    out = _TargetLogSoftmax.apply(logits, targets)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (grad,) = torch.autograd.grad((out.double() * weights).sum(), logits)
    assert grad.dtype == dtype

    ref_logits = logits.detach().double().requires_grad_(True)
    ref = ref_logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(ref_logits, dim=-1)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), ref_logits)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out.double(), ref, atol=tol, rtol=0)
    # float64: the same numbers; bf16: each element the float32 value rounded once to bf16
    # (relative error <= 2**-9, plus float32 rounding: bounded by 2**-8 elementwise)
    bound = 1e-12 * ref_grad.abs().max() if dtype == torch.float64 else 2**-8 * ref_grad.abs()
    assert ((grad.double() - ref_grad).abs() <= bound).all()
