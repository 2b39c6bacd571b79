"""A thin :class:`transformers.Trainer` subclass: polyalign's objective, metrics and sampler.

Everything else (accelerate, DDP / DeepSpeed, mixed precision, gradient accumulation,
checkpointing, resume, logging integrations) is the stock Trainer. What changes:

- :meth:`compute_loss` runs :func:`polyalign.training.objective.compute_objective` (one policy
  forward) and stores the terms and per-language metrics;
- :meth:`log` adds their means (train: ``dpo``, ``nll``, ``rewards/accuracy``,
  ``zh/rewards/margins`` ...; eval: the same with the evaluation prefix, e.g. ``eval_zh_...``
  when ``eval_dataset`` is a dict of per-language datasets), gathered over processes;
- :meth:`prediction_step` returns the objective's loss only (no logits are gathered);
- ``train_sampling_strategy: group_by_length`` uses the examples' own lengths.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from polyalign.data.collate import LengthGroupedSampler
from polyalign.training.objective import compute_objective


class PolyalignTrainer(Trainer):
    """``Trainer(model, args=PolyalignConfig, train_dataset, eval_dataset, data_collator, processing_class)``."""

    # compute_loss returns a per-micro-batch mean: let training_step divide by the GA steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        tokenizer = self.processing_class
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
        self._eval_prefix = "eval"
        self._stored: dict[str, dict[str, Any]] = {}
        self._reset("train")
        self._reset("eval")

    def _reset(self, mode: str) -> None:
        self._stored[mode] = {"sums": defaultdict(float), "counts": defaultdict(int),
                              "terms": defaultdict(float), "steps": 0}

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The weighted sum of the method's terms on this batch (see :mod:`polyalign.training.objective`)."""
        out = compute_objective(model, inputs, self.args, self.pad_token_id)
        store = self._stored["train" if model.training else "eval"]
        for key, value in out.sums.items():
            store["sums"][key] += value
            store["counts"][key] += out.counts[key]
        for key, value in out.terms.items():
            store["terms"][key] += value
        store["steps"] += 1
        if return_outputs:
            return out.loss, {"terms": out.terms}
        return out.loss

    def prediction_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        self._eval_prefix = metric_key_prefix
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                metric_key_prefix=metric_key_prefix)

    def _gathered(self, mode: str) -> dict[str, Any]:
        store = self._stored[mode]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([{k: dict(v) if isinstance(v, dict) else v for k, v in store.items()}])
            merged = {"sums": defaultdict(float), "counts": defaultdict(int), "terms": defaultdict(float), "steps": 0}
            for part in parts:
                for name in ("sums", "counts", "terms"):
                    for k, v in part[name].items():
                        merged[name][k] += v
                merged["steps"] += part["steps"]
            return merged
        return store

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the stored terms and metrics (means since the last log) to ``logs``."""
        mode = "train" if self.model.training else "eval"
        store = self._gathered(mode)
        prefix = "" if mode == "train" else f"{self._eval_prefix}_"
        if store["steps"]:
            for key, value in store["terms"].items():
                logs[f"{prefix}{key}"] = value / store["steps"]
            for key, value in store["sums"].items():
                logs[f"{prefix}{key}"] = value / max(1, store["counts"][key])
        self._reset(mode)
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(dataset.lengths, batch, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)
