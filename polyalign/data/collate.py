"""Batches for training (contract: docs/architecture.md, "Batches").

All sequence tensors are right-padded to the longest row of the batch (dynamic padding,
optionally rounded up to ``pad_to_multiple_of``). ``response_mask[b, t]`` is True for the
response tokens of row ``b`` (their log-probs count; token ``t`` is predicted from ``t-1``).

- preference batch (:func:`collate_preference`): ``input_ids``, ``attention_mask``,
  ``response_mask`` ``[2B, T]`` (rows ``0..B-1`` prompt+chosen, ``B..2B-1`` prompt+rejected),
  ``ids``, ``languages``; cached reference values, when the examples carry them, as
  ``ref_logps`` / ``ref_avg_logps`` ``[2B]`` and ``ref_pooled`` ``[2B, H]`` in the same row order.
- SFT batch (:func:`collate_sft`): the same keys with only the ``B`` chosen rows.
- MPO batch (:func:`collate_mpo`): ``{"target": <preference batch>, "dominant": <preference batch>, "ids"}``.
- prompt-variant batch (:func:`collate_variants`): ``variant_input_ids [N, T]``,
  ``variant_attention_mask [N, T]``, ``variant_index [B, L]`` (-1 = missing),
  ``variant_languages`` (the L columns). Added to a preference batch when its examples carry
  ``variant_input_ids`` (a ``{language: ids}`` dict).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

_REF_SCALARS = (("ref_chosen_logps", "ref_rejected_logps", "ref_logps"),
                ("ref_chosen_avg_logps", "ref_rejected_avg_logps", "ref_avg_logps"))


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_value: int, *, side: str = "right", pad_to_multiple_of: int | None = None
) -> torch.Tensor:
    """``[len(seqs), T]`` long tensor, ``T`` = longest row (rounded up to ``pad_to_multiple_of``)."""
    width = max((len(s) for s in seqs), default=0)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "right":
                out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            else:
                out[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def _sequences(
    prompts: list[list[int]], responses: list[list[int]], pad_token_id: int, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response rows with attention and response masks."""
    full = [p + r for p, r in zip(prompts, responses)]
    input_ids = pad_sequences(full, pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
    attention = pad_sequences([[1] * len(s) for s in full], 0, pad_to_multiple_of=pad_to_multiple_of)
    response = pad_sequences([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0,
                             pad_to_multiple_of=pad_to_multiple_of)
    return {"input_ids": input_ids, "attention_mask": attention.bool().long(), "response_mask": response.bool()}


def collate_preference(
    examples: Sequence[dict[str, Any]], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Preference batch (chosen rows first, then rejected) from
    :func:`~polyalign.data.tokenize.tokenize_pair` outputs."""
    prompts = [list(e["prompt_input_ids"]) for e in examples]
    responses = [list(e["chosen_input_ids"]) for e in examples] + [list(e["rejected_input_ids"]) for e in examples]
    batch: dict[str, Any] = _sequences(prompts + prompts, responses, pad_token_id, pad_to_multiple_of)
    batch["ids"] = [str(e["id"]) for e in examples]
    batch["languages"] = [e.get("language", "") for e in examples]
    for chosen, rejected, key in _REF_SCALARS:
        if all(chosen in e for e in examples):
            values = [float(e[chosen]) for e in examples] + [float(e[rejected]) for e in examples]
            batch[key] = torch.tensor(values, dtype=torch.float32)
    if examples and all("ref_chosen_pooled" in e for e in examples):
        batch["ref_pooled"] = torch.stack(
            [torch.as_tensor(e["ref_chosen_pooled"]) for e in examples]
            + [torch.as_tensor(e["ref_rejected_pooled"]) for e in examples]
        ).float()
    if examples and all("variant_input_ids" in e for e in examples):
        batch.update(collate_variants(examples, pad_token_id))
    return batch


def collate_sft(
    examples: Sequence[dict[str, Any]], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """SFT batch: prompt+chosen rows only, ``[B, T]``."""
    prompts = [list(e["prompt_input_ids"]) for e in examples]
    batch: dict[str, Any] = _sequences(prompts, [list(e["chosen_input_ids"]) for e in examples], pad_token_id,
                                       pad_to_multiple_of)
    batch["ids"] = [str(e["id"]) for e in examples]
    batch["languages"] = [e.get("language", "") for e in examples]
    return batch


def collate_mpo(
    examples: Sequence[dict[str, Any]], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """MPO batch ``{"target", "dominant", "ids"}`` from
    :func:`~polyalign.data.tokenize.tokenize_parallel_pair` outputs."""
    return {
        "target": collate_preference([e["target"] for e in examples], pad_token_id,
                                     pad_to_multiple_of=pad_to_multiple_of),
        "dominant": collate_preference([e["dominant"] for e in examples], pad_token_id,
                                       pad_to_multiple_of=pad_to_multiple_of),
        "ids": [str(e["id"]) for e in examples],
    }


def collate_variants(
    examples: Sequence[dict[str, Any]],
    pad_token_id: int,
    *,
    languages: Sequence[str] | None = None,
    padding_side: str = "right",
) -> dict[str, Any]:
    """Prompt-variant batch from examples carrying ``variant_input_ids: {language: ids}``.

    Columns are ``languages`` or the union of the examples' languages in first-seen order;
    ``variant_index[b, l]`` is the row of example ``b``'s variant in language ``l`` or -1.
    """
    if languages is None:
        seen: dict[str, None] = {}
        for e in examples:
            seen.update(dict.fromkeys(e["variant_input_ids"]))
        languages = list(seen)
    rows: list[list[int]] = []
    index = torch.full((len(examples), len(languages)), -1, dtype=torch.long)
    for b, e in enumerate(examples):
        for col, lang in enumerate(languages):
            ids = e["variant_input_ids"].get(lang)
            if ids:
                index[b, col] = len(rows)
                rows.append(list(ids))
    return {
        "variant_input_ids": pad_sequences(rows, pad_token_id, side=padding_side),
        "variant_attention_mask": pad_sequences([[1] * len(r) for r in rows], 0, side=padding_side),
        "variant_index": index,
        "variant_languages": list(languages),
    }


def example_length(example: dict[str, Any]) -> int:
    """Longest sequence an example contributes to a batch (for length grouping)."""
    if "target" in example:
        return max(example_length(example["target"]), example_length(example["dominant"]))
    prompt = len(example["prompt_input_ids"])
    return prompt + max(len(example["chosen_input_ids"]), len(example.get("rejected_input_ids", ())))


class Collator:
    """The Trainer's ``data_collator`` for a training method (``mpo`` / ``sft`` / the preference methods)."""

    def __init__(self, method: str, pad_token_id: int, *, pad_to_multiple_of: int | None = None) -> None:
        self.method = method
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        fn = {"mpo": collate_mpo, "sft": collate_sft}.get(self.method, collate_preference)
        return fn(examples, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, then sort within mega-batches of ``batch_size * mega`` examples by length.

    Batches drawn in order from the yielded indices hold examples of similar length (less
    padding) while the order across mega-batches stays random. Deterministic per ``seed``
    and epoch (call :meth:`set_epoch`).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, mega: int = 50, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.group = max(1, batch_size * mega)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = list(range(len(self.lengths)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        for start in range(0, len(order), self.group):
            chunk = order[start : start + self.group]
            yield from sorted(chunk, key=lambda i: -self.lengths[i])
