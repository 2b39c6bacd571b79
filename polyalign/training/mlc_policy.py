"""MLC in polyalign's own trainer: the policy + extractor module, variant data, saving.

Design (why a wrapper): the extractor must be trained, synchronised across processes,
checkpointed and resumed together with the policy, but never written into the model's
weights. :class:`PolicyWithExtractor` is a small ``nn.Module`` with two registered
submodules, ``policy`` (the causal LM, PEFT-wrapped or not) and ``mlc_extractor``. The
Trainer is given the wrapper, so

- ``accelerator.prepare`` wraps the *wrapper* in DDP / the DeepSpeed engine: the extractor's
  gradients are all-reduced (DDP) or partitioned (ZeRO) like every other parameter;
- the optimizer (built from ``model.named_parameters()``) contains the extractor (weight
  decay on its matrix, none on its bias, the Trainer's convention), and ``optimizer.pt`` /
  DeepSpeed checkpoints hold its state;
- :meth:`PolyalignTrainer._save` (see trainer.py) splits the state dict: the ``policy.*`` part
  is saved by the inner model's own ``save_pretrained`` (a plain model folder, or PEFT
  adapters), the ``mlc_extractor.*`` part by :meth:`MLCExtractor.save` into
  ``<folder>/mlc_extractor/`` (safetensors + its own config.json); resume loads both back.

Attribute look-ups the wrapper does not answer (``config``, ``get_decoder``,
``get_output_embeddings``, ``activation_checkpointing_enable``, ...) go to the policy, so the
Trainer and :func:`polyalign.training.forward.model_sequence_logps` treat it like the model. The
wrapper's ``forward`` is the policy's ``forward`` (what DDP must see); the extractor is
called directly on the variant rows' hidden states after it, inside the same graph.

DDP and skipped steps: on optimiser steps without the MLC term (``mlc_every`` > 1) the
objective adds ``0 * sum(extractor parameters)``, so the extractor gets a zero gradient on
every process, so DDP never waits for a missing gradient. ``train()`` also sets
``ddp_find_unused_parameters: false`` (unless the recipe sets it): with the search on, DDP
marks the extractor ready during the unused-parameter pass and again when its real gradient
arrives after the forward, and fails ("mark a variable ready only once"). This matches the
released ZeRO runs, where a parameter without a gradient is reduced and stepped as zero; the
optimizer's moments keep decaying.

Data: :func:`attach_mlc_variants` gives every record its prompt variants (the MLC JSONL's
own ``prompt_<lang>`` columns, or a ``variants_file`` joined by id; for MPO records the
dominant and target prompts themselves, merged with any joined variants) and returns the
:class:`~polyalign.data.variants.VariantReport`. :class:`MLCCollator` adds the prompt-variant
batch (fixed language columns) to every method's batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polyalign.data.collate import collate_variants
from polyalign.data.readers import load_prompt_variants
from polyalign.data.records import ParallelPair, PreferencePair, PromptVariants
from polyalign.data.variants import VariantReport, attach_variants
from polyalign.errors import UserError
from polyalign.training.extractor import MLCExtractor
from polyalign.training.forward import runs_own_forward

log = logging.getLogger("polyalign.training")


class PolicyWithExtractor(nn.Module):
    """``policy`` (causal LM) + ``mlc_extractor`` (:class:`MLCExtractor`) as one trainable module.

    ``forward(**kwargs)`` is ``policy(**kwargs)``; unknown attributes are the policy's.
    """

    def __init__(self, policy: nn.Module, extractor: MLCExtractor) -> None:
        super().__init__()
        self.policy = policy
        self.mlc_extractor = extractor

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if name in ("policy", "mlc_extractor") or "policy" not in modules:
                raise
            return getattr(modules["policy"], name)


def unwrap_policy(model: nn.Module) -> tuple[nn.Module, MLCExtractor | None]:
    """``(model to score, extractor or None)`` of what the Trainer hands to compute_loss.

    A model that runs its own forward (:func:`~polyalign.training.forward.runs_own_forward`:
    a distributed wrapper, an FSDP2-sharded wrapper) is kept as the model to score; a bare
    wrapper is replaced by its policy.
    """
    inner = model.__dict__.get("_modules", {}).get("module") if isinstance(model, nn.Module) else None
    if isinstance(inner, PolicyWithExtractor):
        return model, inner.mlc_extractor
    if isinstance(model, PolicyWithExtractor):
        return (model if runs_own_forward(model) else model.policy), model.mlc_extractor
    return model, None


def wrap_policy(model: nn.Module, config: Any) -> PolicyWithExtractor:
    """The policy with a fresh extractor (``mlc_dim``, ``mlc_layer``) on the policy's device.

    The extractor's initialisation depends on ``config.seed`` only (a forked RNG), not on how
    much randomness model loading or data preparation consumed before: runs are reproducible
    and the initial head can be rebuilt (e.g. to measure what training changed).
    """
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        extractor = MLCExtractor(int(text.hidden_size), int(config.mlc_dim), int(config.mlc_layer))
    extractor.to(next(model.parameters()).device)
    return PolicyWithExtractor(model, extractor)


def split_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``{"policy.x": ..., "mlc_extractor.linear.weight": ...}`` -> ``(policy part, extractor part)``,
    prefixes removed (the extractor part keyed as ``MLCExtractor.state_dict()``)."""
    policy, extractor = {}, {}
    for key, value in state_dict.items():
        if key.startswith("mlc_extractor."):
            extractor[key[len("mlc_extractor."):]] = value
        elif key.startswith("policy."):
            policy[key[len("policy."):]] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a PolicyWithExtractor state dict")
    return policy, extractor


def extractor_from_state(template: MLCExtractor, state: dict[str, torch.Tensor]) -> MLCExtractor:
    """A CPU float32 copy of ``template`` holding ``state`` (e.g. a gathered ZeRO-3 state dict)."""
    copy = MLCExtractor(template.hidden_size, template.dim, template.layer, bias=template.linear.bias is not None)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in state.items()})
    return copy


# -- data ---------------------------------------------------------------------------------------


def _mpo_variants(record: ParallelPair, joined: PromptVariants | None) -> PreferencePair:
    """The target pair carrying {dominant: dominant prompt, target: target prompt} + joined variants."""
    prompts = dict(joined.prompts) if joined is not None else {}
    prompts.setdefault(record.dominant.language, tuple(record.dominant.prompt))
    prompts.setdefault(record.target.language, tuple(record.target.prompt))
    return dataclasses.replace(record.target, id=record.id, variants=PromptVariants(id=record.id, prompts=prompts))


def attach_mlc_variants(
    records: Sequence[PreferencePair | ParallelPair],
    config: Any,
    path: str,
) -> tuple[list[PromptVariants | None], VariantReport]:
    """The prompt variants of each record (``None`` where it has none) and their report.

    Sources: ``config.variants_file`` (read with ``load_prompt_variants``, joined by id) or
    the records' own variants (MLC JSONL). MPO records always contribute their dominant and
    target prompts. Languages: ``config.mlc_languages`` or every language present. Examples
    with missing languages are kept (masked); the report counts them per language. A UserError
    when no example has two languages (MLC would learn nothing).
    """
    joined: list[PromptVariants] | None = None
    if config.variants_file:
        joined = load_prompt_variants(config.variants_file, config.variants_format,
                                      detect_language=config.detect_language)
    try:
        if records and isinstance(records[0], ParallelPair):
            by_id = {v.id: v for v in joined or ()}
            pairs = [_mpo_variants(r, by_id.get(r.id)) for r in records]
            unmatched = [vid for vid in by_id if vid not in {r.id for r in records}]
            out, report = attach_variants(pairs, None, config.mlc_languages)
            report.unmatched_variants = unmatched
        else:
            out, report = attach_variants(list(records), joined, config.mlc_languages)
    except UserError as exc:
        if exc.file is not None:
            raise
        raise UserError(exc.message, file=config.variants_file or path, field=exc.field) from None
    if report.n_examples and report.too_few == report.n_examples:
        raise UserError(f"MLC is on (mlc_weight {config.mlc_weight}) but no example has prompt variants in two or "
                        f"more languages ({report.summary()})", file=config.variants_file or path, field="mlc_weight")
    log.info("MLC variants (%s): %s", path, report.summary())
    return [p.variants for p in out], report


class MLCCollator:
    """``base(examples)`` + the prompt-variant batch with the fixed language columns ``languages``.

    Examples carry ``variant_input_ids: {language: ids}`` (``{}`` when they have none); missing
    languages get ``variant_index = -1``.
    """

    def __init__(self, base: Any, pad_token_id: int, languages: Sequence[str]) -> None:
        self.base, self.pad_token_id, self.languages = base, pad_token_id, list(languages)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.base(examples))
        variants = [{"variant_input_ids": e.get("variant_input_ids") or {}} for e in examples]
        batch.update(collate_variants(variants, self.pad_token_id, languages=self.languages))
        return batch
