"""``run_study``: data -> base evaluation -> per seed: train + evaluate each method -> probes -> table.

Output folder layout (every file a stage writes stays; the table is rebuilt from them):

- ``data/``: the training / probe files (:mod:`polyalign.study.data`) and ``overlap.json``;
- ``models/<method>-s<seed>/final``: trained models (:mod:`polyalign.study.train`);
- ``eval/<run>/``: MultiJail generations, judgments, ``results.json``, ``reward_gap.json``,
  ``summary.json`` (:mod:`polyalign.study.evaluate`); ``<run>`` is ``base`` or ``<method>-s<seed>``;
- ``probes/``: retrieval and collinearity JSON + PNG on the analysis model;
- ``stages/<name>.json``: one marker per finished stage (resume, cost per stage);
- ``study.json`` / ``study.md``: the aggregate table (:mod:`polyalign.study.table`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyalign.io import atomic_write_text
from polyalign.study.cost import budget_verdict
from polyalign.study.recipe import StudyRecipe
from polyalign.study.stages import StageRunner, cpu_seconds, load_average, peak_rss_mib

TRAINED = ("dpo_en", "dpo_mlc", "mpo", "dpo_target")  # training order: mpo / dpo_target need dpo_en


def _fresh(folder: Path, key: str) -> None:
    """Keep ``folder`` for a resumed stage with the same key; empty it for another key (other settings)."""
    stamp = folder / ".study_key"
    if folder.exists() and (not stamp.is_file() or stamp.read_text(encoding="utf-8") != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, key)


def run_study(recipe: StudyRecipe, out_dir: str | Path, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the study; returns the summary also written as ``study.json``."""
    import torch

    from polyalign.models import resolve_model_source
    from polyalign.study import table
    from polyalign.study.data import build_study_data
    from polyalign.study.evaluate import evaluate_model
    from polyalign.study.probes import run_probes
    from polyalign.study.train import method_config, train_method

    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, cpu0, load0 = time.monotonic(), cpu_seconds(), load_average()
    torch.set_num_threads(recipe["threads"])
    stages = StageRunner(out, log=say)
    data, train, ev = recipe["data"], recipe["train"], recipe["eval"]
    base_model = resolve_model_source(recipe["model"])
    data_dir = out / "data"

    data_key = recipe.digest("data") + recipe.digest("eval")
    def prepare() -> dict[str, Any]:
        _fresh(data_dir, data_key)
        built = build_study_data(data["mpo_file"], data_dir, target_languages=data["target_languages"],
                                 target_pairs_per_language=data["target_pairs_per_language"],
                                 reward_gap_pairs_per_language=data["reward_gap_pairs_per_language"],
                                 sample_seed=data["sample_seed"])
        built["overlap"] = _overlap(data_dir, data["multijail"])
        return built
    data_info = stages.run("data", data_key, prepare)

    eval_key = recipe.digest("eval", "degenerate") + recipe.digest("model")
    gap_length = int(train.get("max_length", 1024))

    def evaluation(run: str, model_path: str, key: str) -> None:
        folder = out / "eval" / run
        def go() -> dict[str, Any]:
            _fresh(folder, key)
            summary = evaluate_model(model_path, folder, multijail=data["multijail"],
                                     gap_file=data_dir / "reward_gap.jsonl", eval_settings=ev,
                                     degenerate=recipe["degenerate"], gap_max_length=gap_length)
            return {"summary": str(folder / "summary.json"), "eval_seconds": summary["eval_seconds"]}
        stages.run(f"eval-{run}", key, go)

    methods = recipe["methods"]
    if "base" in methods:
        evaluation("base", base_model, data_key + eval_key)
    train_key = recipe.digest("train", "model") + data_key
    for seed in recipe["seeds"]:
        dpo_en_model = None
        for method in (m for m in TRAINED if m in methods):
            run = f"{method}-s{seed}"
            folder = out / "models" / run
            key = f"{train_key}-{run}"

            # Every value the closure reads from the loops is bound now (B023).
            def fit(method: str = method, folder: Path = folder, key: str = key,
                    dpo_en_model: str | None = dpo_en_model, seed: int = seed) -> dict[str, Any]:
                _fresh(folder, key)
                config = method_config(method, train=train, base_model=base_model, dpo_en_model=dpo_en_model,
                                       data_dir=data_dir, output_dir=folder, seed=seed,
                                       cache_dir=out / "reference_cache")
                return train_method(config)
            info = stages.run(f"train-{run}", key, fit)
            if method == "dpo_en":
                dpo_en_model = info["saved_to"]
            evaluation(run, info["saved_to"], key + eval_key)

    if recipe.get("analysis_model") and recipe.get("analysis"):
        probe_key = recipe.digest("analysis", "analysis_model") + recipe.digest("data")
        def probes() -> dict[str, Any]:
            _fresh(out / "probes", probe_key)
            return run_probes(resolve_model_source(recipe["analysis_model"]), out / "probes",
                              detox_parallel=data.get("detox_parallel"), multijail=data["multijail"],
                              settings=recipe["analysis"], seed=ev["sample_seed"])
        stages.run("probes", probe_key, probes)

    cost = {"wall_s": round(time.monotonic() - started, 1), "cpu_s": round(cpu_seconds() - cpu0, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "load_average_1min": {"start": load0, "end": load_average()},
            "threads": recipe["threads"], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "budget_minutes": recipe.get("budget_minutes"), "stages_run": stages.ran, "stages_skipped": stages.skipped,
            "stages_missing": [name for name in expected_stages(recipe) if name not in stages.records()]}
    summary = table.build_summary(recipe, out, data_info, stages.records(), cost)
    table.write_outputs(summary, out)
    verdict = budget_verdict(cost, recipe.get("budget_minutes"))
    say(f"study: wall {cost['wall_s']:.0f} s, CPU {cost['cpu_s']:.0f} s, peak memory {cost['peak_rss_mib']:.0f} MiB, "
        f"load {load0} -> {cost['load_average_1min']['end']} ({len(stages.ran)} stage(s) run, "
        f"{len(stages.skipped)} reused); CPU {cost['cpu_s'] / 60:.1f} min / 2 cores = {cost['cpu_s'] / 120:.1f} min "
        f"idle-machine wall estimate, budget {verdict['budget_min']} min: "
        f"{'n/a' if verdict['met'] is None else ('met' if verdict['met'] else 'NOT met')}; table: {out / 'study.md'}")
    return summary


def expected_stages(recipe: StudyRecipe) -> list[str]:
    """Every stage the recipe runs, in order."""
    methods = recipe["methods"]
    names = ["data"] + (["eval-base"] if "base" in methods else [])
    for seed in recipe["seeds"]:
        for method in (m for m in TRAINED if m in methods):
            names += [f"train-{method}-s{seed}", f"eval-{method}-s{seed}"]
    if recipe.get("analysis_model") and recipe.get("analysis"):
        names.append("probes")
    return names


def write_table(recipe: StudyRecipe, out_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``study.json`` / ``study.md`` from the stages finished so far, running nothing.

    For a study still running or stopped early: the cost is the sum of the finished stages'
    wall and CPU seconds (their largest peak memory), and the summary lists the stages missing.
    """
    from polyalign.errors import UserError
    from polyalign.study import table

    out = Path(out_dir)
    stages = StageRunner(out, log=lambda message: None)
    records = stages.records()
    data = stages.done("data", recipe.digest("data") + recipe.digest("eval"))
    if data is None:
        raise UserError("no finished data stage for this recipe: nothing to tabulate",
                        file=out / "stages" / "data.json")
    done = [name for name in expected_stages(recipe) if name in records]
    cost = {"wall_s": round(sum(r["wall_s"] or 0 for r in records.values()), 1),
            "cpu_s": round(sum(r["cpu_s"] or 0 for r in records.values()), 1),
            "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in records.values()),
            "load_average_1min": {"start": records["data"]["load_after"], "end": max(
                records.values(), key=lambda r: r["finished"] or "")["load_after"]},
            "threads": recipe["threads"], "stages_run": done, "stages_skipped": [],
            "stages_missing": [name for name in expected_stages(recipe) if name not in records],
            "from_stage_records": True}
    summary = table.build_summary(recipe, out, data["result"], records, cost)
    table.write_outputs(summary, out)
    return summary


def _overlap(data_dir: Path, multijail: str) -> dict[str, Any]:
    """MultiJail prompts vs the training prompts of the same language (English and targets)."""
    from polyalign.data.readers import load_eval_prompts, load_preference_pairs
    from polyalign.io import atomic_write_json
    from polyalign.study.data import overlap_report

    evals: dict[str, list[tuple[str, str]]] = {}
    for prompt in load_eval_prompts(multijail, format="multijail", detect_language=False):
        evals.setdefault(prompt.language, []).append((prompt.id, prompt.text))
    train: dict[str, list[tuple[str, str]]] = {}
    for name in ("dpo_en.jsonl", "target.jsonl"):
        for pair in load_preference_pairs(data_dir / name, format="canonical", detect_language=False):
            train.setdefault(pair.language, []).append((pair.id, pair.prompt[-1].content))
    for pair in load_preference_pairs(data_dir / "mlc.jsonl", format="canonical", detect_language=False):
        for lang, turns in (pair.variants.prompts.items() if pair.variants else ()):
            if lang != "en":
                train.setdefault(lang, []).append((f"{pair.id}-{lang}-variant", turns[-1].content))
    report = overlap_report(evals, train)
    atomic_write_json(data_dir / "overlap.json", report)
    return {"n_exact": report["n_exact"], "n_near": report["n_near"], "near_threshold": report["near_threshold"],
            "max_similarity": {lang: v["max_similarity"] for lang, v in report["per_language"].items()}}
