"""One model's study evaluation: MultiJail (unsafe rate, fidelity), degenerate outputs, reward gap, examples.

Writes into its folder: the evaluation's own files (``generations.jsonl``, ``judgments.jsonl``,
``results.json``: resumable, see :mod:`polyalign.evaluation.run`), ``reward_gap.json`` and
``summary.json`` (per language: what the study table shows, each value traceable to the
files beside it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polyalign.evaluation.textstats import distinct_n, tokenize_for_distinct
from polyalign.io import atomic_write_json


def is_degenerate(text: str, language: str, *, ngram: int, max_distinct: float, min_tokens: int) -> bool:
    """A looping answer: at least ``min_tokens`` tokens and fewer than ``max_distinct`` of its
    n-grams distinct (tokens: words, or characters for zh/ja/th; :mod:`~polyalign.evaluation.textstats`)."""
    if len(tokenize_for_distinct(text, language)) < min_tokens:
        return False
    value = distinct_n([text], ngram, language)
    return value is not None and value < max_distinct


def store_rows(path: Path, *keys: str) -> list[dict[str, Any]]:
    """The record rows of an evaluation store (``generations``/``judgments.jsonl``): those with ``keys``
    (the header line has none of them)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            if isinstance(obj, dict) and all(k in obj for k in keys):
                rows.append(obj)
    return rows


def degenerate_by_language(generations: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for g in generations:
        entry = out.setdefault(g["language"], {"n": 0, "n_degenerate": 0})
        entry["n"] += 1
        entry["n_degenerate"] += is_degenerate(g["text"], g["language"], ngram=settings["ngram"],
                                               max_distinct=settings["max_distinct"], min_tokens=settings["min_tokens"])
    for entry in out.values():
        entry["degenerate_rate"] = entry["n_degenerate"] / entry["n"] if entry["n"] else None
    return out


def evaluate_model(model_path: str | Path, out_dir: str | Path, *, multijail: str, gap_file: str | Path,
                   eval_settings: dict[str, Any], degenerate: dict[str, Any], gap_max_length: int,
                   examples_per_language: int = 2) -> dict[str, Any]:
    """Evaluate ``model_path`` (loaded once) and write ``summary.json``; returns the summary."""
    from polyalign.analysis.reward_gap import reward_gap
    from polyalign.data.readers import load_preference_pairs
    from polyalign.evaluation.run import EvalConfig, evaluate
    from polyalign.models import load_model_and_tokenizer

    out = Path(out_dir)
    model, tokenizer = load_model_and_tokenizer(model_path)
    config = EvalConfig(benchmark="multijail", out_dir=out, data=multijail, limit=eval_settings["prompts_per_language"],
                        seed=eval_settings["sample_seed"], max_new_tokens=eval_settings["max_new_tokens"],
                        batch_size=eval_settings["batch_size"], judge=eval_settings["judge"], progress=False)
    results = evaluate(config, model=model, tokenizer=tokenizer)
    pairs = load_preference_pairs(gap_file, format="canonical", detect_language=False)
    gap = reward_gap(model, tokenizer, pairs, batch_size=8, max_length=gap_max_length)
    atomic_write_json(out / "reward_gap.json", gap.to_dict())
    del model
    generations = store_rows(out / "generations.jsonl", "id", "text")
    degenerate_stats = degenerate_by_language(generations, degenerate)
    judgments = {}
    judgments_file = out / "judgments.jsonl"
    if judgments_file.is_file():
        for row in store_rows(judgments_file, "id", "label"):
            judgments[(row["id"], row.get("sample", 0))] = row.get("label")
    per_language: dict[str, Any] = {}
    for lang, metrics in results["metrics"]["per_language"].items():
        gens = [g for g in generations if g["language"] == lang]
        per_language[lang] = {
            "unsafe_rate": metrics.get("unsafe_rate"), "n_total": metrics.get("n_total"),
            "n_error": metrics.get("n_error"), "refusal_rate": metrics.get("refusal_rate"),
            "language_fidelity": metrics.get("language_fidelity"),
            "fidelity_n_checked": metrics.get("fidelity_n_checked"),
            "degenerate_rate": degenerate_stats.get(lang, {}).get("degenerate_rate"),
            "n_degenerate": degenerate_stats.get(lang, {}).get("n_degenerate"),
            "reward_gap": gap.per_language.get(lang, {}).get("mean_gap"),
            "reward_gap_n": gap.per_language.get(lang, {}).get("n"),
            "examples": [{"id": g["id"], "label": judgments.get((g["id"], g.get("sample", 0))),
                          "text": g["text"][:200]}
                         for g in sorted(gens, key=lambda g: str(g["id"]))[:examples_per_language]],
        }
    for lang, values in gap.per_language.items():  # ja: trained and gap-scored, not in MultiJail
        per_language.setdefault(lang, {"reward_gap": values["mean_gap"], "reward_gap_n": values["n"]})
    summary = {"model": str(model_path), "per_language": per_language,
               "eval_seconds": results["run"]["seconds"], "prompts_per_language": eval_settings["prompts_per_language"]}
    atomic_write_json(out / "summary.json", summary)
    return summary

