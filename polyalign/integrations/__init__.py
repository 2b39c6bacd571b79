"""Integrations with third-party trainers.

- :mod:`polyalign.integrations.trl_mlc`: ``MLCDPOTrainer``, TRL 1.16's ``DPOTrainer`` plus the
  MLC consistency term (METHODS.md section 2). Imported on demand, so ``import polyalign``
  never imports TRL.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"MLCConfig": "trl_mlc", "MLCDPOTrainer": "trl_mlc", "MLCDataCollator": "trl_mlc", "trl_rows": "trl_mlc"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"polyalign.integrations.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'polyalign.integrations' has no attribute {name!r}")
