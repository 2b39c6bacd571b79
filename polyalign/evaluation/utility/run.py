"""Utility evaluation entry points: one task, several tasks, and over-refusal.

``evaluate_utility(model, tokenizer, task)`` loads the task's items, scores them (log-
likelihood multiple choice or greedy exact match) and returns

    {"task": <task fields>, "kind": ..., "per_language": {lang: {metric: value}},
     "summary": {metric: {"mean", "std", "min", "max", "n_languages"}}, "n_items": int,
     "items": [per-item rows]}

``summary`` is :func:`polyalign.evaluation.metrics.summarize` (population std over the
languages), so utility and safety results read the same way. ``over_refusal`` measures the
share of benign prompts a model refuses, per language, with a judge from
:mod:`polyalign.evaluation.judges` (default: the offline refusal-phrase matcher).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.evaluation.utility.tasks import UtilityTask, load_items, resolve_task


def summarize(per_language: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Across-language summary: the evaluation package's ``summarize`` (same definition here
    as a fallback: mean, population std, min, max, n_languages over numeric values)."""
    try:
        from polyalign.evaluation.metrics import summarize as shared
    except ImportError:  # pragma: no cover - the metrics module ships with polyalign
        shared = None
    if shared is not None:
        return shared(per_language)
    values: dict[str, list[float]] = {}
    for metrics in per_language.values():  # pragma: no cover
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
                values.setdefault(name, []).append(float(value))
    return {name: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "min": min(v), "max": max(v),
                   "n_languages": len(v)} for name, v in values.items()}  # pragma: no cover


def _limit_per_language(items: list[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` items of each language, in file order."""
    if limit is None:
        return items
    if limit < 1:
        raise UserError("limit must be >= 1", field="limit")
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        if seen.get(item.language, 0) < limit:
            seen[item.language] = seen.get(item.language, 0) + 1
            kept.append(item)
    return kept


def _load(model: Any, tokenizer: Any, dtype: Any, device: Any) -> tuple[Any, Any]:
    if isinstance(model, (str, Path)):
        from polyalign.models import load_model_and_tokenizer

        loaded, loaded_tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device)
        return loaded, tokenizer or loaded_tokenizer
    if tokenizer is None:
        raise UserError("an in-memory model needs its tokenizer", field="tokenizer")
    return model, tokenizer


def evaluate_utility(
    model: Any,
    tokenizer: Any,
    task_or_path: UtilityTask | str | Path,
    *,
    languages: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    dtype: Any = None,
    device: Any = None,
    keep_items: bool = True,
    **task_overrides: Any,
) -> dict[str, Any]:
    """Evaluate one utility task (see the module docstring for the result).

    ``model`` is a loaded causal LM (with ``tokenizer``) or a model folder / cached hub id
    (loaded with :func:`polyalign.models.load_model_and_tokenizer`). ``languages`` keeps
    only those languages; ``limit`` keeps the first ``limit`` items of each language.
    ``task_overrides`` replace task fields (``template=``, ``target_delimiter=``, ...).
    """
    from polyalign.evaluation.utility.exact_match import evaluate_exact_match
    from polyalign.evaluation.utility.multiple_choice import evaluate_multiple_choice

    task = resolve_task(task_or_path, **task_overrides)
    items = _limit_per_language(load_items(task, languages=languages), limit)
    model, tokenizer = _load(model, tokenizer, dtype, device)
    if task.kind == "multiple_choice":
        scored = evaluate_multiple_choice(model, tokenizer, task, items, batch_size=batch_size, max_length=max_length)
    else:
        scored = evaluate_exact_match(model, tokenizer, task, items, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens)
    result = {"task": task.to_dict(), "kind": task.kind, "per_language": scored["per_language"],
              "summary": summarize(scored["per_language"]), "n_items": len(items)}
    if keep_items:
        result["items"] = scored["items"]
    return result


def evaluate_utility_suite(model: Any, tokenizer: Any, tasks: Sequence[UtilityTask | str | Path],
                           **options: Any) -> dict[str, Any]:
    """Several tasks; ``per_language`` merges them as ``{lang: {"<task>/<metric>": value}}``.

    ``{"tasks": {name: evaluate_utility(...) without items}, "per_language", "summary"}``.
    Two tasks with the same name are a :class:`UserError` (their keys would collide).
    """
    model, tokenizer = _load(model, tokenizer, options.pop("dtype", None), options.pop("device", None))
    options["keep_items"] = False
    results: dict[str, Any] = {}
    merged: dict[str, dict[str, Any]] = {}
    for spec in tasks:
        result = evaluate_utility(model, tokenizer, spec, **options)
        name = result["task"]["name"]
        if name in results:
            raise UserError(f"two utility tasks are named {name!r}", field="tasks")
        results[name] = result
        for lang, metrics in result["per_language"].items():
            merged.setdefault(lang, {}).update({f"{name}/{k}": v for k, v in metrics.items()})
    return {"tasks": results, "per_language": merged, "summary": summarize(merged)}


def over_refusal(
    responses: Sequence[str],
    languages: Sequence[str],
    judge: Any = "refusal",
    *,
    prompts: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Refusal rate of responses to *benign* prompts, per language.

    ``judge``: a :class:`~polyalign.evaluation.judges.Judge` or a name for
    ``get_judge`` (default ``"refusal"``, the offline phrase matcher). Per language:
    :func:`polyalign.evaluation.metrics.refusal_metrics` -- ``refusal_rate`` = refused /
    responses with a known refusal flag; responses the judge gives no flag for (empty ones,
    judges without a refusal output, errors) are counted in ``n_refusal_unknown``, never
    in the rate. Returns ``{"per_language", "summary", "judgments": [Judgment.to_dict()]}``.
    """
    from polyalign.evaluation.judges import JudgeInput, get_judge
    from polyalign.evaluation.metrics import refusal_metrics

    if len(responses) != len(languages):
        raise ValueError(f"{len(responses)} responses but {len(languages)} languages")
    if prompts is not None and len(prompts) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(prompts)} prompts")
    worker = get_judge(judge) if isinstance(judge, str) else judge
    inputs = [JudgeInput(prompt=prompts[i] if prompts is not None else "", response=responses[i],
                         language=languages[i], id=ids[i] if ids is not None else str(i))
              for i in range(len(responses))]
    judgments = worker.judge(inputs)
    groups: dict[str, list[bool | None]] = {}
    for item, judgment in zip(inputs, judgments):
        groups.setdefault(item.language, []).append(judgment.refusal)
    per_language = {lang: refusal_metrics(flags) | {"n": len(flags)} for lang, flags in groups.items()}
    return {"per_language": per_language, "summary": summarize(per_language),
            "judgments": [j.to_dict() for j in judgments]}
