"""Evaluation: benchmark registry, generation with a resumable store, judges, metrics, the eval run.

``evaluate(EvalConfig(benchmark=..., out_dir=...), model=...)`` runs a benchmark end to end (see
:mod:`polyalign.evaluation.run`; settings: :mod:`polyalign.evaluation.config`); ``suites="safety,utility"``
adds utility tasks and over-refusal to the same ``results.json`` (see :mod:`polyalign.evaluation.suites`).
Names are imported lazily so that ``import polyalign.evaluation`` stays cheap (no torch / transformers
until used).
"""

from __future__ import annotations

from polyalign._lazy import lazy_exports

_EXPORTS = {
    "BenchmarkSpec": "polyalign.evaluation.benchmarks",
    "get_benchmark": "polyalign.evaluation.benchmarks",
    "list_benchmarks": "polyalign.evaluation.benchmarks",
    "load_benchmark": "polyalign.evaluation.benchmarks",
    "GenerationSettings": "polyalign.evaluation.generation",
    "HFGenerator": "polyalign.evaluation.generation",
    "VLLMGenerator": "polyalign.evaluation.generation_vllm",
    "EvalConfig": "polyalign.evaluation.config",
    "load_eval_config": "polyalign.evaluation.config",
    "evaluate": "polyalign.evaluation.run",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
