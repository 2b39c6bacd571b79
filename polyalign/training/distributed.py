"""Multi-process and restart plumbing around ``train(config)``: resume resolution, per-rank reports.

- :func:`resolve_resume` turns ``resume_from_checkpoint`` into what ``Trainer.train`` takes.
  ``auto`` (or ``latest``) means: the newest *complete* ``checkpoint-N`` folder in
  ``output_dir`` (one whose ``trainer_state.json`` parses, the file transformers writes last
  when it saves a checkpoint, and that holds model weights: ``*.safetensors``, or for FSDP's
  ``SHARDED_STATE_DICT`` a ``pytorch_model_fsdp_0/`` folder with its ``.metadata``), or a
  fresh start when there is none. A checkpoint cut short by a
  crash (no or unreadable ``trainer_state.json``) is skipped with a warning, never loaded,
  and so is one saved by another run (its ``polyalign_run.json`` fingerprint differs:
  :mod:`polyalign.training.identity`).
- :func:`write_rank_report` writes ``<output_dir>/ranks/rank-<i>.json`` on every process:
  its index, the number of processes, accelerate's distributed type (``NO``, ``MULTI_CPU``,
  ``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``), the reference-cache status of that process
  (``hit``, ``forward_calls``) and the process's total reference forward batches. Under
  ``accelerate launch`` the reference values are computed by the main process (the others wait
  under ``main_process_first`` and then load the cache file), so every rank but 0 reports 0
  forward calls; a resumed run reports 0 on every rank.

The reference cache is shared through the file system: on several machines,
``reference_cache_dir`` must be on storage every node sees (see docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.state import AcceleratorState

from polyalign.errors import UserError
from polyalign.io import atomic_write_json
from polyalign.training import reference_cache
from polyalign.training.identity import checkpoint_matches

log = logging.getLogger("polyalign.training")

AUTO_RESUME = ("auto", "latest")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """``(complete, incomplete)`` ``checkpoint-N`` folders of ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return [], []
    found = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if p.is_dir() and (m := _CHECKPOINT.match(p.name)))
    complete, incomplete = [], []
    for _, path in found:
        (complete if _checkpoint_is_complete(path) else incomplete).append(path)
    return complete, incomplete


def _checkpoint_is_complete(path: Path) -> bool:
    state = path / "trainer_state.json"
    if not state.is_file():
        return False
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return True
    # FSDP with SHARDED_STATE_DICT writes no top-level weights file, only torch.distributed.checkpoint
    # folders (pytorch_model_fsdp_0/), whose .metadata the coordinator writes after every shard.
    return any(p.is_dir() and (p / ".metadata").is_file() for p in path.glob("pytorch_model_fsdp_*"))


def resolve_resume(resume: Any, output_dir: str | Path, fingerprint: str | None = None,
                   identity: dict[str, Any] | None = None) -> str | bool | None:
    """What ``Trainer.train(resume_from_checkpoint=...)`` should get for the setting ``resume``.

    ``None``/``False``: start fresh. ``auto``/``latest``: the newest complete checkpoint in
    ``output_dir`` saved by this run (``fingerprint``, see :mod:`polyalign.training.identity`)
    or None; checkpoints of another run are skipped with a warning. A path: that checkpoint,
    which must exist, be complete and (with a fingerprint) come from this run, else a UserError.
    """
    if resume is None or resume is False or resume == "":
        return None
    if isinstance(resume, str) and resume.lower() in AUTO_RESUME:
        complete, incomplete = complete_checkpoints(output_dir)
        newer = [p for p in incomplete if not complete or _step(p) > _step(complete[-1])]
        for path in newer:
            log.warning("skipping incomplete checkpoint %s (no readable trainer_state.json or no model weights)", path)
        if fingerprint is not None:
            mine = []
            for path in complete:
                ok, why = checkpoint_matches(path, fingerprint, identity)
                if ok:
                    mine.append(path)
                else:
                    log.warning("not resuming from %s: %s", path, why)
            complete = mine
        if not complete:
            log.info("resume: auto: no complete checkpoint in %s, starting fresh", output_dir)
            return None
        log.info("resume: auto: resuming from %s", complete[-1])
        return str(complete[-1])
    if resume is True:
        return True
    path = Path(str(resume))
    if not path.is_dir():
        raise UserError("no such checkpoint folder (use 'auto' to pick the latest one in output_dir)",
                        file=path, field="resume_from_checkpoint")
    if not _checkpoint_is_complete(path):
        raise UserError("incomplete checkpoint: trainer_state.json missing or unreadable, or no model weights",
                        file=path, field="resume_from_checkpoint")
    if fingerprint is not None:
        ok, why = checkpoint_matches(path, fingerprint, identity)
        if not ok:
            raise UserError(f"checkpoint does not match this run: {why}", file=path, field="resume_from_checkpoint")
    return str(path)


def _step(path: Path) -> int:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else -1


def ensure_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir`` and check a file can be created in it, before any model is loaded.

    A path under a regular file, a read-only file system or a folder without write permission
    is a :class:`UserError` naming the folder (field ``output_dir``) instead of a traceback
    from deep inside the Trainer after minutes of work.
    """
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".polyalign-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write the output folder: {exc.strerror or exc}", file=path,
                        field="output_dir") from None
    return path


def apply_ddp_defaults(config: Any) -> None:
    """``ddp_find_unused_parameters: false`` unless the recipe sets it.

    transformers turns DDP's unused-parameter search on by default (when gradient
    checkpointing is off). That search marks every parameter the *forward call* does not reach
    as ready right after the forward; the MLC extractor (and the LM head on the distributed
    path of :func:`~polyalign.training.forward.model_sequence_logps`) are used after the forward,
    so their gradients then arrive a second time and DDP fails with "Expected to mark a
    variable ready only once". Every polyalign objective gives every trainable parameter a
    gradient on every step (the extractor a zero one on steps without the MLC term), so the
    search is never needed; switching it off is also faster.
    """
    if getattr(config, "ddp_find_unused_parameters", False) is None:
        config.ddp_find_unused_parameters = False


def process_index() -> tuple[int, int]:
    """``(index, count)`` of this process (``(0, 1)`` outside a distributed launch)."""
    state = PartialState()
    return int(state.process_index), int(state.num_processes)


def _distributed_type() -> str | None:
    """accelerate's distributed type of this run (``NO``, ``MULTI_CPU``, ``MULTI_GPU``, ``FSDP``, ``DEEPSPEED``)."""
    try:
        kind = AcceleratorState().distributed_type
    except (AttributeError, ValueError):  # no Accelerator was created in this process
        return None
    return str(getattr(kind, "value", kind))


def write_rank_report(output_dir: str | Path, run_info: dict[str, Any]) -> Path:
    """Write ``<output_dir>/ranks/rank-<i>.json`` for this process (see the module docstring)."""
    index, count = process_index()
    report = {
        "process_index": index,
        "num_processes": count,
        "distributed_type": _distributed_type(),
        "reference_cache": run_info.get("reference_cache", {}),
        "reference_forward_calls": reference_cache.REFERENCE_FORWARD_CALLS,
        "resumed_from": run_info.get("resumed_from"),
        "train_loss": run_info.get("metrics", {}).get("train_loss"),
    }
    path = Path(output_dir) / "ranks" / f"rank-{index}.json"
    atomic_write_json(path, report)
    return path
