"""Guard rails for a training run: stop on a non-finite loss, save what is needed to debug it.

:func:`check_finite_loss` is called by ``PolyalignTrainer.compute_loss`` on every training
micro-batch, before the backward pass (so the weights are still those that produced the bad
loss). A NaN or infinite loss raises :class:`NonFiniteLossError` naming the optimizer step
(1-based: the step being computed) and the ids of the examples in the batch. With several
processes the finiteness flag is summed over all of them first (one scalar all-reduce), so
every rank stops at the same step instead of the healthy ranks hanging in the gradient
all-reduce; the ids of every bad batch are gathered into the message.

``train`` then calls :func:`save_nonfinite_state`: the weights as they were
(``<output_dir>/nonfinite-step-<N>/``, safetensors, loadable like any checkpoint) plus
``nonfinite.json`` (step, loss, example ids, trainer log history), and the CLI prints the error
as one line and exits with code 2 (:class:`NonFiniteLossError` is a
:class:`~polyalign.errors.UserError`: the usual causes are the data, the learning rate or a
broken checkpoint).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from polyalign.errors import UserError
from polyalign.io import atomic_write_json


class NonFiniteLossError(UserError):
    """A NaN/inf training loss at optimizer ``step`` on examples ``ids``."""

    def __init__(self, step: int, loss: float, ids: list[str], saved_to: str | None = None) -> None:
        self.step, self.loss, self.ids, self.saved_to = step, loss, list(ids), saved_to
        shown = ", ".join(self.ids[:20]) + (f" (+{len(self.ids) - 20} more)" if len(self.ids) > 20 else "")
        message = f"non-finite loss ({loss}) at step {step} on examples [{shown}]; training stopped"
        if saved_to:
            message += f"; weights and state saved to {saved_to}"
        super().__init__(message, field="loss")


def batch_ids(inputs: dict[str, Any]) -> list[str]:
    """Example ids of a collated batch (preference, MPO or variant batch)."""
    ids = inputs.get("ids")
    if ids is None and isinstance(inputs.get("target"), dict):
        ids = inputs["target"].get("ids")
    return [str(i) for i in (ids or [])]


def check_finite_loss(trainer: Any, loss: torch.Tensor, inputs: dict[str, Any]) -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` (on any process) is NaN or infinite."""
    finite = bool(torch.isfinite(loss.detach()).all())
    accelerator = getattr(trainer, "accelerator", None)
    step = int(trainer.state.global_step) + 1
    if accelerator is None or accelerator.num_processes <= 1:
        if not finite:
            raise NonFiniteLossError(step, float(loss.detach().float().reshape(-1)[0]), batch_ids(inputs))
        return
    flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
    if float(accelerator.reduce(flag, reduction="sum").item()) == 0.0:
        return
    mine = [] if finite else batch_ids(inputs)
    bad = gather_object([(float(loss.detach().float().reshape(-1)[0]), mine)])
    values = [v for v, ids in bad if not math.isfinite(v)]
    ids = [i for _, part in bad for i in part]
    raise NonFiniteLossError(step, values[0] if values else float("nan"), ids)


def save_nonfinite_state(trainer: Any, output_dir: str | Path, error: NonFiniteLossError) -> NonFiniteLossError:
    """Save the weights and a JSON description next to the checkpoints; the error, naming the folder."""
    folder = Path(output_dir) / f"nonfinite-step-{error.step}"
    trainer.save_model(str(folder))  # every process calls it (ZeRO-3 gathers); the main one writes
    (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle; not needed to inspect the weights
    if trainer.is_world_process_zero():
        atomic_write_json(folder / "nonfinite.json", {
            "step": error.step, "loss": str(error.loss), "example_ids": error.ids,
            "log_history": trainer.state.log_history,
        })
    return NonFiniteLossError(error.step, error.loss, error.ids, saved_to=str(folder))
