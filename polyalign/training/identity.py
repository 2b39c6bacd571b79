"""Which run an ``output_dir`` and its checkpoints belong to.

A run's identity is what decides the weights it learns: the polyalign settings (method,
objective, data handling, LoRA...), the optimiser settings of the Trainer, the *content* of
the data files and of the starting (and reference) model. It leaves out where things are
written, how often they are logged or saved, and how long training goes on (``max_steps``,
``num_train_epochs``), so a crashed run resumes and a finished one can be extended.

- ``<output_dir>/polyalign_run.json`` records the identity of the run that owns the folder;
  every checkpoint it saves gets a copy (:class:`RunFingerprintCallback`).
- :func:`claim_output_dir` refuses a non-empty ``output_dir`` that belongs to another run
  (or to none polyalign knows) unless ``overwrite_output_dir: true``; then that run's
  checkpoints are never resumed from and its ``final/`` is replaced.
- :func:`checkpoint_matches` tells whether a checkpoint was written by this run; resume
  (:func:`polyalign.training.distributed.resolve_resume`) takes only those.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.io import atomic_write_json, file_fingerprint, text_fingerprint

log = logging.getLogger("polyalign.training")

RUN_FILE = "polyalign_run.json"
# TrainingArguments fields that change what is learned (the rest: logging, saving, devices).
TRAINER_FIELDS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                  "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "data_seed", "optim",
                  "optim_args", "bf16", "fp16")
# polyalign fields that do not: where the reference cache lives, the overwrite switch itself.
NOT_IDENTITY = ("reference_cache_dir", "overwrite_output_dir")
DATA_FIELDS = ("train_file", "eval_file", "variants_file")
MODEL_FIELDS = ("model_name_or_path", "ref_model_name_or_path")


def _own_fields(config: Any) -> list[str]:
    import dataclasses

    from transformers import TrainingArguments

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f.name for f in dataclasses.fields(config) if f.name not in base and f.name not in NOT_IDENTITY]


def run_identity(config: Any) -> dict[str, Any]:
    """The settings and contents that decide a run's weights (see the module docstring)."""
    from polyalign.evaluation.fingerprints import source_identity
    from polyalign.training.config import _plain

    values: dict[str, Any] = {}
    for name in [*_own_fields(config), *TRAINER_FIELDS]:
        value = getattr(config, name, None)
        if name in DATA_FIELDS and value:
            value = file_fingerprint(value) if Path(value).exists() else f"missing:{value}"
        elif name in MODEL_FIELDS and value:
            value = source_identity(value)  # content hash, cached: a retrained folder is another model
        values[name] = _plain(value)
    return values


def run_fingerprint(identity: dict[str, Any]) -> str:
    return text_fingerprint(identity)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if not old or not isinstance(old.get("identity"), dict):
        return "it has no readable polyalign run fingerprint"
    stored = old["identity"]
    for key in sorted(set(stored) | set(new)):
        if stored.get(key) != new.get(key):
            return (f"{key}: {json.dumps(stored.get(key), default=str)[:120]} there, "
                    f"{json.dumps(new.get(key), default=str)[:120]} now")
    return "its fingerprint differs"


def checkpoint_matches(checkpoint: str | Path, fingerprint: str,
                       identity: dict[str, Any] | None = None) -> tuple[bool, str]:
    """``(matches, why not)`` for a checkpoint folder and this run's fingerprint (and identity)."""
    data = _read(Path(checkpoint) / RUN_FILE)
    if data is None:
        return False, "it has no polyalign run fingerprint (saved by another tool or an older polyalign)"
    if data.get("fingerprint") != fingerprint:
        return False, f"it was saved by another run ({_difference(data, identity or {})})"
    return True, ""


def claim_output_dir(config: Any) -> tuple[str, dict[str, Any]]:
    """Check ``output_dir`` belongs to this run (or is empty); nothing is written yet.

    Returns ``(fingerprint, identity)``; :func:`record_run` writes them once the run really
    starts, so a start that fails on bad data or settings leaves no claim behind (the user's
    corrected rerun is not refused as "another run").

    A non-empty folder of another run, or one without a readable ``polyalign_run.json``,
    is a :class:`UserError` unless ``overwrite_output_dir`` is set.
    """
    out = Path(config.output_dir)
    identity = run_identity(config)
    fingerprint = run_fingerprint(identity)
    marker = out / RUN_FILE
    existing = _read(marker) if marker.exists() else None
    entries = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    ours = existing is not None and existing.get("fingerprint") == fingerprint
    if entries and not ours:
        why = _difference(existing, identity)
        if not getattr(config, "overwrite_output_dir", False):
            raise UserError(f"output_dir holds another run ({why}); use another output_dir, or set "
                            "overwrite_output_dir: true to replace it (its checkpoints are then never resumed from)",
                            file=out, field="output_dir")
        log.warning("overwrite_output_dir: %s holds another run (%s); replacing it", out, why)
    return fingerprint, identity


def record_run(config: Any, fingerprint: str, identity: dict[str, Any]) -> None:
    """Record this run in ``output_dir`` (main process only): from here on it owns the folder."""
    if _is_main_process():
        atomic_write_json(Path(config.output_dir) / RUN_FILE, {"fingerprint": fingerprint, "identity": identity})


def _is_main_process() -> bool:
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def fingerprint_callback(fingerprint: str, identity_file: Path) -> Any:
    """A TrainerCallback copying the run fingerprint into every checkpoint it saves."""
    from transformers import TrainerCallback

    class RunFingerprintCallback(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    data = _read(identity_file) or {"fingerprint": fingerprint}
                    atomic_write_json(folder / RUN_FILE, data)
            return control

    return RunFingerprintCallback()
