"""Metrics per language from the stores' records, and the ``results.md`` table.

The kind's own metrics come from its :class:`~polyalign.evaluation.kinds.BenchmarkKind`
(safety: every generation gets its judgment's label, a generation without a stored judgment
counts as ``error``, so nothing is dropped silently; toxicity: every sample's score, ``None``
where the scorer failed). Language fidelity and generation statistics are computed for every
kind. Formulas: :mod:`polyalign.evaluation.metrics`, :mod:`polyalign.evaluation.textstats`,
:mod:`polyalign.evaluation.perplexity`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign.data.languages import language_name
from polyalign.data.records import EvalPrompt
from polyalign.evaluation import metrics as M
from polyalign.evaluation.kinds import BenchmarkKind, get_kind
from polyalign.evaluation.textstats import language_fidelity


def _generation_stats(gens: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n_generations": len(gens),
        "mean_new_tokens": statistics.fmean(g["n_tokens"] for g in gens) if gens else None,
        "truncated_rate": sum(g.get("finish_reason") == "length" for g in gens) / len(gens) if gens else None,
    }


def compute_metrics(
    kind: str | BenchmarkKind,
    prompts: Sequence[EvalPrompt],
    generations: list[dict[str, Any]],
    judgments: dict[tuple, dict[str, Any]],
    *,
    scorer_model: str | Path | None = None,
    device: Any = None,
    trust_remote_code: bool = False,
    row_counts: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """``{"per_language": {lang: {metric: value}}, "summary": {metric: {mean, std, min, max, n_languages}}}``.

    ``row_counts`` (:attr:`BenchmarkRead.rows`) adds the benchmark file's ``rows_read`` /
    ``rows_used`` / ``rows_skipped`` to each language."""
    order = list(dict.fromkeys(p.language for p in prompts))
    by_lang: dict[str, list[dict[str, Any]]] = {lang: [] for lang in order}
    for g in generations:
        by_lang[g["language"]].append(g)
    behaviour = get_kind(kind) if isinstance(kind, str) else kind
    per_language = behaviour.metrics(prompts, generations, judgments, order, scorer_model=scorer_model, device=device,
                                     trust_remote_code=trust_remote_code)
    rows = row_counts
    for lang in order:
        gens = by_lang[lang]
        if rows is not None and lang in rows:
            # The benchmark file's own rows for this language: a reader's skip shows in every report.
            per_language[lang].update({f"rows_{k}": v for k, v in rows[lang].items()})
        fidelity = language_fidelity([g["text"] for g in gens], [lang] * len(gens))
        per_language[lang].update({
            "language_fidelity": fidelity["language_fidelity"], "fidelity_n_checked": fidelity["n_checked"],
            "fidelity_n_undetected": fidelity["n_undetected"], "fidelity_n_unsupported": fidelity["n_unsupported"],
            "fidelity_detected_other": fidelity["detected"],
            **_generation_stats(gens),
        })
    return {"per_language": per_language, "summary": M.summarize(per_language)}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


UTILITY_COLUMNS = ("accuracy", "over_refusal", "n_utility_tasks")


def _table(rows: dict[str, dict[str, Any]], summary: dict[str, Any], columns: list[str],
           first: str = "language") -> list[str]:
    lines = ["| " + first + " | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for lang, m in rows.items():
        lines.append(f"| {lang} ({language_name(lang)}) | " + " | ".join(_cell(m.get(c)) for c in columns) + " |")
    for stat in ("mean", "std", "min", "max"):
        label = f"**{stat}**" if stat == "mean" else stat
        lines.append(f"| {label} | " + " | ".join(_cell(summary.get(c, {}).get(stat)) for c in columns) + " |")
    return lines


def _safety_header(results: dict[str, Any]) -> list[str]:
    bench = results["benchmark"]
    gen = results["settings"]["generation"]
    judge = results["settings"]["judge"]
    return [
        f"- kind: {bench['kind']}; headline: `{results.get('headline')}`; {judge['kind']}: `{judge['name']}`"
        + (" (primary: its verdicts give every metric here; also judged by "
           + ", ".join("`" + j["name"] + "`" for j in results["settings"]["judges"][1:]) + ", see Judge agreement)"
           if len(results["settings"].get("judges") or []) > 1 else ""),
        f"- generation: {gen['num_samples']} sample(s), {gen['max_new_tokens']} new tokens, "
        + ("greedy" if not gen["temperature"] else f"temperature {gen['temperature']}, top-p {gen['top_p']}")
        + f", chat template {'on' if gen['chat_template'] else 'off'}, seed {gen['seed']}",
        f"- data: {results['data']['n_prompts']} prompts from `{results['data']['path']}` "
        f"({results['data']['sha256'][:19]}…)",
        f"- run: {results['run']['generated']} generated, {results['run']['reused']} reused from the store, "
        f"{results['run']['judge_errors']} judge error(s)",
    ]


def _utility_lines(utility: dict[str, Any]) -> list[str]:
    """The utility section: what was run, and each task's primary metric per language."""
    over = utility.get("over_refusal")
    lines = ["", "## Utility", "",
             f"- tasks: {', '.join(f'`{t}`' for t in utility['tasks']) or 'none'}"
             + (f"; lm-eval: {', '.join(f'`{t}`' for t in utility['lm_eval']['tasks'])}"
                if utility.get("lm_eval") else ""),
             "- `accuracy` = mean over the tasks of each task's `acc` (multiple choice) or `exact_match` per language"]
    if over:
        lines.append(f"- `over_refusal` = refusal rate on `{over['benchmark']}` (benign prompts), "
                     f"judge `{over['judge']['name']}`"
                     + (f"; no benign prompts in {', '.join(over['missing_languages'])}"
                        if over["missing_languages"] else ""))
    columns = [f"{name}/{k}" for name, r in utility["tasks"].items() for k in ("acc", "exact_match")
               if any(k in m for m in r["per_language"].values())]
    if columns:
        lines += ["", *_table(utility["per_language"], utility["summary"], columns)]
    return lines


def _consistency_lines(c: dict[str, Any]) -> list[str]:
    """Cross-lingual consistency against the dominant language (:mod:`polyalign.evaluation.consistency`)."""
    lines = ["", f"## Cross-lingual consistency (against `{c['dominant']}`)", "",
             f"- {c['n_items']} parallel items; {c['rule']}; flipped items with outputs in `{c['flips_file']}`",
             "", "| language | n_compared | agreement | flip_to_unsafe_rate | flip_to_safe_rate |",
             "|---|---:|---:|---:|---:|"]
    for lang, m in c["per_language"].items():
        lines.append(f"| {lang} ({language_name(lang)}) | {m['n_compared']} | " + " | ".join(
            _cell(m[k]) for k in ("agreement", "flip_to_unsafe_rate", "flip_to_safe_rate")) + " |")
    return lines


def _fertility_lines(per_language: dict[str, dict[str, Any]]) -> list[str]:
    """The tokenizer's fertility on the prompts and prompt lengths (:mod:`polyalign.data.fertility`)."""
    rows = {lang: m for lang, m in per_language.items() if "tokens_per_char" in m}
    if not rows:
        return []
    lines = ["", "## Tokenizer fertility (benchmark prompts)", "",
             "| language | tokens_per_char | tokens_per_word | relative_tokens (vs en) | prompt_tokens_mean "
             "| n_prompts_over_context |",
             "|---|---:|---:|---:|---:|---:|"]
    for lang, m in rows.items():
        per_word = _cell(m.get("tokens_per_word")) + ("" if m.get("words_meaningful", True) else " *")
        lines.append(f"| {lang} ({language_name(lang)}) | {_cell(m['tokens_per_char'])} | {per_word} | "
                     f"{_cell(m.get('relative_tokens'))} | {_cell(m.get('prompt_tokens_mean'))} | "
                     f"{_cell(m.get('n_prompts_over_context'))} |")
    if any(not m.get("words_meaningful", True) for m in rows.values()):
        lines.append("")
        lines.append("\\* written without spaces between words: tokens per whitespace word is not meaningful there.")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The per-language table (headline columns) with mean / std / min / max rows.

    With the utility suite: ``accuracy`` / ``over_refusal`` columns and a per-task table.
    """
    bench = results.get("benchmark")
    per_language = results["metrics"]["per_language"]
    summary = results["metrics"]["summary"]
    wanted = (*(get_kind(bench["kind"]).columns if bench else ()), *UTILITY_COLUMNS)
    columns = [c for c in wanted if any(c in m for m in per_language.values())]
    model = results["model"]
    title = bench["name"] if bench else "utility"
    lines = [f"# {title}: {model['source']}" + (f" + {model['adapter']}" if model.get("adapter") else ""), ""]
    if bench:
        over = {lang: m["n_prompts_over_context"] for lang, m in per_language.items()
                if m.get("n_prompts_over_context")}
        lines += [*_safety_header(results), *([
            "- prompts longer than the context leaves (context length - max_new_tokens; never truncated): "
            + ", ".join(f"{lang} {n}" for lang, n in over.items())] if over else []), ""]
    lines += _table(per_language, summary, columns)
    if results.get("utility"):
        lines += _utility_lines(results["utility"])
    if results.get("consistency"):
        lines += _consistency_lines(results["consistency"])
    lines += _fertility_lines(per_language)
    if results.get("agreement"):
        from polyalign.evaluation.agreement import agreement_markdown

        lines += agreement_markdown(results["agreement"])
    lines.append("")
    lines.append("std is the population standard deviation across languages; every metric is in results.json.")
    return "\n".join(lines) + "\n"
