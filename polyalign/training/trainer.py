"""A thin :class:`transformers.Trainer` subclass: polyalign's objective, metrics and sampler.

Everything else (accelerate, DDP / DeepSpeed, mixed precision, gradient accumulation,
checkpointing, resume, logging integrations) is the stock Trainer. What changes:

- :meth:`compute_loss` runs the method's :class:`polyalign.training.objective.Objective` (one
  policy forward; the method's step is picked once, at set-up) and stores the terms and
  per-language metrics;
- :meth:`log` adds their means (train: ``dpo``, ``nll``, ``rewards/accuracy``,
  ``zh/rewards/margins`` ...; eval: the same with the evaluation prefix, e.g. ``eval_zh_...``
  when ``eval_dataset`` is a dict of per-language datasets), gathered over processes;
- :meth:`prediction_step` returns the objective's loss only (no logits are gathered);
- ``train_sampling_strategy: group_by_length`` uses the examples' own lengths;
- MLC (``mlc_weight > 0``): the model is a
  :class:`~polyalign.training.mlc_policy.PolicyWithExtractor`; :meth:`compute_loss` passes
  ``apply_mlc = should_apply(global_step, mlc_every)`` (always in evaluation), :meth:`_save`
  writes the inner model as usual (``save_pretrained``: full weights or PEFT adapters) and the
  extractor to ``mlc_extractor/`` beside it, and :meth:`_load_from_checkpoint` restores both
  (under FSDP from the FSDP checkpoint of the whole wrapper).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import Trainer

from polyalign.data.collate import LengthGroupedSampler
from polyalign.errors import UserError
from polyalign.training.callbacks import check_finite_loss
from polyalign.training.extractor import MLCExtractor
from polyalign.training.forward import reshard_after_scoring
from polyalign.training.mlc_policy import PolicyWithExtractor, extractor_from_state, split_state_dict
from polyalign.training.mlc_term import should_apply
from polyalign.training.objective import Objective

logger = logging.getLogger("polyalign.training")


class PolyalignTrainer(Trainer):
    """``Trainer(model, args=PolyalignConfig, train_dataset, eval_dataset, data_collator, processing_class)``."""

    # compute_loss returns a per-micro-batch mean: let training_step divide by the GA steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        tokenizer = self.processing_class
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
        self.objective = Objective(self.args, self.pad_token_id)  # the method's step, chosen once
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
        apply_mlc = not model.training or should_apply(self.state.global_step, int(self.args.mlc_every))
        out = self.objective(model, inputs, apply_mlc=apply_mlc)
        if model.training:  # stop at a NaN/inf loss, naming the step and examples
            check_finite_loss(self, out.loss, inputs)
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
        reshard_after_scoring(model)  # FSDP2: no backward follows to reshard the root unit
        return loss.detach(), None, None

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        self._eval_prefix = metric_key_prefix
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                metric_key_prefix=metric_key_prefix)

    def _gathered(self, mode: str) -> dict[str, Any]:
        store = self._stored[mode]
        if self.accelerator.num_processes > 1:
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

    # -- MLC: the policy + extractor wrapper is saved as the policy, the extractor beside it ----------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(wrapper, PolicyWithExtractor):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # A gathered state dict (ZeRO-3 / FSDP) carries both parts; else read the live modules.
        policy_state, extractor_state = (split_state_dict(state_dict) if state_dict
                                         else (None, wrapper.mlc_extractor.state_dict()))
        model = self.model
        self.model = wrapper.policy  # the stock _save then calls the policy's save_pretrained
        try:
            super()._save(output_dir, policy_state)
        finally:
            self.model = model
        if state_dict is not None and not state_dict:
            # DeepSpeed ZeRO-3 without gathered 16-bit weights: the Trainer writes a dummy here and
            # then a DeepSpeed checkpoint, which holds the extractor's partitions too.
            logger.warning("MLC extractor not written to %s: it is in the DeepSpeed checkpoint (zero_to_fp32.py)",
                           output_dir)
        elif self.args.should_save:
            extractor_from_state(wrapper.mlc_extractor, extractor_state).save(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        if not isinstance(target, PolicyWithExtractor):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.is_fsdp_enabled:
            # FSDP checkpoints (pytorch_model_fsdp*) hold the whole sharded wrapper, extractor
            # included: loading them into the inner policy fails on the "policy." keys.
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        super()._load_from_checkpoint(resume_from_checkpoint, target.policy)
        saved = MLCExtractor.load(resume_from_checkpoint)
        if saved.config_dict() != target.mlc_extractor.config_dict():
            raise UserError(f"checkpoint extractor {saved.config_dict()} does not match this run's "
                            f"{target.mlc_extractor.config_dict()} (mlc_dim / mlc_layer)", file=resume_from_checkpoint)
        with torch.no_grad():
            for name, param in target.mlc_extractor.named_parameters():
                param.copy_(saved.state_dict()[name].to(param.device, param.dtype))

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(dataset.lengths, batch, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)
