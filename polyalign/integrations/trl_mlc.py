"""MLC for TRL users: ``MLCDPOTrainer``, a TRL 1.16 ``DPOTrainer`` with the consistency term.

``loss = DPO loss (TRL, unchanged) + weight * L_MLC`` on optimiser steps where
``global_step % every == 0`` (released: weight 0.8, tau 0.2, every 2, last layer, dim 512).

Data: a TRL preference dataset (``prompt`` / ``chosen`` / ``rejected``, conversational or
not) with one more column, ``prompt_variants``: per row either a list aligned with
``MLCConfig.languages`` (``None`` for a missing language) or a mapping ``language -> prompt``;
a prompt is chat turns (``[{"role": "user", "content": ...}]``) or a string. :func:`trl_rows`
builds such rows from polyalign ``PreferencePair``s (e.g. the MLC JSONL).

How it hooks into TRL (read from ``trl/trainer/dpo_trainer.py`` 1.16): TRL's ``_compute_loss``
runs ``model(input_ids, attention_mask, labels, fused_lm_head=True)``, whose fused forward
calls the backbone (``model.base_model``) once and then scores ``last_hidden_state``. There
is no ``concatenated_forward`` to override any more, so :class:`MLCDPOTrainer` registers a
one-shot pre-hook and hook on the policy's backbone for the duration of ``compute_loss``:
the pre-hook appends the variant rows (right-padded) to the chosen/rejected rows, the hook
keeps the variant rows' hidden states and hands TRL back exactly its own rows
(``[:2B, :T]``). So the variants ride in the **same forward pass** as the preference
sequences (as in the released code), the LM head never sees them, and TRL's loss and
metrics are computed on its own rows as before. The reference forward is untouched.

The extractor (:class:`~polyalign.training.extractor.MLCExtractor`) is not a submodule of the
model: it is added to the optimizer (``create_optimizer``), included in gradient clipping,
saved as ``<output_dir>/mlc_extractor/`` by ``save_model`` (and in checkpoints) and reloaded
on ``resume_from_checkpoint``. Logged: ``mlc/loss``, ``mlc/rank1_share``, ``mlc/mean_cosine``,
``mlc/present_share``.

Limits: single process only (DDP / FSDP / DeepSpeed would need the extractor's gradients
synchronised; refused with a UserError); text models whose backbone takes ``input_ids``;
for MoE models the router's load-balancing loss also sees the variant tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from trl import DPOTrainer

from polyalign.data.collate import collate_variants
from polyalign.data.languages import canonical_language
from polyalign.data.records import PreferencePair
from polyalign.data.variants import VariantReport, tokenize_variants
from polyalign.errors import UserError
from polyalign.losses.mlc_loss import MLC_SCALES
from polyalign.training.extractor import EXTRACTOR_DIRNAME, MLCExtractor
from polyalign.training.mlc_term import append_rows, mlc_term, should_apply

log = logging.getLogger("polyalign.training")
VARIANT_KEYS = ("variant_input_ids", "variant_attention_mask", "variant_index", "variant_languages")


@dataclass
class MLCConfig:
    """MLC settings (defaults: the released code's). ``languages``: the L variant languages,
    in the order of list-shaped ``prompt_variants``. ``weight`` 0 still runs and logs the
    term (monitoring only). ``max_length``: variant token limit (end kept); default: the
    ``DPOConfig.max_length``."""

    languages: list[str]
    weight: float = 0.8
    tau: float = 0.2
    every: int = 2
    layer: int = -1
    extractor_dim: int = 512
    scale: str = "released"
    column: str = "prompt_variants"
    max_length: int | None = None

    def __post_init__(self) -> None:
        if len(self.languages) < 2:
            raise UserError(f"MLC needs at least 2 languages, got {list(self.languages)}", field="mlc.languages")
        try:
            langs = [canonical_language(code) for code in self.languages]
        except ValueError as exc:
            raise UserError(str(exc), field="mlc.languages") from None
        if len(set(langs)) != len(langs):
            raise UserError(f"a language is listed twice in {langs}", field="mlc.languages")
        self.languages = langs
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise UserError(f"weight must be a finite number >= 0, got {self.weight!r}", field="mlc.weight")
        if not self.tau > 0:
            raise UserError(f"tau must be > 0, got {self.tau!r}", field="mlc.tau")
        if not isinstance(self.every, int) or self.every < 1:
            raise UserError(f"every must be an integer >= 1, got {self.every!r}", field="mlc.every")
        if self.scale not in MLC_SCALES:
            raise UserError(f"scale must be one of {list(MLC_SCALES)}, got {self.scale!r}", field="mlc.scale")
        if self.max_length is not None and self.max_length < 1:
            raise UserError(f"max_length must be >= 1, got {self.max_length!r}", field="mlc.max_length")


def trl_rows(pairs: Sequence[PreferencePair], languages: Sequence[str]) -> list[dict[str, Any]]:
    """Conversational TRL rows with a ``prompt_variants`` column from polyalign pairs.

    ``{"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...],
    "prompt_variants": [turns or None per language]}``; the variants come from
    ``pair.variants`` (see :func:`polyalign.data.variants.attach_variants`).
    """
    langs = [canonical_language(code) for code in languages]
    rows = []
    for pair in pairs:
        prompts = pair.variants.prompts if pair.variants is not None else {}
        rows.append({
            "prompt": [m.to_dict() for m in pair.prompt],
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
            "prompt_variants": [[m.to_dict() for m in prompts[lang]] if lang in prompts else None for lang in langs],
        })
    return rows


class MLCDataCollator:
    """Wraps TRL's preference collator and adds the prompt-variant batch (right-padded).

    The wrapped collator reads only its own keys, so the ``prompt_variants`` column passes
    through it untouched; the variants are tokenised here (chat template + generation
    prompt, see :func:`polyalign.data.variants.tokenize_variant`).
    """

    def __init__(self, base: Any, tokenizer: Any, config: MLCConfig, max_length: int | None = None) -> None:
        self.base, self.tokenizer, self.config, self.max_length = base, tokenizer, config, max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.base(examples))
        column = self.config.column
        if any(column not in example for example in examples):
            raise UserError(f"a training example has no {column!r} column", field=column)
        tokens = tokenize_variants(self.tokenizer, [ex[column] for ex in examples], self.config.languages,
                                   max_length=self.max_length)
        batch.update(collate_variants([{"variant_input_ids": t} for t in tokens], self.tokenizer.pad_token_id,
                                      languages=self.config.languages))
        return batch


class _VariantRowsCapture:
    """One-shot hooks on a backbone: append variant rows to its next forward, keep their
    hidden states (``self.hidden``: the layer the extractor reads, rows ``[N, T']``), and
    return the original rows' outputs (``[:M, :T]``) to the caller."""

    def __init__(self, backbone: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, pad_id: int, layer: int):
        self.backbone, self.ids, self.mask, self.pad_id, self.layer = backbone, ids, mask, pad_id, layer
        self.armed, self.handles = True, []
        self.hidden: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None

    def __enter__(self) -> _VariantRowsCapture:
        self.handles = [
            self.backbone.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.backbone.register_forward_hook(self._post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self.armed:
            return None
        if args:  # input_ids given positionally
            kwargs = {**kwargs, "input_ids": args[0]}
            args = ()
        input_ids = kwargs.get("input_ids")
        if input_ids is None or kwargs.get("inputs_embeds") is not None or kwargs.get("position_ids") is not None:
            raise UserError("MLC's joint forward needs a backbone called with input_ids and without "
                            "inputs_embeds/position_ids", field="mlc")
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.rows, self.width = input_ids.shape
        ids, mask = append_rows(input_ids, attention_mask, self.ids.to(input_ids.device),
                                self.mask.to(input_ids.device), self.pad_id)
        self.added_hidden_states = self.layer != -1 and not kwargs.get("output_hidden_states")
        kwargs = {**kwargs, "input_ids": ids, "attention_mask": mask}
        if self.layer != -1:
            kwargs["output_hidden_states"] = True
        self.attention_mask = mask[self.rows:]
        return args, kwargs

    def _post(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self.armed:
            return None
        self.armed = False
        rows, width = self.rows, self.width
        chosen = output.last_hidden_state if self.layer == -1 else output.hidden_states[self.layer]
        self.hidden = chosen[rows:]
        output.last_hidden_state = output.last_hidden_state[:rows, :width]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = None if self.added_hidden_states else tuple(h[:rows, :width] for h in
                                                                               output.hidden_states)
        if getattr(output, "attentions", None) is not None:
            output.attentions = tuple(a[:rows, :, :width, :width] for a in output.attentions)
        return output


class MLCDPOTrainer(DPOTrainer):
    """TRL ``DPOTrainer`` + MLC. Same arguments as ``DPOTrainer`` plus ``mlc_config``.

    Attributes: ``mlc_config``, ``mlc_extractor`` (the trainable head), ``mlc_report``
    (a :class:`~polyalign.data.variants.VariantReport` of the training set's variants).
    """

    def __init__(self, *args: Any, mlc_config: MLCConfig, **kwargs: Any) -> None:
        if not isinstance(mlc_config, MLCConfig):
            raise UserError("mlc_config must be an MLCConfig", field="mlc_config")
        optimizers = kwargs.get("optimizers")
        if optimizers is not None and optimizers[0] is not None:
            raise UserError("MLCDPOTrainer builds its own optimizer (the MLC extractor must be in it); "
                            "do not pass `optimizers`", field="optimizers")
        self.mlc_config = mlc_config
        super().__init__(*args, **kwargs)
        if self.accelerator.num_processes > 1:
            raise UserError("MLCDPOTrainer supports single-process training only", field="mlc")
        self.mlc_report = _column_report(self.train_dataset, mlc_config)
        log.info("MLC variants: %s", self.mlc_report.summary())
        text_config = self.model.config.get_text_config()
        self.mlc_extractor = MLCExtractor(text_config.hidden_size, mlc_config.extractor_dim, mlc_config.layer)
        self.mlc_extractor.to(self.args.device)
        max_length = mlc_config.max_length if mlc_config.max_length is not None else self.args.max_length
        if not isinstance(self.data_collator, MLCDataCollator):
            self.data_collator = MLCDataCollator(self.data_collator, self._tokenizer, mlc_config, max_length)

    # -- data ------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.mlc_config.column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.mlc_config.column]

    # -- loss ------------------------------------------------------------------------------
    def _backbone(self, model: torch.nn.Module) -> torch.nn.Module:
        unwrapped = self.accelerator.unwrap_model(model)
        if hasattr(unwrapped, "get_base_model") and hasattr(unwrapped, "peft_config"):
            unwrapped = unwrapped.get_base_model()
        return unwrapped.base_model  # what TRL's fused forward calls (transformers >= 5)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        variants = {key: inputs.pop(key) for key in VARIANT_KEYS if key in inputs}
        mode = "train" if self.model.training else "eval"
        run = (
            "variant_input_ids" in variants
            and variants["variant_input_ids"].shape[0] > 0
            and (mode == "eval" or should_apply(self.state.global_step, self.mlc_config.every))
        )
        if not run:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        capture = _VariantRowsCapture(self._backbone(model), variants["variant_input_ids"],
                                      variants["variant_attention_mask"], self._tokenizer.pad_token_id,
                                      self.mlc_config.layer)
        with capture:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if capture.hidden is None:
            raise RuntimeError("MLC: the policy forward did not run through the hooked backbone")
        term = mlc_term(capture.hidden, capture.attention_mask, variants["variant_index"], self.mlc_extractor,
                        tau=self.mlc_config.tau, scale=self.mlc_config.scale)
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self.mlc_config.weight * term.loss.to(loss.dtype)
        for key, value in term.metrics().items():
            if not math.isnan(value):
                self._metrics[mode][key].append(value)
        return (loss, outputs) if return_outputs else loss

    # -- optimisation ------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        weight, bias = self.mlc_extractor.linear.weight, self.mlc_extractor.linear.bias
        if id(weight) not in present:
            # Same convention as Trainer: weight decay on the matrix, none on the bias.
            optimizer.add_param_group({"params": [weight], "weight_decay": self.args.weight_decay})
            if bias is not None:
                optimizer.add_param_group({"params": [bias], "weight_decay": 0.0})
        return optimizer

    def _clip_grad_norm(self, model):
        # The released code's extractor is a submodule of the model, so it is clipped with it.
        params = [*model.parameters(), *self.mlc_extractor.parameters()]
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:
            params = [*model.parameters(), *self.mlc_extractor.parameters()]
            grad_norm = self.accelerator.clip_grad_norm_(params, float("inf"))
        return grad_norm

    # -- saving ------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.mlc_extractor.save(output_dir if output_dir is not None else self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (Path(resume_from_checkpoint) / EXTRACTOR_DIRNAME).is_dir():
            saved = MLCExtractor.load(resume_from_checkpoint)
            if saved.config_dict() != self.mlc_extractor.config_dict():
                raise UserError(f"checkpoint extractor {saved.config_dict()} does not match the MLC config "
                                f"{self.mlc_extractor.config_dict()}", file=resume_from_checkpoint)
            self.mlc_extractor.load_state_dict(saved.state_dict())


def _column_report(dataset: Any, config: MLCConfig) -> VariantReport:
    """Count missing languages in the ``prompt_variants`` column (UserError if absent, or if
    no example has two languages)."""
    column = config.column
    names = getattr(dataset, "column_names", None)
    if dataset is not None and names is None:  # an IterableDataset without known columns: checked per batch
        return VariantReport(languages=list(config.languages), missing={lang: 0 for lang in config.languages})
    if dataset is None or column not in names:
        raise UserError(f"the training dataset has no {column!r} column (prompt variants for MLC)", field=column)
    report = VariantReport(languages=list(config.languages), missing={lang: 0 for lang in config.languages})
    for value in dataset[column]:
        if isinstance(value, dict):
            present = {_canonical(k) for k, v in value.items() if v is not None}
        elif value is None:
            present = set()
        else:
            if len(value) != len(config.languages):
                raise UserError(f"{len(value)} prompt variants for {len(config.languages)} configured languages",
                                field=column)
            present = {lang for lang, v in zip(config.languages, value) if v is not None}
        report.n_examples += 1
        for lang in config.languages:
            report.missing[lang] += lang not in present
        kept = present & set(config.languages)
        report.complete += len(kept) == len(config.languages)
        report.too_few += len(kept) < 2
        report.no_variants += not kept
    if report.n_examples and report.too_few == report.n_examples:
        raise UserError("no training example has prompt variants in 2 or more of the MLC languages", field=column)
    return report


def _canonical(code: str) -> str:
    try:
        return canonical_language(code)
    except ValueError as exc:
        raise UserError(str(exc), field="prompt_variants") from None
