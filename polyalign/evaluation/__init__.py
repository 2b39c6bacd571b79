"""Evaluation: benchmark registry, generation with a resumable store, judges, metrics, the eval run.

``evaluate(model_or_path, benchmark, out_dir=...)`` runs a benchmark end to end (see
:mod:`polyalign.evaluation.run`); ``suites="safety,utility"`` adds utility tasks and
over-refusal to the same ``results.json`` (see :mod:`polyalign.evaluation.suites`). Names are imported lazily so that ``import
polyalign.evaluation`` stays cheap (no torch / transformers until used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BenchmarkSpec": "polyalign.evaluation.benchmarks",
    "get_benchmark": "polyalign.evaluation.benchmarks",
    "list_benchmarks": "polyalign.evaluation.benchmarks",
    "load_benchmark": "polyalign.evaluation.benchmarks",
    "GenerationSettings": "polyalign.evaluation.generation",
    "HFGenerator": "polyalign.evaluation.generation",
    "VLLMGenerator": "polyalign.evaluation.generation",
    "JsonlStore": "polyalign.evaluation.store",
    "evaluate": "polyalign.evaluation.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polyalign.evaluation' has no attribute {name!r}")
