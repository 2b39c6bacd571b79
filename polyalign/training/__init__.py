"""Training: config (TrainingArguments + YAML), reference cache, objective, thin Trainer, run.

Public entry points: :func:`polyalign.training.run.train`,
:func:`polyalign.training.config.load_config`, :class:`polyalign.training.config.PolyalignConfig`,
:class:`polyalign.training.trainer.PolyalignTrainer`. Imports are lazy so that importing this
package (e.g. for the MLC extractor) does not pull in transformers' Trainer.
"""

from __future__ import annotations

from polyalign._lazy import lazy_exports

_EXPORTS = {
    "PolyalignConfig": "polyalign.training.config",
    "load_config": "polyalign.training.config",
    "PolyalignTrainer": "polyalign.training.trainer",
    "train": "polyalign.training.run",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
