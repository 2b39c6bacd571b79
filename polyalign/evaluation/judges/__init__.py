"""Safety judges and toxicity scorers, one module each, behind two interfaces.

- :class:`Judge` (``judge(items: list[JudgeInput]) -> list[Judgment]``): ``refusal``,
  ``llama_guard``, ``polyguard``, ``openai``.
- :class:`ToxicityScorer` (``score(texts, languages) -> list[float | None]``):
  ``perspective``, ``classifier``.

``get_judge(name, **options)`` / ``get_scorer(name, **options)`` build them by name; the
modules are imported lazily so the offline refusal judge never imports torch or httpx.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from polyalign.errors import UserError
from polyalign.evaluation.judges.base import (
    LABELS,
    Judge,
    JudgeInput,
    Judgment,
    ToxicityScore,
    ToxicityScorer,
)

# name -> (module, class)
JUDGES: dict[str, tuple[str, str]] = {
    "refusal": ("polyalign.evaluation.judges.refusal", "RefusalMatcher"),
    "llama_guard": ("polyalign.evaluation.judges.llama_guard", "LlamaGuardJudge"),
    "polyguard": ("polyalign.evaluation.judges.polyguard", "PolyGuardJudge"),
    "openai": ("polyalign.evaluation.judges.openai_judge", "OpenAIJudge"),
    "qwen3guard": ("polyalign.evaluation.judges.qwen3guard", "Qwen3GuardJudge"),
    "qwen3guard_api": ("polyalign.evaluation.judges.qwen3guard_api", "Qwen3GuardAPIJudge"),
}
SCORERS: dict[str, tuple[str, str]] = {
    "perspective": ("polyalign.evaluation.judges.perspective", "PerspectiveScorer"),
    "classifier": ("polyalign.evaluation.judges.classifier", "ClassifierScorer"),
}
_ALIASES = {"llama-guard": "llama_guard", "llamaguard": "llama_guard", "llama_guard_3": "llama_guard",
            "llm": "openai", "gpt": "openai", "openai_compatible": "openai", "keyword": "refusal",
            "refusal_matcher": "refusal", "poly_guard": "polyguard",
            "qwen3_guard": "qwen3guard", "qwen3guard_gen": "qwen3guard", "qwen3_guard_api": "qwen3guard_api",
            "hf_classifier": "classifier"}


def _build(table: dict[str, tuple[str, str]], kind: str, name: str, options: dict[str, Any]) -> Any:
    key = _ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
    if key not in table:
        raise UserError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}", field=kind)
    module, cls = table[key]
    factory = getattr(importlib.import_module(module), cls)
    try:  # an option the class does not take is a user error, not a crash
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise UserError(f"bad options for {kind} {key!r}: {exc}", field=kind) from None
    return factory(**options)


def get_judge(name: str, **options: Any) -> Judge:
    """Build the judge ``name`` (see :data:`JUDGES`) with keyword ``options``."""
    return _build(JUDGES, "judge", name, options)


def get_scorer(name: str, **options: Any) -> ToxicityScorer:
    """Build the toxicity scorer ``name`` (see :data:`SCORERS`) with keyword ``options``."""
    return _build(SCORERS, "scorer", name, options)


__all__ = ["JUDGES", "LABELS", "SCORERS", "Judge", "JudgeInput", "Judgment", "ToxicityScore",
           "ToxicityScorer", "get_judge", "get_scorer"]
