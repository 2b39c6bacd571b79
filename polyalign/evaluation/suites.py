"""The utility suite of ``polyalign eval --suite safety,utility``.

:func:`polyalign.evaluation.run.evaluate` loads the model once and, for ``utility``, runs
(settings: :class:`polyalign.evaluation.config.EvalConfig`):

- native utility tasks (:func:`polyalign.evaluation.utility.evaluate_utility`: log-likelihood
  multiple choice / greedy exact match; ``utility_tasks``: registered names, task YAMLs or
  JSONL/CSV files), ``utility_limit`` = first N items per language, ``languages`` filter;
- lm-evaluation-harness tasks (``lm_eval_tasks``, ``lm_eval_include``; optional extra),
  ``utility_limit`` = lm-eval's ``limit`` (documents per task);
- over-refusal: a benign prompt set (``benign_benchmark``: a benchmark name / spec YAML, or a
  JSONL/CSV file with ``text`` and ``language`` columns, optional ``id``, ``source_id``, ``category``)
  generated with the run's generation settings and judged by ``benign_judge`` (default: the safety judge and its
  options, else the offline ``refusal`` matcher) into ``over_refusal/generations.jsonl`` and
  ``over_refusal/judgments.jsonl`` (resumable, like the safety stores).

Keys written to ``results.json``:

- ``utility.tasks``: ``{task: evaluate_utility(...) without items}`` (``per_language``,
  ``summary``, ``task``, ``kind``, ``n_items``);
- ``utility.lm_eval``: ``{"per_language", "tasks", "lm_eval_version"}`` or ``null``;
- ``utility.over_refusal``: ``{"benchmark", "judge", "per_language": {lang: refusal_rate,
  n_refused, n_refusal_known, n_refusal_unknown, n}, "summary", "missing_languages", "run"}``
  or ``null``; ``refusal_rate = refused / responses with a known refusal flag``
  (:func:`polyalign.evaluation.metrics.refusal_metrics`, the same formula as
  :func:`polyalign.evaluation.utility.over_refusal`); a generation without a stored judgment
  (judge error) has an unknown flag;
- ``utility.per_language[lang]``: ``accuracy``, ``n_utility_tasks``, ``over_refusal`` and every
  ``<task>/<metric>`` (native tasks and lm-eval families); ``utility.summary``: across languages
  (:func:`polyalign.evaluation.metrics.summarize`);
- folded into ``metrics.per_language[lang]`` (so the report's safety-vs-utility view finds
  them): ``accuracy`` = mean over the utility tasks that have ``lang`` of each task's
  primary metric (:func:`primary_metric`: ``acc``, else ``exact_match``, else the first
  ``exact_match_<filter>``), ``n_utility_tasks`` (how many tasks that mean covers) and
  ``over_refusal`` (the benign ``refusal_rate``).

Per-item rows (one per native task item, with a ``task`` field) go to ``utility_items.jsonl``,
written atomically. Utility scoring is deterministic (log-likelihoods and greedy decoding), so
a rerun recomputes it instead of resuming: cheap next to generation plus judging.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import (
    BenchmarkSpec,
    get_benchmark,
    read_benchmark,
    resolve_data_path,
    select_prompts,
)
from polyalign.evaluation.kinds import get_kind
from polyalign.evaluation.metrics import refusal_metrics, summarize

SUITES = ("safety", "utility")
OVER_REFUSAL_DIR = "over_refusal"
UTILITY_ITEMS = "utility_items.jsonl"
PRIMARY_METRICS = ("acc", "exact_match")


def parse_suites(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"safety,utility"`` (or a list) -> ``("safety", "utility")``; default ``("safety",)``."""
    if value is None:
        return ("safety",)
    items = [s.strip().lower() for s in (value.split(",") if isinstance(value, str) else value) if s.strip()]
    unknown = [s for s in items if s not in SUITES]
    if unknown or not items:
        raise UserError(f"unknown suite(s) {', '.join(unknown) or '(none)'}; use safety, utility or safety,utility",
                        field="suite")
    return tuple(s for s in SUITES if s in items)


def _file_columns(path: Path) -> dict[str, str]:
    """Column map of a benign JSONL/CSV file: ``text`` and ``language`` needed, ``id`` optional."""
    import csv
    import json

    from polyalign.io import read_text_strict

    text = read_text_strict(path, encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        columns = next(csv.reader(text.splitlines()), [])
    else:
        first = next((line for line in text.splitlines() if line.strip()), "{}")
        try:
            columns = list(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            raise UserError("first line is not a JSON object", file=path, line=1) from None
    for needed in ("text", "language"):
        if needed not in columns:
            raise UserError(f"a benign prompt file needs a {needed!r} column", file=path, field=needed)
    return {"text": "text", "language": "language",
            **{key: key for key in ("id", "source_id", "category") if key in columns}}


def resolve_benign(benign: str | Path, data: str | Path | None) -> tuple[BenchmarkSpec, Path]:
    """``(spec, data path)`` of the benign set: a benchmark name / YAML, or a JSONL/CSV file."""
    path = Path(benign)
    if path.suffix.lower() in (".jsonl", ".json", ".csv"):
        if not path.is_file():
            raise UserError("no such benign prompt file", file=path, field="benign_benchmark")
        fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
        # A fixed format (not "auto"): the file's language labels are trusted, no row is
        # dropped because a detector disagrees on a short prompt.
        spec = dataclasses.replace(get_benchmark("custom"), name=f"benign:{path.stem}", format=fmt,
                                   column_map=_file_columns(path), description="benign prompts (over-refusal)")
        return spec, path
    spec = get_benchmark(str(benign))
    if not get_kind(spec.kind).verdicts:
        raise UserError(f"benchmark {spec.name!r} is {spec.kind}; a benign set needs a judge with refusal flags",
                        field="benign_benchmark")
    return spec, resolve_data_path(spec, data)


def benign_prompts(spec: BenchmarkSpec, path: Path, *, languages: Sequence[str] | None, limit: int | None,
                   seed: int) -> tuple[list[EvalPrompt], list[str], dict[str, Any]]:
    """``(prompts, requested languages the set lacks, data info)``: the run's languages that
    the benign set has (the rest are listed, not an error), ``limit`` per language."""
    from polyalign.data.languages import canonical_language

    all_prompts, skipped, _ = read_benchmark(spec, path)
    present = {p.language for p in all_prompts}
    missing: list[str] = []
    keep = None
    if languages:
        wanted = [canonical_language(code) for code in languages]
        keep = [lang for lang in wanted if lang in present]
        missing = [lang for lang in wanted if lang not in present]
        if not keep:
            raise UserError(f"the benign set has none of the languages {', '.join(wanted)}; it has "
                            f"{', '.join(sorted(present))}", file=path, field="benign_benchmark")
    prompts = select_prompts(spec, path, all_prompts, languages=keep, limit=limit, seed=seed)
    return prompts, missing, {"path": str(path), "n_read": len(all_prompts), "skipped_rows": skipped}


def over_refusal_metrics(generations: list[dict[str, Any]],
                         judgments: dict[tuple, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per language :func:`refusal_metrics` of the judgments' refusal flags, plus ``n``."""
    flags: dict[str, list[bool | None]] = {}
    for g in generations:
        j = judgments.get((g["id"], g["sample"]))
        flags.setdefault(g["language"], []).append(None if j is None else j.get("refusal"))
    return {lang: {**refusal_metrics(f), "n": len(f)} for lang, f in flags.items()}


def primary_metric(metrics: dict[str, Any]) -> str | None:
    """A task's headline accuracy key: ``acc``, else ``exact_match``, else the first ``exact_match_*``."""
    for name in PRIMARY_METRICS:
        if _number(metrics.get(name)):
            return name
    return next((k for k in sorted(metrics) if k.startswith("exact_match") and "stderr" not in k
                 and _number(metrics[k])), None)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def run_tasks(model: Any, tokenizer: Any, tasks: Sequence[Any], *, languages: Sequence[str] | None, limit: int | None,
              batch_size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``({task name: result without items}, item rows with a "task" field)``."""
    from polyalign.evaluation.utility import evaluate_utility

    results: dict[str, Any] = {}
    items: list[dict[str, Any]] = []
    for spec in tasks:
        result = evaluate_utility(model, tokenizer, spec, languages=list(languages) if languages else None, limit=limit,
                                  batch_size=batch_size, keep_items=True)
        name = result["task"]["name"]
        if name in results:
            raise UserError(f"two utility tasks are named {name!r}", field="utility_task")
        items += [{"task": name, **row} for row in result.pop("items")]
        results[name] = result
    return results, items


def utility_section(tasks: dict[str, Any], lm_eval: dict[str, Any] | None,
                    over_refusal: dict[str, Any] | None) -> dict[str, Any]:
    """``{"per_language", "summary", "tasks", "lm_eval", "over_refusal"}`` (see the module docstring)."""
    merged: dict[str, dict[str, Any]] = {}
    primaries: dict[str, list[float]] = {}
    for name, result in tasks.items():
        for lang, metrics in result["per_language"].items():
            merged.setdefault(lang, {}).update({f"{name}/{k}": v for k, v in metrics.items()})
            key = primary_metric(metrics)
            if key is not None:
                primaries.setdefault(lang, []).append(float(metrics[key]))
    for lang, metrics in ((lm_eval or {}).get("per_language") or {}).items():
        merged.setdefault(lang, {}).update(metrics)
        families: dict[str, dict[str, Any]] = {}
        for key, value in metrics.items():
            family, _, metric = key.rpartition("/")
            families.setdefault(family, {})[metric] = value
        for family_metrics in families.values():
            key = primary_metric(family_metrics)
            if key is not None:
                primaries.setdefault(lang, []).append(float(family_metrics[key]))
    for lang, values in primaries.items():
        merged[lang]["accuracy"] = statistics.fmean(values)
        merged[lang]["n_utility_tasks"] = len(values)
    for lang, metrics in ((over_refusal or {}).get("per_language") or {}).items():
        merged.setdefault(lang, {})["over_refusal"] = metrics["refusal_rate"]
    return {"per_language": merged, "summary": summarize(merged), "tasks": tasks, "lm_eval": lm_eval,
            "over_refusal": over_refusal}


def fold_headline(per_language: dict[str, dict[str, Any]], utility: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``metrics.per_language`` plus ``accuracy``, ``n_utility_tasks``, ``over_refusal`` per language.

    Languages only the utility suite has are appended after the safety ones.
    """
    out = {lang: dict(m) for lang, m in per_language.items()}
    for lang, metrics in utility["per_language"].items():
        row = out.setdefault(lang, {})
        for key in ("accuracy", "n_utility_tasks", "over_refusal"):
            if key in metrics:
                row[key] = metrics[key]
    return out


def run_lm_eval_tasks(model: Any, tokenizer: Any, names: Sequence[str], *, include: str | Path | None,
                      limit: int | None, batch_size: int, seed: int) -> dict[str, Any]:
    """lm-eval's run folded per language (:func:`polyalign.evaluation.utility.run_lm_eval`)."""
    from polyalign.evaluation.utility import run_lm_eval

    return run_lm_eval(model, tokenizer, list(names), include_path=include, limit=limit, batch_size=batch_size,
                       seed=seed)
