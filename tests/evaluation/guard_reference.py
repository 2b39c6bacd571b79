"""Independent references for the guard-judge tests (imported by name from this folder)."""

from __future__ import annotations

import torch


def greedy_text(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """The greedy continuation of one unpadded prompt by ``model.generate`` (special tokens skipped):
    what a judge's left-padded batch must reproduce."""
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True)
