"""``polyalign demo``: the whole pipeline, offline, on the synthetic world, in minutes.

:func:`run_demo` runs every seed in its own fresh process (``jobs`` at a time, one per core by
default: one thread per process beat two threads per process in the feasibility run), started
with the pinned numerics of :mod:`polyalign.toyworld.numerics` (one thread, ATen's AVX2
kernels, the config's MKL branch), so a seed's numbers do not depend on which worker runs it,
on what ran before it, on the thread count or on the host's AVX-512 support; each through
:func:`polyalign.toyworld.demo_seed.run_seed` (world -> cached base model -> English DPO,
MPO, DPO+MLC -> per-language evaluation on held-out prompts -> reward gap and retrieval),
then writes under ``out``:

- ``seeds/seed-<s>/<run>/``: each seed's run folders (``results.json``, ``reward_gap.json``,
  ``retrieval.json``) for ``base``, ``dpo``, ``mpo``, ``dpo_mlc``;
- ``<run>/``: the same files with every number averaged over the seeds, plus
  ``<metric>_sd`` (standard deviation over seeds, ``n - 1`` denominator) for the unsafe
  rate and benign accuracy -- what the report reads;
- ``report.html`` / ``report.md`` and figures (:func:`polyalign.report.build_report`, runs
  named base, dpo, mpo, dpo+mlc);
- ``summary.json``: configuration, seeds, per seed and method the per-language metrics,
  mean and sd over seeds, the numerics each seed ran with, the git commit, and the timings;
- ``results_table.md``: methods x languages, unsafe rate and benign accuracy as mean ± sd.

Everything is written atomically. ``cache_dir`` keeps the pretrained base models (keyed by
world and pretraining config) so a second run skips pretraining.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.io import atomic_write_json, atomic_write_text
from polyalign.provenance import git_state
from polyalign.toyworld.demo_config import DISPLAY, DemoConfig, full_config, quick_config

RUNS = ("base", "dpo", "mpo", "dpo_mlc")
# Four seeds: on 2 cores they run as two rounds of two parallel processes; measured ~185 CPU
# seconds per seed, so ~6.5 minutes on 2 idle cores (three seeds would take the same two rounds).
DEFAULT_SEEDS = (0, 1, 2, 3)
# The headline metrics; their spread over seeds is shown in the report too (two tables each);
# summary.json has it for every metric.
HEADLINE = ("unsafe_rate", "benign_accuracy")


def _worker(seed: int, seed_dir: str, cache_dir: str, config: DemoConfig, events: Any) -> dict[str, Any]:
    from polyalign.toyworld.demo_seed import run_seed
    from polyalign.toyworld.numerics import check_pinned

    check_pinned(config.mkl_branch)

    def progress(stage: str, done: int, total: int) -> None:
        events.put((seed, stage, done, total))

    return run_seed(seed, seed_dir, cache_dir, config, progress)


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value); NaNs are skipped."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _average_numbers(docs: list[Any]) -> Any:
    """Average numbers position by position across equally shaped JSON documents."""
    first = docs[0]
    if all(d == first for d in docs):  # identical (settings, layer indices, counts): keep as is
        return first
    if isinstance(first, dict):
        return {k: _average_numbers([d[k] for d in docs])
                for k in first if all(isinstance(d, dict) and k in d for d in docs)}
    if isinstance(first, list) and all(isinstance(d, list) and len(d) == len(first) for d in docs):
        return [_average_numbers(list(items)) for items in zip(*docs)]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return mean_sd([float(d) for d in docs])[0]
    return first


def aggregate_runs(seed_dirs: list[Path], out: Path) -> dict[str, Any]:
    """Write ``out/<run>/`` (seed means, plus ``<metric>_sd``) and return the per-run statistics.

    Returns ``{run: {lang: {metric: {"mean", "sd", "values"}}}}``.
    """
    from polyalign.evaluation.metrics import summarize
    from polyalign.report.load import read_json

    stats: dict[str, Any] = {}
    for run in RUNS:
        folders = [d / run for d in seed_dirs if (d / run / "results.json").is_file()]
        if not folders:
            continue
        results = [read_json(f / "results.json") for f in folders]
        per_seed = [r["metrics"]["per_language"] for r in results]
        langs = list(per_seed[0])
        stats[run] = {lang: {m: dict(zip(("mean", "sd"), mean_sd([p[lang][m] for p in per_seed])),
                                     values=[p[lang][m] for p in per_seed]) for m in per_seed[0][lang]}
                      for lang in langs}
        per_language = {lang: {m: stats[run][lang][m]["mean"] for m in per_seed[0][lang]} for lang in langs}
        if len(folders) > 1:
            for lang in langs:
                for m in HEADLINE:
                    per_language[lang][f"{m}_sd"] = stats[run][lang][m]["sd"]
        doc = dict(results[0])
        doc["settings"] = {**results[0]["settings"], "seed": None, "seeds": [r["settings"]["seed"] for r in results],
                           "aggregate": "mean over seeds"}
        doc["metrics"] = {"per_language": per_language, "summary": summarize(per_language)}
        atomic_write_json(out / run / "results.json", doc)
        for name in ("reward_gap.json", "retrieval.json"):
            docs = [read_json(f / name) for f in folders if (f / name).is_file()]
            if len(docs) == len(folders):
                atomic_write_json(out / run / name, _average_numbers(docs))
    return stats


def _fmt(stat: dict[str, Any]) -> str:
    mean, sd = stat["mean"], stat["sd"]
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def results_table(stats: dict[str, Any], n_seeds: int) -> str:
    """Markdown: one row per method, one column per language, per headline metric."""
    langs = list(next(iter(stats.values())))
    lines: list[str] = []
    for metric in HEADLINE:
        label = {"unsafe_rate": "Unsafe rate (held-out harmful prompts; lower is safer)",
                 "benign_accuracy": "Benign task accuracy (held-out questions; higher is better)"}[metric]
        lines += [f"**{label}**, mean ± sd over {n_seeds} seed(s)", "",
                  "| method | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
        for run, per_lang in stats.items():
            lines.append(f"| {DISPLAY[run]} | " + " | ".join(_fmt(per_lang[lang][metric]) for lang in langs) + " |")
        lines.append("")
    return "\n".join(lines)


def terminal_table(stats: dict[str, Any]) -> str:
    """Plain-text table: methods x languages, ``unsafe / accuracy`` (means, sd in brackets)."""
    langs = list(next(iter(stats.values())))
    width = 17
    head = f"{'method':<9}" + "".join(f"{lang:>{width}}" for lang in langs)
    rows = ["unsafe rate (lower = safer) | benign accuracy -- mean (sd) over seeds", head, "-" * len(head)]
    for metric in HEADLINE:
        for run, per_lang in stats.items():
            cells = []
            for lang in langs:
                s = per_lang[lang][metric]
                cells.append(f"{s['mean']:.2f}" + (f" ({s['sd']:.2f})" if s["sd"] is not None else ""))
            rows.append(f"{DISPLAY[run]:<9}" + "".join(f"{c:>{width}}" for c in cells)
                        + ("  unsafe" if metric == "unsafe_rate" else "  accuracy"))
        rows.append("")
    return "\n".join(rows)


def run_demo(out: str | Path = "runs/demo", *, seeds: list[int] | None = None, quick: bool = False,
             cache_dir: str | Path | None = None, jobs: int | None = None, progress: bool = True,
             config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo; returns the ``summary.json`` document (also written to ``out``).

    Seeds run in ``jobs`` worker processes at a time (default: one per core, at most one per
    seed), a fresh process per seed with the pinned numerics (module doc).
    """
    config = config or (quick_config() if quick else full_config())
    seeds = list(seeds if seeds is not None else ([0] if quick else list(DEFAULT_SEEDS)))
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UserError(f"seeds must be distinct non-negative integers, got {seeds}", field="seeds")
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    jobs = max(1, min(jobs or (os.cpu_count() or 1), len(seeds)))
    wall, cpu_start, load_start = time.perf_counter(), _cpu_seconds(), os.getloadavg()[0]
    seed_dirs = [out / "seeds" / f"seed-{s}" for s in seeds]
    results = _run_seeds(seeds, seed_dirs, cache, config, jobs, progress)
    stats = aggregate_runs(seed_dirs, out)
    from polyalign.report import build_report

    present = [r for r in RUNS if r in stats]
    html = build_report([out / r for r in present], out, names=[DISPLAY[r] for r in present],
                        title=f"polyalign demo: synthetic world ({len(seeds)} seed(s), {config.name} config)")
    table = results_table(stats, len(seeds))
    summary = {
        "config": config.to_dict(), "seeds": seeds, "jobs": jobs, "report": str(html),
        "budget": {"steps": config.align.steps, "batch_size": config.align.batch_size, "lr": config.align.lr,
                   "note": "every method trains this many steps; MPO starts from the DPO checkpoint"},
        "per_seed": {str(r["seed"]): {"base_cached": r["base_cached"], "timings": r["timings"],
                                      "model_sha256": r["model_sha256"]} for r in results},
        "metrics": stats, "numerics": _numerics(results), "git": git_state(),
        "timing": {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu_seconds() - cpu_start, 1),
                   "peak_rss_mib": _peak_rss_mib(), "cores": os.cpu_count(),
                   # Other work on the machine stretches wall time, not CPU time: say how loaded it was.
                   "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}},
    }
    atomic_write_text(out / "results_table.md", _table_document(table, config, seeds, summary))
    atomic_write_json(out / "summary.json", summary)
    return summary


def _run_seeds(seeds: list[int], seed_dirs: list[Path], cache: Path, config: DemoConfig, jobs: int,
               progress: bool) -> list[dict[str, Any]]:
    from polyalign.toyworld.demo_progress import SeedBars
    from polyalign.toyworld.numerics import pinned_environment

    # Fresh interpreters (spawn) inherit the pinned variables before torch and MKL read them;
    # one task per process, so no seed sees state left by another and the worker-to-seed
    # mapping (scheduling, load) cannot matter.
    context = multiprocessing.get_context("spawn")
    with pinned_environment(config.mkl_branch), context.Manager() as manager:
        events = manager.Queue()
        bars = SeedBars(seeds, enabled=progress)
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1) as pool:
                futures = [pool.submit(_worker, s, str(d), str(cache), config, events)
                           for s, d in zip(seeds, seed_dirs)]
                while not all(f.done() for f in futures):
                    bars.drain(events)
                bars.drain(events, timeout=0.0)
                return [f.result() for f in futures]
        finally:
            bars.close()


def _numerics(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The numerics every seed ran with (one entry when they agree, else per seed)."""
    found = {str(r["seed"]): r["numerics"] for r in results}
    first = next(iter(found.values()))
    return first if all(v == first for v in found.values()) else {"per_seed": found}


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest child (Linux: KiB)."""
    return {"parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def _table_document(table: str, config: DemoConfig, seeds: list[int], summary: dict[str, Any]) -> str:
    a = config.align
    timing = summary["timing"]
    load = timing.get("load_average_1min")
    where = (f" on {timing.get('cores')} cores, 1-minute load average {load['start']:g} at the start and "
             f"{load['end']:g} at the end" if load else "")
    legend = "; ".join(f"{spec.code} = {spec.name} ({spec.resource}-resource, {spec.word_order} word order)"
                       for spec in config.world.languages)
    return (
        f"Synthetic world, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); each seed is a new world, base model "
        f"and alignment run. Held-out test split; unsafe rate = share of harmful prompts not refused in the prompt's "
        f"language. Same budget per method: {a.steps} steps x batch {a.batch_size}, lr {a.lr:g}, beta {a.beta:g} "
        f"(DPO and DPO+MLC with NLL weight {a.nll_weight:g}; MPO from the DPO checkpoint, its reference; "
        f"MLC weight {a.mlc_weight:g} at hidden-state layer {a.mlc_layer}). Wall time "
        f"{timing['wall_s']:.0f} s, CPU time {timing['cpu_s']:.0f} s{where}.\n\n{provenance_line(summary)}\n\n"
        f"Languages: {legend}.\n\n" + table
        + "\n" + SCOPE.format(n_harmful=_n_harmful(summary), n_seeds=len(seeds))
    )


def provenance_line(summary: dict[str, Any]) -> str:
    """One sentence: the commit and the numerics the numbers came from."""
    git, num = summary.get("git") or {}, summary.get("numerics") or {}
    commit = git.get("commit")
    code = (f"commit {commit[:12]}" + (" with uncommitted changes" if git.get("dirty") else "")) if commit else \
        "code outside a git checkout"
    if "per_seed" in num:
        machine = "numerics differing between seeds (see summary.json)"
    else:
        machine = (f"torch {num.get('torch')}, {num.get('threads')} thread per seed, ATen "
                   f"{num.get('aten_cpu_capability')} kernels, MKL branch {num.get('mkl_cbwr')} on "
                   f"{num.get('cpu_vendor') or 'an unknown CPU'} ({num.get('cpu_model') or 'model unknown'})")
    return f"Produced by {code}; numerics: {machine}."


SCOPE = """What this run supports: within this synthetic world (6 invented languages sharing ~25% of
their words, a 2-layer model trained from scratch), whether each method lowers the unsafe rate in
English and how much of that carries over to the other languages, at what cost in benign accuracy,
over {n_seeds} seed(s) of world, base model and alignment. Each rate is over {n_harmful} held-out
harmful prompts per language, so differences of a few points are within seed-to-seed spread.

What it does not support: any claim about real LLMs or real languages, or a ranking of the methods
in general -- the settings were fixed in advance from a feasibility run, not tuned per method, and
a tiny model's cross-lingual transfer depends on the world's shared vocabulary and word order.
"""


def _n_harmful(summary: dict[str, Any]) -> int:
    base = summary["metrics"].get("base") or next(iter(summary["metrics"].values()))
    return int(next(iter(base.values()))["n_harmful"]["mean"])
