"""Integrations with third-party trainers.

- :mod:`polyalign.integrations.trl_mlc`: ``MLCDPOTrainer``, TRL 1.16's ``DPOTrainer`` plus the
  MLC consistency term (docs/methods.md section 2). Imported on demand, so ``import polyalign``
  never imports TRL.
"""

from __future__ import annotations

from polyalign._lazy import lazy_exports

_EXPORTS = {name: "polyalign.integrations.trl_mlc"
            for name in ("MLCConfig", "MLCDPOTrainer", "MLCDataCollator", "trl_rows")}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
