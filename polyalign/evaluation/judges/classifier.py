"""Any Hugging Face sequence-classification model as a toxicity scorer.

``score(text) = activation(logits)[toxic]`` where

- ``toxic`` is the class index, given as an int or as a label name looked up (case-
  insensitively) in ``config.id2label``; default: the label named ``toxic`` / ``toxicity``
  when there is one, else index 1 for two classes, else 0 for one class;
- ``activation`` is ``sigmoid`` for multi-label models (``config.problem_type ==
  "multi_label_classification"``) and single-logit models, ``softmax`` otherwise (override
  with ``activation="sigmoid"|"softmax"``). The activation is computed in float64.

Texts are batched (right padding; sequence classifiers read the last non-padding token or
the first one, so padding side does not change their output) and truncated to
``max_length`` tokens (counted in ``stats["truncated"]``). A text that encodes to no tokens
at all (an empty text with a tokenizer that adds no special tokens) gets ``None``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from polyalign.errors import UserError
from polyalign.evaluation.judges.base import ToxicityScore, ToxicityScorer, check_languages
from polyalign.models import NOT_LOCAL, pretrained_source


def load_classifier(path: str | Path, dtype: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier and its tokenizer (safetensors, no remote code, never a download the user
    did not allow)."""
    where, local_only = pretrained_source(path)  # a mistyped folder is an error, never a download
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=local_only)
        model = AutoModelForSequenceClassification.from_pretrained(
            where, use_safetensors=True, trust_remote_code=False, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if local_only and not Path(where).is_dir():
            raise UserError(f"classifier: {NOT_LOCAL}", file=str(path)) from None
        raise UserError(f"cannot load classifier: {str(exc).splitlines()[0]}", file=str(path)) from None
    return model, tokenizer


def resolve_label_index(config: Any, toxic_label: int | str | None) -> int:
    """The class index of the toxic label (see the module docstring)."""
    num = int(config.num_labels)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if isinstance(toxic_label, int):
        if not 0 <= toxic_label < num:
            raise UserError(f"toxic_label {toxic_label} out of range for {num} labels", field="toxic_label")
        return toxic_label
    if isinstance(toxic_label, str):
        for index, name in id2label.items():
            if name.lower() == toxic_label.lower():
                return index
        raise UserError(f"no label named {toxic_label!r}; labels: {sorted(id2label.values())}", field="toxic_label")
    for index, name in id2label.items():
        if name.lower() in ("toxic", "toxicity"):
            return index
    if num in (1, 2):
        return num - 1
    raise UserError(f"the model has {num} labels; say which one is toxic (toxic_label)", field="toxic_label")


class ClassifierScorer(ToxicityScorer):
    """Sequence-classification toxicity scorer; ``model``: folder / hub id or a model object."""

    name = "classifier"

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        toxic_label: int | str | None = None,
        activation: str = "auto",
        batch_size: int = 32,
        max_length: int = 512,
        dtype: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(model, (str, Path)):
            self.model_name = str(model)
            model, loaded_tok = load_classifier(model, dtype)
            tokenizer = tokenizer or loaded_tok
        else:
            self.model_name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        if tokenizer is None:
            raise UserError("a tokenizer is needed with a model object", field="tokenizer")
        self.model = (model.to(device) if device is not None else model).eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.toxic_index = resolve_label_index(self.model.config, toxic_label)
        if activation == "auto":
            multi = getattr(self.model.config, "problem_type", None) == "multi_label_classification"
            activation = "sigmoid" if multi or self.model.config.num_labels == 1 else "softmax"
        if activation not in ("sigmoid", "softmax"):
            raise UserError("activation must be auto, sigmoid or softmax", field="activation")
        self.activation = activation
        self.batch_size = batch_size
        self.max_length = max_length
        self.stats: Counter[str] = Counter()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_name, "toxic_index": self.toxic_index,
                "activation": self.activation, "max_length": self.max_length}

    @torch.no_grad()
    def score_detailed(self, texts: Sequence[str], languages: Sequence[str] | None = None) -> list[ToxicityScore]:
        check_languages(texts, languages)  # the classifier itself is language-agnostic
        device = next(self.model.parameters()).device
        out: list[ToxicityScore | None] = [None] * len(texts)
        full = self.tokenizer(list(texts))["input_ids"] if texts else []
        # A text with no tokens at all (empty text, tokenizer without special tokens) has
        # nothing for the classifier to read: an error score, counted.
        todo = [i for i, ids in enumerate(full) if ids]
        for i, ids in enumerate(full):
            if not ids:
                out[i] = ToxicityScore(None, "text has no tokens")
                self.stats["errors"] += 1
        self.stats["truncated"] += sum(len(full[i]) > self.max_length for i in todo)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits.to(torch.float64)
            probs = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=-1)
            for i, p in zip(chunk, probs[:, self.toxic_index].cpu()):
                out[i] = ToxicityScore(float(p))
        self.stats["scored"] += len(todo)
        return [o for o in out if o is not None]
