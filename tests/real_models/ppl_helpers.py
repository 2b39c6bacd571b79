"""Perplexity of fixed sentences, and the broken models the bound must reject (real-model tier).

Imported by name (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import copy
import math

import torch

# Fixed sentences, one per language; each model is checked in the languages it was trained on.
SENTENCES = {
    "en": "The capital of France is Paris. It is known for the Eiffel Tower and its many museums. Every year, "
          "millions of tourists visit the city to see its famous monuments, walk along the river Seine and "
          "enjoy French food in small restaurants and cafes.",
    "fr": "La capitale de la France est Paris. Elle est connue pour la tour Eiffel et ses nombreux musées.",
    "de": "Die Hauptstadt von Frankreich ist Paris. Sie ist bekannt für den Eiffelturm und ihre vielen Museen.",
    "es": "La capital de Francia es París. Es conocida por la Torre Eiffel y sus muchos museos.",
    "zh": "法国的首都是巴黎。它以埃菲尔铁塔和众多博物馆而闻名。",
    "ru": "Столица Франции — Париж. Он известен Эйфелевой башней и многими музеями.",
}


@torch.no_grad()
def perplexity(model, tokenizer, text: str) -> float:
    """exp(mean next-token NLL) over the sentence, with the tokenizer's own special tokens (BOS for Gemma)."""
    ids = torch.tensor([tokenizer(text).input_ids])
    logits = model(input_ids=ids).logits[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="mean")
    return math.exp(nll.item())


def random_model(model):
    """Same architecture and config, freshly initialised (seeded): what a failed load would give."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).eval()


def shuffled_model(model):
    """Every weight's rows permuted (seeded): right values, wrong places (e.g. a mixed-up vocabulary)."""
    broken = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in broken.parameters():
            param.copy_(param[torch.randperm(param.shape[0], generator=generator)])
    return broken.eval()


def unpermuted_qk_model(model):
    """A Llama converter that forgot to undo llama.cpp's Q/K row permutation."""
    broken = copy.deepcopy(model)
    cfg = broken.config

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    with torch.no_grad():
        for layer in broken.model.layers:
            layer.self_attn.q_proj.weight.copy_(permute(layer.self_attn.q_proj.weight, cfg.num_attention_heads))
            layer.self_attn.k_proj.weight.copy_(permute(layer.self_attn.k_proj.weight, cfg.num_key_value_heads))
    return broken.eval()


def norm_plus_one_model(model):
    """A Gemma converter that forgot to subtract llama.cpp's +1 from the RMSNorm weights."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in broken.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(1.0)
    return broken.eval()
