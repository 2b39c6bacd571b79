"""Training: config (TrainingArguments + YAML), reference cache, objective, thin Trainer, run.

Public entry points: :func:`polyalign.training.run.train`,
:func:`polyalign.training.config.load_config`, :class:`polyalign.training.config.PolyalignConfig`,
:class:`polyalign.training.trainer.PolyalignTrainer`. Imports are lazy so that importing this
package (e.g. for the MLC extractor) does not pull in transformers' Trainer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PolyalignConfig", "PolyalignTrainer", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("PolyalignConfig", "load_config"):
        from polyalign.training import config

        return getattr(config, name)
    if name == "PolyalignTrainer":
        from polyalign.training.trainer import PolyalignTrainer

        return PolyalignTrainer
    if name == "train":
        from polyalign.training.run import train

        return train
    raise AttributeError(name)
