"""Per-language metric tables: one table per metric, runs side by side.

For each metric, rows are languages (the dominant one first) and then four summary rows
over each run's languages where the metric is defined (a number):

- ``mean`` = ``sum(v) / n``; ``std`` = population standard deviation
  ``sqrt(sum((v - mean)^2) / n)`` (ddof 0, as ``polyalign.evaluation.metrics.summarize``);
  ``min-max``; ``languages`` = ``n``.

With more than one run, a delta table per metric gives ``value(run) - value(first run)``
per language, and ``mean delta`` = the mean of those differences over the languages where
both are defined (so runs covering different languages are compared like for like). Count
metrics (``n``, ``n_*``, ``invalid``, ``errors``) get no delta table. Deltas of metrics
with a known direction are marked ``better`` / ``worse``; :func:`dominant_warnings` lists
each run whose mean improves while the dominant language gets worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from polyalign.data.languages import language_name
from polyalign.report.load import RunData

LOWER_IS_BETTER = frozenset({
    "unsafe_rate", "invalid_rate", "over_refusal", "emt", "tox_prob", "avg_tox", "perplexity",
    "perplexity_median", "attack_success_rate", "asr",
})
HIGHER_IS_BETTER = frozenset({
    "safety_rate", "accuracy", "language_fidelity", "distinct_1", "distinct_2", "distinct_3", "exact_match", "f1",
})
COUNT_METRICS = frozenset({"n", "invalid", "errors"})
# Metrics whose per-language value answers "how safe": the first present is the headline safety metric.
SAFETY_METRICS = ("unsafe_rate", "safety_rate", "tox_prob", "emt", "avg_tox")
METRIC_ORDER = (
    "unsafe_rate", "safety_rate", "over_refusal", "refusal_rate", "invalid_rate", "emt", "tox_prob", "avg_tox",
    "accuracy", "language_fidelity", "perplexity", "perplexity_median", "distinct_1", "distinct_2", "distinct_3",
)
DESCRIPTIONS = {
    "unsafe_rate": "unsafe share of judged answers (attack success rate)",
    "safety_rate": "safe share of judged answers",
    "over_refusal": "refusals on benign prompts",
    "refusal_rate": "share of answers that refuse",
    "invalid_rate": "share of answers judged invalid",
    "emt": "expected maximum toxicity over a prompt's samples",
    "tox_prob": "share of prompts with a sample scoring >= 0.5",
    "avg_tox": "mean toxicity over all samples",
    "accuracy": "utility: share of correct answers",
    "language_fidelity": "share of answers in the prompt's language",
    "perplexity": "conditional perplexity (fluency)",
    "perplexity_median": "median conditional perplexity (fluency)",
    "distinct_1": "distinct unigrams among a prompt's samples",
    "distinct_2": "distinct bigrams among a prompt's samples",
    "distinct_3": "distinct trigrams among a prompt's samples",
    "n": "items", "invalid": "answers judged invalid", "errors": "items the judge could not score",
}
MISSING = "n/a"  # the run has no such language / metric
UNDEFINED = "—"  # the metric is null for that language (e.g. nothing judged)


def is_count(metric: str) -> bool:
    return metric in COUNT_METRICS or metric.startswith("n_")


def is_utility(metric: str) -> bool:
    return metric in ("accuracy", "exact_match", "f1") or metric.endswith("_accuracy")


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when unknown or neutral."""
    if metric in HIGHER_IS_BETTER or is_utility(metric):
        return 1
    return -1 if metric in LOWER_IS_BETTER else 0


def describe(metric: str) -> str:
    arrow = {1: "higher is better", -1: "lower is better"}.get(direction(metric))
    text = DESCRIPTIONS.get(metric, "")
    return "; ".join(t for t in (text, arrow) if t)


def fmt(value: Any, metric: str = "", *, signed: bool = False) -> str:
    """Cell text: counts as integers, ``|v| >= 100`` with 1 decimal, else 3 decimals."""
    if value is MISSING or value is None:
        return MISSING if value is MISSING else UNDEFINED
    value = float(value)
    if is_count(metric) and value.is_integer() and not signed:
        return str(int(value))
    text = f"{value:+.1f}" if abs(value) >= 100 else f"{value:+.3f}"
    return text if signed else text.lstrip("+")


def language_label(code: str) -> str:
    name = language_name(code)
    return name if name == code else f"{name} ({code})"


@dataclass
class Row:
    """One table row: ``values[i]`` for column ``i`` (float, None = undefined, MISSING)."""

    label: str
    values: list[Any]
    texts: list[str]
    kind: str = "language"  # "language" | "stat"
    language: str | None = None
    marks: list[str] = field(default_factory=list)  # "better" / "worse" / "" per column
    dominant: bool = False


@dataclass
class Table:
    title: str
    description: str
    metric: str
    columns: list[str]
    rows: list[Row]


def language_order(runs: list[RunData], dominant: str | None) -> list[str]:
    """Dominant language first, then first-seen order over the runs."""
    order = list(dict.fromkeys(lang for run in runs for lang in run.languages))
    if dominant in order:
        order.remove(dominant)
        order.insert(0, dominant)
    return order


def metric_order(runs: list[RunData]) -> list[str]:
    """Headline metrics first, then the known ones, then unknown ones, counts last."""
    present = list(dict.fromkeys(m for run in runs for row in run.per_language.values() for m in row))
    headline = [r.headline for r in runs if r.headline in present]
    known = [m for m in METRIC_ORDER if m in present]
    rest = sorted(m for m in present if m not in METRIC_ORDER and not is_count(m))
    counts = sorted((m for m in present if is_count(m)), key=lambda m: (m != "n", m))
    return list(dict.fromkeys([*headline, *known, *rest, *counts]))


def stats(values: list[float]) -> dict[str, float] | None:
    """mean, population std, min, max, n of the defined values (None when there are none)."""
    if not values:
        return None
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def _value(run: RunData, lang: str, metric: str) -> Any:
    row = run.per_language.get(lang)
    return MISSING if row is None or metric not in row else row[metric]


def metric_table(runs: list[RunData], metric: str, languages: list[str], dominant: str | None) -> Table:
    """Rows: languages, then mean / std / min-max / languages over each run's defined values."""
    rows = []
    for lang in languages:
        values = [_value(run, lang, metric) for run in runs]
        label = language_label(lang) + (" — dominant" if lang == dominant else "")
        rows.append(Row(label, values, [fmt(v, metric) for v in values], language=lang, dominant=lang == dominant))
    summaries = [stats([v for v in run.metric(metric).values() if v is not None]) for run in runs]

    def stat_row(label: str, pick) -> Row:
        values = [pick(s) if s else None for s in summaries]
        texts = [pick_text(s, label) for s in summaries]
        return Row(label, values, texts, kind="stat")

    def pick_text(s: dict[str, float] | None, label: str) -> str:
        if s is None:
            return UNDEFINED
        if label == "min-max":
            return f"{fmt(s['min'], metric)} – {fmt(s['max'], metric)}"
        if label == "languages":
            return str(s["n"])
        return fmt(s[label], "" if label == "std" or label == "mean" else metric)

    rows += [stat_row("mean", lambda s: s["mean"]), stat_row("std", lambda s: s["std"]),
             stat_row("min-max", lambda s: (s["min"], s["max"])), stat_row("languages", lambda s: s["n"])]
    return Table(metric, describe(metric), metric, [r.name for r in runs], rows)


def _mark(delta: float | None, metric: str) -> str:
    if delta is None or delta == 0 or direction(metric) == 0:
        return ""
    return "better" if delta * direction(metric) > 0 else "worse"


def delta_table(runs: list[RunData], metric: str, languages: list[str], dominant: str | None) -> Table:
    """``value(run) - value(first run)`` per language for runs 2..N, plus the mean delta."""
    first, others = runs[0], runs[1:]
    rows = []
    per_run_deltas: list[list[float]] = [[] for _ in others]
    for lang in languages:
        base = _value(first, lang, metric)
        values, marks = [], []
        for i, run in enumerate(others):
            v = _value(run, lang, metric)
            if v is MISSING or base is MISSING:
                d: Any = MISSING
            elif v is None or base is None:
                d = None
            else:
                d = v - base
                per_run_deltas[i].append(d)
            values.append(d)
            marks.append(_mark(d if isinstance(d, float) else None, metric))
        label = language_label(lang) + (" — dominant" if lang == dominant else "")
        rows.append(Row(label, values, [fmt(d, metric, signed=True) for d in values], language=lang, marks=marks,
                        dominant=lang == dominant))
    means = [math.fsum(d) / len(d) if d else None for d in per_run_deltas]
    rows.append(Row("mean delta", means, [fmt(m, metric, signed=True) for m in means], kind="stat",
                    marks=[_mark(m, metric) for m in means]))
    return Table(f"{metric}: change vs {first.name}", f"run minus {first.name}, per language; "
                 "mean delta over the languages both runs define", metric, [r.name for r in others], rows)


def dominant_warnings(runs: list[RunData], metrics: list[str], dominant: str | None) -> list[str]:
    """Runs whose mean delta is better while the dominant language's delta is worse."""
    if len(runs) < 2 or dominant is None:
        return []
    out = []
    for metric in metrics:
        if direction(metric) == 0 or is_count(metric):
            continue
        table = delta_table(runs, metric, language_order(runs, dominant), dominant)
        if table.rows[0].language != dominant:
            return []  # no run has the dominant language
        dom_row, mean_row = table.rows[0], table.rows[-1]
        for i, name in enumerate(table.columns):
            if mean_row.marks[i] == "better" and dom_row.marks[i] == "worse":
                out.append(f"{name}: mean {metric} {mean_row.texts[i]} vs {runs[0].name} (better) but "
                           f"{language_label(dominant)} {dom_row.texts[i]} (worse)")
    return out


def build_tables(runs: list[RunData], dominant: str | None) -> list[tuple[Table, Table | None]]:
    """``[(metric table, delta table or None), ...]`` in :func:`metric_order`."""
    languages = language_order(runs, dominant)
    out = []
    for metric in metric_order(runs):
        delta = None
        if len(runs) > 1 and not is_count(metric):
            delta = delta_table(runs, metric, languages, dominant)
        out.append((metric_table(runs, metric, languages, dominant), delta))
    return out


def analysis_tables(runs: list[RunData], dominant: str | None) -> list[Table]:
    """Reward gap and mean retrieval accuracy per language (runs that have them)."""
    tables = []
    with_gap = [r for r in runs if r.reward_gap]
    if with_gap:
        cols, series = [], []
        for run in with_gap:
            for key, suffix in (("reference_gap", " (reference)"), ("policy_gap", "")):
                if any(v[key] is not None for v in run.reward_gap.values()):
                    cols.append(run.name + suffix)
                    series.append({lang: v[key] for lang, v in run.reward_gap.items()})
        tables.append(_series_table("reward gap", "length-normalised reward gap avg_logp(chosen) - avg_logp(rejected)"
                                    " per language (higher: safer preference)", cols, series, dominant))
    with_ret = [r for r in runs if r.retrieval]
    if with_ret:
        series = []
        for run in with_ret:
            acc = {}
            for lang, v in run.retrieval.items():
                vals = [x for m in ("acc_pivot_to_x", "acc_x_to_pivot") for x in v[m] if x is not None]
                acc[lang] = math.fsum(vals) / len(vals) if vals else None
            series.append(acc)
        tables.append(_series_table("retrieval accuracy", "top-1 bilingual retrieval accuracy with the pivot, mean "
                                    "of both directions over all layers", [r.name for r in with_ret], series, dominant))
    return tables


def _series_table(title: str, description: str, columns: list[str], series: list[dict[str, Any]],
                  dominant: str | None) -> Table:
    langs = list(dict.fromkeys(lang for s in series for lang in s))
    if dominant in langs:
        langs.remove(dominant)
        langs.insert(0, dominant)
    rows = []
    for lang in langs:
        values = [s.get(lang, MISSING) for s in series]
        label = language_label(lang) + (" — dominant" if lang == dominant else "")
        rows.append(Row(label, values, [fmt(v) for v in values], language=lang, dominant=lang == dominant))
    summaries = [stats([v for v in s.values() if v is not None]) for s in series]
    rows.append(Row("mean", [s and s["mean"] for s in summaries], [fmt(s and s["mean"]) for s in summaries],
                    kind="stat"))
    rows.append(Row("std", [s and s["std"] for s in summaries], [fmt(s and s["std"]) for s in summaries], kind="stat"))
    return Table(title, description, title, columns, rows)
