"""Write small GGUF files the way llama.cpp's converter lays them out, for the conversion tests.

Imported by name (pytest puts ``tests/`` on ``sys.path``). Independent of transformers' GGUF
reader: tensor names come from the ``gguf`` package's own name map, the Llama Q/K row
permutation and Gemma's ``+1`` on RMSNorm weights are written from llama.cpp's converter
(``convert_hf_to_gguf.py``: ``LlamaModel.permute``, ``Gemma2Model/Gemma3Model.modify_tensors``),
and the expected dequantised values come from :func:`reference_dequantize`, a float64
reading of the Q8_0 / Q4_1 block layouts (``ggml-common.h``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, LlamaConfig, PreTrainedModel, Qwen2Config

from polyalign.models import build_tiny_tokenizer

# (gguf architecture, HF config class, permute Q/K, norm + 1)
LAYOUTS = {
    "llama": ("llama", LlamaConfig, True, False),
    "qwen2": ("qwen2", Qwen2Config, False, False),
    "gemma2": ("gemma2", Gemma2Config, False, True),
    "gemma3": ("gemma3", Gemma3TextConfig, False, True),
}


def tiny_source_model(layout: str, *, tied: bool, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """A random tiny model of ``layout`` whose settings GGUF can carry (Gemma: defaults for the rest)."""
    tokenizer = build_tiny_tokenizer()
    _, config_class, _, _ = LAYOUTS[layout]
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tied, rms_norm_eps=1e-6)
    if layout == "llama":
        config = config_class(**common, head_dim=16, rope_theta=10000.0)
    elif layout == "qwen2":
        config = config_class(**common, rope_theta=10000.0)
    else:
        # GGUF records head_dim (key_length) and the sliding window but not Gemma's
        # query_pre_attn_scalar or soft-capping: transformers' defaults apply on reading.
        config = config_class(**common, head_dim=32, sliding_window=128, rope_theta=10000.0)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Norm weights start at 0 (Gemma) or 1 (Llama): randomise them so the +1 / -1 and the
        # mapping of every norm are visible in the comparison.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.data.normal_(0.0, 0.3)
            if name.endswith("bias"):
                param.data.normal_(0.0, 0.1)
    return model.eval(), tokenizer


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: HF rotary halves -> interleaved GGUF rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(model: PreTrainedModel, layout: str) -> dict[str, np.ndarray]:
    """The model's tensors under GGUF names, transformed as llama.cpp writes them (float32)."""
    import gguf

    arch_name, _, permute, norm_plus_one = LAYOUTS[layout]
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma2": gguf.MODEL_ARCH.GEMMA2,
            "gemma3": gguf.MODEL_ARCH.GEMMA3}[arch_name]
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    out: dict[str, np.ndarray] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied: GGUF has no output.weight
        new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert new_name is not None, hf_name
        data = tensor.detach().double().numpy()
        if permute and hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, model.config.num_attention_heads, model.config.num_attention_heads)
        if permute and hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, model.config.num_attention_heads, model.config.num_key_value_heads)
        if norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0
        out[new_name] = data.astype(np.float32)
    return out


def quant_type_for(name: str, data: np.ndarray) -> str:
    """Which GGML type a tensor is written as: a mix, like a real quantised file."""
    if data.ndim < 2:
        return "F32"
    if "attn_q" in name or "attn_k" in name or "ffn_gate" in name:
        return "Q4_1"  # the permuted rows, quantised: the permutation must act on dequantised rows
    if "attn_v" in name:
        return "F16"
    return "Q8_0"


def write_gguf(model: PreTrainedModel, tokenizer: Any, layout: str, path: Path,
               chat_template: str | None = None) -> dict[str, tuple[str, np.ndarray]]:
    """Write ``model`` + ``tokenizer`` as a GGUF file; ``{gguf name: (type, float32 data)}`` written."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    arch_name = LAYOUTS[layout][0]
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(f"tiny-{layout}")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"] if "rope_theta" in cfg.rope_parameters
                                    else cfg.rope_parameters["full_attention"]["rope_theta"]))
    writer.add_vocab_size(cfg.vocab_size)
    if layout == "llama":
        writer.add_rope_dimension_count(cfg.head_dim)
    if layout.startswith("gemma"):
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_sliding_window(cfg.sliding_window)
    # Byte-level BPE vocabulary (tokenizer.ggml.model "gpt2"), special tokens marked CONTROL.
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    written: dict[str, tuple[str, np.ndarray]] = {}
    for name, data in gguf_tensors(model, layout).items():
        kind = quant_type_for(name, data)
        if kind == "F32":
            writer.add_tensor(name, data)
        elif kind == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            qtype = getattr(Q, kind)
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        written[name] = (kind, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def reference_dequantize(kind: str, data: np.ndarray) -> np.ndarray:
    """What a GGML reader must return for ``data`` written as ``kind`` (float64, own reading).

    Q8_0 block (32 values, 34 bytes): f16 scale d, 32 x int8 q; x = d * q.
    Q4_1 block (32 values, 20 bytes): f16 d, f16 m, 16 bytes; value j < 16 is the low nibble
    of byte j, value 16 + j the high nibble; x = d * q + m.
    """
    import gguf
    from gguf import GGMLQuantizationType as Q

    if kind == "F32":
        return data.astype(np.float64)
    if kind == "F16":
        return data.astype(np.float16).astype(np.float64)
    raw = gguf.quants.quantize(data, getattr(Q, kind)).reshape(-1)
    rows = data.size // 32
    if kind == "Q8_0":
        blocks = raw.reshape(rows, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(data.shape)
    if kind == "Q4_1":
        blocks = raw.reshape(rows, 20)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
        packed = blocks[:, 4:].astype(np.int64)
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float64)
        return (d * q + m).reshape(data.shape)
    raise ValueError(kind)


def expected_hf_weights(model: PreTrainedModel, layout: str,
                        written: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """HF-named float64 weights a correct reader produces: dequantised, un-permuted, norm - 1."""
    import gguf

    arch_name, _, permute, norm_plus_one = LAYOUTS[layout]
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma2": gguf.MODEL_ARCH.GEMMA2,
            "gemma3": gguf.MODEL_ARCH.GEMMA3}[arch_name]
    name_map = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    cfg = model.config
    expected: dict[str, np.ndarray] = {}
    for hf_name in model.state_dict():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        kind, data = written[name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
        values = reference_dequantize(kind, data)
        if permute and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in hf_name else cfg.num_key_value_heads
            # Inverse of permute_qk: (h, half, 2, ...) -> (h, 2, half, ...)
            values = (values.reshape(heads, values.shape[0] // heads // 2, 2, *values.shape[1:])
                      .swapaxes(1, 2).reshape(values.shape))
        if norm_plus_one and hf_name.endswith("norm.weight"):
            values = values.astype(np.float32) - np.float32(1.0)  # the reader subtracts in float32
        expected[hf_name] = np.asarray(values, dtype=np.float64)
    return expected
