"""Greedy batched generation for the world's prompts, and the per-language evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polyalign.toyworld.scoring import aggregate, score_response
from polyalign.toyworld.world import World


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers to single-turn user ``prompts`` (chat template, generation prompt).

    Batches are left-padded (so every row's next token sits at the same position) and
    sorted by length to limit padding; results come back in the input order. Generation
    stops at the tokenizer's eos (``<|end|>``); special tokens are dropped when decoding.
    """
    if not prompts:
        return []
    rendered = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i].split()))
    out: list[str] = [""] * len(prompts)
    old_side = tokenizer.padding_side
    was_training = model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            enc = tokenizer([rendered[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            generated = model.generate(
                **enc, do_sample=False, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, enc["input_ids"].shape[1] :]
            for row, index in enumerate(chunk):
                out[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def world_prompts(world: World, split: str, languages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every harmful and benign item of ``split`` in every language, as rows to generate."""
    rows: list[dict[str, Any]] = []
    for lang in languages or world.languages:
        for item in world.harmful_split(split):
            rows.append({"id": f"{item.id}-{lang}", "kind": "harmful", "item": item, "language": lang,
                         "category": item.category, "prompt": world.text(item.prompt, lang)})
        for item in world.benign_split(split):
            rows.append({"id": f"{item.id}-{lang}", "kind": "benign", "item": item, "language": lang,
                         "category": item.task, "prompt": world.text(item.prompt, lang)})
    return rows


def max_answer_words(world: World) -> int:
    """Length in words of the longest expected output (compliance, answer or refusal)."""
    lengths = [len(i.compliance) for i in world.harmful] + [len(i.answer) for i in world.benign]
    return max(lengths + [len(world.refusal_words)])


def evaluate_world_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    split: str = "test",
    *,
    languages: Sequence[str] | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Generate and score every prompt of ``split``: one row per (item, language).

    Each row has ``id``, ``kind``, ``language``, ``category``, ``prompt``, ``response`` and
    the :func:`~polyalign.toyworld.scoring.score_response` fields.
    """
    rows = world_prompts(world, split, languages)
    responses = generate_responses(
        model, tokenizer, [r["prompt"] for r in rows],
        max_new_tokens=max_answer_words(world) + 4, batch_size=batch_size,
    )
    scored: list[dict[str, Any]] = []
    for row, response in zip(rows, responses):
        item = row.pop("item")
        scored.append({**row, "response": response,
                       **score_response(world, row["kind"], item, row["language"], response)})
    return scored


def evaluate_world(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    split: str = "test",
    *,
    languages: Sequence[str] | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Per-language metrics (:mod:`polyalign.toyworld.scoring`) of greedy answers on ``split``."""
    rows = evaluate_world_rows(model, tokenizer, world, split, languages=languages, batch_size=batch_size)
    return aggregate(rows, list(languages or world.languages))
