"""``train(config)``: model, optional LoRA, data, reference cache, Trainer, saved run.

The saved run is ``<output_dir>/final/`` (written into a temporary folder and renamed, so it
is complete or absent):

- the model (``model.safetensors`` + config) or, with LoRA, the adapters
  (``adapter_model.safetensors`` + ``adapter_config.json``, loadable with PEFT);
- the tokenizer (with its chat template);
- with MLC (``mlc_weight > 0``): ``mlc_extractor/`` (``model.safetensors`` + ``config.json``,
  load with :meth:`polyalign.training.extractor.MLCExtractor.load`), never inside the model's
  weights; ``run_info.json`` then also holds ``mlc`` (settings and the variant report: missing
  languages per language, examples with fewer than two);
- ``polyalign_config.yaml``: the resolved configuration;
- ``run_info.json``: data fingerprints (:func:`polyalign.io.file_fingerprint`), what data was
  skipped and why, the reference-cache status and the final metrics.

Trainer checkpoints (``checkpoint-N``) go to ``output_dir`` as usual; ``resume_from_checkpoint``
works as in transformers, but only from checkpoints of this run. ``output_dir`` belongs to one
run (``polyalign_run.json``, :mod:`polyalign.training.identity`): a non-empty folder of another
run is refused unless ``overwrite_output_dir: true``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from polyalign.data.collate import Collator
from polyalign.errors import UserError
from polyalign.io import atomic_write_json, atomic_write_text, fsync_dir
from polyalign.training.config import PolyalignConfig
from polyalign.training.datasets import ExampleDataset, load_training_data, tokenize_settings
from polyalign.training.reference_cache import (
    cache_key,
    default_cache_dir,
    model_fingerprint,
    needs_reference,
    prepare_reference,
)

log = logging.getLogger("polyalign.training")


def load_policy(config: PolyalignConfig) -> tuple[Any, Any]:
    """The model to train and its tokenizer; LoRA adapters added when ``use_lora``."""
    from polyalign.models import load_model_and_tokenizer

    if not config.model_name_or_path:
        raise UserError("model_name_or_path is required", field="model_name_or_path")
    if config.load_in_4bit:
        model, tokenizer = _load_4bit(config)
    else:
        model, tokenizer = load_model_and_tokenizer(config.model_name_or_path, dtype=config.model_dtype)
    if config.use_lora:
        from peft import LoraConfig, get_peft_model

        if config.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    elif config.load_in_4bit:
        raise UserError("load_in_4bit needs use_lora: true (QLoRA)", field="load_in_4bit")
    return model, tokenizer


def _load_4bit(config: PolyalignConfig) -> tuple[Any, Any]:
    """QLoRA base model: 4-bit NF4 weights, bf16 compute (needs bitsandbytes and a GPU)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("load_in_4bit needs the bitsandbytes package (and a CUDA GPU)", field="load_in_4bit") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    from polyalign.models import pretrained_source

    where, local_only = pretrained_source(config.model_name_or_path)  # never a download unless opted in
    model = AutoModelForCausalLM.from_pretrained(where, quantization_config=quant, trust_remote_code=False,
                                                 use_safetensors=True, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=local_only)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def default_checkpointing_mode(config: PolyalignConfig) -> None:
    """Reentrant activation checkpointing when it is on and the config does not choose a mode.

    Chosen by measurement (issue 19, ``polyalign train`` against the released MPO trainer on the
    same data, tiny Llama, batch 4 x 1024, CPU fp32): with transformers 5's default,
    non-reentrant checkpointing, the run's peak memory was 4.27 GiB, 1.18x the released
    trainer's (which forces reentrant); with ``use_reentrant: true`` 0.94x of it, same losses
    (a standalone 8 x 1024 forward+backward: 2.4 vs 1.95 GiB). ``benchmarks/bench_mpo.py``
    measures both modes (``polyalign_gc``, ``polyalign_gc_nonreentrant``; same losses).
    ``activation_checkpointing_kwargs: {use_reentrant: false}`` (or the deprecated
    ``gradient_checkpointing_kwargs``) keeps transformers' default. Distributed runs (DDP,
    FSDP, DeepSpeed) are left alone: reentrant checkpointing interacts with their gradient
    hooks and is not what was measured.
    """
    if not config.activation_checkpointing or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    kwargs = dict(config.activation_checkpointing_kwargs or {})
    if "use_reentrant" in kwargs:
        return
    kwargs["use_reentrant"] = True
    # TrainingArguments mirrors the deprecated name; keep both equal as its __post_init__ does.
    config.activation_checkpointing_kwargs = config.gradient_checkpointing_kwargs = kwargs


def _reference_factory(config: PolyalignConfig, policy: Any) -> Any:
    """A context manager yielding the reference model, entered only on a cache miss."""

    @contextlib.contextmanager
    def factory() -> Iterator[Any]:
        if config.ref_model_name_or_path:
            from polyalign.models import load_model_and_tokenizer

            reference, _ = load_model_and_tokenizer(config.ref_model_name_or_path, dtype=config.model_dtype)
            reference.to(next(policy.parameters()).device)
            try:
                yield reference
            finally:
                del reference
                gc.collect()
        elif hasattr(policy, "disable_adapter"):
            # LoRA: the reference is the base model with the adapters switched off, never a copy.
            with policy.disable_adapter():
                yield policy
        else:
            # Full fine-tuning: before the first step the policy *is* the reference.
            yield policy

    return factory


def _attach_reference(config: PolyalignConfig, model: Any, tokenizer: Any, datasets: dict[str, Any],
                      reports: dict[str, Any]) -> dict[str, Any]:
    """Cached reference values for every dataset (computed on the main process first)."""
    from accelerate import PartialState

    status: dict[str, Any] = {}
    if not needs_reference(config.method):
        return status
    cache_dir = Path(config.reference_cache_dir) if config.reference_cache_dir else default_cache_dir()
    model_fp = model_fingerprint(config.ref_model_name_or_path or config.model_name_or_path)
    device = config.device
    if next(model.parameters()).device != device and not config.load_in_4bit:
        model.to(device)
    for name, dataset in datasets.items():
        key = cache_key(model_fp, config.model_dtype, [reports[name].fingerprint],
                        tokenize_settings(config).to_dict(), config.method, config.retain_pooling, dataset)
        with PartialState().main_process_first():
            status[name] = prepare_reference(
                dataset, config.method, key, cache_dir, _reference_factory(config, model),
                pad_token_id=tokenizer.pad_token_id, batch_size=config.per_device_eval_batch_size,
                pooling=config.retain_pooling, chunk_size=config.logps_chunk_size,
                info={"model": config.ref_model_name_or_path or config.model_name_or_path, "data": reports[name].path})
    return status


def train(config: PolyalignConfig) -> dict[str, Any]:
    """Run one training job end to end; returns the ``run_info`` dict also saved with the run."""
    from transformers import set_seed

    from polyalign.training.trainer import PolyalignTrainer

    if not config.train_file:
        raise UserError("train_file is required", field="train_file")
    from polyalign.training.distributed import apply_ddp_defaults, ensure_output_dir
    from polyalign.training.identity import RUN_FILE, claim_output_dir, fingerprint_callback, record_run

    ensure_output_dir(config.output_dir)  # fail before loading anything when it is not writable
    # Another run's folder is refused (or, with overwrite_output_dir, its checkpoints ignored).
    run_fp, run_id_settings = claim_output_dir(config)
    apply_ddp_defaults(config)
    set_seed(config.seed)
    model, tokenizer = load_policy(config)
    train_ds, train_report = load_training_data(config, tokenizer, config.train_file, config.train_format,
                                                limit=config.max_examples)
    datasets: dict[str, ExampleDataset] = {"train": train_ds}
    reports = {"train": train_report}
    if config.eval_file:
        eval_ds, eval_report = load_training_data(config, tokenizer, config.eval_file, config.eval_format)
        datasets["eval"], reports["eval"] = eval_ds, eval_report
    reference = _attach_reference(config, model, tokenizer, datasets, reports)
    eval_dataset = datasets["eval"].by_language() if "eval" in datasets else None
    collator: Any = Collator(config.method, tokenizer.pad_token_id)
    if config.mlc_enabled:
        model, collator = _mlc_setup(config, model, collator, tokenizer, reports)
    default_checkpointing_mode(config)
    trainer = PolyalignTrainer(
        model=model, args=config, train_dataset=train_ds, eval_dataset=eval_dataset,
        data_collator=collator, processing_class=tokenizer,
    )
    from polyalign.training import callbacks, distributed

    trainer.add_callback(fingerprint_callback(run_fp, Path(config.output_dir) / RUN_FILE))
    resume = distributed.resolve_resume(config.resume_from_checkpoint, config.output_dir, run_fp, run_id_settings)
    record_run(config, run_fp, run_id_settings)  # data, model and settings are good: the run owns output_dir now
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except callbacks.NonFiniteLossError as exc:
        raise callbacks.save_nonfinite_state(trainer, config.output_dir, exc) from None
    metrics: dict[str, Any] = dict(result.metrics)
    if eval_dataset:
        for lang, dataset in eval_dataset.items():
            metrics.update(trainer.evaluate(dataset, metric_key_prefix=f"eval_{lang}"))
    run_info = {
        "method": config.method,
        "model": config.model_name_or_path,
        "data": {name: report.to_dict() for name, report in reports.items()},
        "reference_cache": reference,
        "metrics": metrics,
        "log_history": trainer.state.log_history,
    }
    run_info["resumed_from"] = resume
    run_info["run_fingerprint"] = run_fp
    if config.mlc_enabled:
        run_info["mlc"] = _mlc_info(config, reports)
    run_info["saved_to"] = str(save_run(trainer, config, run_info))
    distributed.write_rank_report(config.output_dir, run_info)
    return run_info


def _mlc_setup(config: PolyalignConfig, model: Any, collator: Any, tokenizer: Any,
               reports: dict[str, Any]) -> tuple[Any, Any]:
    """The policy wrapped with a fresh MLC extractor (trained, synced and checkpointed with it;
    saved beside it) and a collator adding the prompt-variant batch (train languages first)."""
    from polyalign.training.mlc_policy import MLCCollator, wrap_policy

    languages: list[str] = []
    for report in reports.values():
        languages += [lang for lang in report.variants.languages if lang not in languages]
    for name, report in reports.items():
        log.info("MLC variants (%s): %s", name, report.variants.summary())
    return wrap_policy(model, config), MLCCollator(collator, tokenizer.pad_token_id, languages)


def _mlc_info(config: PolyalignConfig, reports: dict[str, Any]) -> dict[str, Any]:
    """Settings and per-dataset variant reports of the MLC term, for ``run_info.json``."""
    settings = {k: getattr(config, k) for k in ("mlc_weight", "mlc_tau", "mlc_every", "mlc_layer", "mlc_dim",
                                                "mlc_scale", "mlc_languages", "variants_file", "variants_format")}
    return {"settings": settings, "extractor_dir": "mlc_extractor",
            "variants": {name: report.variants.to_dict() for name, report in reports.items()}}


def save_run(trainer: Any, config: PolyalignConfig, run_info: dict[str, Any]) -> Path:
    """Write ``<output_dir>/final`` atomically (temporary folder, then rename)."""
    final = Path(config.output_dir) / "final"
    tmp = Path(config.output_dir) / f".final.tmp-{os.getpid()}"
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if trainer.is_fsdp_enabled and plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        # Under SHARDED_STATE_DICT (accelerate's default for FSDP2) Trainer.save_model writes no
        # weights at all: final/ must hold a loadable model, so gather it (checkpoints stay sharded).
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(tmp))  # every process calls it (ZeRO-3, FSDP gather); only the main one writes
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; polyalign_config.yaml replaces it
    if not trainer.is_world_process_zero():
        return final
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(tmp))
    atomic_write_text(tmp / "polyalign_config.yaml", config.to_yaml())
    atomic_write_json(tmp / "run_info.json", _jsonable(run_info))
    marker = Path(config.output_dir) / "polyalign_run.json"
    if marker.is_file():  # final/ carries the fingerprint of the run that made it
        shutil.copyfile(marker, tmp / marker.name)
    old = final.with_name(f".final.old-{os.getpid()}")
    if final.exists():
        # claim_output_dir let this run own output_dir: the previous final/ is this run's own
        # (a rerun or a longer run) or overwrite_output_dir was set.
        log.info("replacing %s with this run's model", final)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)  # the rename itself must be durable before the old model goes
    shutil.rmtree(old, ignore_errors=True)
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
