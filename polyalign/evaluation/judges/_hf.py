"""Shared transformers plumbing for generative guard models (Llama Guard, PolyGuard, Qwen3Guard).

Greedy generation on left-padded batches, returning the decoded continuations and the raw
logits of the first generated position (before any logits processor), so a judge can turn
them into a probability with a float64 softmax over the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from polyalign.errors import UserError
from polyalign.evaluation.judges.base import Judge, JudgeInput, Judgment
from polyalign.models import load_model_and_tokenizer


def resolve_model(
    model: str | Path | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """``(model, tokenizer, name)`` from a folder / hub id (loaded offline) or objects."""
    if isinstance(model, (str, Path)):
        loaded, loaded_tok = load_model_and_tokenizer(model, dtype=dtype, device=device)
        return loaded, tokenizer or loaded_tok, str(model)
    if tokenizer is None:
        raise UserError("a tokenizer is needed with a model object", field="tokenizer")
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer, str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


PROMPT_FORMATS = ("auto", "chat_template", "raw")


def check_prompt_format(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise UserError("prompt_format must be auto, chat_template or raw", field="prompt_format")


def resolve_prompt_format(prompt_format: str, templated: bool, family: str) -> str:
    """``chat_template`` or ``raw``: ``auto`` takes the tokenizer's template when it is the guard's own
    (``templated``); asking for ``chat_template`` without one is a :class:`UserError`."""
    if prompt_format == "chat_template" and not templated:
        raise UserError(f"the tokenizer has no {family} chat template", field="prompt_format")
    return "chat_template" if prompt_format == "chat_template" or (prompt_format == "auto" and templated) else "raw"


class GenerativeGuard(Judge):
    """A guard model that answers in text: encode each item, greedy-generate, read the answer.

    Subclasses call this ``__init__`` (it loads the model) and implement :meth:`encode` and
    :meth:`read_answer`. An input longer
    than ``max_input_tokens`` is a failed judgment (never generated, never safe).
    """

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        *,
        max_new_tokens: int,
        batch_size: int,
        max_input_tokens: int | None,
        dtype: str | torch.dtype | None,
        device: str | torch.device | None,
    ) -> None:
        self.model, self.tokenizer, self.model_name = resolve_model(model, tokenizer, dtype=dtype, device=device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens

    def encode(self, item: JudgeInput) -> list[int]:
        raise NotImplementedError

    def read_answer(self, ids: list[int], text: str, first_logits: torch.Tensor) -> Judgment:
        """The judgment from one generated answer (``first_logits``: raw logits ``[V]`` at its first position)."""
        raise NotImplementedError

    def _judge_batch(self, items: list[JudgeInput]) -> list[Judgment]:
        encoded = [self.encode(item) for item in items]
        results: list[Judgment | None] = [None] * len(encoded)
        run = []
        for i, ids in enumerate(encoded):
            if self.max_input_tokens is not None and len(ids) > self.max_input_tokens:
                results[i] = Judgment.failed(self.name, f"input too long ({len(ids)} > {self.max_input_tokens} tokens)")
            else:
                run.append(i)
        texts, firsts = generate_greedy(self.model, self.tokenizer, [encoded[i] for i in run],
                                        max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        for i, text, logits in zip(run, texts, firsts):
            results[i] = self.read_answer(encoded[i], text, logits)
        return [r for r in results if r is not None]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id (eos when the tokenizer has no pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("tokenizer has neither a pad nor an eos token", field="tokenizer")
    return int(pad)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [B, T]`` and ``attention_mask [B, T]``, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
) -> tuple[list[str], list[torch.Tensor]]:
    """Greedy continuations of token-id prompts: ``(texts, first_logits)``.

    ``first_logits[i]`` is the float32 vector ``[V]`` of raw logits at the first generated
    position of prompt ``i``. Prompts are sorted by length into batches (less padding) and
    results returned in input order. Decoding skips special tokens.
    """
    pad = pad_token_id(tokenizer)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
                              output_logits=True, return_dict_in_generate=True)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    firsts: list[Any] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in chunk], pad)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        new = out.sequences[:, ids.shape[1]:]
        first = out.logits[0].float().cpu()
        for row, i in enumerate(chunk):
            texts[i] = tokenizer.decode(new[row], skip_special_tokens=True)
            firsts[i] = first[row]
    return texts, firsts
